//! Everything the kernel programs (leak-ebpf) and user space (leak-user) must agree on:
//! the `#[repr(C)]` records stored in maps, map names, map sizes and counter ids.
//!
//! Data path: a uprobe on an allocator entry stores a [`PendingCall`] for the thread; the
//! return probe turns it into an [`AllocRecord`] keyed by address and adds to the
//! [`StackTotals`] of the caller's stack; the free probe removes the record and subtracts.
//! Anonymous mmap/munmap/mremap syscalls are sent to user space as [`MmapEvent`]s, which
//! tracks them by address range (a partial munmap must shrink or split a region, which a
//! hash map in the kernel cannot express).
//!
//! The language runtimes and request scopes have modules of their own (`golang`, `python`,
//! `scope`), re-exported here: every item is `leak_common::NAME`.
#![no_std]

mod golang;
mod python;
mod scope;

pub use golang::*;
pub use python::*;
pub use scope::*;

/// Map names, shared so user space never spells them differently from the kernel side.
pub mod map_names {
    pub const ALLOCS: &str = "ALLOCS";
    pub const STACK_TOTALS: &str = "STACK_TOTALS";
    pub const STACKS: &str = "STACKS";
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    pub const UNWIND_MAPPINGS: &str = "UNWIND_MAPPINGS";
    pub const UNWIND_INDEX: &str = "UNWIND_INDEX";
    pub const PENDING_CALLS: &str = "PENDING_CALLS";
    pub const PENDING_SYSCALLS: &str = "PENDING_SYSCALLS";
    pub const MMAP_EVENTS: &str = "MMAP_EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    /// One u32: 1 once every entry probe has been in for a while (see alloc_return).
    pub const ENTRIES_ARMED: &str = "ENTRIES_ARMED";
    pub const FAULT_SAMPLES: &str = "FAULT_SAMPLES";
    pub const SCOPE_STACKS: &str = "SCOPE_STACKS";
    pub const SCOPE_TAGS: &str = "SCOPE_TAGS";
    pub const SCOPE_TAG_OWNERS: &str = "SCOPE_TAG_OWNERS";
    pub const SCOPE_TOTALS: &str = "SCOPE_TOTALS";
    pub const SCOPE_CALLS: &str = "SCOPE_CALLS";
    /// Per CPU, scope calls begun on it (call ids); the kernel's alone.
    pub const SCOPE_NEXT: &str = "SCOPE_NEXT";
    pub const SCOPE_EVENTS: &str = "SCOPE_EVENTS";
    pub const GOROUTINE_SITES: &str = "GOROUTINE_SITES";
    pub const PY_RUNTIME: &str = "PY_RUNTIME";
    pub const THREAD_ENDS: &str = "THREAD_ENDS";
    /// Per CPU, the stack being recorded (too big for the BPF stack).
    pub const STACK_SCRATCH: &str = "STACK_SCRATCH";
    /// Per CPU, the top of the target's stack copied for an unwind (--unwind dwarf).
    pub const STACK_WINDOW: &str = "STACK_WINDOW";
    /// The unwind row found for each return address, cached across walks.
    pub const ROW_CACHE: &str = "ROW_CACHE";

    /// Every map user space reads, writes or resizes at load time.
    pub const ALL: &[&str] = &[
        ALLOCS,
        STACK_TOTALS,
        STACKS,
        UNWIND_ROWS,
        UNWIND_MAPPINGS,
        UNWIND_INDEX,
        PENDING_CALLS,
        PENDING_SYSCALLS,
        MMAP_EVENTS,
        COUNTERS,
        ENTRIES_ARMED,
        FAULT_SAMPLES,
        SCOPE_STACKS,
        SCOPE_TAGS,
        SCOPE_TAG_OWNERS,
        SCOPE_TOTALS,
        SCOPE_CALLS,
        SCOPE_EVENTS,
        GOROUTINE_SITES,
        PY_RUNTIME,
        THREAD_ENDS,
    ];

    /// The maps only the kernel programs use (scratch space, caches, id counters). With
    /// [`ALL`], every map of the eBPF object: each map is in exactly one of the two.
    pub const KERNEL_ONLY: &[&str] = &[STACK_SCRATCH, STACK_WINDOW, ROW_CACHE, SCOPE_NEXT];
}

