//! Recording user stacks: each is walked into this CPU's scratch slot (`unwind`, or the
//! kernel's frame-pointer walk), gets the thread's Python frames (`python`), and is stored
//! in `STACKS` under an id that the records and events carry; and the running totals of
//! each stack id (`STACK_TOTALS`).
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST, pt_regs},
    helpers::bpf_get_stack,
};
use leak_common::{Counter, MAX_STACK_DEPTH, STACK_ID_PROBES, StackTotals, UNKNOWN_STACK_ID};

use crate::{
    counters::count,
    maps::{STACK_SCRATCH, STACK_TOTALS, STACKS},
    python::append_python_frames,
    settings::unwind_with_tables,
    target::read_user_u64,
    unwind::unwind,
};

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
    unwind(stack, ip, sp, bp, exact != 0, unwind_with_tables());
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
