//! Uprobes on the malloc family.
//!
//! One entry program serves every probed function (the uprobe's cookie, a `CallShape`, says
//! what the function does and where its arguments are). Entries save the arguments per
//! thread; the shared return probe records the result
//! (address → size, time, stack) and credits the caller's stack; free's entry probe removes
//! the record and debits the stack. The user stack is captured in the return probe, where the
//! frame chain still starts at the direct caller.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns, generated::bpf_get_func_ip},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use leak_common::{
    ALLOC_RETURN_PROGRAM, AllocFn, AllocRecord, CallShape, Counter, ENTRY_PROGRAM,
    NESTED_CALL_MAX_AGE_NS, NESTED_CALL_MAX_DEPTH_BYTES, NO_ARG, PENDING_DONE, PENDING_NO_RETURN,
    PENDING_RECORD, PendingCall, SESSION_PROGRAM, tag_kind,
};

use crate::{
    counters::count,
    maps::{ALLOCS, ENTRIES_ARMED, PENDING_CALLS},
    scope::{add_to_scope, current_scope},
    settings::{sampled, size_wanted, target_tid},
    stacks::{FirstFrame, add_to_stack, user_stack_id},
    target::{Arguments, read_user_u64},
};

/// What a uprobe session's entry returns to have the kernel run the return probe, or not.
const RUN_RETURN: u32 = 0;
const SKIP_RETURN: u32 = 1;

/// Saves an allocator call's arguments unless the call is nested inside another allocator
/// call of the same thread (realloc(NULL, n) calling malloc, reallocarray calling realloc):
/// the outer call is the one the program made, so it alone is recorded. In a uprobe session
/// (`session`), says whether the return probe is wanted: not for a nested call, nor for one
/// that will not be recorded (sampled out, outside the size range) and frees no old block.
#[inline(always)]
fn enter(regs: &pt_regs, func: u32, size: u64, old_ptr: u64, out_ptr: u64, session: bool) -> u32 {
    let Some(tid) = target_tid() else {
        return SKIP_RETURN;
    };
    let sp = regs.rsp;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let slot = PENDING_CALLS.get_ptr_mut(tid);
    if let Some(outer) = slot {
        // SAFETY: a live map value of this thread; only this thread touches its entry.
        let outer = unsafe { &mut *outer };
        let running = still_running(outer, now, NESTED_CALL_MAX_AGE_NS);
        if running && outer.sp == sp && outer.func != func {
            // A tail call from the outer allocator function: same frame, same return.
            count(Counter::NestedCall);
            if session {
                count(Counter::ReturnsSkipped);
                return SKIP_RETURN;
            }
            outer.tail_calls += 1;
            return RUN_RETURN;
        }
        if running && outer.sp > sp && outer.sp - sp <= NESTED_CALL_MAX_DEPTH_BYTES {
            count(Counter::NestedCall);
            if session {
                count(Counter::ReturnsSkipped);
                return SKIP_RETURN;
            }
            return RUN_RETURN;
        }
        // Otherwise the entry is done or stale: overwritten below.
    }
    // Decided at entry, and the entry saved even when the call is not to be recorded, so
    // that allocator calls nested inside it are not recorded on their own.
    let wanted = size_wanted(size);
    let record = wanted && sampled();
    let mut pending = PendingCall {
        func,
        tail_calls: 0,
        sp,
        size,
        old_ptr,
        out_ptr,
        entry_ns: now,
        ret_addr: 0,
        flags: if record { PENDING_RECORD } else { 0 },
        _pad: 0,
    };
    // A resized block must be released when the call succeeds: its return is always wanted.
    let skip = session && !record && old_ptr == 0;
    if skip {
        // The call is assumed to succeed: its return is not seen.
        count(Counter::Allocations);
        count(if wanted {
            Counter::Unsampled
        } else {
            Counter::OutsideSizeRange
        });
        count(Counter::ReturnsSkipped);
        pending.flags |= PENDING_NO_RETURN;
        pending.ret_addr = read_user_u64(sp).unwrap_or(0);
    }
    match slot {
        // SAFETY: as above.
        Some(entry) => unsafe { *entry = pending },
        None => {
            if PENDING_CALLS.insert(tid, pending, 0).is_err() {
                count(Counter::PendingMapFull);
                return SKIP_RETURN;
            }
        }
    }
    if skip { SKIP_RETURN } else { RUN_RETURN }
}

