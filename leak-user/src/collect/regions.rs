//! Anonymous memory regions the program mapped itself, tracked by address range so a partial
//! munmap or an mremap is accounted exactly.
use std::collections::{BTreeMap, HashMap};

use crate::model::{Held, StackKey, Totals};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub len: u64,
    pub stack: StackKey,
    pub mapped_ns: u64,
}

/// Live regions keyed by start address, plus per-stack alloc/free counts.
#[derive(Debug, Default)]
pub struct Regions {
    live: BTreeMap<u64, Region>,
    counts: HashMap<StackKey, (u64, u64, u64)>,
}

impl Regions {
    /// The process's memory is gone (it executed a new program): no region is live any
    /// more; the counts of maps and unmaps stay.
    pub fn forget_live(&mut self) {
        self.live.clear();
    }

    /// Records a new mapping; anything it overlaps (MAP_FIXED) is unmapped first.
    pub fn map(&mut self, addr: u64, len: u64, stack: StackKey, mapped_ns: u64) {
        if len == 0 {
            return;
        }
        self.unmap(addr, len);
        self.live.insert(
            addr,
            Region {
                len,
                stack,
                mapped_ns,
            },
        );
        let counts = self.counts.entry(stack).or_default();
        counts.0 += 1;
        counts.2 += len;
    }

    /// Removes `[addr, addr+len)`: regions inside it disappear, regions crossing its edges
    /// shrink, a region containing it splits in two.
    pub fn unmap(&mut self, addr: u64, len: u64) {
        let end = addr.saturating_add(len);
        let overlapping: Vec<(u64, Region)> = self
            .live
            .range(..end)
            .rev()
            .take_while(|(start, region)| **start + region.len > addr || **start >= addr)
            .filter(|(start, region)| **start + region.len > addr)
            .map(|(start, region)| (*start, *region))
            .collect();
        for (start, region) in overlapping {
            self.live.remove(&start);
            let region_end = start + region.len;
            if start < addr {
                self.live.insert(
                    start,
                    Region {
                        len: addr - start,
                        ..region
                    },
                );
            }
            if region_end > end {
                self.live.insert(
                    end,
                    Region {
                        len: region_end - end,
                        ..region
                    },
                );
            }
            if start >= addr && region_end <= end {
                self.counts.entry(region.stack).or_default().1 += 1;
            }
        }
    }

    /// mremap: the part of a region at `[old, old+old_len)` moves to `new` with `new_len`;
    /// it keeps the stack that mapped it. Untracked ranges stay untracked.
    pub fn remap(&mut self, old: u64, old_len: u64, new: u64, new_len: u64) {
        let Some((&start, &region)) = self.live.range(..=old).next_back() else {
            return;
        };
        if start + region.len <= old {
            return;
        }
        self.unmap(old, old_len.max(1));
        // The old part was counted as freed by unmap; the move is not a free.
        if let Some(counts) = self.counts.get_mut(&region.stack)
            && start >= old
            && start + region.len <= old + old_len.max(1)
        {
            counts.1 = counts.1.saturating_sub(1);
        }
        self.unmap(new, new_len);
        self.live.insert(
            new,
            Region {
                len: new_len,
                ..region
            },
        );
        if new_len > old_len {
            self.counts.entry(region.stack).or_default().2 += new_len - old_len;
        }
    }

    /// Totals per stack, and the oldest live mapping of each.
    pub fn totals(&self) -> HashMap<StackKey, (Totals, Option<u64>)> {
        let mut out: HashMap<StackKey, (Totals, Option<u64>)> = HashMap::new();
        for (stack, (allocs, frees, bytes)) in &self.counts {
            let entry = out.entry(*stack).or_default();
            entry.0.total_allocs = *allocs;
            entry.0.total_frees = *frees;
            entry.0.total_bytes = *bytes;
        }
        for region in self.live.values() {
            let entry = out.entry(region.stack).or_default();
            entry.0.outstanding_bytes += region.len;
            entry.0.outstanding_allocs += 1;
            entry.1 = Some(
                entry
                    .1
                    .map_or(region.mapped_ns, |t| t.min(region.mapped_ns)),
            );
        }
        out
    }

    /// What each stack holds in regions mapped at or before `born_by_ns`.
    pub fn held_born_by(&self, born_by_ns: u64) -> HashMap<StackKey, Held> {
        let mut held: HashMap<StackKey, Held> = HashMap::new();
        for region in self.live.values() {
            if region.mapped_ns <= born_by_ns {
                held.entry(region.stack).or_default().add(region.len);
            }
        }
        held
    }

    /// The address ranges of the live regions, in address order.
    pub fn ranges(&self) -> Vec<std::ops::Range<u64>> {
        self.live
            .iter()
            .map(|(&start, region)| start..start.saturating_add(region.len))
            .collect()
    }