/// Every global of the eBPF object; user space sets each at load time.
pub const ALL_GLOBALS: &[&str] = &[
    TARGET_TGID_GLOBAL,
    MIN_SIZE_GLOBAL,
    MAX_SIZE_GLOBAL,
    SAMPLE_RATE_GLOBAL,
    UNWIND_MODE_GLOBAL,
    SCOPE_COUNT_GLOBAL,
    GO_LAYOUT_GLOBAL,
    PY_LAYOUT_GLOBAL,
];

/// Every program of the eBPF object.
pub const ALL_PROGRAMS: &[&str] = &[
    ENTRY_PROGRAM,
    ALLOC_RETURN_PROGRAM,
    SESSION_PROGRAM,
    SYSCALL_PROGRAMS[0].0,
    SYSCALL_PROGRAMS[1].0,
    SYSCALL_PROGRAMS[2].0,
    SYSCALL_PROGRAMS[3].0,
    SYSCALL_PROGRAMS[4].0,
    SYSCALL_PROGRAMS[5].0,
    SYSCALL_PROGRAMS[6].0,
    SYSCALL_PROGRAMS[7].0,
    PAGE_FAULT_PROGRAM,
    SCOPE_ENTRY_PROGRAM,
    SCOPE_RETURN_PROGRAM,
    GO_NEWPROC_PROGRAM,
    GO_GOEXIT_PROGRAM,
    GO_SPAN_FULL_PROGRAM,
    GO_LARGE_SPAN_PROGRAM,
    GO_SPAN_FREE_PROGRAM,
];

/// Name of the global holding the traced process id (tgid); set by user space at load time.
pub const TARGET_TGID_GLOBAL: &str = "TARGET_TGID";

/// Names of the globals holding the smallest and largest allocation size to track (bytes,
/// inclusive); set by user space at load time.
pub const MIN_SIZE_GLOBAL: &str = "MIN_ALLOC_SIZE";
pub const MAX_SIZE_GLOBAL: &str = "MAX_ALLOC_SIZE";

/// Name of the global holding the sampling rate N (u32): each allocation is tracked with
/// probability 1/N, and user space multiplies what it reads by N. 1 tracks every one.
pub const SAMPLE_RATE_GLOBAL: &str = "SAMPLE_RATE";

/// Program names of `leaktrace watch`'s always-on gear: sampled page faults with stacks.
pub const PAGE_FAULT_PROGRAM: &str = "page_fault";

/// Default capacity of the live-allocation map; user space may resize it at load time.
pub const DEFAULT_MAX_ALLOCS: u32 = 1 << 20;
/// Capacity of the stack-trace map and of the per-stack totals (which hold one more: the
/// unknown stack's).
pub const MAX_STACKS: u32 = 1 << 15;
/// Threads that can be inside an allocator call at the same time.
pub const MAX_PENDING_CALLS: u32 = 1 << 15;
/// Bytes of ring buffer for mmap-family events.
pub const MMAP_EVENTS_BYTES: u32 = 1 << 22;
/// Frames kept per stack (the kernel's PERF_MAX_STACK_DEPTH).
pub const MAX_STACK_DEPTH: usize = 127;

/// Name of the global selecting how user stacks are walked (u32): [`UNWIND_FRAME_POINTERS`]
/// or [`UNWIND_DWARF`].
pub const UNWIND_MODE_GLOBAL: &str = "UNWIND_MODE";
/// Follow the frame-pointer chain (bpf_get_stack): cheap, but callers of code built without
/// frame pointers are lost.
pub const UNWIND_FRAME_POINTERS: u32 = 0;
/// Follow the modules' .eh_frame unwind tables, loaded into `UNWIND_ROWS` by user space,
/// with the frame-pointer chain where a module has none.
pub const UNWIND_DWARF: u32 = 1;

/// Rows of unwind tables the kernel can hold (8 bytes each), all modules together.
pub const MAX_UNWIND_ROWS: u32 = 1 << 21;
/// Modules with unwind tables (executable mappings) per process.
pub const MAX_UNWIND_MAPPINGS: u32 = 256;
/// Frames the DWARF unwinder walks at most: as many as a stack holds.
pub const MAX_DWARF_FRAMES: u32 = MAX_STACK_DEPTH as u32;

