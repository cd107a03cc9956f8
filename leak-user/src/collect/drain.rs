//! Kernel maps → model. Reads per-stack totals, counters and stack traces, consumes the
//! mmap event ring buffer into [`Regions`], and keeps each stack's time series.
use std::{collections::HashMap, ops::RangeInclusive};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use leak_common::{
    AllocRecord, Counter, MmapEvent, MmapEventKind, StackFrames, StackTotals, UNKNOWN_STACK_ID,
    map_names,
};

use crate::model::series::{push_thinned, series_cap};
use crate::{
    collect::regions::Regions,
    model::Block,
    model::{Held, Origin, Sample, StackHistory, StackKey, Totals},
};

/// Walks of the live-allocation map may take 1/this of the time (0.5%).
const SCAN_BUDGET_INVERSE: u64 = 200;
/// What walking one live allocation costs before a walk has measured it (two bpf syscalls
/// each where the kernel has no batch lookup; a batched walk measures far less).
const DEFAULT_SCAN_NS_PER_ENTRY: u64 = 2_000;

#[derive(Debug, thiserror::Error)]
#[error("kernel map {name}: {reason}")]
pub struct DrainError {
    name: &'static str,
    reason: String,
}

impl DrainError {
    pub fn new(name: &'static str, reason: impl Into<String>) -> DrainError {
        DrainError {
            name,
            reason: reason.into(),
        }
    }
}

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> DrainError {
    move |err| DrainError {
        name,
        reason: err.to_string(),
    }
}

/// The kernel maps leaktrace reads, taken out of the loaded object.
pub struct KernelMaps {
    allocs: BpfHashMap<MapData, u64, AllocRecord>,
    stack_totals: PerCpuHashMap<MapData, u32, StackTotals>,
    stacks: BpfHashMap<MapData, u32, StackFrames>,
    counters: PerCpuArray<MapData, u64>,
    mmap_events: RingBuf<MapData>,
    thread_ends: BpfHashMap<MapData, u32, leak_common::ThreadEnd>,
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<KernelMaps, DrainError> {
        fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, DrainError> {
            let map = ebpf.take_map(name).ok_or(DrainError {
                name,
                reason: "missing from the eBPF object".into(),
            })?;
            T::try_from(map).map_err(map_error(name))
        }
        Ok(KernelMaps {
            allocs: take(ebpf, map_names::ALLOCS)?,
            stack_totals: take(ebpf, map_names::STACK_TOTALS)?,
            stacks: take(ebpf, map_names::STACKS)?,
            counters: take(ebpf, map_names::COUNTERS)?,
            mmap_events: take(ebpf, map_names::MMAP_EVENTS)?,
            thread_ends: take(ebpf, map_names::THREAD_ENDS)?,
        })
    }

    /// Calls `visit` with every live allocation: in batches where the kernel can, else key
    /// by key (an entry freed between its key and its lookup is skipped).
    fn for_each_allocation(
        &self,
        mut visit: impl FnMut(u64, &AllocRecord),
    ) -> Result<(), DrainError> {
        let map = aya::maps::IterableMap::map(&self.allocs).fd();
        let batched =
            crate::sys::map_batch::for_each(map, |address: &u64, record: &AllocRecord| {
                visit(*address, record)
            })
            .map_err(|err| DrainError::new(map_names::ALLOCS, err.to_string()))?;
        if batched {
            return Ok(());
        }
        for entry in self.allocs.iter() {
            match entry {
                Ok((address, record)) => visit(address, &record),
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(err) => return Err(map_error(map_names::ALLOCS)(err)),
            }
        }
        Ok(())
    }
}

/// Everything observed so far.
pub struct Collector {
    maps: KernelMaps,
    regions: Regions,
    page_size: u64,
    started_ns: u64,
    /// mmap lengths to track (--min-size/--max-size), inclusive.
    sizes: RangeInclusive<u64>,
    /// Heap allocations are sampled one in this many; their totals are scaled by it.
    sample_rate: u64,
    stacks: HashMap<StackKey, StackHistory>,
    stack_ips: HashMap<u32, Vec<u64>>,
    counters: [u64; Counter::COUNT as usize],
    /// Stack ids seen for the first time since the last call to `take_new_stacks`.
    new_stacks: bool,
    /// When the live map was last walked.
    last_scan: Option<u64>,
    /// What walking one live allocation costs, ns (measured by the last large walk).
    scan_ns_per_entry: u64,
    /// What that walk found old enough for --min-age.
    scanned_held: HashMap<StackKey, Held>,
    /// The program break as last seen (brk events move it).
    program_break: Option<u64>,
    /// What the last walk found made inside scope calls: by scope tag and stack, unscaled.
    scope_held: HashMap<u32, HashMap<StackKey, Held>>,
    /// What the last walk found of Go spans of small objects: live spans by stack id and
    /// span class.
    go_span_classes: HashMap<u32, HashMap<u32, u64>>,
}

