//! CPython: its frames in the recorded stacks.
//!
//! CPython runs Python functions inside one C function (`_PyEval_EvalFrameDefault`), so the
//! native stack names only the interpreter. Every recorded stack of a CPython target also gets
//! the thread's Python frames, read from the interpreter's own frame chain when the stack is
//! taken: they are appended after the native frames as tagged entries ([`python_entry`]), and
//! take part in the stack's hash, so two Python call paths are two stacks. User space names
//! the code objects and puts the Python frames in place of the interpreter's frames.

/// Name of the global holding the target's [`PyLayout`] (zero: not a CPython target).
pub const PY_LAYOUT_GLOBAL: &str = "PY_LAYOUT";

/// Where CPython keeps what the kernel reads (bytes), for one CPython version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyLayout {
    /// `_PyRuntime.gilstate.tstate_current`: the thread state holding the GIL.
    pub runtime_tstate_current: u64,
    /// `PyThreadState.native_thread_id`: the kernel thread id of that state's thread.
    pub tstate_native_thread_id: u64,
    /// `PyThreadState.cframe`, then `_PyCFrame.current_frame`.
    pub tstate_cframe: u64,
    pub cframe_current_frame: u64,
    /// `_PyInterpreterFrame.f_code`, `.previous`, `.prev_instr` and `.is_entry` (a byte).
    pub frame_code: u64,
    pub frame_previous: u64,
    pub frame_prev_instr: u64,
    pub frame_is_entry: u64,
    /// Start of the bytecode inside a code object (`co_code_adaptive`).
    pub code_bytecode: u64,
}

/// Python frames read per stack at most (the innermost ones).
pub const MAX_PYTHON_FRAMES: usize = 32;

/// Tag bit of a Python frame entry among a stack's addresses (user addresses never have it).
pub const PYTHON_FRAME_TAG: u64 = 1 << 63;
/// Set on a Python frame entered from C (the first of its `_PyEval_EvalFrameDefault` call).
pub const PYTHON_FRAME_ENTRY: u64 = 1 << 62;
/// Bits of the code object's address in an entry; the instruction index is above them.
pub const PYTHON_CODE_BITS: u32 = 48;
/// Largest instruction index an entry holds (larger ones are clamped to it).
pub const PYTHON_MAX_INSTRUCTION: u64 = (1 << 14) - 1;
/// Bytes of one instruction (a `_Py_CODEUNIT`): instruction indexes count these.
pub const PYTHON_CODE_UNIT_BYTES: u64 = 2;

/// A stack entry for a Python frame running instruction `instruction` (in code units of
/// [`PYTHON_CODE_UNIT_BYTES`]) of code object `code`.
pub const fn python_entry(code: u64, instruction: u64, is_entry: bool) -> u64 {
    let instruction = if instruction > PYTHON_MAX_INSTRUCTION {
        PYTHON_MAX_INSTRUCTION
    } else {
        instruction
    };
    PYTHON_FRAME_TAG
        | if is_entry { PYTHON_FRAME_ENTRY } else { 0 }
        | instruction << PYTHON_CODE_BITS
        | (code & ((1 << PYTHON_CODE_BITS) - 1))
}

/// The (code object, instruction index, entered from C) of a Python frame entry; None for a
/// native address.
pub const fn python_frame(entry: u64) -> Option<(u64, u64, bool)> {
    if entry & PYTHON_FRAME_TAG == 0 {
        return None;
    }
    Some((
        entry & ((1 << PYTHON_CODE_BITS) - 1),
        (entry >> PYTHON_CODE_BITS) & PYTHON_MAX_INSTRUCTION,
        entry & PYTHON_FRAME_ENTRY != 0,
    ))
}