/// How to find the caller's frame from `pc` on, until the next row: the canonical frame
/// address (CFA, the stack pointer before the call) is `rsp` or `rbp` plus `cfa_offset`;
/// the return address is at CFA - 8; the caller's rbp was saved at CFA + 8 ×
/// `rbp_offset_words`, or is unchanged when that is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    /// Module virtual address (the ELF's own addresses, below 4 GiB).
    pub pc: u32,
    pub cfa_offset: i16,
    /// One of the `CFA_*` kinds.
    pub kind: u8,
    pub rbp_offset_words: i8,
}

/// CFA = rsp + offset.
pub const CFA_RSP: u8 = 0;
/// CFA = rbp + offset.
pub const CFA_RBP: u8 = 1;
/// No rule here (an expression, or a gap between functions): fall back to frame pointers.
pub const CFA_UNKNOWN: u8 = 2;
/// The outermost frame (its return address is undefined, as in `_start`): stop.
pub const CFA_END: u8 = 3;

/// An executable mapping whose unwind rows are `rows` rows from `first_row` of `UNWIND_ROWS`.
/// An address `ip` in [start, end) is module address `ip - bias`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub first_row: u32,
    pub rows: u32,
}

/// Which half of `UNWIND_MAPPINGS` is live and how many mappings it holds (sorted by
/// start): user space fills the other half, then switches. `generation` counts the
/// switches (from 1): rows the kernel cached for an address under another generation are
/// looked up again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindIndex {
    pub half: u32,
    pub count: u32,
    pub generation: u32,
    pub _pad: u32,
}

/// Slots tried after a stack's hash before giving up on it as a collision (open addressing).
pub const STACK_ID_PROBES: u32 = 4;

/// One user stack as recorded by the kernel: `len` return addresses, innermost first (the
/// rest of `ips` is unspecified). Keyed in `STACKS` by an id folded from `hash`, a 64-bit
/// hash of the addresses; the kernel compares the full hash before reusing an id, so stacks
/// share one only if their 64-bit hashes collide (about 10⁻¹¹ for 32k stacks).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackFrames {
    pub len: u64,
    pub hash: u64,
    pub ips: [u64; MAX_STACK_DEPTH],
}

impl StackFrames {
    /// The recorded addresses.
    pub fn frames(&self) -> &[u64] {
        let len = (self.len as usize).min(MAX_STACK_DEPTH);
        &self.ips[..len]
    }
}

/// Stack id used when the kernel could not record the stack (collision or error): the bytes
/// are still counted, under a stack shown as "unknown".
pub const UNKNOWN_STACK_ID: u32 = u32::MAX;

/// How far below the outer call's stack pointer a nested allocator call may be (bytes). An
/// entry further away than this belongs to a thread that died inside an allocator call and
/// whose id was reused; it is replaced, not treated as an outer call.
pub const NESTED_CALL_MAX_DEPTH_BYTES: u64 = 1 << 16;

/// An allocator call made from inside another happens within this long of the outer entry;
/// an older pending entry is stale (e.g. the call began before the return probe was placed).
pub const NESTED_CALL_MAX_AGE_NS: u64 = 100_000_000;

/// An mmap or brk made within this long of an allocator call's entry, on its thread, while
/// the call has not returned, is the allocator's own. Longer than for nested calls: a thread
/// of a loaded machine can wait this long for a CPU between the entry and the syscall, and
/// growing the heap should not read as the program's mapping then.
pub const INSIDE_ALLOCATOR_MAX_AGE_NS: u64 = 1_000_000_000;

/// What an allocator function does, as far as tracking goes. The return probe acts on it:
/// realloc-like calls release the old block, posix_memalign-like calls return the block
/// through a pointer, the rest return it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocFn {
    Malloc = 0,
    Calloc = 1,
    Realloc = 2,
    Reallocarray = 3,
    PosixMemalign = 4,
    Free = 5,
}

impl AllocFn {
    pub const ALL: [AllocFn; 6] = [
        AllocFn::Malloc,
        AllocFn::Calloc,
        AllocFn::Realloc,
        AllocFn::Reallocarray,
        AllocFn::PosixMemalign,
        AllocFn::Free,
    ];

