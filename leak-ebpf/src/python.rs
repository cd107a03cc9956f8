//! CPython: the thread's Python frames, appended to a stack as tagged entries (see the
//! CPython section of leak-common). The thread state is the one holding the GIL, and only
//! when it belongs to the calling thread: an allocation made with the GIL released has no
//! Python frames of its own to show.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_loop, bpf_probe_read_user},
    macros::map,
    maps::Array,
};
use leak_common::{
    MAX_PYTHON_FRAMES, MAX_STACK_DEPTH, PY_LAYOUT_GLOBAL, PYTHON_CODE_UNIT_BYTES, PyLayout,
    map_names, python_entry,
};

use crate::{maps::STACK_SCRATCH, target::read_user_u64};

/// The target's CPython layout. Set by user space before load (zero: not CPython).
#[unsafe(no_mangle)]
static PY_LAYOUT: PyLayout = PyLayout {
    runtime_tstate_current: 0,
    tstate_native_thread_id: 0,
    tstate_cframe: 0,
    cframe_current_frame: 0,
    frame_code: 0,
    frame_previous: 0,
    frame_prev_instr: 0,
    frame_is_entry: 0,
    code_bytecode: 0,
};
named!(PY_LAYOUT, PY_LAYOUT_GLOBAL);

/// The address of `_PyRuntime` in the target, written by user space once the interpreter is
/// mapped (0 until then).
#[map]
static PY_RUNTIME: Array<u64> = Array::with_max_entries(1, 0);
named!(PY_RUNTIME, map_names::PY_RUNTIME);

/// The walk so far; lives on the caller's stack while bpf_loop calls `step`.
#[repr(C)]
struct Walk {
    frame: u64,
    layout: PyLayout,
}

/// Appends the calling thread's Python frames, innermost first, to this CPU's scratch stack
/// (cutting its native part short when both do not fit).
#[inline(always)]
pub fn append_python_frames() {
    // SAFETY: a plain read of a global that user space sets once before load.
    let layout = unsafe { core::ptr::read_volatile(&PY_LAYOUT) };
    if layout.frame_code == 0 {
        return;
    }
    let Some(&runtime) = PY_RUNTIME.get(0) else {
        return;
    };
    if runtime == 0 {
        return;
    }
    let Some(tstate) = read_user_u64(runtime + layout.runtime_tstate_current) else {
        return;
    };
    if tstate == 0 {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32 as u64;
    if read_user_u64(tstate + layout.tstate_native_thread_id) != Some(tid) {
        return;
    }
    let Some(cframe) = read_user_u64(tstate + layout.tstate_cframe) else {
        return;
    };
    let Some(frame) = read_user_u64(cframe + layout.cframe_current_frame) else {
        return;
    };
    let Some(stack) = STACK_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot, which the caller is filling for this program run.
    let stack = unsafe { &mut *stack };
    let room = (MAX_STACK_DEPTH - MAX_PYTHON_FRAMES) as u64;
    if stack.len > room {
        stack.len = room;
    }
    let mut walk = Walk { frame, layout };
    // SAFETY: `step` has the callback signature bpf_loop expects and only reads `walk`
    // through the context pointer it is given.
    unsafe {
        bpf_loop(
            MAX_PYTHON_FRAMES as u32,
            step as *mut c_void,
            (&mut walk as *mut Walk).cast(),
            0,
        );
    }
}

/// One Python frame: append its entry, go to the previous one. Returns 1 to stop.
#[inline(never)]
extern "C" fn step(_index: u64, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `append_python_frames` gave it.
    let walk = unsafe { &mut *context.cast::<Walk>() };
    if walk.frame == 0 {
        return 1;
    }
    let Some(stack) = STACK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot, as above.
    let stack = unsafe { &mut *stack };
    let len = stack.len as usize;
    if len >= MAX_STACK_DEPTH {
        return 1;
    }
    let layout = &walk.layout;
    let frame = walk.frame;
    let (Some(code), Some(prev_instr), Some(previous)) = (
        read_user_u64(frame + layout.frame_code),
        read_user_u64(frame + layout.frame_prev_instr),
        read_user_u64(frame + layout.frame_previous),
    ) else {
        return 1;
    };
    // SAFETY: bpf_probe_read_user checks the user address.
    let is_entry = unsafe { bpf_probe_read_user((frame + layout.frame_is_entry) as *const u8) }
        .is_ok_and(|flag| flag != 0);
    let bytecode = code + layout.code_bytecode;
    // A frame whose first instruction has not run yet points before its bytecode.
    if code != 0 && prev_instr >= bytecode {
        let instruction = (prev_instr - bytecode) / PYTHON_CODE_UNIT_BYTES;
        stack.ips[len] = python_entry(code, instruction, is_entry);
        stack.len = len as u64 + 1;
    }
    walk.frame = previous;
    0
}
