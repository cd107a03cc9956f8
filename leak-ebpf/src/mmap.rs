//! Syscall tracepoints for anonymous mmap, munmap and mremap, and brk, of the target; and
//! the end of each of its threads (`thread_exit`).
//!
//! Each completed call becomes an [`MmapEvent`] for user space, which tracks regions by range.
//! Calls made from inside an allocator call (malloc's own arenas, realloc's mremap) belong to
//! the allocator and are already counted by its probes, so they are skipped.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use leak_common::{
    BRK_BY_ALLOCATOR, Counter, INSIDE_ALLOCATOR_MAX_AGE_NS, MmapEvent, MmapEventKind,
    PendingSyscall, SYSCALL_PROGRAMS, ThreadEnd, UNKNOWN_STACK_ID,
};

use crate::{
    alloc::still_running,
    counters::count,
    maps::{MMAP_EVENTS, PENDING_CALLS, PENDING_SYSCALLS, THREAD_ENDS},
    settings::target_tid,
    stacks::{FirstFrame, user_stack_id},
    target::user_regs,
};

const MAP_ANONYMOUS: u64 = 0x20;
// Offsets of the fields in the syscalls:sys_enter_* / sys_exit_* records (see the
// tracepoints' `format` files): the arguments start at 16, one 8-byte slot each.
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const ARG3: usize = 40;
const RET: usize = 16;

#[inline(always)]
fn field(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: offsets come from the tracepoint format; read_at bounds-checks via the helper.
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

/// The word at the user stack pointer: the return address into the caller when the syscall
/// was made by a frameless libc wrapper (mmap, munmap, syscall).
#[inline(always)]
fn caller_hint() -> u64 {
    // SAFETY: helpers check their pointers; a failed read yields 0 (no hint).
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        if regs.is_null() {
            return 0;
        }
        let Ok(sp) = bpf_probe_read_kernel(&raw const (*regs).rsp) else {
            return 0;
        };
        bpf_probe_read_user(sp as *const u64).unwrap_or(0)
    }
}

#[inline(always)]
fn inside_allocator(tid: u32) -> bool {
    // SAFETY: copied out at once; only this thread writes its entry.
    let call = unsafe { PENDING_CALLS.get(tid) }.copied();
    // SAFETY: helper without arguments.
    call.is_some_and(|call| {
        still_running(
            &call,
            unsafe { bpf_ktime_get_ns() },
            INSIDE_ALLOCATOR_MAX_AGE_NS,
        )
    })
}

#[inline(always)]
fn save(tid: u32, pending: PendingSyscall) {
    if PENDING_SYSCALLS.insert(tid, pending, 0).is_err() {
        count(Counter::PendingMapFull);
    }
}

#[inline(always)]
fn take(tid: u32, kind: MmapEventKind) -> Option<PendingSyscall> {
    // SAFETY: copied out before removal.
    let pending = unsafe { PENDING_SYSCALLS.get(tid) }.copied()?;
    let _ = PENDING_SYSCALLS.remove(tid);
    if pending.kind == kind as u32 {
        Some(pending)
    } else {
        None
    }
}

#[inline(always)]
fn failed(ret: u64) -> bool {
    // -4095..-1 are errors for every syscall, including mmap.
    ret > (-4096i64) as u64
}

#[inline(always)]
fn emit(event: MmapEvent) {
    if MMAP_EVENTS.output::<MmapEvent>(&event, 0).is_err() {
        count(Counter::MmapEventsLost);
    }
}

#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    if field(&ctx, ARG3) & MAP_ANONYMOUS == 0 || inside_allocator(tid) {
        return 0;
    }
    save(
        tid,
        PendingSyscall {
            kind: MmapEventKind::Map as u32,
            _pad: 0,
            addr: field(&ctx, ARG0),
            len: field(&ctx, ARG1),
            new_len: 0,
            caller_hint: caller_hint(),
        },
    );
    0
}
named!(mmap_enter, SYSCALL_PROGRAMS[0].0);

#[tracepoint]
pub fn mmap_exit(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    let Some(pending) = take(tid, MmapEventKind::Map) else {
        return 0;
    };
    let ret = field(&ctx, RET);
    if failed(ret) {
        return 0;
    }
    let regs = user_regs();
    let stack_id = user_stack_id(&ctx, regs.as_ref(), FirstFrame::ReturnAddress);
    emit(MmapEvent {
        kind: MmapEventKind::Map as u32,
        tid,
        stack_id,
        _pad: 0,
        // SAFETY: helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        addr: ret,
        len: pending.len,
        new_addr: 0,
        new_len: 0,
        caller_hint: pending.caller_hint,
    });
    0
}
named!(mmap_exit, SYSCALL_PROGRAMS[1].0);