    /// Whether the function has a return probe (everything but free).
    pub const fn has_return_probe(self) -> bool {
        !matches!(self, AllocFn::Free)
    }

    pub const fn from_u32(value: u32) -> Option<AllocFn> {
        if (value as usize) < Self::ALL.len() {
            Some(Self::ALL[value as usize])
        } else {
            None
        }
    }
}

/// "No such argument" in a [`CallShape`].
pub const NO_ARG: u8 = 0xF;

/// Registers an entry program can read an argument from, numbered by slot: a [`CallShape`]'s
/// and a [`ScopeShape`]'s argument fields are slots. The six argument registers come first in
/// call order (rdi, rsi, rdx, rcx, r8, r9), so at a function's entry argument i is in slot i;
/// then rax, rbx, rbp, r10, r11, r12, r13, r14, r15, where a probe placed past the entry may
/// find a copy the function made (leak-user's probe_site).
pub const ARGUMENT_SLOTS: usize = 15;
/// Slots 0 to ARGUMENT_REGISTERS - 1 are the argument registers: a function's arguments at
/// its entry (what a `--scope` label may be read from).
pub const ARGUMENT_REGISTERS: u8 = 6;
/// The slot of rax: a call's result, just after it returns.
pub const RAX_SLOT: u8 = 6;

/// One probed allocator function: what it does and where its arguments are (argument slots,
/// see [`ARGUMENT_SLOTS`]: at the entry, argument i of the C calling convention is slot i), plus an id telling it apart from other functions of the same
/// kind. Given to the entry program as the uprobe's cookie, so one program serves every
/// allocator API (glibc, jemalloc's mallocx/sdallocx, mimalloc's mi_heap_*, a pool API
/// named with --alloc-fn…).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallShape {
    pub func: AllocFn,
    /// Requested bytes (multiplied by `count` when there is one).
    pub size: u8,
    pub count: u8,
    /// The block freed, or resized by a realloc-like call.
    pub ptr: u8,
    /// Where a posix_memalign-like call writes the new block's address.
    pub out: u8,
    /// Tells two functions of the same kind apart (a tail call from one into the other is
    /// one call); 0 to 0xFFFF.
    pub id: u16,
}

impl CallShape {
    pub const fn malloc(size: u8) -> CallShape {
        CallShape::new(AllocFn::Malloc, size, NO_ARG, NO_ARG, NO_ARG)
    }
    pub const fn calloc(count: u8, size: u8) -> CallShape {
        CallShape::new(AllocFn::Calloc, size, count, NO_ARG, NO_ARG)
    }
    pub const fn realloc(ptr: u8, size: u8) -> CallShape {
        CallShape::new(AllocFn::Realloc, size, NO_ARG, ptr, NO_ARG)
    }
    pub const fn reallocarray(ptr: u8, count: u8, size: u8) -> CallShape {
        CallShape::new(AllocFn::Reallocarray, size, count, ptr, NO_ARG)
    }
    pub const fn posix_memalign(out: u8, size: u8) -> CallShape {
        CallShape::new(AllocFn::PosixMemalign, size, NO_ARG, NO_ARG, out)
    }
    pub const fn free(ptr: u8) -> CallShape {
        CallShape::new(AllocFn::Free, NO_ARG, NO_ARG, ptr, NO_ARG)
    }

    const fn new(func: AllocFn, size: u8, count: u8, ptr: u8, out: u8) -> CallShape {
        CallShape {
            func,
            size,
            count,
            ptr,
            out,
            id: 0,
        }
    }

    pub const fn with_id(self, id: u16) -> CallShape {
        CallShape { id, ..self }
    }

    /// Bits 0-7 the kind, 8-11 size, 12-15 count, 16-19 ptr, 20-23 out, 32-47 the id.
    pub const fn cookie(self) -> u64 {
        (self.func as u64)
            | ((self.size as u64 & 0xF) << 8)
            | ((self.count as u64 & 0xF) << 12)
            | ((self.ptr as u64 & 0xF) << 16)
            | ((self.out as u64 & 0xF) << 20)
            | ((self.id as u64) << 32)
    }

