//! Go's own heap profile, read from the target's memory: the in-use heap per allocating
//! stack that `go tool pprof -inuse_space` shows, with no change to the program.
//!
//! The runtime samples one allocation per `runtime.MemProfileRate` bytes (512 KiB by
//! default) and keeps, per stack and size, a bucket on the list `runtime.mbuckets` (linked
//! by `allnext`, newest first; a bucket is never freed). A bucket is a 48-byte header (next,
//! allnext, type, hash, size, nstk), the stack's `nstk` return addresses, then a memRecord:
//! `active` (the profile published at the last completed GC) and `future[3]`, the three
//! cycles in flight, each {allocs, frees, alloc_bytes, free_bytes}. An allocation in cycle C
//! counts in future[(C+2)%3], a free (at sweep) in future[(C+1)%3]; as a GC completes, cycle
//! C's record is folded into `active`. So, with C = `runtime.mProfCycle` >> 1:
//!
//! - in use as of the last GC (what pprof reports) = active + future[C%3];
//! - in use as recorded now = active + every future: freed only when swept, like the spans
//!   the runtime gives back, so garbage not yet collected counts until its sweep.
//!
//! Verdicts are judged on the second (it moves between GCs, which may be seconds apart);
//! reports give the first beside it. Figures are scaled as pprof scales them
//! (`scaleHeapSample`): a sampled count stands for 1 / (1 − e^(−size/rate)) allocations.
//! The layout is the same in Go 1.19 to 1.23 (checked against each toolchain's DWARF).
use std::collections::HashMap;

use crate::model::Sample;
use crate::model::go_runtime::{BUCKET_HEADER_BYTES, ProfileAddresses};
use crate::sys::memory::Memory;

/// The stack id of a stack read from the profile (its key's `caller_hint` is the bucket's
/// address): no stack id of the kernel's.
pub const PROFILE_STACK_ID: u32 = leak_common::UNKNOWN_STACK_ID - 1;

/// The largest small object (`maxSmallSize`): a bucket of a larger size holds large objects,
/// a span each (its size is the span's, whole pages).
pub const MAX_SMALL_SIZE: u64 = 32768;

const MEM_RECORD_BYTES: usize = 128;
/// `memProfile`, the bucket type of the heap profile.
const MEM_PROFILE: u64 = 1;
/// The deepest stack a bucket holds (maxProfStackDepth, Go 1.23; 32 before).
const MAX_STACK_DEPTH: u64 = 1024;
/// The most buckets read: a list longer than this is cut (and says so).
const MAX_BUCKETS: usize = 1 << 20;

/// One cycle's record of a bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CycleRecord {
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    pub free_bytes: u64,
}

impl CycleRecord {
    fn parse(bytes: &[u8]) -> CycleRecord {
        let word = |at: usize| le_word(bytes, at);
        CycleRecord {
            allocs: word(0),
            frees: word(8),
            alloc_bytes: word(16),
            free_bytes: word(24),
        }
    }

    fn add(&mut self, other: &CycleRecord) {
        self.allocs = self.allocs.wrapping_add(other.allocs);
        self.frees = self.frees.wrapping_add(other.frees);
        self.alloc_bytes = self.alloc_bytes.wrapping_add(other.alloc_bytes);
        self.free_bytes = self.free_bytes.wrapping_add(other.free_bytes);
    }

    /// Objects and bytes still in use.
    fn in_use(&self) -> (u64, u64) {
        (
            self.allocs.saturating_sub(self.frees),
            self.alloc_bytes.saturating_sub(self.free_bytes),
        )
    }
}

/// A bucket's memRecord: `active`, then `future[3]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRecord {
    pub active: CycleRecord,
    pub future: [CycleRecord; 3],
}

impl MemRecord {
    pub fn parse(bytes: &[u8]) -> MemRecord {
        let at = |index: usize| CycleRecord::parse(bytes.get(index * 32..).unwrap_or(&[]));
        MemRecord {
            active: at(0),
            future: [at(1), at(2), at(3)],
        }
    }

