//! What the Go runtime keeps for itself or in its own way, told apart by the stack that
//! made it: goroutine bookkeeping, and large objects (a span each).
use crate::model::Frame;
use crate::model::go_runtime::LARGE_CALLERS;

/// Whether a Go heap stack is a large object's span, recorded after allocLarge returned in
/// its caller, rather than a span of small objects (recorded as `refill` is called).
pub fn is_large_object_stack(frames: &[Frame]) -> bool {
    frames
        .first()
        .and_then(|frame| frame.function.as_deref())
        .is_some_and(|function| LARGE_CALLERS.contains(&function))
}

/// Functions of the runtime whose allocations belong to goroutines, which are counted per
/// creation site: each goroutine's `g`, the list of all of them, the waiting records of
/// blocked ones.
const GOROUTINE_BOOKKEEPING: [&str; 3] =
    ["runtime.malg", "runtime.allgadd", "runtime.acquireSudog"];

/// Whether a Go heap stack allocates for the runtime's goroutine bookkeeping.
pub fn goroutine_bookkeeping(frames: &[Frame]) -> bool {
    frames.iter().any(|frame| {
        frame
            .function
            .as_deref()
            .is_some_and(|name| GOROUTINE_BOOKKEEPING.contains(&name))
    })
}