    pub const fn from_cookie(cookie: u64) -> Option<CallShape> {
        let Some(func) = AllocFn::from_u32((cookie & 0xFF) as u32) else {
            return None;
        };
        Some(CallShape {
            func,
            size: ((cookie >> 8) & 0xF) as u8,
            count: ((cookie >> 12) & 0xF) as u8,
            ptr: ((cookie >> 16) & 0xF) as u8,
            out: ((cookie >> 20) & 0xF) as u8,
            id: ((cookie >> 32) & 0xFFFF) as u16,
        })
    }

    /// What a pending call records as its function: kind and id, so that two probed
    /// functions of the same kind are told apart.
    pub const fn tag(self) -> u32 {
        (self.func as u32) | ((self.id as u32) << 8)
    }
}

/// The kind part of a [`CallShape::tag`].
pub const fn tag_kind(tag: u32) -> Option<AllocFn> {
    AllocFn::from_u32(tag & 0xFF)
}

/// The entry program shared by every probed function (its cookie says how to read it).
pub const ENTRY_PROGRAM: &str = "alloc_enter";

/// Name of the return program shared by every allocating function.
pub const ALLOC_RETURN_PROGRAM: &str = "alloc_return";

/// Entry and return of every allocating function in one program, for uprobe sessions: the
/// entry skips the return probe of a call that will not be recorded.
pub const SESSION_PROGRAM: &str = "alloc_session";

/// Names of the syscall tracepoint programs, as (program, category, tracepoint).
pub const SYSCALL_PROGRAMS: [(&str, &str, &str); 8] = [
    ("mmap_enter", "syscalls", "sys_enter_mmap"),
    ("mmap_exit", "syscalls", "sys_exit_mmap"),
    ("munmap_enter", "syscalls", "sys_enter_munmap"),
    ("munmap_exit", "syscalls", "sys_exit_munmap"),
    ("mremap_enter", "syscalls", "sys_enter_mremap"),
    ("mremap_exit", "syscalls", "sys_exit_mremap"),
    ("brk_exit", "syscalls", "sys_exit_brk"),
    ("thread_exit", "sched", "sched_process_exit"),
];

/// Threads whose end `THREAD_ENDS` keeps (the most recent).
pub const MAX_THREAD_ENDS: u32 = 1024;

/// `ThreadEnd::syscall` of a thread that ended itself (the exit system call: a thread
/// function returned, pthread_exit), as opposed to one the end of its process took.
pub const SYS_EXIT: u64 = 60;

/// A thread of the target as it ended, by thread id in `THREAD_ENDS`: its user registers as
/// the kernel saved them when it last entered the kernel (the system call it was in, or
/// the interrupt that stopped it where it ran).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadEnd {
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8 to r15.
    pub registers: [u64; 16],
    pub ip: u64,
    /// The system call it was in (orig_ax), u64::MAX in none.
    pub syscall: u64,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ended_ns: u64,
}

impl ThreadEnd {
    pub const STACK_POINTER: usize = 7;
    pub const FRAME_POINTER: usize = 6;
}

/// One live allocation, keyed by its address in `ALLOCS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocRecord {
    pub size: u64,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) when the allocation returned.
    pub timestamp_ns: u64,
    pub stack_id: u32,
    /// The allocating thread; for a Go span of small objects, its span class with
    /// [`GO_SPAN_CLASS_MARK`] set.
    pub tid: u32,
    /// The scope call it was made in ([`scope_of`]), 0 outside every scope.
    pub scope: u64,
}

/// Running totals for one stack id, kept in `STACK_TOTALS`. The outstanding fields are
/// updated with wrapping adds of negated values, so read them as two's complement.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotals {
    pub outstanding_bytes: u64,
    pub outstanding_allocs: u64,
    pub total_allocs: u64,
    pub total_frees: u64,
    /// Bytes ever allocated from this stack.
    pub total_bytes: u64,
}

