//! User stacks walked with the modules' .eh_frame unwind tables (loaded by user space into
//! `UNWIND_ROWS`), so callers of code built without frame pointers are kept. Where a module
//! has no table, or the walk was asked for frame pointers only, a frame is stepped with the
//! frame-pointer chain instead.
//!
//! Two things keep a walk cheap on a busy target. The stack's first two pages are copied at
//! once into `STACK_WINDOW` (a copy of 4 KiB costs about what two 8-byte reads do, and a
//! frame needs one or two). And the row found for an address is kept in `ROW_CACHE`, so
//! the frames of the stacks a service allocates from again and again are not searched for
//! each time.
use core::ffi::c_void;

use crate::{maps::STACK_SCRATCH, target::read_user_u64};
use aya_ebpf::{
    helpers::{bpf_loop, generated},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use leak_common::{
    CFA_END, CFA_RBP, CFA_RSP, CFA_UNKNOWN, MAX_DWARF_FRAMES, MAX_STACK_DEPTH, MAX_UNWIND_MAPPINGS,
    MAX_UNWIND_ROWS, StackFrames, UnwindIndex, UnwindMapping, UnwindRow, map_names,
};

#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, 0);
named!(UNWIND_ROWS, map_names::UNWIND_ROWS);

#[map]
static UNWIND_MAPPINGS: Array<UnwindMapping> = Array::with_max_entries(2 * MAX_UNWIND_MAPPINGS, 0);
named!(UNWIND_MAPPINGS, map_names::UNWIND_MAPPINGS);

#[map]
static UNWIND_INDEX: Array<UnwindIndex> = Array::with_max_entries(1, 0);
named!(UNWIND_INDEX, map_names::UNWIND_INDEX);

/// The row found for an address (the lookup address of a frame), under the tables'
/// generation; `found` 0 when its mapping has no row there (frame pointers then).
#[repr(C)]
#[derive(Clone, Copy)]
struct CachedRow {
    row: UnwindRow,
    generation: u32,
    found: u32,
}

/// Addresses whose rows are kept: the distinct frames a target allocates from. Least
/// recently used ones make room.
const ROW_CACHE_ENTRIES: u32 = 16_384;

#[map]
static ROW_CACHE: LruHashMap<u64, CachedRow> = LruHashMap::with_max_entries(ROW_CACHE_ENTRIES, 0);
named!(ROW_CACHE, map_names::ROW_CACHE);

const PAGE_BYTES: u64 = 4096;
/// The stack copied at the start of a walk: the page of the stack pointer and the next.
const WINDOW_PAGES: usize = 2;
const WINDOW_WORDS: usize = WINDOW_PAGES * (PAGE_BYTES / 8) as usize;

/// The part of the stack being walked copied from the target: `len` bytes from `base` (a
/// page address). Words outside it are read from the target one at a time.
#[repr(C)]
pub struct StackWindow {
    base: u64,
    len: u64,
    words: [u64; WINDOW_WORDS],
}

#[map]
static STACK_WINDOW: PerCpuArray<StackWindow> = PerCpuArray::with_max_entries(1, 0);
named!(STACK_WINDOW, map_names::STACK_WINDOW);

/// Halvings a binary search over `len` entries needs at most.
const fn search_steps(len: u32) -> u32 {
    u32::BITS - len.leading_zeros()
}
const MAPPING_STEPS: u32 = search_steps(MAX_UNWIND_MAPPINGS);
const ROW_STEPS: u32 = search_steps(MAX_UNWIND_ROWS);

/// The walk so far; lives on the caller's stack while bpf_loop calls `step`.
#[repr(C)]
struct Walk {
    ip: u64,
    sp: u64,
    bp: u64,
    half: u32,
    /// Mappings with tables (0 before user space has loaded any).
    mappings: u32,
    generation: u32,
    /// 1 when the tables are followed (--unwind dwarf), 0 for frame pointers alone.
    tables: u32,
    /// 1 when the first `ip` is the instruction that was running (a page fault), not a
    /// return address.
    exact_first: u32,
}

/// Fills this CPU's scratch stack with the user stack whose innermost frame is at `ip` with
/// registers `sp` and `bp`: a return probe's, where `ip` is the return address into the
/// caller, or with `exact` the instruction that was running (a page fault). With `tables`
/// the modules' unwind tables are followed, else the frame-pointer chain alone.
#[inline(always)]
pub fn unwind(stack: &mut StackFrames, ip: u64, sp: u64, bp: u64, exact: bool, tables: bool) {
    stack.len = 0;
    let index = if tables {
        UNWIND_INDEX.get(0).copied().unwrap_or_default()
    } else {
        UnwindIndex::default()
    };
    copy_stack(sp);
    let mut walk = Walk {
        ip,
        sp,
        bp,
        half: index.half & 1,
        mappings: index.count.min(MAX_UNWIND_MAPPINGS),
        generation: index.generation,
        tables: tables as u32,
        exact_first: exact as u32,
    };
    // SAFETY: `step` has the callback signature bpf_loop expects and only reads `walk`
    // through the context pointer it is given.
    unsafe {
        bpf_loop(
            MAX_DWARF_FRAMES,
            step as *mut c_void,
            (&mut walk as *mut Walk).cast(),
            0,
        );
    }
}

/// One frame: record `ip`, then find the caller's ip, sp and bp. Returns 1 to stop.
#[inline(never)]
extern "C" fn step(_index: u64, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `unwind` gave it, to its live `Walk`.
    let walk = unsafe { &mut *context.cast::<Walk>() };
    let Some(stack) = STACK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot, which `unwind`'s caller fills for this program run.
    let stack = unsafe { &mut *stack };
    let Some(window) = STACK_WINDOW.get_ptr(0) else {
        return 1;
    };
    // SAFETY: this CPU's window, copied by `unwind` for this walk.
    let window = unsafe { &*window };
    let len = stack.len as usize;
    if len >= MAX_STACK_DEPTH || walk.ip == 0 {
        return 1;
    }
    stack.ips[len] = walk.ip;
    stack.len = len as u64 + 1;
    // A return address points after the call: look up the call itself.
    let lookup = if len == 0 && walk.exact_first != 0 {
        walk.ip
    } else {
        walk.ip - 1
    };
    let row = if walk.mappings == 0 {
        NO_ROW
    } else {
        leaktrace_find_row(lookup, walk.half, walk.mappings, walk.generation)
    };
    let kind = (row & 0xff) as u8;
    let rbp_offset_words = (row >> 8) as u8 as i8;
    let cfa_offset = (row >> 16) as u16 as i16;
    match kind {
        CFA_END => return 1,
        CFA_RSP | CFA_RBP => {
            let base = if kind == CFA_RSP { walk.sp } else { walk.bp };
            let cfa = base.wrapping_add(cfa_offset as i64 as u64);
            let Some(ra) = stack_word(window, cfa.wrapping_sub(8)) else {
                return 1;
            };
            if rbp_offset_words != 0 {
                let at = cfa.wrapping_add((rbp_offset_words as i64 * 8) as u64);
                match stack_word(window, at) {
                    Some(bp) => walk.bp = bp,
                    None => return 1,
                }
            }
            if cfa <= walk.sp {
                // The stack grows down: a caller's frame is always above. Anything else is
                // a broken table or stack.
                return 1;
            }
            walk.sp = cfa;
            walk.ip = ra;
        }
        _ => {
            // No table here: the frame-pointer chain. Following tables, a caller's frame is
            // above; with frame pointers alone, a chain may go on on another stack (Go's
            // system stack back to a goroutine's), as the kernel's own walk allows.
            let bp = walk.bp;
            if bp < PAGE_BYTES || (walk.tables != 0 && bp < walk.sp) {
                return 1;
            }
            let Some(ra) = stack_word(window, bp + 8) else {
                return 1;
            };
            let Some(next_bp) = stack_word(window, bp) else {
                return 1;
            };
            walk.sp = bp + 16;
            walk.bp = next_bp;
            walk.ip = ra;
        }
    }
    0
}

/// Copies the stack from the page of `sp` up into this CPU's window, a page at a time while
/// the pages can be read (the top of a stack ends the window early).
#[inline(always)]
fn copy_stack(sp: u64) {
    let Some(window) = STACK_WINDOW.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used by this program run only.
    let window = unsafe { &mut *window };
    window.base = sp & !(PAGE_BYTES - 1);
    window.len = 0;
    for page in 0..WINDOW_PAGES {
        let words = page * (PAGE_BYTES / 8) as usize;
        // SAFETY: the destination is one page of the window's buffer; bpf_probe_read_user
        // checks the user address.
        let failed = unsafe {
            generated::bpf_probe_read_user(
                window.words[words..].as_mut_ptr().cast(),
                PAGE_BYTES as u32,
                (window.base + page as u64 * PAGE_BYTES) as *const c_void,
            )
        } != 0;
        if failed {
            return;
        }
        window.len += PAGE_BYTES;
    }
}

/// The 8 bytes of the target's stack at `address`: from the window copied at the start of
/// the walk, or read from the target.
#[inline(always)]
fn stack_word(window: &StackWindow, address: u64) -> Option<u64> {
    let offset = address.wrapping_sub(window.base);
    if address & 7 == 0 && offset < window.len {
        Some(window.words[(offset / 8) as usize & (WINDOW_WORDS - 1)])
    } else {
        read_user_u64(address)
    }
}

/// A binary search in progress: the first index in [low, high) whose entry starts above
/// `key` is sought. Lives on the caller's stack while bpf_loop calls a search step.
#[repr(C)]
struct Search {
    low: u32,
    high: u32,
    /// Index of the search's first entry in its map.
    base: u32,
    _pad: u32,
    key: u64,
}

/// What `leaktrace_find_row` returns where no row covers an address (frame pointers then).
const NO_ROW: u64 = CFA_UNKNOWN as u64;

/// The unwind row covering `address` under the tables of `half` (`mappings` of them, of
/// `generation`), packed for the walk: its kind in bits 0-7, the words from the CFA to the
/// saved rbp in bits 8-15, the CFA's offset in bits 16-31; `NO_ROW` where no table covers the
/// address. Kept from an earlier walk under the same tables, or searched for.
///
/// Each binary search runs as a bpf_loop callback: the verifier then checks one step, with
/// the bounds unknown, instead of every path through an unrolled loop (a bounded loop of 22
/// steps, each with a map lookup and two branches, took over half of the verifier's
/// 1,000,000-instruction limit once inlined into a program with several stack walks).
///
/// A global function (exported by bpf-linker: see build.rs), so that the verifier checks the
/// searches once, not once per pass it makes over the walk's callback (12 of them, 40,000
/// instructions, when the searches were inlined there).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn leaktrace_find_row(
    address: u64,
    half: u32,
    mappings: u32,
    generation: u32,
) -> u64 {
    // SAFETY: copied out at once.
    if let Some(cached) = unsafe { ROW_CACHE.get(&address) }.copied()
        && cached.generation == generation
    {
        return if cached.found != 0 {
            packed(&cached.row)
        } else {
            NO_ROW
        };
    }
    let row = search_row(address, half, mappings);
    let cached = CachedRow {
        row: row.unwrap_or_default(),
        generation,
        found: row.is_some() as u32,
    };
    let _ = ROW_CACHE.insert(&address, &cached, 0);
    row.as_ref().map_or(NO_ROW, packed)
}