impl Collector {
    pub fn new(
        maps: KernelMaps,
        started_ns: u64,
        page_size: u64,
        sizes: RangeInclusive<u64>,
        sample_rate: u32,
    ) -> Self {
        Collector {
            maps,
            regions: Regions::default(),
            page_size,
            started_ns,
            sizes,
            sample_rate: u64::from(sample_rate.max(1)),
            stacks: HashMap::new(),
            stack_ips: HashMap::new(),
            counters: [0; Counter::COUNT as usize],
            new_stacks: false,
            last_scan: None,
            scan_ns_per_entry: DEFAULT_SCAN_NS_PER_ENTRY,
            scanned_held: HashMap::new(),
            program_break: None,
            scope_held: HashMap::new(),
            go_span_classes: HashMap::new(),
        }
    }

    /// Live Go spans of small objects by stack id and span class, as of the last walk.
    pub fn go_span_classes(&self) -> &HashMap<u32, HashMap<u32, u64>> {
        &self.go_span_classes
    }

    /// What the last walk of the live map found made inside scope calls, by scope tag and
    /// stack (sampled counts, not scaled by the sample rate).
    pub fn scope_held(&self) -> &HashMap<u32, HashMap<StackKey, Held>> {
        &self.scope_held
    }

    /// The process executed a new program: the memory of the last one is gone with it. Its
    /// live blocks are forgotten (in the kernel's map too) and its stacks hold nothing any
    /// more; their counts of allocations and frees stay. Call while the process is stopped.
    pub fn forget_live_memory(&mut self) -> Result<(), DrainError> {
        self.drain_events();
        let addresses: Vec<u64> = self.maps.allocs.keys().filter_map(Result::ok).collect();
        for address in addresses {
            // Gone already (freed meanwhile): nothing to forget.
            let _ = self.maps.allocs.remove(&address);
        }
        let mut held = Vec::new();
        for entry in self.maps.stack_totals.iter() {
            let (stack_id, per_cpu) = entry.map_err(map_error(map_names::STACK_TOTALS))?;
            let cleared: Vec<StackTotals> = per_cpu
                .iter()
                .map(|totals| StackTotals {
                    outstanding_bytes: 0,
                    outstanding_allocs: 0,
                    ..*totals
                })
                .collect();
            held.push((stack_id, cleared));
        }
        for (stack_id, cleared) in held {
            let values = aya::maps::PerCpuValues::try_from(cleared)
                .map_err(|err| DrainError::new(map_names::STACK_TOTALS, err.to_string()))?;
            self.maps
                .stack_totals
                .insert(stack_id, values, 0)
                .map_err(map_error(map_names::STACK_TOTALS))?;
        }
        self.regions.forget_live();
        // The old program's threads ended with it, on stacks that are gone.
        let ended: Vec<u32> = self
            .maps
            .thread_ends
            .keys()
            .filter_map(Result::ok)
            .collect();
        for tid in ended {
            let _ = self.maps.thread_ends.remove(&tid);
        }
        Ok(())
    }

    /// The program break when tracing began (see `procfs::program_break`): the first brk
    /// seen is measured from it.
    pub fn set_program_break(&mut self, program_break: Option<u64>) {
        self.program_break = program_break;
    }

