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

use rustc_hash::FxHashMap;

use crate::{model::Block, sys::memory::Memory};

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
/// Most blocks read in one batch (a process: one process_vm_readv, at most IOV_MAX ranges).
const BATCH_BLOCKS: usize = 1024;
/// Most bytes read in one batch.
const BATCH_BYTES: usize = 1 << 20;

/// The tracked block a word points into, found without searching all blocks: a heap full
/// of pointers to untracked memory would otherwise pay a binary search among every block
/// for each word. Blocks are indexed by the pages they cover; those of 2 MiB and more by
/// 2 MiB page, the rest by 4 KiB page, so there are few entries per block.
struct BlockIndex {
    /// From the first block's start to past the last block's end.
    span: Range<u64>,
    small: PageIndex,
    large: PageIndex,
}

/// Blocks by page: for each page a block covers, the run of blocks (in address order)
/// that touch it.
struct PageIndex {
    shift: u32,
    /// (start, end, index into the sorted blocks), by start.
    blocks: Vec<(u64, u64, usize)>,
    pages: FxHashMap<u64, (u32, u32)>,
}

impl PageIndex {
    fn new(shift: u32) -> Self {
        PageIndex {
            shift,
            blocks: Vec::new(),
            pages: FxHashMap::default(),
        }
    }

    /// Adds a block; blocks must come in address order.
    fn add(&mut self, start: u64, end: u64, index: usize) {
        let position = self.blocks.len() as u32;
        self.blocks.push((start, end, index));
        // A zero-sized block is still pointed to at its start.
        let last = end.max(start.saturating_add(1)) - 1;
        for page in (start >> self.shift)..=(last >> self.shift) {
            let run = self.pages.entry(page).or_insert((position, position));
            run.1 = position + 1;
        }
    }

    fn find(&self, value: u64) -> Option<(usize, bool)> {
        let &(first, end) = self.pages.get(&(value >> self.shift))?;
        let near = &self.blocks[first as usize..end as usize];
        let after = near.partition_point(|&(start, _, _)| start <= value);
        let &(start, end, index) = near.get(after.checked_sub(1)?)?;
        (value == start || value < end).then_some((index, value == start))
    }
}

impl BlockIndex {
    /// `blocks` sorted by start, not overlapping.
    fn new(blocks: &[Block]) -> Self {
        let end = |block: &Block| block.start.saturating_add(block.size);
        let span = match (
            blocks.first(),
            blocks.iter().map(|b| end(b).max(b.start + 1)).max(),
        ) {
            (Some(first), Some(last)) => first.start..last,
            _ => 0..0,
        };
        let mut small = PageIndex::new(12);
        let mut large = PageIndex::new(21);
        for (index, block) in blocks.iter().enumerate() {
            let pages = if block.size >= 2 << 20 {
                &mut large
            } else {
                &mut small
            };
            pages.add(block.start, end(block), index);
        }
        BlockIndex { span, small, large }
    }

    /// The block `value` points into, and whether it points at its start. A zero-sized
    /// block is pointed to only at its start.
    fn find(&self, value: u64) -> Option<(usize, bool)> {
        // Most words are not heap addresses at all: one comparison rules them out.
        if !self.span.contains(&value) {
            return None;
        }
        self.small.find(value).or_else(|| self.large.find(value))
    }
}

struct Scanner<'a, M: Memory> {
    /// Sorted by start, not overlapping.
    blocks: &'a [Block],
    index: BlockIndex,
    order: Vec<usize>,
    states: Vec<State>,
    memory: &'a mut M,
    limit: u64,
    scanned: u64,
    truncated: bool,
    buffer: Vec<u8>,
}

/// What to do with the blocks a piece of memory points into: (block, whether at its
/// start). Called after each piece read, so what is found never piles up.
type Visit<'v, S> = dyn FnMut(&mut S, &[(usize, bool)]) + 'v;

