//! Lost or still reachable: which tracked heap blocks the process can still reach, found the
//! way valgrind's memcheck and LeakSanitizer find them, on memory read from the live process.
//!
//! Every aligned pointer-sized word of the roots (registers, and writable memory outside the
//! tracked blocks: data, bss, stacks, TLS, and in attach mode untracked heap) that points
//! into a tracked block marks it: *reachable* for a pointer to its start, *interior* for one
//! into its middle only. Marked blocks are scanned in turn. Blocks nothing reaches are
//! grouped, in address order, into cliques: a block still unmarked leads one and is *lost*;
//! what it reaches is *indirectly lost* (valgrind's "definitely" and "indirectly" lost).
//! Pure logic over a [`Memory`]; reading a stopped process is the caller's job.
use std::ops::Range;

/// What a block is, as valgrind names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// No pointer to it anywhere ("definitely lost").
    Lost,
    /// Reached only from lost blocks ("indirectly lost").
    IndirectlyLost,
    /// Reached only through pointers into its middle ("possibly lost").
    Interior,
    /// Reached through a pointer to its start ("still reachable").
    Reachable,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Lost,
        Class::IndirectlyLost,
        Class::Interior,
        Class::Reachable,
    ];

    /// The JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Lost => "lost",
            Class::IndirectlyLost => "indirectly_lost",
            Class::Interior => "interior",
            Class::Reachable => "reachable",
        }
    }
}

/// A tracked block: a live allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub start: u64,
    pub size: u64,
}

/// Memory of the process (or of a test): fills `buffer` from `address`, returns how many
/// bytes it could read (0 for an unreadable address).
pub trait Memory {
    fn read(&mut self, address: u64, buffer: &mut [u8]) -> usize;
}

/// The outcome of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    /// One class per block, in the order given.
    pub classes: Vec<Class>,
    /// Bytes read (roots and blocks).
    pub scanned_bytes: u64,
    /// The byte limit was reached: blocks not reached by then read as lost, and may not be.
    pub truncated: bool,
}

/// Mark states during the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unreached,
    Interior,
    Reachable,
    Indirect,
}

/// Bytes read at a time.
const CHUNK: usize = 64 << 10;

struct Scanner<'a, M: Memory> {
    /// Sorted by start, not overlapping.
    blocks: &'a [Block],
    /// From the first block's start to past the last block's end.
    span: Range<u64>,
    order: Vec<usize>,
    states: Vec<State>,
    memory: &'a mut M,
    limit: u64,
    scanned: u64,
    truncated: bool,
    buffer: Vec<u8>,
}

