//! Maps shared by the allocator probes and the mmap tracepoints, and small helpers on them.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::{python::append_python_frames, unwind::unwind};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_stack, bpf_probe_read_kernel,
        bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use leak_common::{
    ARGUMENT_SLOTS, AllocRecord, Counter, DEFAULT_MAX_ALLOCS, MAX_PENDING_CALLS, MAX_SIZE_GLOBAL,
    MAX_STACK_DEPTH, MAX_STACKS, MAX_THREAD_ENDS, MIN_SIZE_GLOBAL, MMAP_EVENTS_BYTES, PendingCall,
    PendingSyscall, SAMPLE_RATE_GLOBAL, STACK_ID_PROBES, StackFrames, StackTotals,
    TARGET_TGID_GLOBAL, ThreadEnd, UNKNOWN_STACK_ID, UNWIND_DWARF, UNWIND_FRAME_POINTERS,
    UNWIND_MODE_GLOBAL, map_names,
};

/// The traced process (tgid). Set by user space before load; 0 never matches.
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;
named!(TARGET_TGID, TARGET_TGID_GLOBAL);

/// Allocation sizes to track, inclusive (--min-size/--max-size). Set before load.
#[unsafe(no_mangle)]
static MIN_ALLOC_SIZE: u64 = 0;
named!(MIN_ALLOC_SIZE, MIN_SIZE_GLOBAL);
#[unsafe(no_mangle)]
static MAX_ALLOC_SIZE: u64 = u64::MAX;
named!(MAX_ALLOC_SIZE, MAX_SIZE_GLOBAL);

/// How stacks are walked (UNWIND_FRAME_POINTERS or UNWIND_DWARF). Set before load.
#[unsafe(no_mangle)]
static UNWIND_MODE: u32 = UNWIND_FRAME_POINTERS;
named!(UNWIND_MODE, UNWIND_MODE_GLOBAL);

/// Track one allocation in this many (--sample-rate). Set before load.
#[unsafe(no_mangle)]
static SAMPLE_RATE: u32 = 1;
named!(SAMPLE_RATE, SAMPLE_RATE_GLOBAL);

/// Whether this allocation is one of the sampled ones (always, without sampling).
#[inline(always)]
pub fn sampled() -> bool {
    // SAFETY: a plain read of a global that user space sets once before load.
    let rate = unsafe { core::ptr::read_volatile(&SAMPLE_RATE) };
    // SAFETY: helper without arguments.
    rate <= 1 || unsafe { bpf_get_prandom_u32() } % rate == 0
}

/// Whether an allocation of `size` bytes is in the requested range.
#[inline(always)]
pub fn size_wanted(size: u64) -> bool {
    // SAFETY: plain reads of globals that user space sets once before load.
    let (min, max) = unsafe {
        (
            core::ptr::read_volatile(&MIN_ALLOC_SIZE),
            core::ptr::read_volatile(&MAX_ALLOC_SIZE),
        )
    };
    size >= min && size <= max
}

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

/// Whether a return without its entry means an event was lost (see ENTRIES_ARMED).
#[inline(always)]
pub fn entries_armed() -> bool {
    ENTRIES_ARMED.get(0).is_some_and(|armed| *armed != 0)
}

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
named!(COUNTERS, map_names::COUNTERS);

/// The calling thread's id if it belongs to the traced process.
#[inline(always)]
pub fn target_tid() -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: a plain read of a global that user space sets once before load.
    let target = unsafe { core::ptr::read_volatile(&TARGET_TGID) };
    if tgid == target {
        Some(pid_tgid as u32)
    } else {
        None
    }
}

/// Where the first frame of a stack is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FirstFrame {
    /// The ip is a return address into the caller (return probes, syscalls).
    ReturnAddress,
    /// The ip is the instruction that was running (a page fault).
    Running,
    /// The ip is the first instruction of a function that has not set up its frame: the
    /// caller's return address is at the stack pointer. The kernel's frame-pointer walk
    /// leaves that caller out (its frame pointer is still the caller's), so the stack starts
    /// from that return address instead. Entry probes on Go code use this.
    FunctionEntry,
}

