//! Go programs: goroutines per creation site, and the Go heap a span at a time (see the Go
//! section of leak-common). Every probe here is an entry probe, placed on a function's first
//! instruction or, for large objects, on the instruction after a call: a return probe on Go
//! code puts the kernel's trampoline address on the goroutine stack, and the runtime's stack
//! walks (GC, stack growth, tracebacks) stop the program when they meet it.
//!
//! Function probes sit on the stack check's branch, which the kernel emulates, rather than on
//! the first instruction, which it would single-step (about four times the cost).
//!
//! Registers follow Go's internal ABI: integer arguments and results in RAX, RBX, RCX, RDI,
//! RSI, R8, …
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns},
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};
use leak_common::{
    AllocRecord, Counter, GO_GOEXIT_PROGRAM, GO_LARGE_SPAN_PROGRAM, GO_LAYOUT_GLOBAL,
    GO_NEWPROC_PROGRAM, GO_ON_STACK_CHECK, GO_SPAN_CLASS_MARK, GO_SPAN_CLASSES,
    GO_SPAN_FREE_PROGRAM, GO_SPAN_FULL_PROGRAM, GoLayout, GoroutineSite, MAX_GOROUTINE_SITES,
    UNKNOWN_STACK_ID, go_span_slot, map_names,
};

use crate::{
    counters::{atomic_add, count},
    maps::ALLOCS,
    settings::target_tid,
    stacks::{FirstFrame, add_to_stack, user_stack_id},
    target::{Arguments, read_user_u64},
};

/// The target's runtime layout. Set by user space before load (all zero for other programs,
/// whose Go probes are never attached).
#[unsafe(no_mangle)]
static GO_LAYOUT: GoLayout = GoLayout {
    g_gopc: 0,
    mcache_alloc: 0,
    span_start: 0,
    span_npages: 0,
    page_bytes: 0,
};
named!(GO_LAYOUT, GO_LAYOUT_GLOBAL);

#[map]
static GOROUTINE_SITES: HashMap<u64, GoroutineSite> =
    HashMap::with_max_entries(MAX_GOROUTINE_SITES, 0);
named!(GOROUTINE_SITES, map_names::GOROUTINE_SITES);

/// Whether this pass of a probe on a stack-check branch is the one before the stack grows
/// (the branch to morestack is taken when CF or ZF is set): the function runs again from
/// its entry afterwards, and that pass is the one to count.
#[inline(always)]
fn stack_about_to_grow(ctx: &ProbeContext) -> bool {
    // SAFETY: reads this attachment's cookie; the context is the program's own.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // SAFETY: uprobe context is the user pt_regs.
    let flags = unsafe { (*ctx.regs).eflags };
    cookie == GO_ON_STACK_CHECK && flags & (CARRY_FLAG | ZERO_FLAG) != 0
}

const CARRY_FLAG: u64 = 1 << 0;
const ZERO_FLAG: u64 = 1 << 6;

#[inline(always)]
fn layout() -> GoLayout {
    // SAFETY: a plain read of a global that user space sets once before load.
    unsafe { core::ptr::read_volatile(&GO_LAYOUT) }
}

/// The site's entry, created empty when it is new; None when the map is full.
#[inline(always)]
fn site(gopc: u64) -> Option<*mut GoroutineSite> {
    if let Some(site) = GOROUTINE_SITES.get_ptr_mut(gopc) {
        return Some(site);
    }
    let fresh = GoroutineSite {
        stack_id: UNKNOWN_STACK_ID,
        ..GoroutineSite::default()
    };
    // Another CPU may have created it meanwhile; then use theirs.
    let _ = GOROUTINE_SITES.insert(gopc, fresh, BPF_NOEXIST.into());
    let site = GOROUTINE_SITES.get_ptr_mut(gopc);
    if site.is_none() {
        count(Counter::GoroutineSitesFull);
    }
    site
}

/// `runtime.newproc(fn)`, the `go` statement: its return address is the new goroutine's
/// `gopc`.
#[uprobe]
pub fn go_newproc(ctx: ProbeContext) -> u32 {
    if target_tid().is_none() || stack_about_to_grow(&ctx) {
        return 0;
    }
    // SAFETY: uprobe context is the user pt_regs.
    let regs = unsafe { &*ctx.regs };
    let Some(gopc) = read_user_u64(regs.rsp) else {
        return 0;
    };
    count(Counter::GoroutinesCreated);
    let stack_id = user_stack_id(&ctx, Some(regs), FirstFrame::FunctionEntry);
    if let Some(site) = site(gopc) {
        // SAFETY: a live map value; the counters are updated atomically, the stack id is
        // one word (any CPU's latest is right).
        unsafe {
            atomic_add(&raw mut (*site).created, 1);
            (*site).stack_id = stack_id;
        }
    }
    0
}
named!(go_newproc, GO_NEWPROC_PROGRAM);