/// A row as `leaktrace_find_row` returns it.
#[inline(always)]
fn packed(row: &UnwindRow) -> u64 {
    u64::from(row.kind)
        | u64::from(row.rbp_offset_words as u8) << 8
        | u64::from(row.cfa_offset as u16) << 16
}

/// The unwind row covering `address`, searched for in the live tables.
#[inline(always)]
fn search_row(address: u64, half: u32, mappings: u32) -> Option<UnwindRow> {
    let base = (half & 1) * MAX_UNWIND_MAPPINGS;
    // The last mapping starting at or below the address.
    let mut search = Search {
        low: 0,
        high: mappings.min(MAX_UNWIND_MAPPINGS),
        base,
        _pad: 0,
        key: address,
    };
    run_search(
        &mut search,
        MAPPING_STEPS.div_ceil(HALVINGS_PER_STEP),
        mapping_step,
    );
    if search.low == 0 {
        return None;
    }
    let mapping = UNWIND_MAPPINGS.get(base + search.low - 1)?;
    if address >= mapping.end || mapping.rows == 0 {
        return None;
    }
    let relative = address.wrapping_sub(mapping.bias);
    if relative > u32::MAX as u64 {
        return None;
    }
    // The last row at or below pc.
    let mut search = Search {
        low: 0,
        high: mapping.rows,
        base: mapping.first_row,
        _pad: 0,
        key: relative,
    };
    run_search(&mut search, ROW_STEPS.div_ceil(HALVINGS_PER_STEP), row_step);
    if search.low == 0 {
        return None;
    }
    UNWIND_ROWS.get(search.base + search.low - 1).copied()
}

