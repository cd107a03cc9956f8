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
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use leak_common::{
    AllocFn, AllocRecord, CallShape, Counter, NESTED_CALL_MAX_AGE_NS, NESTED_CALL_MAX_DEPTH_BYTES,
    NO_ARG, PendingCall, tag_kind,
};

use crate::{
    maps::{
        ALLOCS, Arguments, FirstFrame, PENDING_CALLS, add_to_stack, count, entries_armed, sampled,
        size_wanted, target_tid, user_stack_id,
    },
    scope::{add_to_scope, current_scope},
};
const BPF_NOEXIST: u64 = 1;

/// Saves an allocator call's arguments unless the call is nested inside another allocator
/// call of the same thread (realloc(NULL, n) calling malloc, reallocarray calling realloc):
/// the outer call is the one the program made, so it alone is recorded.
#[inline(always)]
fn enter(ctx: &ProbeContext, func: u32, size: u64, old_ptr: u64, out_ptr: u64) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    // SAFETY: uprobe context is the user pt_regs.
    let sp = unsafe { (*ctx.regs).rsp };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(outer) = PENDING_CALLS.get_ptr_mut(tid) {
        // SAFETY: a live map value of this thread; only this thread touches its entry.
        let outer = unsafe { &mut *outer };
        let recent = now.wrapping_sub(outer.entry_ns) < NESTED_CALL_MAX_AGE_NS;
        if recent && outer.sp == sp && outer.func != func {
            // A tail call from the outer allocator function: same frame, same return.
            outer.tail_calls += 1;
            count(Counter::NestedCall);
            return 0;
        }
        if recent && outer.sp > sp && outer.sp - sp <= NESTED_CALL_MAX_DEPTH_BYTES {
            count(Counter::NestedCall);
            return 0;
        }
        // Otherwise the entry is stale: replaced below.
    }
    let pending = PendingCall {
        func,
        tail_calls: 0,
        sp,
        size,
        old_ptr,
        out_ptr,
        entry_ns: now,
    };
    if PENDING_CALLS.insert(tid, pending, 0).is_err() {
        count(Counter::PendingMapFull);
    }
    0
}

/// Entry of every probed function; the cookie says what it is and where its arguments are.
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: reads this attachment's cookie; the context is the program's own.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let Some(shape) = CallShape::from_cookie(cookie) else {
        return 0;
    };
    // SAFETY: uprobe context is the user pt_regs.
    let args = Arguments::of(unsafe { &*ctx.regs });
    let at = |index: u8| args.at(index);
    if shape.func == AllocFn::Free {
        return free_block(at(shape.ptr));
    }
    let mut size = at(shape.size);
    if shape.count != NO_ARG {
        // An overflowing product makes the call fail, and failures are not recorded.
        size = size.wrapping_mul(at(shape.count));
    }
    enter(&ctx, shape.tag(), size, at(shape.ptr), at(shape.out))
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { PENDING_CALLS.get(tid) }).copied() else {
        // Before the entries are armed, the call began before its entry probe was in: an
        // allocation from before the trace, not a lost one.
        if entries_armed() {
            count(Counter::MissingEntry);
        }
        return 0;
    };
    // SAFETY: uretprobe context is the user pt_regs.
    let sp = unsafe { (*ctx.regs).rsp };
    if sp != pending.sp.wrapping_add(8) {
        // The return of a nested call whose entry was left to the outer call.
        return 0;
    }
    if pending.tail_calls > 0 {
        // Several return probes share this return; the last one records it.
        if let Some(entry) = PENDING_CALLS.get_ptr_mut(tid) {
            // SAFETY: a live map value of this thread.
            unsafe { (*entry).tail_calls -= 1 };
        }
        return 0;
    }
    let _ = PENDING_CALLS.remove(tid);
    let ret: u64 = ctx.ret();

    match tag_kind(pending.func) {
        Some(AllocFn::Realloc | AllocFn::Reallocarray) => {
            // Success moves the block; realloc(p, 0) returning NULL frees p; any other NULL
            // is a failure that leaves p allocated.
            if pending.old_ptr != 0 && (ret != 0 || pending.size == 0) {
                release(pending.old_ptr);
            }
            if ret != 0 {
                record(&ctx, ret, pending.size, tid);
            }
        }
        Some(AllocFn::PosixMemalign) => {
            if ret as u32 == 0 && pending.out_ptr != 0 {
                // SAFETY: bpf_probe_read_user checks the user address.
                if let Ok(addr) = unsafe { bpf_probe_read_user(pending.out_ptr as *const u64) } {
                    if addr != 0 {
                        record(&ctx, addr, pending.size, tid);
                    }
                }
            }
        }
        Some(_) => {
            if ret != 0 {
                record(&ctx, ret, pending.size, tid);
            }
        }
        None => {}
    }
    0
}

#[inline(always)]
fn record(ctx: &RetProbeContext, addr: u64, size: u64, tid: u32) {
    count(Counter::Allocations);
    if !size_wanted(size) {
        count(Counter::OutsideSizeRange);
        return;
    }
    // Decided here, not at entry: the entry must still be saved so that allocator calls
    // nested inside an unsampled one are not sampled on their own.
    if !sampled() {
        count(Counter::Unsampled);
        return;
    }
    // SAFETY: uretprobe context is the user pt_regs.
    let stack_id = user_stack_id(ctx, Some(unsafe { &*ctx.regs }), FirstFrame::ReturnAddress);
    let record = AllocRecord {
        size,
        // SAFETY: helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
        tid,
        scope: current_scope(tid),
    };
    if ALLOCS.insert(addr, record, BPF_NOEXIST).is_err() {
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