/// Arguments saved at an allocator's entry until its return, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingCall {
    /// [`CallShape::tag`]: the kind of call and which function.
    pub func: u32,
    /// Allocator functions this call reached by a tail call (realloc(NULL, n) jumping to
    /// malloc): each adds a return probe firing at the same return, all but the last ignored.
    pub tail_calls: u32,
    /// Stack pointer at entry; the matching return sees `sp + 8` (the return address popped).
    pub sp: u64,
    /// Requested bytes.
    pub size: u64,
    /// realloc/reallocarray: the block being resized.
    pub old_ptr: u64,
    /// posix_memalign: where the result pointer is written.
    pub out_ptr: u64,
    /// CLOCK_MONOTONIC ns at entry: an entry older than [`NESTED_CALL_MAX_AGE_NS`] is stale
    /// (its return was never seen), not an outer call.
    pub entry_ns: u64,
    /// The return address at entry (`*sp`), kept for a call whose return probe was skipped:
    /// such an entry is never removed, and the call is still running only while its return
    /// address is still on the stack where it was.
    pub ret_addr: u64,
    /// [`PENDING_RECORD`], [`PENDING_NO_RETURN`], [`PENDING_DONE`].
    pub flags: u32,
    pub _pad: u32,
}

/// [`PendingCall::flags`]: the call is to be recorded (in the size range and sampled).
pub const PENDING_RECORD: u32 = 1;
/// [`PendingCall::flags`]: the entry told the kernel to skip this call's return probe (a
/// uprobe session): the entry stays behind when the call returns.
pub const PENDING_NO_RETURN: u32 = 2;
/// [`PendingCall::flags`]: the call returned. A thread's entry is kept and overwritten by its
/// next call rather than deleted and inserted again (two hash updates less per call).
pub const PENDING_DONE: u32 = 4;

/// Syscall arguments saved at sys_enter until sys_exit, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingSyscall {
    /// `MmapEventKind` as u32.
    pub kind: u32,
    pub _pad: u32,
    pub addr: u64,
    pub len: u64,
    pub new_len: u64,
    /// Return address of the caller of a frameless syscall wrapper (read at the user stack
    /// pointer); user space decides whether it is a real frame.
    pub caller_hint: u64,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmapEventKind {
    Map = 1,
    Unmap = 2,
    Remap = 3,
    /// The program break moved (brk/sbrk): `addr` is the new break.
    Brk = 4,
}

impl MmapEventKind {
    pub const fn from_u32(value: u32) -> Option<MmapEventKind> {
        match value {
            1 => Some(MmapEventKind::Map),
            2 => Some(MmapEventKind::Unmap),
            3 => Some(MmapEventKind::Remap),
            4 => Some(MmapEventKind::Brk),
            _ => None,
        }
    }
}

/// A brk event's `len` when the break was moved inside an allocator call (malloc growing its
/// heap): it belongs to that allocation, and only tells where the break now is.
pub const BRK_BY_ALLOCATOR: u64 = 1;

/// A completed anonymous mmap, munmap or mremap, or a brk, of the target, sent through
/// `MMAP_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmapEvent {
    /// `MmapEventKind` as u32.
    pub kind: u32,
    pub tid: u32,
    pub stack_id: u32,
    pub _pad: u32,
    pub timestamp_ns: u64,
    /// Map: the new region; Unmap: the range removed; Remap: the old range; Brk: the new
    /// break, and in `len` [`BRK_BY_ALLOCATOR`] when an allocator call moved it.
    pub addr: u64,
    pub len: u64,
    /// Remap only: where the region now lives and its new length.
    pub new_addr: u64,
    pub new_len: u64,
    pub caller_hint: u64,
}