    /// The profile as of the last completed GC, as `runtime.MemProfile` gives it in `cycle`.
    pub fn published(&self, cycle: u32) -> CycleRecord {
        let mut record = self.active;
        record.add(&self.future[(cycle % 3) as usize]);
        record
    }

    /// Everything recorded so far: allocations sampled less frees swept.
    pub fn recorded(&self) -> CycleRecord {
        let mut record = self.active;
        for future in &self.future {
            record.add(future);
        }
        record
    }
}

/// `count` sampled objects of `bytes` in all, as the allocations they stand for at `rate`
/// (runtime/pprof's scaleHeapSample, truncated as it truncates).
pub fn scale(count: u64, bytes: u64, rate: i64) -> (u64, u64) {
    if count == 0 || bytes == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, bytes);
    }
    let average = bytes as f64 / count as f64;
    let factor = 1.0 / (1.0 - (-average / rate as f64).exp());
    (
        (count as f64 * factor) as u64,
        (bytes as f64 * factor) as u64,
    )
}

/// What the runtime reports of one bucket now, scaled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketFigures {
    /// In use as recorded now (sampled allocations less swept frees).
    pub in_use_bytes: u64,
    pub in_use_objects: u64,
    /// In use as of the last completed GC: `go tool pprof -inuse_space`'s figure.
    pub at_gc_bytes: u64,
    pub at_gc_objects: u64,
    /// Allocations and frees recorded since the program started.
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
}

/// One allocating stack (and size) of the profile.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub address: u64,
    /// Return addresses, innermost first (the caller of mallocgc's caller first).
    pub stack: Vec<u64>,
    pub size: u64,
    pub figures: BucketFigures,
    pub series: Vec<Sample>,
}

/// Why the profile is not being read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unread {
    /// Nothing read yet.
    NotYet,
    /// `MemProfileRate` is 0: the linker turned profiling off (the program never calls
    /// `runtime.MemProfile`), or the program did.
    Off,
    /// The target's memory could not be read.
    Unreadable(String),
}

/// The profile of one process over the session.
pub struct HeapProfile {
    addresses: ProfileAddresses,
    buckets: Vec<Bucket>,
    index: HashMap<u64, usize>,
    /// Why the last read gave nothing, if it did.
    pub unread: Option<Unread>,
    /// The rate of the last read.
    pub rate: i64,
    /// GC cycles the last read and the first one saw, and when the cycle last changed.
    pub first_cycle: Option<u32>,
    pub cycle: u32,
    pub last_cycle_change_s: Option<f64>,
    /// The list was cut at MAX_BUCKETS.
    pub cut: bool,
}

impl HeapProfile {
    /// A profile at `addresses`, already moved by the executable's load bias.
    pub fn new(addresses: ProfileAddresses) -> HeapProfile {
        HeapProfile {
            addresses,
            buckets: Vec::new(),
            index: HashMap::new(),
            unread: Some(Unread::NotYet),
            rate: 0,
            first_cycle: None,
            cycle: 0,
            last_cycle_change_s: None,
            cut: false,
        }
    }

    /// Whether the figures come from the profile: it was read, with sampling on.
    pub fn in_use(&self) -> bool {
        self.unread.is_none() || (!self.buckets.is_empty() && self.rate > 0)
    }

    /// GC cycles completed while traced.
    pub fn gc_cycles_seen(&self) -> u32 {
        self.first_cycle
            .map_or(0, |first| self.cycle.wrapping_sub(first))
    }

