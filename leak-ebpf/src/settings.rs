//! What user space sets before load (--pid, --min-size/--max-size, --sample-rate,
//! --unwind), and the checks each probe makes with it. Set once, then only read.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32};
use leak_common::{
    MAX_SIZE_GLOBAL, MIN_SIZE_GLOBAL, SAMPLE_RATE_GLOBAL, TARGET_TGID_GLOBAL, UNWIND_DWARF,
    UNWIND_FRAME_POINTERS, UNWIND_MODE_GLOBAL,
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

/// Whether stacks are walked with the modules' unwind tables (--unwind dwarf), or with the
/// frame-pointer chain alone.
#[inline(always)]
pub fn unwind_with_tables() -> bool {
    // SAFETY: a plain read of a global that user space sets once before load.
    unsafe { core::ptr::read_volatile(&UNWIND_MODE) == UNWIND_DWARF }
}

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
