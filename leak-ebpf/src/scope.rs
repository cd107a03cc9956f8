//! Request scopes (--scope): uprobes on a function's entry and return mark the calling
//! thread as inside a call of it, so the allocations it makes meanwhile are attributed to
//! that call, and to the (function, label) tag its argument gives.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_attach_cookie, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use leak_common::{
    ARGUMENT_REGISTERS, Counter, MAX_PENDING_CALLS, MAX_SCOPE_CALLS, MAX_SCOPE_DEPTH,
    MAX_SCOPE_TAGS, MAX_SCOPES, SCOPE_COUNT_GLOBAL, SCOPE_ENTRY_PROGRAM, SCOPE_EVENTS_BYTES,
    SCOPE_LABEL_BYTES, SCOPE_LABEL_INT, SCOPE_LABEL_STR, SCOPE_RETURN_PROGRAM, ScopeCall,
    ScopeFrame, ScopeLabel, ScopeReturn, ScopeShape, ScopeStack, ScopeTotals, map_names, scope_of,
    scope_parts,
};

use crate::{
    counters::{atomic_add, count},
    settings::target_tid,
    target::Arguments,
};

/// How many --scope functions are probed. Set before load; 0 skips the scope lookup on
/// every allocation.
#[unsafe(no_mangle)]
static SCOPE_COUNT: u32 = 0;
named!(SCOPE_COUNT, SCOPE_COUNT_GLOBAL);

/// The scope calls each thread is inside.
#[map]
static SCOPE_STACKS: HashMap<u32, ScopeStack> =
    HashMap::with_max_entries(MAX_PENDING_CALLS, BPF_F_NO_PREALLOC);
named!(SCOPE_STACKS, map_names::SCOPE_STACKS);

/// Tags handed out, by (scope, label).
#[map]
static SCOPE_TAGS: HashMap<ScopeLabel, u32> =
    HashMap::with_max_entries(MAX_SCOPE_TAGS, BPF_F_NO_PREALLOC);
named!(SCOPE_TAGS, map_names::SCOPE_TAGS);

/// Which label owns each labelled tag: claiming a tag is inserting here, which only one CPU
/// can win.
#[map]
static SCOPE_TAG_OWNERS: HashMap<u32, ScopeLabel> =
    HashMap::with_max_entries(MAX_SCOPE_TAGS, BPF_F_NO_PREALLOC);
named!(SCOPE_TAG_OWNERS, map_names::SCOPE_TAG_OWNERS);

/// Per tag and CPU: calls, bytes allocated and still held.
#[map]
static SCOPE_TOTALS: PerCpuArray<ScopeTotals> = PerCpuArray::with_max_entries(MAX_SCOPE_TAGS, 0);
named!(SCOPE_TOTALS, map_names::SCOPE_TOTALS);

/// Calls followed one by one, by call id.
#[map]
static SCOPE_CALLS: HashMap<u64, ScopeCall> =
    HashMap::with_max_entries(MAX_SCOPE_CALLS, BPF_F_NO_PREALLOC);
named!(SCOPE_CALLS, map_names::SCOPE_CALLS);

/// Calls that returned holding memory, for user space to read again later.
#[map]
static SCOPE_EVENTS: RingBuf = RingBuf::with_byte_size(SCOPE_EVENTS_BYTES, 0);
named!(SCOPE_EVENTS, map_names::SCOPE_EVENTS);

/// Per CPU: calls begun on it, for call ids.
#[map]
static SCOPE_NEXT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
named!(SCOPE_NEXT, map_names::SCOPE_NEXT);

/// Bits of a call id that name the CPU it began on.
const CALL_CPU_BITS: u32 = 12;

/// A fresh call id: this CPU's count of calls, and the CPU. Never 0.
#[inline(always)]
fn next_call() -> u64 {
    // SAFETY: helper without arguments.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() }) & ((1 << CALL_CPU_BITS) - 1);
    let count = match SCOPE_NEXT.get_ptr_mut(0) {
        Some(next) => {
            // SAFETY: this CPU's slot; nothing else writes it while the program runs.
            unsafe {
                *next += 1;
                *next
            }
        }
        None => 1,
    };
    (count << CALL_CPU_BITS) | cpu
}

/// Candidate tags tried for a new label.
const TAG_PROBES: u64 = 8;

#[inline(always)]
fn totals(tag: u32) -> Option<&'static mut ScopeTotals> {
    // SAFETY: this CPU's slot; nothing else writes it while the program runs.
    SCOPE_TOTALS
        .get_ptr_mut(tag)
        .map(|totals| unsafe { &mut *totals })
}