impl<M: Memory> Scanner<'_, M> {
    /// The block (index into the sorted blocks) `value` points into, and whether it points
    /// at its start. A zero-sized block is pointed to only at its start.
    fn target(&self, value: u64) -> Option<(usize, bool)> {
        // Most words are not heap addresses at all: one comparison rules them out.
        if !self.span.contains(&value) {
            return None;
        }
        let after = self.blocks.partition_point(|block| block.start <= value);
        let index = after.checked_sub(1)?;
        let block = self.blocks[index];
        let inside = value == block.start || value - block.start < block.size;
        inside.then_some((index, value == block.start))
    }

    /// Calls `found` with every block an aligned word of `range` points into.
    fn words(&mut self, range: Range<u64>, found: &mut dyn FnMut(&mut Self, usize, bool)) {
        let mut at = range.start.next_multiple_of(8);
        while at + 8 <= range.end {
            if self.scanned >= self.limit {
                self.truncated = true;
                return;
            }
            let left = usize::try_from(self.limit - self.scanned).unwrap_or(usize::MAX);
            let want = ((range.end - at) as usize).min(CHUNK).min(left) & !7;
            if want == 0 {
                self.truncated = true;
                return;
            }
            let mut buffer = std::mem::take(&mut self.buffer);
            buffer.resize(want, 0);
            let got = self.memory.read(at, &mut buffer[..want]) & !7;
            self.scanned += got as u64;
            for word in buffer[..got].chunks_exact(8) {
                let value = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
                if let Some((index, at_start)) = self.target(value) {
                    found(self, index, at_start);
                }
            }
            self.buffer = buffer;
            if got == 0 {
                // Unreadable: skip to the next page.
                at = (at + 1).next_multiple_of(4096);
            } else {
                at += got as u64;
            }
        }
    }

    /// Marks from a root or a marked block: a start pointer makes a block reachable, an
    /// interior one makes an unreached block interior. Changed blocks are scanned later.
    fn mark(&mut self, index: usize, at_start: bool, pending: &mut Vec<usize>) {
        let next = match (self.states[index], at_start) {
            (State::Unreached, true) | (State::Interior, true) => State::Reachable,
            (State::Unreached, false) => State::Interior,
            _ => return,
        };
        self.states[index] = next;
        pending.push(index);
    }

    fn block_range(&self, index: usize) -> Range<u64> {
        let block = self.blocks[index];
        block.start..block.start.saturating_add(block.size)
    }

    /// Scans marked blocks until none is left to scan.
    fn propagate(&mut self, mut pending: Vec<usize>) {
        while let Some(index) = pending.pop() {
            let range = self.block_range(index);
            let mut found = Vec::new();
            self.words(range, &mut |_, child, at_start| {
                found.push((child, at_start))
            });
            for (child, at_start) in found {
                self.mark(child, at_start, &mut pending);
            }
        }
    }

    /// Unreached blocks, in address order, lead cliques: what each reaches that is still
    /// unreached is indirectly lost (a leader reached from a later one joins its clique).
    fn cliques(&mut self) {
        for leader in 0..self.blocks.len() {
            if self.states[leader] != State::Unreached {
                continue;
            }
            let mut pending = vec![leader];
            while let Some(index) = pending.pop() {
                let range = self.block_range(index);
                let mut found = Vec::new();
                self.words(range, &mut |_, child, _| found.push(child));
                for child in found {
                    if child != leader && self.states[child] == State::Unreached {
                        self.states[child] = State::Indirect;
                        pending.push(child);
                    }
                }
            }
        }
    }
}

/// Classifies `blocks` (any order, not overlapping) from `roots` (memory ranges; the parts
/// inside tracked blocks are left out) and `registers`, reading at most `limit` bytes.
pub fn classify(
    blocks: &[Block],
    roots: &[Range<u64>],
    registers: &[u64],
    memory: &mut impl Memory,
    limit: u64,
) -> Classification {
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by_key(|&index| blocks[index].start);
    let sorted: Vec<Block> = order.iter().map(|&index| blocks[index]).collect();
    let span = match (
        sorted.first(),
        sorted
            .iter()
            .map(|b| b.start.saturating_add(b.size.max(1)))
            .max(),
    ) {
        (Some(first), Some(end)) => first.start..end,
        _ => 0..0,
    };
    let mut scanner = Scanner {
        blocks: &sorted,
        span,
        order,
        states: vec![State::Unreached; sorted.len()],
        memory,
        limit,
        scanned: 0,
        truncated: false,
        buffer: Vec::new(),
    };
    let mut pending = Vec::new();
    for &value in registers {
        if let Some((index, at_start)) = scanner.target(value) {
            scanner.mark(index, at_start, &mut pending);
        }
    }
    for root in outside_blocks(roots, &sorted) {
        let mut found = Vec::new();
        scanner.words(root, &mut |_, child, at_start| {
            found.push((child, at_start))
        });
        for (child, at_start) in found {
            scanner.mark(child, at_start, &mut pending);
        }
    }
    scanner.propagate(pending);
    scanner.cliques();
    let mut classes = vec![Class::Lost; blocks.len()];
    for (sorted_index, state) in scanner.states.iter().enumerate() {
        classes[scanner.order[sorted_index]] = match state {
            State::Unreached => Class::Lost,
            State::Indirect => Class::IndirectlyLost,
            State::Interior => Class::Interior,
            State::Reachable => Class::Reachable,
        };
    }
    Classification {
        classes,
        scanned_bytes: scanner.scanned,
        truncated: scanner.truncated,
    }
}

/// Bytes below a thread's stack pointer that may still be live (the x86-64 red zone).
const RED_ZONE: u64 = 128;