    /// Bytes in use as recorded now, every bucket's.
    pub fn in_use_bytes(&self) -> u64 {
        self.buckets
            .iter()
            .map(|bucket| bucket.figures.in_use_bytes)
            .sum()
    }

    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// Reads the profile as it is now and adds a sample to every bucket's series (kept within
    /// the same memory budget as the kernel's stacks). A failed read keeps what the last one
    /// gave (the process may have gone).
    pub fn read(&mut self, memory: &mut dyn Memory, at_s: f64) {
        let Some(rate) = memory.read_u64(self.addresses.rate) else {
            if self.unread == Some(Unread::NotYet) {
                self.unread = Some(Unread::Unreadable(format!(
                    "runtime.MemProfileRate at {:#x} cannot be read",
                    self.addresses.rate
                )));
            }
            return;
        };
        let rate = rate as i64;
        if rate <= 0 {
            self.unread = Some(Unread::Off);
            self.rate = rate;
            return;
        }
        let mut cycle_word = [0u8; 4];
        if memory.read(self.addresses.cycle, &mut cycle_word) != 4 {
            return;
        }
        let cycle = u32::from_le_bytes(cycle_word) >> 1;
        if self.first_cycle.is_none() {
            self.first_cycle = Some(cycle);
        } else if cycle != self.cycle {
            self.last_cycle_change_s = Some(at_s);
        }
        self.cycle = cycle;
        self.rate = rate;
        if let Err(reason) = self.read_new_buckets(memory) {
            self.unread = Some(Unread::Unreadable(reason));
            return;
        }
        // Every bucket's record in one system call per 1024.
        let mut records = vec![[0u8; MEM_RECORD_BYTES]; self.buckets.len()];
        let mut requests: Vec<(u64, &mut [u8])> = self
            .buckets
            .iter()
            .zip(records.iter_mut())
            .map(|(bucket, record)| (record_address(bucket), &mut record[..]))
            .collect();
        let got = memory.read_each(&mut requests);
        drop(requests);
        let cap = crate::model::series::series_cap(self.buckets.len());
        for ((bucket, record), got) in self.buckets.iter_mut().zip(&records).zip(got) {
            if got != MEM_RECORD_BYTES {
                continue;
            }
            let record = MemRecord::parse(record);
            bucket.figures = figures(&record, cycle, rate);
            crate::model::series::push_thinned(
                &mut bucket.series,
                Sample {
                    at_s,
                    outstanding_bytes: bucket.figures.in_use_bytes,
                    outstanding_allocs: bucket.figures.in_use_objects,
                    total_allocs: bucket.figures.allocs,
                },
                cap,
            );
        }
        self.unread = None;
    }

    /// Walks the list from its head to the first bucket already known (new buckets are put
    /// at the head, and the links behind them never change).
    fn read_new_buckets(&mut self, memory: &mut dyn Memory) -> Result<(), String> {
        let Some(mut address) = memory.read_u64(self.addresses.buckets) else {
            return Err(format!(
                "runtime.mbuckets at {:#x} cannot be read",
                self.addresses.buckets
            ));
        };
        let mut fresh = Vec::new();
        while address != 0 && !self.index.contains_key(&address) {
            if self.buckets.len() + fresh.len() >= MAX_BUCKETS {
                self.cut = true;
                break;
            }
            let mut header = [0u8; BUCKET_HEADER_BYTES as usize];
            if memory.read(address, &mut header) != header.len() {
                return Err(format!("a profile bucket at {address:#x} cannot be read"));
            }
            let word = |index: usize| le_word(&header, index * 8);
            let (allnext, kind, size, depth) = (word(1), word(2), word(4), word(5));
            if kind != MEM_PROFILE || depth > MAX_STACK_DEPTH {
                return Err(format!(
                    "the profile bucket at {address:#x} is not one of this layout (type {kind}, \
                     {depth} frames)"
                ));
            }
            let mut frames = vec![0u8; depth as usize * 8];
            if memory.read(address + BUCKET_HEADER_BYTES, &mut frames) != frames.len() {
                return Err(format!("the stack of bucket {address:#x} cannot be read"));
            }
            let stack = frames
                .chunks_exact(8)
                .filter_map(|word| word.try_into().ok().map(u64::from_le_bytes))
                .collect();
            fresh.push(Bucket {
                address,
                stack,
                size,
                figures: BucketFigures::default(),
                series: Vec::new(),
            });
            address = allnext;
        }
        for bucket in fresh.into_iter().rev() {
            self.index.insert(bucket.address, self.buckets.len());
            self.buckets.push(bucket);
        }
        Ok(())
    }
}