/// Whether the allocator call a thread's entry in PENDING_CALLS stands for is still running
/// at `now`: not returned, entered less than `max_age_ns` ago (an older entry is stale: its
/// return was never seen), and, for a call whose return probe was skipped (its entry stays
/// behind), its return address still where it was on the stack.
#[inline(always)]
pub fn still_running(call: &PendingCall, now: u64, max_age_ns: u64) -> bool {
    call.flags & PENDING_DONE == 0
        && now.wrapping_sub(call.entry_ns) < max_age_ns
        && (call.flags & PENDING_NO_RETURN == 0 || read_user_u64(call.sp) == Some(call.ret_addr))
}

/// The entry half: the cookie says what the function is and where its arguments are.
#[inline(always)]
fn on_entry(ctx: &ProbeContext, session: bool) -> u32 {
    // SAFETY: reads this attachment's cookie; the context is the program's own.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let Some(shape) = CallShape::from_cookie(cookie) else {
        return SKIP_RETURN;
    };
    // SAFETY: uprobe context is the user pt_regs.
    let regs = unsafe { &*ctx.regs };
    let args = Arguments::of(regs);
    let at = |index: u8| args.at(index);
    if shape.func == AllocFn::Free {
        free_block(at(shape.ptr));
        return SKIP_RETURN;
    }
    let mut size = at(shape.size);
    if shape.count != NO_ARG {
        // An overflowing product makes the call fail, and failures are not recorded.
        size = size.wrapping_mul(at(shape.count));
    }
    enter(
        regs,
        shape.tag(),
        size,
        at(shape.ptr),
        at(shape.out),
        session,
    )
}

/// Entry of every probed function; the cookie says what it is and where its arguments are.
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    on_entry(&ctx, false);
    0
}
named!(alloc_enter, ENTRY_PROGRAM);

/// Entry and return of every allocating function, as one uprobe session (Linux 6.13+): the
/// entry returns [`SKIP_RETURN`] for a call whose return need not be seen, which then costs
/// one trap instead of two. Loaded and linked by leak-user's multi_link only. Written out
/// rather than with `#[uprobe]`, whose wrapper returns 0 whatever the function returns.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn alloc_session(ctx: *mut core::ffi::c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    // At the entry the registers' ip is the probed address; at the return it is the
    // caller's return address, while the function address stays the probed one.
    // SAFETY: the context is the program's own.
    let probed = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    // SAFETY: uprobe context is the user pt_regs.
    let regs = unsafe { &*ctx.regs };
    if regs.rip == probed {
        on_entry(&ctx, true)
    } else {
        on_return(&ctx, regs);
        0
    }
}
named!(alloc_session, SESSION_PROGRAM);

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    // SAFETY: uretprobe context is the user pt_regs.
    on_return(&ctx, unsafe { &*ctx.regs });
    0
}
named!(alloc_return, ALLOC_RETURN_PROGRAM);

/// Whether a return without its entry means an event was lost (see ENTRIES_ARMED).
#[inline(always)]
fn entries_armed() -> bool {
    ENTRIES_ARMED.get(0).is_some_and(|armed| *armed != 0)
}