    /// Consumes pending mmap-family events.
    pub fn drain_events(&mut self) {
        let round = |len: u64, page: u64| len.div_ceil(page) * page;
        while let Some(item) = self.maps.mmap_events.next() {
            if item.len() < size_of::<MmapEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole MmapEvent; read_unaligned copes with alignment.
            let event: MmapEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            match MmapEventKind::from_u32(event.kind) {
                // Out of the requested size range: never tracked, so its unmap is a no-op.
                Some(MmapEventKind::Map) if !self.sizes.contains(&event.len) => {}
                Some(MmapEventKind::Map) => {
                    let stack = StackKey {
                        origin: Origin::Mmap,
                        stack_id: event.stack_id,
                        caller_hint: event.caller_hint,
                    };
                    self.regions.map(
                        event.addr,
                        round(event.len, self.page_size),
                        stack,
                        event.timestamp_ns,
                    );
                }
                Some(MmapEventKind::Unmap) => {
                    self.regions
                        .unmap(event.addr, round(event.len, self.page_size));
                }
                Some(MmapEventKind::Remap) => self.regions.remap(
                    event.addr,
                    round(event.len, self.page_size),
                    event.new_addr,
                    round(event.new_len, self.page_size),
                ),
                Some(MmapEventKind::Brk) => {
                    let stack = StackKey {
                        origin: Origin::Brk,
                        stack_id: event.stack_id,
                        caller_hint: 0,
                    };
                    let by_allocator = event.len == leak_common::BRK_BY_ALLOCATOR;
                    match self.program_break {
                        // The allocator's own growth belongs to its allocations; its shrinking
                        // (free trimming the heap) unmaps nothing of the program's.
                        _ if by_allocator => {}
                        Some(last)
                            if event.addr > last && self.sizes.contains(&(event.addr - last)) =>
                        {
                            self.regions
                                .map(last, event.addr - last, stack, event.timestamp_ns)
                        }
                        Some(last) if event.addr < last => {
                            self.regions.unmap(event.addr, last - event.addr)
                        }
                        _ => {}
                    }
                    self.program_break = Some(event.addr);
                }
                None => {}
            }
        }
    }

    /// Reads totals and counters and appends one sample to every stack's series.
    pub fn sample(&mut self, now_ns: u64) -> Result<(), DrainError> {
        self.drain_events();
        let at_s = now_ns.saturating_sub(self.started_ns) as f64 / 1e9;
        let mut current: Vec<(StackKey, Totals, Option<u64>)> = Vec::new();
        for entry in self.maps.stack_totals.iter() {
            let (stack_id, per_cpu) = entry.map_err(map_error(map_names::STACK_TOTALS))?;
            let totals = sum_cpus(per_cpu.iter());
            let key = StackKey {
                origin: Origin::Heap,
                stack_id,
                caller_hint: 0,
            };
            current.push((
                key,
                totals_from_kernel(&totals).scaled(self.sample_rate),
                None,
            ));
        }
        for (key, (totals, oldest)) in self.regions.totals() {
            current.push((key, totals, oldest));
        }
        let cap = series_cap(self.stacks.len().max(current.len()));
        for (key, totals, oldest) in current {
            let history = self.stacks.entry(key).or_insert_with(|| {
                self.new_stacks = true;
                StackHistory {
                    key,
                    totals,
                    series: Vec::new(),
                    oldest_live_ns: None,
                }
            });
            history.totals = totals;
            if key.origin != Origin::Heap {
                history.oldest_live_ns = oldest;
            }
            push_thinned(
                &mut history.series,
                Sample {
                    at_s,
                    outstanding_bytes: totals.outstanding_bytes,
                    outstanding_allocs: totals.outstanding_allocs,
                    total_allocs: totals.total_allocs,
                },
                cap,
            );
        }
        for counter in Counter::ALL {
            let per_cpu = self
                .maps
                .counters
                .get(&(counter as u32), 0)
                .map_err(map_error(map_names::COUNTERS))?;
            self.counters[counter as usize] = per_cpu.iter().sum();
        }
        Ok(())
    }

    /// Finds the oldest live heap allocation of each stack, and returns what each stack holds
    /// in allocations made at or before `born_by_ns` (for --min-age).
    ///
    /// This walks every live allocation (two syscalls each: about 2 s for a million), so
    /// unless `force`d it runs only when it would cost at most 0.5% of the time since the last:
    /// in between, the last walk's answers stand (an oldest allocation freed since then
    /// reads older than the true oldest until the next walk).
    pub fn scan_live_allocations(
        &mut self,
        born_by_ns: u64,
        now_ns: u64,
        force: bool,
    ) -> Result<HashMap<StackKey, Held>, DrainError> {
        // What a walk would cost now: the live count at the last sample (entries in the map,
        // not what they stand for) times the per-entry cost the last walk measured.
        let live: u64 = self
            .heap_histories()
            .map(|history| history.totals.outstanding_allocs)
            .sum::<u64>()
            / self.sample_rate;
        let expected_cost = live.saturating_mul(self.scan_ns_per_entry);
        let budget_spent = self.last_scan.is_some_and(|at| {
            now_ns.saturating_sub(at) < expected_cost.saturating_mul(SCAN_BUDGET_INVERSE)
        });
        if force || !budget_spent {
            self.walk_live_allocations(born_by_ns, now_ns)?;
        }
        let mut held = self.scanned_held.clone();
        held.extend(self.regions.held_born_by(born_by_ns));
        Ok(held)
    }

