//! Go programs: what the runtime probes need and record.
//!
//! A Go program allocates from its own heap, not through malloc. Its memory is followed a span
//! at a time: when a goroutine's mcache span of one size class is full (`(*mcache).refill`), or
//! a large object gets a span of its own (`mallocgc` after its call to `(*mcache).allocLarge`),
//! the span is recorded in `ALLOCS` under the allocating stack, like a malloc'd block; when the
//! heap frees the span (`(*mheap).freeSpanLocked`), it is debited again. A span that is swept
//! and filled again is recorded again, under the stack that filled it last.
//!
//! Goroutines are counted per creation site (the `go` statement's return address, which the
//! runtime keeps as `g.gopc`): `runtime.newproc` adds one, `runtime.goexit0` takes one off.
//! Only entry probes are used: a return probe on Go code breaks the runtime's stack walks.

use crate::RAX_SLOT;

/// Name of the global holding the target's [`GoLayout`]; set by user space at load time.
pub const GO_LAYOUT_GLOBAL: &str = "GO_LAYOUT";

/// Where the Go runtime keeps what the probes read, from the binary's DWARF (bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoLayout {
    /// `runtime.g.gopc`: the creating `go` statement's return address.
    pub g_gopc: u64,
    /// `runtime.mcache.alloc`: the array of current spans, one per span class.
    pub mcache_alloc: u64,
    /// `runtime.mspan.startAddr` and `.npages`.
    pub span_start: u64,
    pub span_npages: u64,
    /// The runtime's page (`_PageSize`, 8 KiB on every platform).
    pub page_bytes: u64,
}

/// Span classes in a Go mcache's `alloc` array (68 size classes × scan/noscan in Go 1.19+;
/// larger indexes are refused).
pub const GO_SPAN_CLASSES: u64 = 136;

/// Creation sites followed at once; goroutines of later sites are counted as dropped.
pub const MAX_GOROUTINE_SITES: u32 = 4096;

/// Goroutines created and ended at one creation site, in `GOROUTINE_SITES` by `gopc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineSite {
    pub created: u64,
    pub exited: u64,
    /// The stack of the latest `go` statement seen at this site (its first frame is the
    /// site itself).
    pub stack_id: u32,
    pub _pad: u32,
}

/// The uprobe cookie of a Go probe placed on a function's stack-check branch (`jbe` to
/// morestack) rather than its entry: a pass where the branch will be taken is skipped, since
/// the function starts over once its stack has grown.
pub const GO_ON_STACK_CHECK: u64 = 1;

/// The uprobe cookie of the probe after a call to `allocLarge`, when it was moved past the
/// call's return onto an instruction the kernel emulates: the span is then read from argument
/// slot `cookie & 0xF` (see [`ARGUMENT_SLOTS`]) rather than RAX.
pub const GO_SPAN_IN_SLOT: u64 = 1 << 8;

/// The argument slot the probe after a call to `allocLarge` reads the span from, given its
/// cookie (see [`GO_SPAN_IN_SLOT`]).
pub const fn go_span_slot(cookie: u64) -> u8 {
    if cookie & GO_SPAN_IN_SLOT != 0 {
        (cookie & 0xF) as u8
    } else {
        RAX_SLOT
    }
}

/// Set in the `tid` of a Go span of small objects' record, whose low bits are then its span
/// class (size class × 2 + noscan): stacks charged with spans of one class share them.
pub const GO_SPAN_CLASS_MARK: u32 = 1 << 31;

/// Program names of the Go probes.
pub const GO_NEWPROC_PROGRAM: &str = "go_newproc";
pub const GO_GOEXIT_PROGRAM: &str = "go_goexit";
pub const GO_SPAN_FULL_PROGRAM: &str = "go_span_full";
pub const GO_LARGE_SPAN_PROGRAM: &str = "go_large_span";
pub const GO_SPAN_FREE_PROGRAM: &str = "go_span_free";
