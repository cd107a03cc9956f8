//! Request scopes (`--scope`): what each call of a function allocates and keeps.
//!
//! An entry uprobe on a scope function pushes a frame on the thread's `SCOPE_STACKS` entry:
//! the call's tag (which scope function, and which label its argument gave) and a call id.
//! Allocations made while the frame is the innermost are attributed to it: the record keeps
//! `scope_of(call, tag)`, and the tag's `SCOPE_TOTALS` and the call's `SCOPE_CALLS` entry count
//! the bytes, debited again when the block is freed. The return uprobe pops the frame and notes
//! what the call still held; a call holding something is announced on `SCOPE_EVENTS`, and user
//! space reads its entry again `--scope-retain-after` later, then removes it.

/// Scope functions at most (`--scope`, repeatable).
pub const MAX_SCOPES: u32 = 16;
/// Tags: 0 is "no scope"; 1..=MAX_SCOPES are the scopes' calls without a label (or with a
/// label beyond the cap); higher ones, below this, are claimed by the kernel for each
/// (scope, label) seen, picked by the label's hash.
pub const MAX_SCOPE_TAGS: u32 = 1024;
/// Nested scope calls one thread can be inside at once; deeper ones are not scopes.
pub const MAX_SCOPE_DEPTH: usize = 8;
/// Scope calls followed one by one at once (from entry until user space has read them after
/// `--scope-retain-after`). Calls beyond it count in their tag's totals only.
pub const MAX_SCOPE_CALLS: u32 = 1 << 17;
/// Bytes of a string label kept (NUL-padded).
pub const SCOPE_LABEL_BYTES: usize = 32;
/// Bits of the tag in a record's `scope`; the call id is above them.
pub const SCOPE_TAG_BITS: u32 = 16;

/// A record's `scope` for an allocation made in call `call` of tag `tag`.
pub const fn scope_of(call: u64, tag: u32) -> u64 {
    (call << SCOPE_TAG_BITS) | tag as u64
}

/// The (call, tag) of a record's `scope`.
pub const fn scope_parts(scope: u64) -> (u64, u32) {
    (
        scope >> SCOPE_TAG_BITS,
        (scope & ((1 << SCOPE_TAG_BITS) - 1)) as u32,
    )
}

/// No label argument.
pub const SCOPE_NO_LABEL: u8 = 0xF;
/// The label argument is an integer (u64), shown in decimal.
pub const SCOPE_LABEL_INT: u8 = 0;
/// The label argument points to a NUL-terminated string.
pub const SCOPE_LABEL_STR: u8 = 1;

/// The uprobe cookie of a scope function: its index, which argument labels its calls
/// (0-based register argument, or [`SCOPE_NO_LABEL`]) and how to read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopeShape {
    pub index: u8,
    pub label_arg: u8,
    pub label_kind: u8,
}

impl ScopeShape {
    pub const fn cookie(self) -> u64 {
        self.index as u64 | (self.label_arg as u64) << 8 | (self.label_kind as u64) << 16
    }

    pub const fn from_cookie(cookie: u64) -> ScopeShape {
        ScopeShape {
            index: cookie as u8,
            label_arg: (cookie >> 8) as u8,
            label_kind: (cookie >> 16) as u8,
        }
    }

    /// The tag of this scope's calls without a label of their own.
    pub const fn unlabelled_tag(self) -> u32 {
        self.index as u32 + 1
    }
}

/// One (scope, label) in `SCOPE_TAGS`: the key the kernel looks its tag up by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeLabel {
    pub index: u32,
    /// [`SCOPE_LABEL_INT`] (the value in the first 8 bytes, little-endian) or
    /// [`SCOPE_LABEL_STR`] (the text, NUL-padded).
    pub kind: u32,
    pub text: [u8; SCOPE_LABEL_BYTES],
}

/// A scope call a thread is inside, innermost last in its [`ScopeStack`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ScopeFrame {
    pub tag: u32,
    /// The scope's number (`ScopeShape::index`).
    pub scope: u32,
    pub call: u64,
    /// Stack pointer at entry: the matching return sees `sp + 8`.
    pub sp: u64,
}

/// The scope calls one thread is inside, in `SCOPE_STACKS` by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ScopeStack {
    pub depth: u64,
    pub frames: [ScopeFrame; MAX_SCOPE_DEPTH],
}

/// Per tag and CPU in `SCOPE_TOTALS` (user space sums the CPUs; the held fields wrap, read
/// them as two's complement).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeTotals {
    pub calls: u64,
    pub returns: u64,
    pub allocated_bytes: u64,
    pub allocs: u64,
    pub held_bytes: u64,
    pub held_blocks: u64,
    /// Summed over returned calls: what each still held when it returned.
    pub held_at_return_bytes: u64,
    /// Returned calls that held nothing then (so nothing later either): not followed on.
    pub returned_empty: u64,
    /// Returned calls whose own figures were followed (their `SCOPE_CALLS` entry existed),
    /// and the bytes those calls allocated: per-call averages over finished calls only, so a
    /// call still running when the totals are read does not count as one that allocated less.
    pub returned_followed: u64,
    pub returned_allocated_bytes: u64,
}

impl ScopeTotals {
    /// Adds another CPU's (or tag's) totals, wrapping like the kernel's counters.
    pub fn add(&mut self, other: &ScopeTotals) {
        for (mine, theirs) in [
            (&mut self.calls, other.calls),
            (&mut self.returns, other.returns),
            (&mut self.allocated_bytes, other.allocated_bytes),
            (&mut self.allocs, other.allocs),
            (&mut self.held_bytes, other.held_bytes),
            (&mut self.held_blocks, other.held_blocks),
            (&mut self.held_at_return_bytes, other.held_at_return_bytes),
            (&mut self.returned_empty, other.returned_empty),
            (&mut self.returned_followed, other.returned_followed),
            (
                &mut self.returned_allocated_bytes,
                other.returned_allocated_bytes,
            ),
        ] {
            *mine = mine.wrapping_add(theirs);
        }
    }
}

/// One followed scope call in `SCOPE_CALLS` by call id. The held fields are updated with
/// atomic adds from any CPU (a block may be freed by another thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeCall {
    pub tag: u32,
    pub tid: u32,
    pub start_ns: u64,
    /// 0 while the call runs.
    pub end_ns: u64,
    pub allocated_bytes: u64,
    pub held_bytes: u64,
    pub held_at_return: u64,
}

/// A scope call that returned still holding memory, sent through `SCOPE_EVENTS`: user space
/// reads its `SCOPE_CALLS` entry again `--scope-retain-after` later, then removes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeReturn {
    pub call: u64,
    pub tag: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub allocated_bytes: u64,
    pub held_at_return: u64,
}

/// Bytes of ring buffer for scope returns (48 bytes each, plus an 8-byte header).
pub const SCOPE_EVENTS_BYTES: u32 = 1 << 20;

/// Name of the global holding how many --scope functions are probed (u32).
pub const SCOPE_COUNT_GLOBAL: &str = "SCOPE_COUNT";

/// Program names of the scope probes.
pub const SCOPE_ENTRY_PROGRAM: &str = "scope_enter";
pub const SCOPE_RETURN_PROGRAM: &str = "scope_return";