/// Per-CPU event counters in `COUNTERS`, indexed by `Counter as u32`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every slot for this stack's hash held another stack: counted under the unknown stack.
    StackIdCollision = 0,
    /// Other failures to record a stack (map full, fault): counted under the unknown stack.
    StackIdError = 1,
    /// The live-allocation map was full: the allocation is not tracked.
    AllocMapFull = 2,
    /// The per-stack totals map was full: the stack's totals are not kept.
    StackTotalsFull = 3,
    /// No room to save an allocator call's arguments: the call is not tracked.
    PendingMapFull = 4,
    /// A return probe fired without its entry (attached mid-call): not tracked.
    MissingEntry = 5,
    /// The mmap event ring buffer was full: the event is lost.
    MmapEventsLost = 6,
    /// Informational: an allocator call made from inside another one (e.g. realloc calling
    /// malloc), left to the outer call.
    NestedCall = 7,
    /// Informational: free() of an address allocated before tracing began.
    FreeUntracked = 8,
    /// Informational: an allocation returned an address still recorded as live (its free was
    /// missed); the old record was replaced.
    ReplacedLive = 9,
    /// Informational: calls seen, of the allocating family and of free.
    Allocations = 10,
    Frees = 11,
    /// Informational: allocations outside --min-size/--max-size, not tracked by request.
    OutsideSizeRange = 12,
    /// Informational: allocations left out by --sample-rate (not tracked; the tracked ones
    /// are scaled up to stand for them).
    Unsampled = 13,
    /// A scope call could not be followed one by one (`SCOPE_CALLS` full): it counts in its
    /// scope's totals, but not in the per-call figures.
    ScopeCallsFull = 14,
    /// A scope call nested deeper than [`MAX_SCOPE_DEPTH`]: its allocations go to the outer
    /// scope call.
    ScopeTooDeep = 15,
    /// A label beyond [`MAX_SCOPE_TAGS`]: the call counts under its scope without a label.
    ScopeLabelsFull = 16,
    /// The scope return ring buffer was full: the call is not read again later (it counts
    /// in its scope's totals only).
    ScopeEventsLost = 17,
    /// A goroutine of a creation site beyond [`MAX_GOROUTINE_SITES`]: not counted.
    GoroutineSitesFull = 18,
    /// Informational: goroutines created and ended (Go programs).
    GoroutinesCreated = 19,
    GoroutinesExited = 20,
    /// Informational: allocating calls whose return probe the entry skipped (uprobe
    /// sessions): left out by --sample-rate or the size range, or nested in another call.
    ReturnsSkipped = 21,
}