/// Records the current user stack and returns its id: a hash of its addresses folded to 32
/// bits, or one of the next `STACK_ID_PROBES - 1` ids when that one holds another stack (the
/// full 64-bit hash is compared; bpf_get_stackid would give up at the first collision). A
/// stack that cannot be recorded (every slot taken, map full) is counted as dropped and its
/// memory kept under the unknown stack.
///
/// `regs` are the user registers when the program has them (uprobes, and the user registers
/// of syscalls and faults): the stack is then walked by `unwind`, with the modules' unwind
/// tables under --unwind dwarf; without them the kernel's frame-pointer walk records it.
#[inline(always)]
pub fn user_stack_id<C: EbpfContext>(ctx: &C, regs: Option<&pt_regs>, first: FirstFrame) -> u32 {
    let Some(regs) = regs else {
        let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
            count(Counter::StackIdError);
            return UNKNOWN_STACK_ID;
        };
        // SAFETY: this CPU's scratch slot. The program does not migrate, and the kernel runs
        // no other of these programs on this CPU until it ends (it skips them: recursion
        // misses).
        let stack = unsafe { &mut *scratch };
        // SAFETY: the buffer is the scratch slot's `ips`, of the size given.
        let copied = unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                stack.ips.as_mut_ptr().cast(),
                size_of_val(&stack.ips) as u32,
                BPF_F_USER_STACK as u64,
            )
        };
        if copied < 0 {
            count(Counter::StackIdError);
            return UNKNOWN_STACK_ID;
        }
        stack.len = (copied as usize / size_of::<u64>()).min(MAX_STACK_DEPTH) as u64;
        return leaktrace_scratch_stack_id();
    };
    let (ip, sp, exact) = match first {
        FirstFrame::FunctionEntry => match read_user_u64(regs.rsp) {
            Some(caller) => (caller, regs.rsp + 8, 0),
            None => {
                count(Counter::StackIdError);
                return UNKNOWN_STACK_ID;
            }
        },
        FirstFrame::Running => (regs.rip, regs.rsp, 1),
        FirstFrame::ReturnAddress => (regs.rip, regs.rsp, 0),
    };
    leaktrace_walk_stack(ip, sp, regs.rbp, exact);
    leaktrace_scratch_stack_id()
}

/// Walks the stack whose innermost frame is at `ip` with registers `sp` and `bp` into this
/// CPU's scratch slot (`exact` 1: `ip` is the instruction that was running, not a return
/// address). Returns 0.
///
/// A global function (exported by bpf-linker: see build.rs): the verifier checks it once, with
/// its arguments unknown, instead of once for every state of every caller. The walk with its
/// bpf_loop callbacks and nested searches took 35,000 verified instructions per call site
/// when inlined. It returns before `leaktrace_scratch_stack_id` is called, so that the two
/// frames are never on the BPF stack together (512 bytes for a whole chain of calls).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn leaktrace_walk_stack(ip: u64, sp: u64, bp: u64, exact: u64) -> u32 {
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, as in `user_stack_id`.
    let stack = unsafe { &mut *scratch };
    // SAFETY: a plain read of a global that user space sets once before load.
    let mode = unsafe { core::ptr::read_volatile(&UNWIND_MODE) };
    unwind(stack, ip, sp, bp, exact != 0, mode == UNWIND_DWARF);
    0
}

/// The id of the stack in this CPU's scratch slot (see `user_stack_id`), Python frames
/// appended. A global function, like `leaktrace_walk_stack`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn leaktrace_scratch_stack_id() -> u32 {
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        count(Counter::StackIdError);
        return UNKNOWN_STACK_ID;
    };
    // SAFETY: this CPU's scratch slot, as in `user_stack_id`.
    let stack = unsafe { &mut *scratch };
    append_python_frames();
    let len = (stack.len as usize).min(MAX_STACK_DEPTH);
    // FNV-1a over the addresses.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..MAX_STACK_DEPTH {
        if i >= len {
            break;
        }
        hash = (hash ^ stack.ips[i]).wrapping_mul(0x0000_0100_0000_01b3);
    }
    stack.hash = hash;
    let first = (hash ^ (hash >> 32)) as u32;
    for probe in 0..STACK_ID_PROBES {
        let mut id = first.wrapping_add(probe);
        if id == UNKNOWN_STACK_ID {
            id = 0;
        }
        // SAFETY: read-only use of a map value that is never changed once inserted.
        if let Some(existing) = unsafe { STACKS.get(id) } {
            if existing.hash == hash {
                return id;
            }
            continue;
        }
        match STACKS.insert(id, &*stack, BPF_NOEXIST.into()) {
            Ok(()) => return id,
            Err(_) => {
                // Another CPU took the slot meanwhile (with this stack, or another), or the
                // map is full.
                // SAFETY: as above.
                match unsafe { STACKS.get(id) } {
                    Some(existing) if existing.hash == hash => return id,
                    Some(_) => continue,
                    None => {
                        count(Counter::StackIdError);
                        return UNKNOWN_STACK_ID;
                    }
                }
            }
        }
    }
    count(Counter::StackIdCollision);
    UNKNOWN_STACK_ID
}