#[tracepoint]
pub fn munmap_enter(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    save(
        tid,
        PendingSyscall {
            kind: MmapEventKind::Unmap as u32,
            _pad: 0,
            addr: field(&ctx, ARG0),
            len: field(&ctx, ARG1),
            new_len: 0,
            caller_hint: 0,
        },
    );
    0
}
named!(munmap_enter, SYSCALL_PROGRAMS[2].0);

#[tracepoint]
pub fn munmap_exit(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    let Some(pending) = take(tid, MmapEventKind::Unmap) else {
        return 0;
    };
    if field(&ctx, RET) != 0 {
        return 0;
    }
    emit(MmapEvent {
        kind: MmapEventKind::Unmap as u32,
        tid,
        stack_id: UNKNOWN_STACK_ID,
        _pad: 0,
        // SAFETY: helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        addr: pending.addr,
        len: pending.len,
        new_addr: 0,
        new_len: 0,
        caller_hint: 0,
    });
    0
}
named!(munmap_exit, SYSCALL_PROGRAMS[3].0);

#[tracepoint]
pub fn mremap_enter(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    if inside_allocator(tid) {
        return 0;
    }
    save(
        tid,
        PendingSyscall {
            kind: MmapEventKind::Remap as u32,
            _pad: 0,
            addr: field(&ctx, ARG0),
            len: field(&ctx, ARG1),
            new_len: field(&ctx, ARG2),
            caller_hint: 0,
        },
    );
    0
}
named!(mremap_enter, SYSCALL_PROGRAMS[4].0);

#[tracepoint]
pub fn mremap_exit(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    let Some(pending) = take(tid, MmapEventKind::Remap) else {
        return 0;
    };
    let ret = field(&ctx, RET);
    if failed(ret) {
        return 0;
    }
    emit(MmapEvent {
        kind: MmapEventKind::Remap as u32,
        tid,
        stack_id: UNKNOWN_STACK_ID,
        _pad: 0,
        // SAFETY: helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        addr: pending.addr,
        len: pending.len,
        new_addr: ret,
        new_len: pending.new_len,
        caller_hint: 0,
    });
    0
}
named!(mremap_exit, SYSCALL_PROGRAMS[5].0);

/// The program break after brk(2): user space turns the change since the last one into a
/// region mapped (or unmapped) by this stack. Calls made inside an allocator call (malloc
/// growing its heap) belong to the allocation, as with mmap: they are sent without a stack,
/// only so that user space knows where the break is (a later trim by free would otherwise
/// look like growth from the last break it saw).
#[tracepoint]
pub fn brk_exit(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    let program_break = field(&ctx, RET);
    if program_break == 0 || failed(program_break) {
        return 0;
    }
    let by_allocator = inside_allocator(tid);
    let stack_id = if by_allocator {
        UNKNOWN_STACK_ID
    } else {
        let regs = user_regs();
        user_stack_id(&ctx, regs.as_ref(), FirstFrame::ReturnAddress)
    };
    emit(MmapEvent {
        kind: MmapEventKind::Brk as u32,
        tid,
        stack_id,
        _pad: 0,
        // SAFETY: helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        addr: program_break,
        len: if by_allocator { BRK_BY_ALLOCATOR } else { 0 },
        new_addr: 0,
        new_len: 0,
        caller_hint: 0,
    });
    0
}
named!(brk_exit, SYSCALL_PROGRAMS[6].0);

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// A thread of the target ends (sched_process_exit): its user registers, as the kernel saved
/// them, go into THREAD_ENDS. At the process's exit the threads its end took were live then:
/// their registers are roots and their stacks live from their stack pointers up (what
/// valgrind and LeakSanitizer read of every thread); a thread that ended itself before
/// leaves a stack whose frames are all dead.
#[tracepoint]
pub fn thread_exit(_ctx: TracePointContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    // SAFETY: helpers check their pointers; a failed read records nothing.
    let Some(regs) = (unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        if regs.is_null() {
            return 0;
        }
        bpf_probe_read_kernel(regs).ok()
    }) else {
        return 0;
    };
    let end = ThreadEnd {
        registers: [
            regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ],
        ip: regs.rip,
        syscall: regs.orig_rax,
        // SAFETY: helper without arguments.
        ended_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = THREAD_ENDS.insert(&tid, &end, 0);
    0
}
named!(thread_exit, SYSCALL_PROGRAMS[7].0);