impl Counter {
    pub const COUNT: u32 = 22;

    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::StackIdCollision,
        Counter::StackIdError,
        Counter::AllocMapFull,
        Counter::StackTotalsFull,
        Counter::PendingMapFull,
        Counter::MissingEntry,
        Counter::MmapEventsLost,
        Counter::NestedCall,
        Counter::FreeUntracked,
        Counter::ReplacedLive,
        Counter::Allocations,
        Counter::Frees,
        Counter::OutsideSizeRange,
        Counter::Unsampled,
        Counter::ScopeCallsFull,
        Counter::ScopeTooDeep,
        Counter::ScopeLabelsFull,
        Counter::ScopeEventsLost,
        Counter::GoroutineSitesFull,
        Counter::GoroutinesCreated,
        Counter::GoroutinesExited,
        Counter::ReturnsSkipped,
    ];

    /// Stable name used in reports and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::StackIdCollision => "stack_id_collision",
            Counter::StackIdError => "stack_id_error",
            Counter::AllocMapFull => "alloc_map_full",
            Counter::StackTotalsFull => "stack_totals_full",
            Counter::PendingMapFull => "pending_map_full",
            Counter::MissingEntry => "missing_entry",
            Counter::MmapEventsLost => "mmap_events_lost",
            Counter::NestedCall => "nested_call",
            Counter::FreeUntracked => "free_untracked",
            Counter::ReplacedLive => "replaced_live",
            Counter::Allocations => "allocations",
            Counter::Frees => "frees",
            Counter::OutsideSizeRange => "outside_size_range",
            Counter::Unsampled => "unsampled",
            Counter::ScopeCallsFull => "scope_calls_full",
            Counter::ScopeTooDeep => "scope_too_deep",
            Counter::ScopeLabelsFull => "scope_labels_full",
            Counter::ScopeEventsLost => "scope_events_lost",
            Counter::GoroutineSitesFull => "goroutine_sites_full",
            Counter::GoroutinesCreated => "goroutines_created",
            Counter::GoroutinesExited => "goroutines_exited",
            Counter::ReturnsSkipped => "returns_skipped",
        }
    }

    /// Whether the counter means data was lost (shown under "dropped").
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Counter::StackIdCollision
                | Counter::StackIdError
                | Counter::AllocMapFull
                | Counter::StackTotalsFull
                | Counter::PendingMapFull
                | Counter::MissingEntry
                | Counter::MmapEventsLost
                | Counter::ScopeCallsFull
                | Counter::ScopeTooDeep
                | Counter::ScopeLabelsFull
                | Counter::ScopeEventsLost
                | Counter::GoroutineSitesFull
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each name once, in one list only: user space can tell every map, program and global
    /// of the object apart by name, and each map is either shared or the kernel's alone.
    #[test]
    fn every_name_is_listed_once() {
        let maps = || map_names::ALL.iter().chain(map_names::KERNEL_ONLY);
        for (i, name) in maps().enumerate() {
            assert!(
                !maps().take(i).any(|n| n == name),
                "map {name} is listed twice"
            );
        }
        for list in [ALL_GLOBALS, ALL_PROGRAMS] {
            for (i, name) in list.iter().enumerate() {
                assert!(!list[..i].contains(name), "{name} is listed twice");
            }
        }
        assert_eq!(
            SYSCALL_PROGRAMS.len(),
            8,
            "ALL_PROGRAMS lists 8 syscall programs"
        );
    }

    #[test]
    fn call_shapes_round_trip_through_the_cookie() {
        for shape in [
            CallShape::malloc(0),
            CallShape::calloc(1, 2).with_id(7),
            CallShape::realloc(0, 3).with_id(0xFFFF),
            CallShape::reallocarray(1, 2, 3),
            CallShape::posix_memalign(0, 2),
            CallShape::free(1).with_id(42),
        ] {
            assert_eq!(CallShape::from_cookie(shape.cookie()), Some(shape));
            assert_eq!(tag_kind(shape.tag()), Some(shape.func));
        }
        assert_eq!(CallShape::from_cookie(0xFF), None);
    }

    #[test]
    fn python_entries_round_trip_and_never_look_like_addresses() {
        let code = 0x7f12_3456_7890;
        let entry = python_entry(code, 42, true);
        assert_eq!(python_frame(entry), Some((code, 42, true)));
        assert_eq!(
            python_frame(python_entry(code, 1 << 20, false)),
            Some((code, PYTHON_MAX_INSTRUCTION, false))
        );
        assert_eq!(python_frame(0x7fff_ffff_f000), None);
    }

    #[test]
    fn the_large_span_probe_reads_rax_unless_its_cookie_names_a_slot() {
        assert_eq!(go_span_slot(0), RAX_SLOT);
        assert_eq!(go_span_slot(GO_SPAN_IN_SLOT | 3), 3);
        assert_eq!(go_span_slot(GO_SPAN_IN_SLOT | 14), 14);
    }

    #[test]
    fn scope_cookies_and_record_scopes_round_trip() {
        let shape = ScopeShape {
            index: 15,
            label_arg: 2,
            label_kind: SCOPE_LABEL_STR,
        };
        assert_eq!(ScopeShape::from_cookie(shape.cookie()), shape);
        assert_eq!(shape.unlabelled_tag(), 16);
        let call = (1 << 47) - 3;
        assert_eq!(scope_parts(scope_of(call, 1023)), (call, 1023));
        assert_eq!(scope_parts(0), (0, 0));
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] plain integers with explicit padding fields.
    unsafe impl aya::Pod for super::AllocRecord {}
    unsafe impl aya::Pod for super::StackTotals {}
    unsafe impl aya::Pod for super::PendingCall {}
    unsafe impl aya::Pod for super::PendingSyscall {}
    unsafe impl aya::Pod for super::MmapEvent {}
    unsafe impl aya::Pod for super::ThreadEnd {}
    unsafe impl aya::Pod for super::StackFrames {}
    unsafe impl aya::Pod for super::UnwindRow {}
    unsafe impl aya::Pod for super::UnwindMapping {}
    unsafe impl aya::Pod for super::UnwindIndex {}
    unsafe impl aya::Pod for super::ScopeLabel {}
    unsafe impl aya::Pod for super::GoLayout {}
    unsafe impl aya::Pod for super::GoroutineSite {}
    unsafe impl aya::Pod for super::PyLayout {}
    unsafe impl aya::Pod for super::ScopeStack {}
    unsafe impl aya::Pod for super::ScopeTotals {}
    unsafe impl aya::Pod for super::ScopeCall {}
    unsafe impl aya::Pod for super::ScopeReturn {}
}