impl<M: Memory> Scanner<'_, M> {
    /// Collects every block the words of one memory buffer point into.
    fn found_in(&self, bytes: &[u8], found: &mut Vec<(usize, bool)>) {
        for word in bytes.chunks_exact(8) {
            let value = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            if let Some(hit) = self.index.find(value) {
                found.push(hit);
            }
        }
    }

    /// Visits every block an aligned word of `range` points into.
    fn words(&mut self, range: Range<u64>, visit: &mut Visit<'_, Self>) {
        let mut found = Vec::new();
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
            found.clear();
            self.found_in(&buffer[..got], &mut found);
            self.buffer = buffer;
            visit(self, &found);
            if got == 0 {
                // Unreadable: skip to the next page.
                at = (at + 1).next_multiple_of(4096);
            } else {
                at += got as u64;
            }
        }
    }

    /// Marks what the words of `range`, glibc's own data, point into, as `words` would,
    /// except pointers at the chunk header after a block (see `glibc_next_chunk_header`).
    fn glibc_words(&mut self, range: Range<u64>, pending: &mut Vec<usize>) {
        let mut buffer = vec![0u8; CHUNK];
        let mut at = range.start.next_multiple_of(8);
        while at + 8 <= range.end {
            let left =
                usize::try_from(self.limit.saturating_sub(self.scanned)).unwrap_or(usize::MAX);
            let want = ((range.end - at) as usize).min(CHUNK).min(left) & !7;
            if want == 0 {
                self.truncated = true;
                return;
            }
            let got = self.memory.read(at, &mut buffer[..want]) & !7;
            self.scanned += got as u64;
            for word in buffer[..got].chunks_exact(8) {
                let value = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
                if let Some((index, at_start)) = self.index.find(value)
                    && !glibc_next_chunk_header(value, &self.blocks[index])
                {
                    self.mark(index, at_start, pending);
                }
            }
            at = if got == 0 {
                // Unreadable: skip to the next page.
                (at + 1).next_multiple_of(4096)
            } else {
                at + got as u64
            };
        }
    }

    /// Visits every block the words of `blocks` point into, as `words` would, reading many
    /// small blocks at a time.
    fn words_of_blocks(&mut self, blocks: &[usize], visit: &mut Visit<'_, Self>) {
        let mut batch: Vec<Range<u64>> = Vec::new();
        let mut batch_bytes = 0;
        for &index in blocks {
            let range = self.block_range(index);
            let size = (range.end - range.start) as usize;
            // Large or unaligned blocks, and the last bytes before the limit, go one by one.
            let alone = size > CHUNK
                || !range.start.is_multiple_of(8)
                || self.scanned + (batch_bytes + size) as u64 > self.limit;
            if alone {
                self.words(range, visit);
                continue;
            }
            if batch.len() == BATCH_BLOCKS || batch_bytes + size > BATCH_BYTES {
                self.read_batch(&batch, visit);
                batch.clear();
                batch_bytes = 0;
            }
            batch.push(range);
            batch_bytes += size;
        }
        self.read_batch(&batch, visit);
    }

    /// Reads aligned ranges within the limit in one go, and visits what they point into.
    fn read_batch(&mut self, ranges: &[Range<u64>], visit: &mut Visit<'_, Self>) {
        if ranges.is_empty() {
            return;
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        let sizes: Vec<usize> = ranges
            .iter()
            .map(|range| ((range.end - range.start) as usize) & !7)
            .collect();
        buffer.resize(sizes.iter().sum(), 0);
        let mut requests: Vec<(u64, &mut [u8])> = Vec::with_capacity(ranges.len());
        let mut rest = buffer.as_mut_slice();
        for (range, &size) in ranges.iter().zip(&sizes) {
            let (mine, after) = rest.split_at_mut(size);
            requests.push((range.start, mine));
            rest = after;
        }
        let got = self.memory.read_each(&mut requests);
        let mut found = Vec::new();
        for ((_, bytes), read) in requests.iter().zip(got) {
            let read = read.min(bytes.len()) & !7;
            self.scanned += read as u64;
            self.found_in(&bytes[..read], &mut found);
        }
        drop(requests);
        self.buffer = buffer;
        visit(self, &found);
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

    /// Scans marked blocks until none is left to scan. Marks only ever rise, so the order
    /// blocks are scanned in does not change the outcome: they are taken many at a time.
    fn propagate(&mut self, mut pending: Vec<usize>) {
        while !pending.is_empty() {
            let batch = pending.split_off(pending.len().saturating_sub(BATCH_BLOCKS));
            self.words_of_blocks(&batch, &mut |scanner, found| {
                for &(child, at_start) in found {
                    scanner.mark(child, at_start, &mut pending);
                }
            });
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
            while !pending.is_empty() {
                let batch = std::mem::take(&mut pending);
                self.words_of_blocks(&batch, &mut |scanner, found| {
                    for &(child, _) in found {
                        if child != leader && scanner.states[child] == State::Unreached {
                            scanner.states[child] = State::Indirect;
                            pending.push(child);
                        }
                    }
                });
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
    classify_with_glibc(blocks, roots, &[], registers, memory, limit)
}

/// Whether `value`, pointing into `block` but not at its start, is where glibc keeps the
/// header of the chunk after it: glibc's chunks are 16-byte aligned and a chunk's header
/// (its size word, 8 bytes before the data; the chunk address 16 before) lies in the last 8
/// bytes of the previous block's request when that request's size % 16 is 1 to 8. The
/// arena's `top` and its bins point at chunk addresses: a 40-byte block followed by the top
/// chunk is "pointed into" by `main_arena.top`, 32 bytes in.
fn glibc_next_chunk_header(value: u64, block: &Block) -> bool {
    let end = block.start.saturating_add(block.size);
    value.is_multiple_of(16)
        && value != block.start
        && value.saturating_add(8) >= end
        && value < end
}

/// `classify`, with `glibc_data`: root ranges that are glibc's own writable data (its
/// arenas: `main_arena`, bins, `top`). A word there that points at the chunk header after
/// a block (see `glibc_next_chunk_header`) is the allocator's bookkeeping, not the
/// program's pointer, and marks nothing; every other word counts as in any root.
pub fn classify_with_glibc(
    blocks: &[Block],
    roots: &[Range<u64>],
    glibc_data: &[Range<u64>],
    registers: &[u64],
    memory: &mut impl Memory,
    limit: u64,
) -> Classification {
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by_key(|&index| blocks[index].start);
    let sorted: Vec<Block> = order.iter().map(|&index| blocks[index]).collect();
    let mut scanner = Scanner {
        blocks: &sorted,
        index: BlockIndex::new(&sorted),
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
        if let Some((index, at_start)) = scanner.index.find(value) {
            scanner.mark(index, at_start, &mut pending);
        }
    }
    for root in outside_blocks(roots, &sorted) {
        scanner.words(root, &mut |scanner, found| {
            for &(child, at_start) in found {
                scanner.mark(child, at_start, &mut pending);
            }
        });
    }
    for root in outside_blocks(glibc_data, &sorted) {
        scanner.glibc_words(root, &mut pending);
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

/// Bytes below a thread's stack pointer that may still be live (the x86-64 red zone): a
/// thread stopped anywhere may be in a leaf function that keeps data there. A thread stopped
/// at its exit is in the exit system call, and its red zone is dead.
pub const RED_ZONE: u64 = 128;

/// The memory that may hold pointers into the heap: every writable mapping; a thread's
/// stack only from where its live part begins (`live_stacks`: each thread's stack pointer,
/// which finds its stack, and where its live part begins: the stack pointer less the red
/// zone where that may be live, or higher; what lies below is dead frames, as valgrind sees
/// it). With `allocator_owned_excluded` (the whole process was traced, so the memory around
/// tracked blocks is the allocator's own: free lists, freed data), a mapping holding a
/// tracked block is left out but for the `program_regions` in it (what the program or the
/// C runtime mapped itself, address ordered) that hold none: the kernel merges neighbouring
/// anonymous mappings, so a thread's TCB and TLS, or its stack, may share one mapping with
/// a chunk malloc mapped. Otherwise untracked memory there may be blocks allocated before
/// tracing began and counts as a root.
pub fn roots(
    maps: &[crate::sys::procfs::Mapping],
    blocks: &[Block],
    live_stacks: &[(u64, u64)],
    allocator_owned_excluded: bool,
    program_regions: &[Range<u64>],
) -> Vec<Range<u64>> {
    let mut sorted: Vec<Block> = blocks.to_vec();
    sorted.sort_by_key(|block| block.start);
    let holds_block = |range: &Range<u64>| {
        let first = sorted.partition_point(|block| block.start < range.start);
        sorted
            .get(first)
            .is_some_and(|block| block.start < range.end)
    };
    let mut pieces = Vec::new();
    for mapping in maps
        .iter()
        .filter(|mapping| mapping.writable && mapping.readable)
        .filter(|mapping| !matches!(mapping.path.as_str(), "[vvar]" | "[vsyscall]" | "[vdso]"))
    {
        let whole = mapping.start..mapping.end;
        if !allocator_owned_excluded || !holds_block(&whole) {
            pieces.push(whole);
            continue;
        }
        let first = program_regions.partition_point(|region| region.end <= mapping.start);
        pieces.extend(
            program_regions[first..]
                .iter()
                .take_while(|region| region.start < mapping.end)
                .map(|region| region.start.max(mapping.start)..region.end.min(mapping.end))
                .filter(|piece| !holds_block(piece)),
        );
    }
    pieces
        .into_iter()
        .map(|piece| {
            let live_from = live_stacks
                .iter()
                .filter(|&&(sp, _)| piece.contains(&sp))
                .map(|&(_, from)| from.clamp(piece.start, piece.end))
                .min()
                .unwrap_or(piece.start);
            live_from..piece.end
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

    #[test]
    fn glibcs_pointer_to_the_next_chunk_is_not_the_programs() {
        // A lost 40-byte block at 0x10000 (a 48-byte chunk): the top chunk starts 32 bytes
        // in, and main_arena.top points there. A program's global points 32 bytes into
        // another 40-byte block: that one is interior.
        let lost = Block {
            start: 0x10000,
            size: 40,
        };
        let kept = Block {
            start: 0x20000,
            size: 40,
        };
        let mut memory = Words::default();
        let arena: Range<u64> = 0x3000..0x3100;
        memory.0.insert(0x3040, lost.start + 32);
        memory.0.insert(0x1010, kept.start + 32);
        let blocks = [lost, kept];
        let out = classify_with_glibc(
            &blocks,
            &[GLOBALS],
            std::slice::from_ref(&arena),
            &[],
            &mut memory,
            u64::MAX,
        );
        assert_eq!(out.classes, vec![Class::Lost, Class::Interior]);
        // Any other pointer from glibc's data counts: to a block's start, or into its middle.
        memory.0.insert(0x3048, lost.start + 8);
        let out = classify_with_glibc(&blocks, &[GLOBALS], &[arena], &[], &mut memory, u64::MAX);
        assert_eq!(out.classes, vec![Class::Interior, Class::Interior]);
        assert!(!glibc_next_chunk_header(lost.start, &lost));
        assert!(glibc_next_chunk_header(lost.start + 32, &lost));
        assert!(!glibc_next_chunk_header(lost.start + 16, &lost));
        // A 48-byte block fills its chunk: the next header lies past its end.
        let full = Block {
            start: 0x10000,
            size: 48,
        };
        assert!(!glibc_next_chunk_header(full.start + 32, &full));
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
        let maps = crate::sys::procfs::parse_maps(
            "555500000000-555500001000 r-xp 00000000 08:01 1 /bin/prog\n\
             555500001000-555500002000 rw-p 00001000 08:01 1 /bin/prog\n\
             555500100000-555500200000 rw-p 00000000 00:00 0 [heap]\n\
             7f0000000000-7f0000100000 rw-p 00000000 00:00 0\n\
             7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]\n\
             7ffc00100000-7ffc00102000 r--p 00000000 00:00 0 [vvar]\n",
        );
        let blocks = [block(0x5555_0010_0010)];
        let sp = [(0x7ffc_0002_0000, 0x7ffc_0002_0000 - RED_ZONE)];
        // Attach mode: the heap around tracked blocks may hold untracked live blocks.
        assert_eq!(
            roots(&maps, &blocks, &sp, false, &[]),
            vec![
                0x5555_0000_1000..0x5555_0000_2000,
                0x5555_0010_0000..0x5555_0020_0000,
                0x7f00_0000_0000..0x7f00_0010_0000,
                0x7ffc_0002_0000 - RED_ZONE..0x7ffc_0002_1000,
            ]
        );
        // Run mode: the mapping that holds tracked blocks is the allocator's.
        assert_eq!(roots(&maps, &blocks, &sp, true, &[]).len(), 3);
        // ... but for what the program mapped itself in it that holds no block: a TCB the
        // kernel merged with a chunk malloc mapped next to it, a thread's stack (live from
        // its stack pointer), not an arena made inside free.
        let merged = [block(0x7f00_0000_8010)];
        let regions = [
            0x7f00_0000_0000..0x7f00_0000_4000,
            0x7f00_0000_4000..0x7f00_0000_8000,
            0x7f00_0008_0000..0x7f00_0010_0000,
        ];
        let thread = [(0x7f00_0000_6000, 0x7f00_0000_6000 - RED_ZONE)];
        let found = roots(&maps, &merged, &thread, true, &regions);
        assert!(
            found.contains(&(0x7f00_0000_0000..0x7f00_0000_4000)),
            "{found:x?}"
        );
        assert!(
            found.contains(&(0x7f00_0000_6000 - RED_ZONE..0x7f00_0000_8000)),
            "{found:x?}"
        );
        assert!(
            found.contains(&(0x7f00_0008_0000..0x7f00_0010_0000)),
            "{found:x?}"
        );
        let arena = [block(0x7f00_0000_0010), block(0x7f00_0000_8010)];
        let found = roots(&maps, &arena, &thread, true, &regions);
        assert!(
            !found.iter().any(|root| root.start == 0x7f00_0000_0000),
            "{found:x?}"
        );
    }

    /// The page index finds the same block as a search of every block would, for blocks
    /// small and large, sharing pages, crossing pages, and of size zero.
    #[test]
    fn the_page_index_finds_what_a_search_finds() {
        let mut blocks = Vec::new();
        let mut at = 0x10_0000u64;
        // Sizes from 0 to 3 MiB with gaps, deterministic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..400 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let size = match seed % 5 {
                0 => 0,
                1 => seed % 64,
                2 => seed % 9000,
                3 => (2 << 20) + seed % (1 << 20),
                _ => 16,
            };
            blocks.push(Block { start: at, size });
            at += size.max(1) + (seed >> 20) % 5000 * 8;
        }
        let index = BlockIndex::new(&blocks);
        let search = |value: u64| {
            blocks.iter().enumerate().find_map(|(i, block)| {
                let inside = value >= block.start
                    && (value == block.start || value - block.start < block.size);
                inside.then_some((i, value == block.start))
            })
        };
        let mut probes: Vec<u64> = blocks
            .iter()
            .flat_map(|b| {
                [
                    b.start,
                    b.start + b.size / 2,
                    b.start + b.size,
                    b.start.wrapping_sub(8),
                ]
            })
            .collect();
        probes.extend((0..20_000).map(|i| 0x10_0000 + i * 0x1_1117));
        for value in probes {
            assert_eq!(index.find(value), search(value), "{value:#x}");
        }
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