/// The return half: records the block the call returned, releases the one it resized.
#[inline(always)]
fn on_return<C: EbpfContext>(ctx: &C, regs: &pt_regs) {
    let Some(tid) = target_tid() else { return };
    let Some(entry) = PENDING_CALLS
        .get_ptr_mut(tid)
        // SAFETY: a live map value of this thread; only this thread touches it.
        .map(|entry| unsafe { &mut *entry })
        .filter(|entry| entry.flags & PENDING_DONE == 0)
    else {
        // Before the entries are armed, the call began before its entry probe was in: an
        // allocation from before the trace, not a lost one.
        if entries_armed() {
            count(Counter::MissingEntry);
        }
        return;
    };
    if regs.rsp != entry.sp.wrapping_add(8) {
        // The return of a nested call whose entry was left to the outer call.
        return;
    }
    if entry.tail_calls > 0 {
        // Several return probes share this return; the last one records it.
        entry.tail_calls -= 1;
        return;
    }
    entry.flags |= PENDING_DONE;
    let pending = *entry;
    let ret = regs.rax;
    let addr = match tag_kind(pending.func) {
        Some(AllocFn::Realloc | AllocFn::Reallocarray) => {
            // Success moves the block; realloc(p, 0) returning NULL frees p; any other NULL
            // is a failure that leaves p allocated.
            if pending.old_ptr != 0 && (ret != 0 || pending.size == 0) {
                release(pending.old_ptr);
            }
            ret
        }
        Some(AllocFn::PosixMemalign) if ret as u32 == 0 && pending.out_ptr != 0 => {
            read_user_u64(pending.out_ptr).unwrap_or(0)
        }
        Some(AllocFn::PosixMemalign) | None => 0,
        Some(_) => ret,
    };
    if addr != 0 {
        record(ctx, regs, addr, &pending, tid);
    }
}

/// Records a block the call returned, as its entry decided (size range, sampling).
#[inline(always)]
fn record<C: EbpfContext>(ctx: &C, regs: &pt_regs, addr: u64, pending: &PendingCall, tid: u32) {
    count(Counter::Allocations);
    let size = pending.size;
    if pending.flags & PENDING_RECORD == 0 {
        count(if size_wanted(size) {
            Counter::Unsampled
        } else {
            Counter::OutsideSizeRange
        });
        return;
    }
    let stack_id = user_stack_id(ctx, Some(regs), FirstFrame::ReturnAddress);
    let record = AllocRecord {
        size,
        // The call's start: one clock read less per call.
        timestamp_ns: pending.entry_ns,
        stack_id,
        tid,
        scope: current_scope(tid),
    };
    if ALLOCS.insert(addr, record, BPF_NOEXIST.into()).is_err() {
        // SAFETY: copied out before the overwrite.
        match unsafe { ALLOCS.get(addr) }.copied() {
            Some(stale) => {
                // Its free was missed (e.g. freed through a path we do not probe).
                count(Counter::ReplacedLive);
                add_to_stack(stale.stack_id, stale.size, false);
                add_to_scope(stale.scope, stale.size, false);
                if ALLOCS.insert(addr, record, 0).is_err() {
                    count(Counter::AllocMapFull);
                    return;
                }
            }
            None => {
                count(Counter::AllocMapFull);
                return;
            }
        }
    }
    add_to_stack(stack_id, size, true);
    add_to_scope(record.scope, size, true);
}

#[inline(always)]
fn release(addr: u64) {
    // SAFETY: copied out before removal.
    match unsafe { ALLOCS.get(addr) }.copied() {
        Some(record) => {
            // Only the CPU whose delete succeeds debits the stack.
            if ALLOCS.remove(addr).is_ok() {
                add_to_stack(record.stack_id, record.size, false);
                add_to_scope(record.scope, record.size, false);
            }
        }
        None => count(Counter::FreeUntracked),
    }
}

/// free and its kin: forget the block and debit its stack.
#[inline(always)]
fn free_block(addr: u64) -> u32 {
    if addr == 0 {
        return 0;
    }
    if target_tid().is_none() {
        return 0;
    }
    count(Counter::Frees);
    release(addr);
    0
}