#[inline(always)]
fn run_search(search: &mut Search, steps: u32, step: extern "C" fn(u64, *mut c_void) -> i64) {
    // SAFETY: `step` has the callback signature bpf_loop expects and only reads and writes
    // `search` through the context pointer it is given.
    unsafe {
        bpf_loop(
            steps,
            step as *mut c_void,
            (search as *mut Search).cast(),
            0,
        );
    }
}

/// One step of the search for the mapping holding an address.
#[inline(never)]
extern "C" fn mapping_step(_index: u64, context: *mut c_void) -> i64 {
    search_step(context, |index| UNWIND_MAPPINGS.get(index).map(|m| m.start))
}

/// One step of the search for the row covering a module address.
#[inline(never)]
extern "C" fn row_step(_index: u64, context: *mut c_void) -> i64 {
    search_step(context, |index| {
        UNWIND_ROWS.get(index).map(|row| u64::from(row.pc))
    })
}

/// Halvings of a search range per bpf_loop callback: each callback call costs (about 85 ns a
/// frame with one halving each, on a 37-frame stack), and the verifier checks the few
/// halvings of one callback once whatever the bounds (page_fault with dwarf: 4% of its limit).
const HALVINGS_PER_STEP: u32 = 4;

/// Halves the range of the `Search` that `context` points to up to HALVINGS_PER_STEP
/// times, given where the entry at each map index starts (None: unreadable). Returns 1 to
/// stop.
#[inline(always)]
fn search_step(context: *mut c_void, start_of: impl Fn(u32) -> Option<u64>) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `run_search` gave it, to a live `Search`.
    let search = unsafe { &mut *context.cast::<Search>() };
    for _ in 0..HALVINGS_PER_STEP {
        if search.low >= search.high {
            return 1;
        }
        let middle = (search.low + search.high) / 2;
        let Some(start) = start_of(search.base + middle) else {
            return 1;
        };
        if start <= search.key {
            search.low = middle + 1;
        } else {
            search.high = middle;
        }
    }
    0
}