/// `runtime.goexit0(gp)`: goroutine `gp` has returned (or called Goexit).
#[uprobe]
pub fn go_goexit(ctx: ProbeContext) -> u32 {
    if target_tid().is_none() {
        return 0;
    }
    // SAFETY: uprobe context is the user pt_regs.
    let gp = unsafe { (*ctx.regs).rax };
    let Some(gopc) = read_user_u64(gp.wrapping_add(layout().g_gopc)) else {
        return 0;
    };
    count(Counter::GoroutinesExited);
    if let Some(site) = site(gopc) {
        // SAFETY: a live map value, updated atomically.
        unsafe { atomic_add(&raw mut (*site).exited, 1) };
    }
    0
}
named!(go_goexit, GO_GOEXIT_PROGRAM);

/// The start address and size of span `span`, or None for the runtime's empty placeholder
/// span (no pages) and unreadable ones.
#[inline(always)]
fn span_extent(span: u64, layout: &GoLayout) -> Option<(u64, u64)> {
    if span == 0 {
        return None;
    }
    let start = read_user_u64(span.wrapping_add(layout.span_start))?;
    let pages = read_user_u64(span.wrapping_add(layout.span_npages))?;
    if start == 0 || pages == 0 {
        return None;
    }
    Some((start, pages.wrapping_mul(layout.page_bytes)))
}

/// Records a span in use under the current stack. A span already recorded (swept, then
/// filled again) moves to the new stack.
#[inline(always)]
/// `tag`: the record's `tid` (the thread, or a small objects' span class, see
/// leak_common::GO_SPAN_CLASS_MARK).
fn track_span(ctx: &ProbeContext, start: u64, bytes: u64, tag: u32, first: FirstFrame) {
    count(Counter::Allocations);
    // SAFETY: uprobe context is the user pt_regs.
    let stack_id = user_stack_id(ctx, Some(unsafe { &*ctx.regs }), first);
    let record = AllocRecord {
        size: bytes,
        // SAFETY: helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
        tid: tag,
        scope: 0,
    };
    // SAFETY: copied out before the overwrite.
    if let Some(previous) = unsafe { ALLOCS.get(start) }.copied() {
        add_to_stack(previous.stack_id, previous.size, false);
    }
    if ALLOCS.insert(start, record, 0).is_err() {
        count(Counter::AllocMapFull);
        return;
    }
    add_to_stack(stack_id, bytes, true);
}

/// `(*mcache).refill(c, spc)`: the goroutine's current span of class `spc` is full. It is
/// recorded under the stack whose allocation found it full: one sample per span's worth of
/// small objects.
#[uprobe]
pub fn go_span_full(ctx: ProbeContext) -> u32 {
    if target_tid().is_none() {
        return 0;
    }
    if stack_about_to_grow(&ctx) {
        return 0;
    }
    let layout = layout();
    // SAFETY: uprobe context is the user pt_regs.
    let (cache, class) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx & 0xFF) };
    if class >= GO_SPAN_CLASSES {
        return 0;
    }
    let slot = cache
        .wrapping_add(layout.mcache_alloc)
        .wrapping_add(class * 8);
    let Some(span) = read_user_u64(slot) else {
        return 0;
    };
    if let Some((start, bytes)) = span_extent(span, &layout) {
        let tag = GO_SPAN_CLASS_MARK | class as u32;
        track_span(&ctx, start, bytes, tag, FirstFrame::FunctionEntry);
    }
    0
}
named!(go_span_full, GO_SPAN_FULL_PROGRAM);

/// In `mallocgc`, just after `(*mcache).allocLarge` returned the span of one large object
/// (in RAX).
#[uprobe]
pub fn go_large_span(ctx: ProbeContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    // SAFETY: reads this attachment's cookie; the context is the program's own.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // SAFETY: uprobe context is the user pt_regs.
    let regs = unsafe { &*ctx.regs };
    // Read from the copied registers whatever the slot: the verifier refuses a load through
    // a context pointer that was moved.
    let span = Arguments::of(regs).at(go_span_slot(cookie));
    if let Some((start, bytes)) = span_extent(span, &layout()) {
        track_span(&ctx, start, bytes, tid, FirstFrame::ReturnAddress);
    }
    0
}
named!(go_large_span, GO_LARGE_SPAN_PROGRAM);

/// `(*mheap).freeSpanLocked(h, s, typ)`: span `s` goes back to the heap. Spans the probes
/// never saw (stacks, spans filled before tracing began) are not in `ALLOCS`.
#[uprobe]
pub fn go_span_free(ctx: ProbeContext) -> u32 {
    if target_tid().is_none() {
        return 0;
    }
    // SAFETY: uprobe context is the user pt_regs.
    let span = unsafe { (*ctx.regs).rbx };
    let Some(start) = read_user_u64(span.wrapping_add(layout().span_start)) else {
        return 0;
    };
    // SAFETY: copied out before removal.
    if let Some(record) = unsafe { ALLOCS.get(start) }.copied() {
        // Only the CPU whose delete succeeds debits the stack.
        if ALLOCS.remove(start).is_ok() {
            count(Counter::Frees);
            add_to_stack(record.stack_id, record.size, false);
        }
    }
    0
}
named!(go_span_free, GO_SPAN_FREE_PROGRAM);