/// The memory that may hold pointers into the heap: every writable mapping; a thread's
/// stack only from its stack pointer up (what lies below is dead frames, as valgrind sees
/// it). With `allocator_owned_excluded` (the whole process was traced, so the memory around
/// tracked blocks is the allocator's own: free lists, freed data), mappings holding a
/// tracked block are left out; otherwise untracked memory there may be blocks allocated
/// before tracing began and counts as a root.
pub fn roots(
    maps: &[crate::procfs::Mapping],
    blocks: &[Block],
    stack_pointers: &[u64],
    allocator_owned_excluded: bool,
) -> Vec<Range<u64>> {
    let mut sorted: Vec<Block> = blocks.to_vec();
    sorted.sort_by_key(|block| block.start);
    maps.iter()
        .filter(|mapping| mapping.writable && mapping.readable)
        .filter(|mapping| !matches!(mapping.path.as_str(), "[vvar]" | "[vsyscall]" | "[vdso]"))
        .filter(|mapping| {
            if !allocator_owned_excluded {
                return true;
            }
            let first = sorted.partition_point(|block| block.start < mapping.start);
            sorted
                .get(first)
                .is_none_or(|block| block.start >= mapping.end)
        })
        .map(|mapping| {
            let live_from = stack_pointers
                .iter()
                .filter(|&&sp| sp >= mapping.start && sp < mapping.end)
                .map(|&sp| sp.saturating_sub(RED_ZONE).max(mapping.start))
                .min()
                .unwrap_or(mapping.start);
            live_from..mapping.end
        })
        .collect()
}

