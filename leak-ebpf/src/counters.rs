//! Counting: the per-CPU event counters user space reads (`COUNTERS`, by `Counter`), and
//! counters in map values that several CPUs update.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use leak_common::Counter;

use crate::maps::COUNTERS;

/// Counts one `counter` event, in this CPU's slot.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, valid for the program's run; no other writer on this CPU.
        unsafe { *value += 1 };
    }
}

/// Adds `delta` (two's complement for a debit) to a counter other CPUs may update too.
#[inline(always)]
pub fn atomic_add(field: *mut u64, delta: u64) {
    // SAFETY: `field` points into a live map value; every concurrent update is atomic. The
    // old value is unused, so this is the plain BPF atomic add.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, delta) };
}