/// The user registers of the current task (for walking its stack with unwind tables), or
/// None when they cannot be read. In a syscall or a fault taken in the kernel, ip is the
/// return address into user code.
#[inline(always)]
pub fn user_regs() -> Option<pt_regs> {
    // SAFETY: helpers check their pointers.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        if regs.is_null() {
            return None;
        }
        let mut user: pt_regs = core::mem::zeroed();
        user.rip = bpf_probe_read_kernel(&raw const (*regs).rip).ok()?;
        user.rsp = bpf_probe_read_kernel(&raw const (*regs).rsp).ok()?;
        user.rbp = bpf_probe_read_kernel(&raw const (*regs).rbp).ok()?;
        Some(user)
    }
}

/// The registers an entry program reads arguments from, by slot (leak_common::ARGUMENT_SLOTS):
/// the six argument registers in call order, then rax, rbx, rbp, r10 to r15, where a probe
/// placed past a function's entry finds the copies its code made. All are read at fixed
/// offsets and one is then picked by slot: the verifier refuses a context read at a computed
/// offset.
pub struct Arguments([u64; ARGUMENT_SLOTS]);

impl Arguments {
    #[inline(always)]
    pub fn of(regs: &pt_regs) -> Arguments {
        Arguments([
            regs.rdi, regs.rsi, regs.rdx, regs.rcx, regs.r8, regs.r9, regs.rax, regs.rbx, regs.rbp,
            regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ])
    }

    /// The value in slot `slot`; 0 for no slot (NO_ARG).
    #[inline(always)]
    pub fn at(&self, slot: u8) -> u64 {
        let slot = slot as usize;
        if slot < ARGUMENT_SLOTS {
            self.0[slot]
        } else {
            0
        }
    }
}

/// Adds `delta` (two's complement for a debit) to a counter other CPUs may update too.
#[inline(always)]
pub fn atomic_add(field: *mut u64, delta: u64) {
    // SAFETY: `field` points into a live map value; every concurrent update is atomic. The
    // old value is unused, so this is the plain BPF atomic add.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, delta) };
}

/// A word of the target's memory, None where it cannot be read.
#[inline(always)]
pub fn read_user_u64(address: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the user address.
    unsafe { bpf_probe_read_user(address as *const u64) }.ok()
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, valid for the program's run; no other writer on this CPU.
        unsafe { *value += 1 };
    }
}

/// Credits an allocation (`allocated`) or debits a release of `size` bytes to a stack.
#[inline(always)]
pub fn add_to_stack(stack_id: u32, size: u64, allocated: bool) {
    let totals = match STACK_TOTALS.get_ptr_mut(stack_id) {
        Some(totals) => totals,
        None => {
            let fresh = StackTotals::default();
            // If another CPU created it meanwhile, use theirs.
            if STACK_TOTALS
                .insert(stack_id, fresh, BPF_NOEXIST.into())
                .is_err()
                && STACK_TOTALS.get_ptr_mut(stack_id).is_none()
            {
                count(Counter::StackTotalsFull);
                return;
            }
            match STACK_TOTALS.get_ptr_mut(stack_id) {
                Some(totals) => totals,
                None => {
                    count(Counter::StackTotalsFull);
                    return;
                }
            }
        }
    };
    // SAFETY: this CPU's copy of a live map value; nothing else writes it while we run.
    unsafe {
        let totals = &mut *totals;
        if allocated {
            totals.outstanding_bytes = totals.outstanding_bytes.wrapping_add(size);
            totals.outstanding_allocs = totals.outstanding_allocs.wrapping_add(1);
            totals.total_allocs += 1;
            totals.total_bytes = totals.total_bytes.wrapping_add(size);
        } else {
            totals.outstanding_bytes = totals.outstanding_bytes.wrapping_sub(size);
            totals.outstanding_allocs = totals.outstanding_allocs.wrapping_sub(1);
            totals.total_frees += 1;
        }
    }
}