/// The parts of `roots` outside every block (blocks sorted by start).
fn outside_blocks(roots: &[Range<u64>], blocks: &[Block]) -> Vec<Range<u64>> {
    let mut parts = Vec::new();
    for root in roots {
        let mut at = root.start;
        let first =
            blocks.partition_point(|block| block.start.saturating_add(block.size) <= root.start);
        for block in &blocks[first..] {
            if block.start >= root.end {
                break;
            }
            if block.start > at {
                parts.push(at..block.start);
            }
            at = at.max(block.start.saturating_add(block.size));
        }
        if at < root.end {
            parts.push(at..root.end);
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Memory made of words at addresses; everything else reads as zero.
    #[derive(Default)]
    struct Words(BTreeMap<u64, u64>);

    impl Memory for Words {
        fn read(&mut self, address: u64, buffer: &mut [u8]) -> usize {
            buffer.fill(0);
            for (&at, &value) in self.0.range(address..address + buffer.len() as u64) {
                let offset = (at - address) as usize;
                if offset + 8 <= buffer.len() {
                    buffer[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
                }
            }
            buffer.len()
        }
    }

    const GLOBALS: Range<u64> = 0x1000..0x2000;

    fn block(start: u64) -> Block {
        Block { start, size: 64 }
    }

    fn classes(blocks: &[Block], words: &[(u64, u64)], registers: &[u64]) -> Vec<Class> {
        let mut memory = Words(words.iter().copied().collect());
        classify(blocks, &[GLOBALS], registers, &mut memory, u64::MAX).classes
    }

    #[test]
    fn a_global_or_a_register_keeps_a_block_reachable() {
        let blocks = [block(0x10_000), block(0x20_000), block(0x30_000)];
        let found = classes(&blocks, &[(0x1008, 0x10_000)], &[0x20_000]);
        assert_eq!(found, vec![Class::Reachable, Class::Reachable, Class::Lost]);
    }

    #[test]
    fn a_block_only_a_lost_block_points_to_is_indirectly_lost() {
        let blocks = [block(0x10_000), block(0x20_000)];
        let found = classes(&blocks, &[(0x10_008, 0x20_000)], &[]);
        assert_eq!(found, vec![Class::Lost, Class::IndirectlyLost]);
    }

    #[test]
    fn a_lost_cycle_is_one_lost_and_the_rest_indirect() {
        let blocks = [block(0x30_000), block(0x10_000), block(0x20_000)];
        let words = [
            (0x10_000, 0x20_000),
            (0x20_000, 0x30_000),
            (0x30_000, 0x10_000),
        ];
        let found = classes(&blocks, &words, &[]);
        // The lowest address leads the clique, as in valgrind.
        assert_eq!(
            found,
            vec![Class::IndirectlyLost, Class::Lost, Class::IndirectlyLost]
        );
    }

    #[test]
    fn interior_pointers_make_a_block_interior_and_a_start_pointer_wins() {
        let blocks = [block(0x10_000), block(0x20_000), block(0x30_000)];
        let words = [
            (0x1000, 0x10_010),
            (0x1008, 0x20_020),
            (0x1010, 0x20_000),
            // The interior block points at the start of another: valgrind calls that one
            // reachable.
            (0x10_000, 0x30_000),
        ];
        let found = classes(&blocks, &words, &[]);
        assert_eq!(
            found,
            vec![Class::Interior, Class::Reachable, Class::Reachable]
        );
    }

    #[test]
    fn reachable_chains_and_unaligned_or_past_the_end_words() {
        let blocks = [block(0x10_000), block(0x20_000), block(0x30_000)];
        let words = [
            (0x1000, 0x10_000),
            (0x10_038, 0x20_000),
            // One past the end of a block is not inside it.
            (0x1010, 0x30_040),
        ];
        let found = classes(&blocks, &words, &[]);
        assert_eq!(found, vec![Class::Reachable, Class::Reachable, Class::Lost]);
        // An unaligned word is not a pointer.
        let mut memory = Words::default();
        let mut bytes = [0u8; 16];
        bytes[3..11].copy_from_slice(&0x10_000u64.to_le_bytes());
        memory.0.insert(
            0x1000,
            u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        );
        memory.0.insert(
            0x1008,
            u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
        );
        let found = classify(&blocks[..1], &[GLOBALS], &[], &mut memory, u64::MAX);
        assert_eq!(found.classes, vec![Class::Lost]);
    }

    #[test]
    fn roots_inside_tracked_blocks_are_not_roots() {
        // A lost block that points to itself and sits inside a root range (the heap, in
        // attach mode) stays lost.
        let blocks = [block(0x1100)];
        let found = classes(&blocks, &[(0x1100, 0x1100)], &[]);
        assert_eq!(found, vec![Class::Lost]);
        let heap = 0x1000..0x2000;
        assert_eq!(
            outside_blocks(std::slice::from_ref(&heap), &[block(0x1100), block(0x1800)]),
            vec![0x1000..0x1100, 0x1140..0x1800, 0x1840..0x2000]
        );
    }

    #[test]
    fn roots_are_writable_memory_with_live_stacks_only() {
        let maps = crate::procfs::parse_maps(
            "555500000000-555500001000 r-xp 00000000 08:01 1 /bin/prog\n\
             555500001000-555500002000 rw-p 00001000 08:01 1 /bin/prog\n\
             555500100000-555500200000 rw-p 00000000 00:00 0 [heap]\n\
             7f0000000000-7f0000100000 rw-p 00000000 00:00 0\n\
             7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]\n\
             7ffc00100000-7ffc00102000 r--p 00000000 00:00 0 [vvar]\n",
        );
        let blocks = [block(0x5555_0010_0010)];
        let sp = [0x7ffc_0002_0000];
        // Attach mode: the heap around tracked blocks may hold untracked live blocks.
        assert_eq!(
            roots(&maps, &blocks, &sp, false),
            vec![
                0x5555_0000_1000..0x5555_0000_2000,
                0x5555_0010_0000..0x5555_0020_0000,
                0x7f00_0000_0000..0x7f00_0010_0000,
                0x7ffc_0002_0000 - RED_ZONE..0x7ffc_0002_1000,
            ]
        );
        // Run mode: the mapping that holds tracked blocks is the allocator's.
        assert_eq!(roots(&maps, &blocks, &sp, true).len(), 3);
    }

    #[test]
    fn the_byte_limit_stops_the_scan_and_says_so() {
        let blocks = [block(0x10_000)];
        let mut memory = Words([(0x1ff8, 0x10_000)].into_iter().collect());
        let cut = classify(&blocks, &[GLOBALS], &[], &mut memory, 1024);
        assert!(cut.truncated);
        assert_eq!(cut.scanned_bytes, 1024);
        assert_eq!(cut.classes, vec![Class::Lost]);
        let whole = classify(&blocks, &[GLOBALS], &[], &mut memory, u64::MAX);
        assert!(!whole.truncated);
        assert_eq!(whole.classes, vec![Class::Reachable]);
    }
}
