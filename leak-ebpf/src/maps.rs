//! The maps several probe families share (allocations, stacks and their totals, pending
//! calls, events, counters): maps only. A map one family alone uses is declared with it.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use leak_common::{
    AllocRecord, Counter, DEFAULT_MAX_ALLOCS, MAX_PENDING_CALLS, MAX_STACKS, MAX_THREAD_ENDS,
    MMAP_EVENTS_BYTES, PendingCall, PendingSyscall, StackFrames, StackTotals, ThreadEnd, map_names,
};

#[map]
pub static ALLOCS: HashMap<u64, AllocRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_ALLOCS, BPF_F_NO_PREALLOC);
named!(ALLOCS, map_names::ALLOCS);

/// Per CPU, so updates need no atomics; user space sums the CPUs (a free on another CPU than
/// its allocation makes one CPU's outstanding values negative, the sum stays right). Every
/// stack's, and the unknown stack's.
#[map]
pub static STACK_TOTALS: PerCpuHashMap<u32, StackTotals> =
    PerCpuHashMap::with_max_entries(MAX_STACKS + 1, BPF_F_NO_PREALLOC);
named!(STACK_TOTALS, map_names::STACK_TOTALS);

/// Recorded stacks by id. Not preallocated: a target with few stacks costs little.
#[map]
pub static STACKS: HashMap<u32, StackFrames> =
    HashMap::with_max_entries(MAX_STACKS, BPF_F_NO_PREALLOC);
named!(STACKS, map_names::STACKS);

/// Per-CPU room to capture a stack (too big for the BPF stack).
#[map]
pub static STACK_SCRATCH: PerCpuArray<StackFrames> = PerCpuArray::with_max_entries(1, 0);
named!(STACK_SCRATCH, map_names::STACK_SCRATCH);

/// Each thread's allocator call in progress (or its last, done), by thread id: written in
/// place call after call; threads that stopped calling make room for new ones.
#[map]
pub static PENDING_CALLS: LruHashMap<u32, PendingCall> =
    LruHashMap::with_max_entries(MAX_PENDING_CALLS, 0);
named!(PENDING_CALLS, map_names::PENDING_CALLS);

#[map]
pub static PENDING_SYSCALLS: HashMap<u32, PendingSyscall> =
    HashMap::with_max_entries(MAX_PENDING_CALLS, 0);
named!(PENDING_SYSCALLS, map_names::PENDING_SYSCALLS);

/// The most recent ends of the target's threads (see `ThreadEnd`), by thread id.
#[map]
pub static THREAD_ENDS: LruHashMap<u32, ThreadEnd> =
    LruHashMap::with_max_entries(MAX_THREAD_ENDS, 0);
named!(THREAD_ENDS, map_names::THREAD_ENDS);

#[map]
pub static MMAP_EVENTS: RingBuf = RingBuf::with_byte_size(MMAP_EVENTS_BYTES, 0);
named!(MMAP_EVENTS, map_names::MMAP_EVENTS);

/// 1 once every entry probe has been in long enough that no call begun before it is still
/// running (user space sets it a moment after attaching, clears it while the budget has the
/// allocation probes out): only then is a return without its entry a lost event.
#[map]
pub static ENTRIES_ARMED: Array<u32> = Array::with_max_entries(1, 0);
named!(ENTRIES_ARMED, map_names::ENTRIES_ARMED);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
named!(COUNTERS, map_names::COUNTERS);