    /// One walk of the live-allocation map: each heap stack's oldest allocation and what
    /// it holds born by `born_by_ns`, and what the walk cost per entry.
    /// Every live traced allocation (address and size) with its stack, for the reachability
    /// scan.
    /// The most recent ends of the process's threads (see `leak_common::ThreadEnd`), by
    /// thread id.
    pub fn thread_ends(&self) -> Vec<(u32, leak_common::ThreadEnd)> {
        self.maps
            .thread_ends
            .iter()
            .filter_map(Result::ok)
            .collect()
    }

    /// Where the program (or the C runtime for it, not the allocator) mapped anonymous
    /// memory or moved the break itself, still mapped: address ranges in order.
    pub fn program_regions(&self) -> Vec<std::ops::Range<u64>> {
        self.regions.ranges()
    }

    pub fn live_blocks(&self) -> Result<Vec<(Block, StackKey)>, DrainError> {
        let mut blocks = Vec::new();
        self.maps.for_each_allocation(|address, record| {
            blocks.push((
                Block {
                    start: address,
                    size: record.size,
                },
                StackKey {
                    origin: Origin::Heap,
                    stack_id: record.stack_id,
                    caller_hint: 0,
                },
            ));
        })?;
        Ok(blocks)
    }

    fn walk_live_allocations(&mut self, born_by_ns: u64, now_ns: u64) -> Result<(), DrainError> {
        let started = std::time::Instant::now();
        let mut oldest: HashMap<u32, u64> = HashMap::new();
        let mut held: HashMap<StackKey, Held> = HashMap::new();
        let mut scope_held: HashMap<u32, HashMap<StackKey, Held>> = HashMap::new();
        let mut go_span_classes: HashMap<u32, HashMap<u32, u64>> = HashMap::new();
        let mut walked: u64 = 0;
        self.maps.for_each_allocation(|_, record| {
            walked += 1;
            if record.tid & leak_common::GO_SPAN_CLASS_MARK != 0 {
                *go_span_classes
                    .entry(record.stack_id)
                    .or_default()
                    .entry(record.tid & !leak_common::GO_SPAN_CLASS_MARK)
                    .or_default() += 1;
            }
            oldest
                .entry(record.stack_id)
                .and_modify(|t| *t = (*t).min(record.timestamp_ns))
                .or_insert(record.timestamp_ns);
            if record.scope != 0 {
                let (_, tag) = leak_common::scope_parts(record.scope);
                let key = StackKey {
                    origin: Origin::Heap,
                    stack_id: record.stack_id,
                    caller_hint: 0,
                };
                scope_held
                    .entry(tag)
                    .or_default()
                    .entry(key)
                    .or_default()
                    .add(record.size);
            }
            if record.timestamp_ns <= born_by_ns {
                let key = StackKey {
                    origin: Origin::Heap,
                    stack_id: record.stack_id,
                    caller_hint: 0,
                };
                held.entry(key).or_default().add(record.size);
            }
        })?;
        for history in self.stacks.values_mut() {
            if history.key.origin == Origin::Heap {
                history.oldest_live_ns = oldest.get(&history.key.stack_id).copied();
            }
        }
        let cost = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_scan = Some(now_ns);
        if walked >= 1000 {
            self.scan_ns_per_entry = cost / walked;
        }
        self.scope_held = scope_held;
        self.go_span_classes = go_span_classes;
        let rate = self.sample_rate;
        self.scanned_held = held
            .into_iter()
            .map(|(key, held)| (key, held.scaled(rate)))
            .collect();
        Ok(())
    }

    fn heap_histories(&self) -> impl Iterator<Item = &StackHistory> {
        self.stacks
            .values()
            .filter(|history| history.key.origin == Origin::Heap)
    }

    /// Heap bytes held by all traced stacks at the last sample.
    pub fn heap_outstanding_bytes(&self) -> u64 {
        self.heap_histories()
            .map(|history| history.totals.outstanding_bytes)
            .sum()
    }