    pub fn live_bytes(&self) -> u64 {
        self.live.values().map(|region| region.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Origin;

    fn stack(id: u32) -> StackKey {
        StackKey {
            origin: Origin::Mmap,
            stack_id: id,
            caller_hint: 0,
        }
    }

    const PAGE: u64 = 4096;

    #[test]
    fn full_unmap_frees() {
        let mut regions = Regions::default();
        regions.map(0x10000, 4 * PAGE, stack(1), 5);
        regions.unmap(0x10000, 4 * PAGE);
        let totals = regions.totals()[&stack(1)].0;
        assert_eq!(totals.outstanding_bytes, 0);
        assert_eq!((totals.total_allocs, totals.total_frees), (1, 1));
    }

    #[test]
    fn partial_unmap_at_head_tail_and_middle() {
        let mut regions = Regions::default();
        regions.map(0x10000, 8 * PAGE, stack(1), 5);
        regions.unmap(0x10000, PAGE); // head
        regions.unmap(0x10000 + 7 * PAGE, PAGE); // tail
        regions.unmap(0x10000 + 3 * PAGE, 2 * PAGE); // middle: splits
        let totals = regions.totals()[&stack(1)].0;
        assert_eq!(totals.outstanding_bytes, 4 * PAGE);
        assert_eq!(totals.outstanding_allocs, 2);
        assert_eq!(totals.total_frees, 0, "a partial unmap frees nothing whole");
    }

    #[test]
    fn unmap_spanning_several_regions() {
        let mut regions = Regions::default();
        regions.map(0x10000, 2 * PAGE, stack(1), 1);
        regions.map(0x10000 + 2 * PAGE, 2 * PAGE, stack(2), 2);
        regions.map(0x10000 + 4 * PAGE, 2 * PAGE, stack(3), 3);
        regions.unmap(0x10000 + PAGE, 4 * PAGE);
        let totals = regions.totals();
        assert_eq!(totals[&stack(1)].0.outstanding_bytes, PAGE);
        assert_eq!(totals[&stack(2)].0.outstanding_bytes, 0);
        assert_eq!(totals[&stack(2)].0.total_frees, 1);
        assert_eq!(totals[&stack(3)].0.outstanding_bytes, PAGE);
        assert_eq!(regions.live_bytes(), 2 * PAGE);
    }

    #[test]
    fn unknown_unmap_is_ignored() {
        let mut regions = Regions::default();
        regions.map(0x10000, PAGE, stack(1), 1);
        regions.unmap(0x90000, PAGE);
        assert_eq!(regions.live_bytes(), PAGE);
    }

    #[test]
    fn fixed_map_replaces_overlap() {
        let mut regions = Regions::default();
        regions.map(0x10000, 4 * PAGE, stack(1), 1);
        regions.map(0x10000 + PAGE, PAGE, stack(2), 2);
        let totals = regions.totals();
        assert_eq!(totals[&stack(1)].0.outstanding_bytes, 3 * PAGE);
        assert_eq!(totals[&stack(2)].0.outstanding_bytes, PAGE);
    }

    #[test]
    fn remap_moves_and_grows_keeping_the_stack() {
        let mut regions = Regions::default();
        regions.map(0x10000, 2 * PAGE, stack(1), 1);
        regions.remap(0x10000, 2 * PAGE, 0x80000, 6 * PAGE);
        let totals = regions.totals()[&stack(1)];
        assert_eq!(totals.0.outstanding_bytes, 6 * PAGE);
        assert_eq!(totals.0.outstanding_allocs, 1);
        assert_eq!(totals.0.total_frees, 0);
        assert_eq!(totals.1, Some(1), "keeps its original time");
        regions.remap(0x80000, 6 * PAGE, 0x80000, PAGE);
        assert_eq!(regions.live_bytes(), PAGE);
    }

    #[test]
    fn held_born_by_counts_only_old_regions() {
        let mut regions = Regions::default();
        regions.map(0x10000, PAGE, stack(1), 10);
        regions.map(0x20000, 2 * PAGE, stack(1), 20);
        regions.map(0x30000, PAGE, stack(2), 30);
        let held = regions.held_born_by(20);
        assert_eq!(
            held[&stack(1)],
            Held {
                allocs: 2,
                bytes: 3 * PAGE
            }
        );
        assert!(!held.contains_key(&stack(2)));
    }

    #[test]
    fn remap_of_untracked_memory_is_ignored() {
        let mut regions = Regions::default();
        regions.remap(0x10000, PAGE, 0x20000, 2 * PAGE);
        assert_eq!(regions.live_bytes(), 0);
    }
}
