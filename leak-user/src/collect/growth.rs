//! Gear 1 of `leaktrace watch`: which stacks first touch new memory, from the sampled page
//! faults of the fault sampler (`probe::attach::FaultSampler`). Each sample stands for
//! `period` minor faults of one page each; a stack's estimate is its samples × period × page
//! size ("memory growth flame graphs"). Read without probing the allocator, so it can stay
//! on all the time.
use std::collections::HashMap;

use aya::maps::{MapData, PerCpuHashMap};
use leak_common::map_names;

use crate::collect::drain::DrainError;

/// Samples per stack id, as read from the kernel (cumulative since the sampler started).
pub type FaultCounts = HashMap<u32, u64>;

/// The sampler's samples map and what was read from it. The stacks themselves are in the
/// sampler's STACKS map, read with the rest of its maps by `drain::Collector`.
pub struct FaultGrowth {
    samples: PerCpuHashMap<MapData, u32, u64>,
    /// Bytes one sample stands for: the period times the page size.
    pub bytes_per_sample: u64,
    counts: FaultCounts,
}

/// A stack's share of the new memory touched over some time.
#[derive(Clone, Debug, PartialEq)]
pub struct TouchedStack {
    /// The stack (its frames: `Collector::stack_ips`), the faulting instruction first.
    pub stack_id: u32,
    pub samples: u64,
    /// Estimated bytes first touched: samples × bytes per sample.
    pub bytes: u64,
}

impl FaultGrowth {
    /// The samples map of the fault sampler's object `ebpf`; each sample stands for
    /// `period` minor faults of a page of `page_size` bytes.
    pub fn take(
        ebpf: &mut aya::Ebpf,
        period: u64,
        page_size: u64,
    ) -> Result<FaultGrowth, DrainError> {
        let samples = ebpf.take_map(map_names::FAULT_SAMPLES).ok_or_else(|| {
            DrainError::new(map_names::FAULT_SAMPLES, "missing from the eBPF object")
        })?;
        Ok(FaultGrowth {
            samples: PerCpuHashMap::try_from(samples)
                .map_err(|err| DrainError::new(map_names::FAULT_SAMPLES, err.to_string()))?,
            bytes_per_sample: period * page_size,
            counts: HashMap::new(),
        })
    }

    /// Reads the current sample counts.
    pub fn read(&mut self) -> Result<(), DrainError> {
        for entry in self.samples.iter() {
            let (stack_id, per_cpu) =
                entry.map_err(|err| DrainError::new(map_names::FAULT_SAMPLES, err.to_string()))?;
            self.counts.insert(stack_id, per_cpu.iter().sum());
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
        touched_since(&self.counts, earlier, self.bytes_per_sample)
    }
}

/// What each stack added between two readings of the counts, most first; stacks that added
/// nothing are left out.
pub fn touched_since(
    now: &FaultCounts,
    earlier: &FaultCounts,
    bytes_per_sample: u64,
) -> Vec<TouchedStack> {
    let mut touched: Vec<TouchedStack> = now
        .iter()
        .filter_map(|(&id, &count)| {
            let samples = count.saturating_sub(earlier.get(&id).copied().unwrap_or(0));
            (samples > 0).then_some(TouchedStack {
                stack_id: id,
                samples,
                bytes: samples.saturating_mul(bytes_per_sample),
            })
        })
        .collect();
    touched.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.stack_id.cmp(&b.stack_id)));
    touched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_what_was_added_since() {
        let earlier: FaultCounts = [(1, 5), (2, 3)].into_iter().collect();
        let now: FaultCounts = [(1, 5), (2, 10), (3, 1)].into_iter().collect();
        let touched = touched_since(&now, &earlier, 16 * 4096);
        assert_eq!(
            touched,
            vec![
                TouchedStack {
                    stack_id: 2,
                    samples: 7,
                    bytes: 7 * 16 * 4096
                },
                TouchedStack {
                    stack_id: 3,
                    samples: 1,
                    bytes: 16 * 4096
                },
            ]
        );
        assert_eq!(touched_since(&now, &FaultCounts::new(), 1).len(), 3);
    }
}