/// The tag of a call labelled `label`: the one already handed out, or a new one, or the
/// scope's own when the tags have run out.
#[inline(always)]
fn tag_of(shape: ScopeShape, label: &ScopeLabel) -> u32 {
    // SAFETY: the value is copied out.
    if let Some(tag) = unsafe { SCOPE_TAGS.get(label) } {
        return *tag;
    }
    // A new label: claim a free tag among a few picked by its hash (FNV-1a).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(label.index);
    let mut i = 0;
    while i < SCOPE_LABEL_BYTES {
        hash = (hash ^ u64::from(label.text[i])).wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    let first = u64::from(MAX_SCOPES) + 1;
    let room = u64::from(MAX_SCOPE_TAGS) - first;
    let mut probe = 0;
    while probe < TAG_PROBES {
        let tag = (first + (hash.wrapping_add(probe)) % room) as u32;
        probe += 1;
        if SCOPE_TAG_OWNERS
            .insert(&tag, label, BPF_NOEXIST.into())
            .is_err()
        {
            continue;
        }
        if SCOPE_TAGS.insert(label, &tag, BPF_NOEXIST.into()).is_ok() {
            return tag;
        }
        // Another CPU gave this label a tag meanwhile: use that one (the tag claimed here
        // stays unused).
        // SAFETY: the value is copied out.
        if let Some(theirs) = unsafe { SCOPE_TAGS.get(label) } {
            return *theirs;
        }
        break;
    }
    count(Counter::ScopeLabelsFull);
    shape.unlabelled_tag()
}

/// Entry of a scope function: a new call, labelled by its argument if asked.
#[uprobe]
pub fn scope_enter(ctx: ProbeContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    // SAFETY: reads this attachment's cookie; the context is the program's own.
    let shape = ScopeShape::from_cookie(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    // SAFETY: uprobe context is the user pt_regs.
    let regs = unsafe { &*ctx.regs };
    let sp = regs.rsp;
    let argument = Arguments::of(regs).at(shape.label_arg);
    let tag = if shape.label_arg < ARGUMENT_REGISTERS {
        let mut label = ScopeLabel {
            index: u32::from(shape.index),
            kind: u32::from(shape.label_kind),
            text: [0; leak_common::SCOPE_LABEL_BYTES],
        };
        if shape.label_kind == SCOPE_LABEL_STR {
            // A pointer that cannot be read leaves an empty label.
            // SAFETY: the helper checks the user address and bounds the copy.
            let _ =
                unsafe { bpf_probe_read_user_str_bytes(argument as *const u8, &mut label.text) };
        } else if shape.label_kind == SCOPE_LABEL_INT {
            let bytes = argument.to_le_bytes();
            let mut i = 0;
            while i < 8 {
                label.text[i] = bytes[i];
                i += 1;
            }
        }
        tag_of(shape, &label)
    } else {
        shape.unlabelled_tag()
    };

    let stack = match SCOPE_STACKS.get_ptr_mut(tid) {
        Some(stack) => stack,
        None => {
            if SCOPE_STACKS.insert(tid, ScopeStack::default(), 0).is_err() {
                count(Counter::ScopeTooDeep);
                return 0;
            }
            match SCOPE_STACKS.get_ptr_mut(tid) {
                Some(stack) => stack,
                None => return 0,
            }
        }
    };
    // SAFETY: this thread's entry; only this thread touches it.
    let stack = unsafe { &mut *stack };
    // The live frames are the outer ones, above this sp; those at or below it are calls
    // whose return was never seen (longjmp, exceptions). Indices are loop constants: the
    // verifier refuses a map value offset it cannot bound.
    let stored = stack.depth as usize;
    let mut depth = 0;
    for i in 0..MAX_SCOPE_DEPTH {
        if i >= stored || stack.frames[i].sp <= sp {
            break;
        }
        depth = i + 1;
    }
    if depth == MAX_SCOPE_DEPTH {
        stack.depth = depth as u64;
        count(Counter::ScopeTooDeep);
        return 0;
    }
    // Inside a call of the same scope (the function recursing, or calling a part of itself
    // the compiler outlined, `.part.N`, also probed): one call, the outer one. Its return
    // finds no frame of its own and leaves the stack alone.
    stack.depth = depth as u64;
    for i in 0..MAX_SCOPE_DEPTH {
        if i + 1 == depth {
            if stack.frames[i].scope == u32::from(shape.index) {
                return 0;
            }
            break;
        }
    }
    let call = next_call();
    for i in 0..MAX_SCOPE_DEPTH {
        if i == depth {
            stack.frames[i] = ScopeFrame {
                tag,
                scope: u32::from(shape.index),
                call,
                sp,
            };
            break;
        }
    }
    stack.depth = depth as u64 + 1;
    if let Some(totals) = totals(tag) {
        totals.calls += 1;
    }
    let followed = ScopeCall {
        tag,
        tid,
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        ..ScopeCall::default()
    };
    if SCOPE_CALLS.insert(&call, &followed, 0).is_err() {
        count(Counter::ScopeCallsFull);
    }
    0
}
named!(scope_enter, SCOPE_ENTRY_PROGRAM);

/// Return of a scope function: the call ends; what it still holds is noted.
#[uretprobe]
pub fn scope_return(ctx: RetProbeContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    let Some(stack) = SCOPE_STACKS.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: this thread's entry; only this thread touches it.
    let stack = unsafe { &mut *stack };
    // SAFETY: uretprobe context is the user pt_regs.
    let entry_sp = unsafe { (*ctx.regs).rsp }.wrapping_sub(8);
    // Frames deeper than this call's (below its sp) are dead: their returns were skipped.
    let stored = stack.depth as usize;
    let mut depth = 0;
    let mut top: Option<ScopeFrame> = None;
    for i in 0..MAX_SCOPE_DEPTH {
        if i >= stored || stack.frames[i].sp < entry_sp {
            break;
        }
        depth = i + 1;
        top = Some(stack.frames[i]);
    }
    let Some(frame) = top.filter(|frame| frame.sp == entry_sp) else {
        // Not a call we followed (entered before the probes, or too deep).
        stack.depth = depth as u64;
        return 0;
    };
    stack.depth = depth as u64 - 1;
    let Some(call) = SCOPE_CALLS.get_ptr_mut(&frame.call) else {
        if let Some(totals) = totals(frame.tag) {
            totals.returns += 1;
        }
        return 0;
    };
    // SAFETY: a live map value; an aligned 8-byte load is atomic.
    let held = unsafe { core::ptr::read_volatile(&raw const (*call).held_bytes) };
    // SAFETY: as above; only this thread allocates for its own call.
    let allocated = unsafe { core::ptr::read_volatile(&raw const (*call).allocated_bytes) };
    if let Some(totals) = totals(frame.tag) {
        totals.returns += 1;
        totals.returned_followed += 1;
        totals.returned_allocated_bytes = totals.returned_allocated_bytes.wrapping_add(allocated);
        totals.held_at_return_bytes = totals.held_at_return_bytes.wrapping_add(held);
        if held == 0 {
            totals.returned_empty += 1;
        }
    }
    if held == 0 {
        // Nothing to follow: it can only hold less later.
        let _ = SCOPE_CALLS.remove(&frame.call);
        return 0;
    }
    // SAFETY: helper without arguments.
    let end_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a live map value of a call this thread ran.
    let event = unsafe {
        (*call).held_at_return = held;
        (*call).end_ns = end_ns;
        ScopeReturn {
            call: frame.call,
            tag: frame.tag,
            tid,
            start_ns: (*call).start_ns,
            end_ns,
            allocated_bytes: allocated,
            held_at_return: held,
        }
    };
    if SCOPE_EVENTS.output::<ScopeReturn>(&event, 0).is_err() {
        // Nobody would read it again: not followed.
        count(Counter::ScopeEventsLost);
        let _ = SCOPE_CALLS.remove(&frame.call);
    }
    0
}
named!(scope_return, SCOPE_RETURN_PROGRAM);

/// The innermost scope call the thread is in, as a record's `scope` (0 for none).
#[inline(always)]
pub fn current_scope(tid: u32) -> u64 {
    // SAFETY: a plain read of a global that user space sets once before load.
    if unsafe { core::ptr::read_volatile(&SCOPE_COUNT) } == 0 {
        return 0;
    }
    // SAFETY: the value is copied out; only this thread writes it.
    let Some(stack) = (unsafe { SCOPE_STACKS.get(tid) }) else {
        return 0;
    };
    let depth = stack.depth as usize;
    for i in 0..MAX_SCOPE_DEPTH {
        if i + 1 == depth {
            let frame = stack.frames[i];
            return scope_of(frame.call, frame.tag);
        }
    }
    0
}

/// Credits (`allocated`) or debits `size` bytes of a block made in `scope` to its tag and,
/// while it is followed, its call.
#[inline(always)]
pub fn add_to_scope(scope: u64, size: u64, allocated: bool) {
    if scope == 0 {
        return;
    }
    let (call, tag) = scope_parts(scope);
    if let Some(totals) = totals(tag) {
        if allocated {
            totals.allocated_bytes = totals.allocated_bytes.wrapping_add(size);
            totals.allocs += 1;
            totals.held_bytes = totals.held_bytes.wrapping_add(size);
            totals.held_blocks = totals.held_blocks.wrapping_add(1);
        } else {
            totals.held_bytes = totals.held_bytes.wrapping_sub(size);
            totals.held_blocks = totals.held_blocks.wrapping_sub(1);
        }
    }
    if let Some(followed) = SCOPE_CALLS.get_ptr_mut(&call) {
        let delta = if allocated { size } else { size.wrapping_neg() };
        // SAFETY: a live map value; its counters are only updated atomically.
        unsafe {
            atomic_add(&raw mut (*followed).held_bytes, delta);
            if allocated {
                atomic_add(&raw mut (*followed).allocated_bytes, size);
            }
        }
    }
}