/// The little-endian word at byte `at` of `bytes` (0 past the end).
fn le_word(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|word| word.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn record_address(bucket: &Bucket) -> u64 {
    bucket.address + BUCKET_HEADER_BYTES + bucket.stack.len() as u64 * 8
}

/// A bucket's figures from its record in `cycle`, scaled at `rate`.
pub fn figures(record: &MemRecord, cycle: u32, rate: i64) -> BucketFigures {
    let recorded = record.recorded();
    let (in_use_objects, in_use_bytes) = recorded.in_use();
    let (in_use_objects, in_use_bytes) = scale(in_use_objects, in_use_bytes, rate);
    let (at_gc_objects, at_gc_bytes) = {
        let (objects, bytes) = record.published(cycle).in_use();
        scale(objects, bytes, rate)
    };
    let (allocs, alloc_bytes) = scale(recorded.allocs, recorded.alloc_bytes, rate);
    let (frees, _) = scale(recorded.frees, recorded.free_bytes, rate);
    BucketFigures {
        in_use_bytes,
        in_use_objects,
        at_gc_bytes,
        at_gc_objects,
        allocs,
        frees,
        alloc_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake address space: (address, bytes) regions.
    struct Regions(Vec<(u64, Vec<u8>)>);

    impl Memory for Regions {
        fn read(&mut self, address: u64, buffer: &mut [u8]) -> usize {
            for (start, bytes) in &self.0 {
                let end = start + bytes.len() as u64;
                if address >= *start && address + buffer.len() as u64 <= end {
                    let at = (address - start) as usize;
                    buffer.copy_from_slice(&bytes[at..at + buffer.len()]);
                    return buffer.len();
                }
            }
            0
        }
    }

    fn bucket(allnext: u64, size: u64, stack: &[u64], cycles: [[u64; 4]; 4]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [0, allnext, MEM_PROFILE, 0xabc, size, stack.len() as u64] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        for pc in stack {
            bytes.extend_from_slice(&pc.to_le_bytes());
        }
        for cycle in cycles {
            for word in cycle {
                bytes.extend_from_slice(&word.to_le_bytes());
            }
        }
        bytes
    }

    const ADDRESSES: ProfileAddresses = ProfileAddresses {
        buckets: 0x1000,
        cycle: 0x1010,
        rate: 0x1020,
    };

    fn globals(head: u64, cycle: u32, rate: u64) -> (u64, Vec<u8>) {
        let mut bytes = vec![0u8; 0x28];
        bytes[..8].copy_from_slice(&head.to_le_bytes());
        bytes[0x10..0x14].copy_from_slice(&(cycle << 1).to_le_bytes());
        bytes[0x20..0x28].copy_from_slice(&rate.to_le_bytes());
        (0x1000, bytes)
    }

    #[test]
    fn scales_as_pprof_does() {
        assert_eq!(scale(0, 0, 524288), (0, 0));
        assert_eq!(scale(3, 300, 1), (3, 300));
        // 16 KiB objects at the default rate: each sample stands for 1/(1-e^(-1/32)).
        let (objects, bytes) = scale(10, 10 * 16384, 524288);
        assert_eq!((objects, bytes), (325, 5_325_226));
    }

    #[test]
    fn published_and_recorded_follow_the_cycles() {
        // Cycle 7: active holds what earlier GCs published; future[7 % 3 = 1] is the cycle
        // just completed, the others are still in flight.
        let record = MemRecord {
            active: CycleRecord {
                allocs: 10,
                frees: 4,
                alloc_bytes: 1000,
                free_bytes: 400,
            },
            future: [
                CycleRecord {
                    allocs: 5,
                    frees: 0,
                    alloc_bytes: 500,
                    free_bytes: 0,
                },
                CycleRecord {
                    allocs: 2,
                    frees: 1,
                    alloc_bytes: 200,
                    free_bytes: 100,
                },
                CycleRecord {
                    allocs: 0,
                    frees: 3,
                    alloc_bytes: 0,
                    free_bytes: 300,
                },
            ],
        };
        assert_eq!(record.published(7).in_use(), (7, 700));
        assert_eq!(record.recorded().in_use(), (9, 900));
        let figures = figures(&record, 7, 1);
        assert_eq!(
            (
                figures.at_gc_objects,
                figures.at_gc_bytes,
                figures.in_use_bytes
            ),
            (7, 700, 900)
        );
        assert_eq!((figures.allocs, figures.frees), (17, 8));
    }

    #[test]
    fn reads_new_buckets_once_and_every_record_each_time() {
        let first = bucket(
            0,
            64,
            &[0x401000, 0x402000],
            [[3, 1, 192, 64], [0; 4], [0; 4], [0; 4]],
        );
        let mut memory = Regions(vec![globals(0x2000, 4, 1), (0x2000, first.clone())]);
        let mut profile = HeapProfile::new(ADDRESSES);
        profile.read(&mut memory, 0.2);
        assert!(profile.in_use(), "{:?}", profile.unread);
        assert_eq!(profile.buckets().len(), 1);
        assert_eq!(profile.buckets()[0].stack, vec![0x401000, 0x402000]);
        assert_eq!(profile.buckets()[0].figures.in_use_bytes, 128);

        // A new bucket at the head; the first one's future[(5+2)%3] gained two objects.
        let mut grown = first.clone();
        let future_1 = (BUCKET_HEADER_BYTES + 16 + 32 + 32) as usize;
        grown[future_1..future_1 + 8].copy_from_slice(&2u64.to_le_bytes());
        grown[future_1 + 16..future_1 + 24].copy_from_slice(&128u64.to_le_bytes());
        let second = bucket(
            0x2000,
            32,
            &[0x403000],
            [[0; 4], [1, 0, 32, 0], [0; 4], [0; 4]],
        );
        let mut memory = Regions(vec![
            globals(0x3000, 5, 1),
            (0x2000, grown),
            (0x3000, second),
        ]);
        profile.read(&mut memory, 0.4);
        assert_eq!(profile.buckets().len(), 2);
        assert_eq!(profile.gc_cycles_seen(), 1);
        assert_eq!(profile.last_cycle_change_s, Some(0.4));
        let first = &profile.buckets()[0];
        assert_eq!(first.figures.in_use_bytes, 256);
        // As of the GC that ended cycle 4 (future[5 % 3 = 2] is empty): 128 bytes.
        assert_eq!(first.figures.at_gc_bytes, 128);
        assert_eq!(first.series.len(), 2);
        assert_eq!(profile.buckets()[1].series.len(), 1);
    }

    #[test]
    fn a_rate_of_zero_says_profiling_is_off() {
        let mut memory = Regions(vec![globals(0, 1, 0)]);
        let mut profile = HeapProfile::new(ADDRESSES);
        profile.read(&mut memory, 0.2);
        assert_eq!(profile.unread, Some(Unread::Off));
        assert!(!profile.in_use());
    }

    #[test]
    fn a_bucket_of_another_layout_is_refused() {
        let mut strange = bucket(0, 64, &[0x401000], [[0; 4]; 4]);
        strange[16..24].copy_from_slice(&7u64.to_le_bytes());
        let mut memory = Regions(vec![globals(0x2000, 1, 1), (0x2000, strange)]);
        let mut profile = HeapProfile::new(ADDRESSES);
        profile.read(&mut memory, 0.2);
        assert!(
            matches!(&profile.unread, Some(Unread::Unreadable(reason)) if reason.contains("type 7")),
            "{:?}",
            profile.unread
        );
    }
}
