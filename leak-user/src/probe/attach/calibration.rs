//! What a uprobe trap costs on this machine, measured once per leaktrace process on two
//! functions of leaktrace's own: the cost meter's unit (see `model::cost`).
use std::{num::NonZeroU32, path::PathBuf};

use aya::{
    Ebpf,
    programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
};
use leak_common::{ALLOC_RETURN_PROGRAM, CallShape, ENTRY_PROGRAM, NO_ARG};

use crate::{model::cost::TrapCost, probe::attach::programs::uprobe, sys::procfs};

// Two functions of leaktrace's own whose probes measure what a trap costs on this machine:
// one starting with an instruction the kernel emulates (push), one with one it single-steps
// (mov).
std::arch::global_asm!(
    ".pushsection .text.leaktrace_trap_points,\"ax\",@progbits",
    ".p2align 4",
    ".globl leaktrace_trap_emulated",
    ".type leaktrace_trap_emulated,@function",
    "leaktrace_trap_emulated:",
    "push rbp",
    "pop rbp",
    "mov rax, rdi",
    "ret",
    ".size leaktrace_trap_emulated, .-leaktrace_trap_emulated",
    ".p2align 4",
    ".globl leaktrace_trap_stepped",
    ".type leaktrace_trap_stepped,@function",
    "leaktrace_trap_stepped:",
    "mov rax, rdi",
    "ret",
    ".size leaktrace_trap_stepped, .-leaktrace_trap_stepped",
    ".popsection",
);

unsafe extern "C" {
    fn leaktrace_trap_emulated(value: u64) -> u64;
    fn leaktrace_trap_stepped(value: u64) -> u64;
}

/// Calls made to time one kind of trap.
const CALIBRATION_CALLS: u64 = 5_000;
const CALIBRATION_STEPPED_CALLS: u64 = 300;

/// What a trap costs here, once measured.
static MEASURED: std::sync::OnceLock<TrapCost> = std::sync::OnceLock::new();

/// Whether a trap's cost has been measured (by an earlier session of this process).
pub(super) fn trap_cost_measured() -> bool {
    MEASURED.get().is_some()
}

/// Measures what a uprobe trap costs on this machine: leaktrace's entry program is probed on
/// two functions of its own (it returns at once: leaktrace is not the target), each called in
/// a loop with and without the probe. The probes' links are returned to be detached with the
/// others at the end (the functions are not called again, so they cost nothing meanwhile,
/// and detaching now would wait for the kernel). None when a probe cannot be placed.
///
/// A trap's cost is the machine's: measured once per leaktrace process, and remembered for
/// the next session (each of watch's windows is one).
pub(super) fn calibrate_trap_cost(ebpf: &mut Ebpf) -> (Option<TrapCost>, Vec<UProbeLink>) {
    if let Some(cost) = MEASURED.get() {
        return (Some(*cost), Vec::new());
    }
    let mut links = Vec::new();
    let cost = measure_trap_cost(ebpf, &mut links);
    if let Some(cost) = cost {
        let _ = MEASURED.set(cost);
    }
    (cost, links)
}

fn measure_trap_cost(ebpf: &mut Ebpf, links: &mut Vec<UProbeLink>) -> Option<TrapCost> {
    let me = std::process::id();
    let maps = procfs::read_maps(me).ok()?;
    let exe = PathBuf::from("/proc/self/exe");
    let file_offset = |function: unsafe extern "C" fn(u64) -> u64| -> Option<u64> {
        let address = function as usize as u64;
        let mapping = maps.iter().find(|m| m.contains(address) && m.is_file())?;
        Some(address - mapping.start + mapping.offset)
    };
    // The thread's CPU time, not wall time: on a busy machine the loop also waits for a CPU,
    // which is no part of what a trap costs.
    let time = |function: unsafe extern "C" fn(u64) -> u64, calls: u64| -> f64 {
        let started = procfs::thread_cpu_ns();
        let mut sum = 0u64;
        for i in 0..calls {
            // SAFETY: both functions return their argument and touch nothing else.
            sum = sum.wrapping_add(unsafe { function(std::hint::black_box(i)) });
        }
        std::hint::black_box(sum);
        procfs::thread_cpu_ns().saturating_sub(started) as f64 / calls as f64
    };
    let scope = UProbeScope::OneProcess(NonZeroU32::new(me)?);
    let mut measure = |function: unsafe extern "C" fn(u64) -> u64,
                       programs: &[&str],
                       calls: u64|
     -> Option<f64> {
        let untraced = time(function, calls);
        for program in programs {
            let probe = uprobe(ebpf, program).ok()?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(file_offset(function)?),
                cookie: Some(CallShape::free(NO_ARG).cookie()),
            };
            let id = probe.attach(point, &exe, scope).ok()?;
            links.push(probe.take_link(id).ok()?);
        }
        Some((time(function, calls) - untraced).max(0.0))
    };
    let emulated_ns = measure(leaktrace_trap_emulated, &[ENTRY_PROGRAM], CALIBRATION_CALLS);
    let single_stepped_ns = measure(
        leaktrace_trap_stepped,
        &[ENTRY_PROGRAM],
        CALIBRATION_STEPPED_CALLS,
    );
    // The emulated function has its entry probe already (in the untraced time too): this
    // measures what the return probe adds.
    let return_ns = measure(
        leaktrace_trap_emulated,
        &[ALLOC_RETURN_PROGRAM],
        CALIBRATION_CALLS,
    );
    let emulated_ns = emulated_ns?;
    let cost = TrapCost {
        emulated_ns,
        single_stepped_ns: single_stepped_ns?,
        return_ns: return_ns?,
    };
    log::debug!(
        "a uprobe trap costs {:.0} ns here, {:.0} ns when single-stepped, a return probe {:.0} ns more",
        cost.emulated_ns,
        cost.single_stepped_ns,
        cost.return_ns
    );
    Some(cost)
}
