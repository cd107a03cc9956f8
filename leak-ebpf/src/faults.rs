//! `leaktrace watch`'s always-on gear: sampled page faults of the target with their user
//! stacks. The perf software event (minor faults, one sample every N) runs this program; the
//! stack that first touched new memory is credited with one sample. No allocator is probed,
//! so the target pays only for the sampled faults.
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, pt_regs},
    macros::{map, perf_event},
    maps::PerCpuHashMap,
    programs::PerfEventContext,
};
use leak_common::{Counter, MAX_STACKS, PAGE_FAULT_PROGRAM, map_names};

use crate::{
    counters::count,
    settings::target_tid,
    stacks::{FirstFrame, user_stack_id},
    target::user_regs,
};

/// Samples per stack id (and the unknown stack). Per CPU: no atomics; user space sums the
/// CPUs.
#[map]
pub static FAULT_SAMPLES: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(MAX_STACKS + 1, BPF_F_NO_PREALLOC);
named!(FAULT_SAMPLES, map_names::FAULT_SAMPLES);

#[perf_event]
pub fn page_fault(ctx: PerfEventContext) -> u32 {
    if target_tid().is_none() {
        return 0;
    }
    // A fault taken in user mode: its registers are the faulting instruction's. One taken in
    // the kernel (copying into a user buffer): the user registers are those of the syscall.
    // SAFETY: the context is the kernel's bpf_perf_event_data, whose first member is regs.
    let fault_regs: pt_regs = unsafe { *ctx.ctx.cast::<pt_regs>() };
    let (regs, first) = if fault_regs.cs & 3 == 3 {
        (Some(fault_regs), FirstFrame::Running)
    } else {
        (user_regs(), FirstFrame::ReturnAddress)
    };
    let stack_id = user_stack_id(&ctx, regs.as_ref(), first);
    match FAULT_SAMPLES.get_ptr_mut(stack_id) {
        // SAFETY: this CPU's copy of the value; nothing else writes it while we run.
        Some(samples) => unsafe { *samples += 1 },
        None => {
            if FAULT_SAMPLES.insert(stack_id, 1, 0).is_err() {
                count(Counter::StackTotalsFull);
            }
        }
    }
    0
}
named!(page_fault, PAGE_FAULT_PROGRAM);
