//! Gear 1 of `leaktrace watch`: which stacks first touch new memory, from the sampled page
//! faults of [`attach::FaultSampler`]. Each sample stands for `period` minor faults of one
//! page each; a stack's estimate is its samples × period × page size ("memory growth flame
//! graphs"). Read without probing the allocator, so it can stay on all the time.
use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap};
use leak_common::{MAX_STACK_DEPTH, StackFrames, map_names};

use crate::{attach::FaultSampler, drain::DrainError};

/// Samples per stack id, as read from the kernel (cumulative since the sampler started).
pub type FaultCounts = HashMap<u32, u64>;

/// The sampler's maps and what was read from them.
pub struct FaultGrowth {
    samples: PerCpuHashMap<MapData, u32, u64>,
    stacks: BpfHashMap<MapData, u32, StackFrames>,
    /// Bytes one sample stands for: the period times the page size.
    pub bytes_per_sample: u64,
    counts: FaultCounts,
    ips: HashMap<u32, Vec<u64>>,
}

/// A stack's share of the new memory touched over some time.
#[derive(Clone, Debug, PartialEq)]
pub struct TouchedStack {
    /// Return addresses, innermost first (the faulting instruction first).
    pub ips: Vec<u64>,
    pub samples: u64,
    /// Estimated bytes first touched: samples × bytes per sample.
    pub bytes: u64,
}

impl FaultGrowth {
    pub fn take(sampler: &mut FaultSampler, page_size: u64) -> Result<FaultGrowth, DrainError> {
        let missing = |name: &'static str| DrainError::new(name, "missing from the eBPF object");
        let samples = sampler
            .ebpf
            .take_map(map_names::FAULT_SAMPLES)
            .ok_or_else(|| missing(map_names::FAULT_SAMPLES))?;
        let stacks = sampler
            .ebpf
            .take_map(map_names::STACKS)
            .ok_or_else(|| missing(map_names::STACKS))?;
        Ok(FaultGrowth {
            samples: PerCpuHashMap::try_from(samples)
                .map_err(|err| DrainError::new(map_names::FAULT_SAMPLES, err.to_string()))?,
            stacks: BpfHashMap::try_from(stacks)
                .map_err(|err| DrainError::new(map_names::STACKS, err.to_string()))?,
            bytes_per_sample: sampler.period * page_size,
            counts: HashMap::new(),
            ips: HashMap::new(),
        })
    }

    /// Reads the current sample counts (and the frames of stacks not seen before).
    pub fn read(&mut self) -> Result<(), DrainError> {
        let mut fresh = Vec::new();
        for entry in self.samples.iter() {
            let (stack_id, per_cpu) =
                entry.map_err(|err| DrainError::new(map_names::FAULT_SAMPLES, err.to_string()))?;
            let total: u64 = per_cpu.iter().sum();
            if self.counts.insert(stack_id, total).is_none() {
                fresh.push(stack_id);
            }
        }
        for stack_id in fresh {
            if let Ok(frames) = self.stacks.get(&stack_id, 0) {
                let len = (frames.len as usize).min(MAX_STACK_DEPTH);
                self.ips.insert(stack_id, frames.ips[..len].to_vec());
            }
        }
        Ok(())
    }

    /// The counts as last read, to diff against later.
    pub fn counts(&self) -> FaultCounts {
        self.counts.clone()
    }

    /// Samples taken in total, as last read.
    pub fn total_samples(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The stacks that touched new memory since `earlier` (empty: since the start), most
    /// bytes first.
    pub fn since(&self, earlier: &FaultCounts) -> Vec<TouchedStack> {
        touched_since(&self.counts, earlier, self.bytes_per_sample, |id| {
            self.ips.get(&id).cloned().unwrap_or_default()
        })
    }
}

/// What each stack added between two readings of the counts, most first; stacks that added
/// nothing are left out.
pub fn touched_since(
    now: &FaultCounts,
    earlier: &FaultCounts,
    bytes_per_sample: u64,
    ips_of: impl Fn(u32) -> Vec<u64>,
) -> Vec<TouchedStack> {
    let mut touched: Vec<TouchedStack> = now
        .iter()
        .filter_map(|(&id, &count)| {
            let samples = count.saturating_sub(earlier.get(&id).copied().unwrap_or(0));
            (samples > 0).then(|| TouchedStack {
                ips: ips_of(id),
                samples,
                bytes: samples.saturating_mul(bytes_per_sample),
            })
        })
        .collect();
    touched.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.ips.cmp(&b.ips)));
    touched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_what_was_added_since() {
        let earlier: FaultCounts = [(1, 5), (2, 3)].into_iter().collect();
        let now: FaultCounts = [(1, 5), (2, 10), (3, 1)].into_iter().collect();
        let touched = touched_since(&now, &earlier, 16 * 4096, |id| vec![u64::from(id)]);
        assert_eq!(
            touched,
            vec![
                TouchedStack {
                    ips: vec![2],
                    samples: 7,
                    bytes: 7 * 16 * 4096
                },
                TouchedStack {
                    ips: vec![3],
                    samples: 1,
                    bytes: 16 * 4096
                },
            ]
        );
        assert_eq!(
            touched_since(&now, &FaultCounts::new(), 1, |_| Vec::new()).len(),
            3
        );
    }
}
