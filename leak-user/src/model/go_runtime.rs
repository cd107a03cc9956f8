//! Facts of the Go runtime that two stages share: where its heap profile lives in an
//! executable (found by `probe::golang`) and the layout of its buckets (read by
//! `collect::go_profile`, which explains them; the same in Go 1.19 to 1.23, checked against
//! each toolchain's DWARF), and the functions that allocate large objects.

/// A bucket's header: next, allnext, typ, hash, size, nstk.
pub const BUCKET_HEADER_BYTES: u64 = 48;

/// `bucket.nstk`, the last word of the header.
pub const BUCKET_NSTK_OFFSET: u64 = 40;

/// `memRecord.future`, after `active`.
pub const MEM_RECORD_FUTURE_OFFSET: u64 = 32;

/// `memRecordCycle.free_bytes`, its last word.
pub const CYCLE_FREE_BYTES_OFFSET: u64 = 24;

/// Where the profile lives in the target (virtual addresses in the executable's file; the
/// load bias is added when read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileAddresses {
    /// `runtime.mbuckets`: the newest bucket.
    pub buckets: u64,
    /// `runtime.mProfCycle`: the GC cycle count, shifted left by one (bit 0: flushed).
    pub cycle: u64,
    /// `runtime.MemProfileRate`.
    pub rate: u64,
}

/// The functions that call `ALLOC_LARGE` (mallocgcLarge since Go 1.24).
pub const LARGE_CALLERS: [&str; 2] = ["runtime.mallocgc", "runtime.mallocgcLarge"];