    /// The return addresses of a stack id, innermost first (cached: ids are never reused).
    pub fn stack_ips(&mut self, stack_id: u32) -> &[u64] {
        if stack_id == UNKNOWN_STACK_ID {
            return &[];
        }
        let maps = &self.maps;
        self.stack_ips.entry(stack_id).or_insert_with(|| {
            maps.stacks
                .get(&stack_id, 0)
                .map(|stack| {
                    stack
                        .frames()
                        .iter()
                        .copied()
                        .filter(|ip| *ip != 0)
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// True once after new stacks appeared (the caller then re-reads the module list).
    pub fn take_new_stacks(&mut self) -> bool {
        std::mem::take(&mut self.new_stacks)
    }

    pub fn histories(&self) -> impl Iterator<Item = &StackHistory> {
        self.stacks.values()
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter as usize]
    }
}

/// Adds the CPUs' copies of a stack's totals (wrapping: one CPU may hold the frees of
/// another's allocations).
fn sum_cpus<'a>(per_cpu: impl Iterator<Item = &'a StackTotals>) -> StackTotals {
    per_cpu.fold(StackTotals::default(), |sum, cpu| StackTotals {
        outstanding_bytes: sum.outstanding_bytes.wrapping_add(cpu.outstanding_bytes),
        outstanding_allocs: sum.outstanding_allocs.wrapping_add(cpu.outstanding_allocs),
        total_allocs: sum.total_allocs.wrapping_add(cpu.total_allocs),
        total_frees: sum.total_frees.wrapping_add(cpu.total_frees),
        total_bytes: sum.total_bytes.wrapping_add(cpu.total_bytes),
    })
}

fn totals_from_kernel(kernel: &StackTotals) -> Totals {
    // Outstanding values are wrapping sums; a transient negative (a free counted before its
    // allocation on another CPU) reads as zero.
    let clamp = |value: u64| if (value as i64) < 0 { 0 } else { value };
    Totals {
        outstanding_bytes: clamp(kernel.outstanding_bytes),
        outstanding_allocs: clamp(kernel.outstanding_allocs),
        total_allocs: kernel.total_allocs,
        total_frees: kernel.total_frees,
        total_bytes: kernel.total_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::series::MAX_SERIES_LEN;

    #[test]
    fn series_stays_bounded_and_spans_the_session() {
        let mut series = Vec::new();
        for i in 0..10 * MAX_SERIES_LEN {
            push_thinned(
                &mut series,
                Sample {
                    at_s: i as f64,
                    outstanding_bytes: i as u64,
                    outstanding_allocs: 1,
                    total_allocs: i as u64,
                },
                MAX_SERIES_LEN,
            );
        }
        assert!(series.len() <= MAX_SERIES_LEN);
        assert_eq!(series[0].at_s, 0.0);
        assert_eq!(
            series.last().map(|s| s.at_s),
            Some((10 * MAX_SERIES_LEN - 1) as f64)
        );
    }

    #[test]
    fn cpus_sum_with_frees_on_another_cpu() {
        let alloc_cpu = StackTotals {
            outstanding_bytes: 128,
            outstanding_allocs: 2,
            total_allocs: 2,
            total_frees: 0,
            total_bytes: 128,
        };
        let free_cpu = StackTotals {
            outstanding_bytes: 64u64.wrapping_neg(),
            outstanding_allocs: 1u64.wrapping_neg(),
            total_allocs: 0,
            total_frees: 1,
            total_bytes: 0,
        };
        let sum = totals_from_kernel(&sum_cpus([alloc_cpu, free_cpu].iter()));
        assert_eq!((sum.outstanding_bytes, sum.outstanding_allocs), (64, 1));
        assert_eq!(
            (sum.total_allocs, sum.total_frees, sum.total_bytes),
            (2, 1, 128)
        );
    }

    #[test]
    fn negative_outstanding_reads_as_zero() {
        let totals = totals_from_kernel(&StackTotals {
            outstanding_bytes: 64u64.wrapping_neg(),
            outstanding_allocs: 1u64.wrapping_neg(),
            total_allocs: 0,
            total_frees: 1,
            total_bytes: 0,
        });
        assert_eq!(
            (totals.outstanding_bytes, totals.outstanding_allocs),
            (0, 0)
        );
    }
}
