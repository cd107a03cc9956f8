//! Reading the traced thread: its registers (an entry probe's argument slots, the user
//! registers of a syscall or a fault) and its memory.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
};
use leak_common::ARGUMENT_SLOTS;

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

/// A word of the target's memory, None where it cannot be read.
#[inline(always)]
pub fn read_user_u64(address: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the user address.
    unsafe { bpf_probe_read_user(address as *const u64) }.ok()
}
