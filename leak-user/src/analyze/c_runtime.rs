//! Memory the C runtime keeps for itself, told apart from the program's by the stack that
//! made it: glibc's cache of thread stacks, the arenas malloc reserves, the loader's
//! per-thread TLS blocks, stdio's buffers. None of it is the program's leak (valgrind has
//! glibc free most of it at exit, `__libc_freeres`; LeakSanitizer suppresses the rest), so
//! reports count it apart and never call it leaking.
use crate::model::{Frame, Origin};

/// What of the C runtime's a stack's memory is, if it is the runtime's own. Thread stacks
/// and the loader's blocks count as the runtime's only once the program has `exited`: while
/// it runs, threads never joined and libraries loaded again and again leak through them,
/// and their trend says so (glibc's own cache of them does not keep rising).
pub fn held_by(origin: Origin, frames: &[Frame], exited: bool) -> Option<&'static str> {
    match origin {
        Origin::Mmap => {
            if exited
                && frames
                    .iter()
                    .any(|frame| function_is(frame, &["pthread_create", "__pthread_create_2_1"]))
            {
                return Some("thread stacks (glibc keeps those of ended threads for new ones)");
            }
            // Mapped from inside the allocator: an arena reservation (glibc's new_heap), made
            // in a call the kernel side did not see begin (a thread's first free). Its frames
            // are the C library's up to an allocator function; with symbols for glibc's own
            // functions (debug info), one of malloc's internals names it even where the walk
            // ends inside glibc (frame pointers through a glibc built without them).
            for frame in frames {
                if !in_c_library(frame) {
                    return None;
                }
                if is_allocator_function(frame) || function_is(frame, MALLOC_INTERNALS) {
                    return Some("malloc arenas");
                }
            }
            None
        }
        Origin::Heap => {
            let caller = frames.iter().find(|frame| !frame.inlined)?;
            if exited && in_loader(caller) {
                return Some("the loader's blocks (each thread's TLS, loaded libraries)");
            }
            if function_is(caller, &["_IO_file_doallocate"]) {
                return Some("stdio buffers");
            }
            None
        }
        Origin::Brk => None,
    }
}

/// glibc's own entry points into its allocator, besides the C family every allocator exports.
const GLIBC_ALLOCATOR_FUNCTIONS: &[&str] = &[
    "malloc_trim",
    "__libc_malloc",
    "__libc_free",
    "__libc_calloc",
    "__libc_realloc",
    "__libc_memalign",
];

/// glibc malloc's own functions that map memory for it (names from its debug info).
const MALLOC_INTERNALS: &[&str] = &[
    "new_heap",
    "alloc_new_heap",
    "grow_heap",
    "_int_new_arena",
    "arena_get2",
    "arena_get_retry",
    "sysmalloc",
    "tcache_init",
    "_int_malloc",
    "_int_free",
    "_int_realloc",
    "_int_memalign",
    "malloc_consolidate",
];

/// Whether the frame's function is one of `names`, whatever symbol version or `__GI_`
/// prefix it carries.
/// The function's name without a symbol version or glibc's `__GI_` alias prefix.
fn plain_function(frame: &Frame) -> Option<&str> {
    let function = frame.function.as_deref()?;
    let plain = function.split('@').next().unwrap_or(function);
    Some(plain.strip_prefix("__GI_").unwrap_or(plain))
}

fn function_is(frame: &Frame, names: &[&str]) -> bool {
    plain_function(frame).is_some_and(|plain| names.contains(&plain))
}

fn is_allocator_function(frame: &Frame) -> bool {
    plain_function(frame).is_some_and(|plain| {
        GLIBC_ALLOCATOR_FUNCTIONS.contains(&plain)
            || crate::model::allocators::c_family_names().any(|name| name == plain)
    })
}

fn module_name(frame: &Frame) -> Option<&str> {
    frame.module.as_deref()?.rsplit('/').next()
}

/// glibc's or musl's C library.
fn in_c_library(frame: &Frame) -> bool {
    module_name(frame).is_some_and(|name| {
        name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
    })
}

/// The dynamic loader (ld-linux).
fn in_loader(frame: &Frame) -> bool {
    module_name(frame).is_some_and(|name| name.starts_with("ld-linux") || name == "ld.so")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: Option<&str>, module: &str) -> Frame {
        Frame {
            function: function.map(str::to_string),
            file: None,
            line: None,
            module: Some(module.to_string()),
            address: 0x1000,
            module_offset: None,
            inlined: false,
        }
    }

    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const LOADER: &str = "/usr/lib64/ld-linux-x86-64.so.2";
    const PROGRAM: &str = "/srv/app";

    #[test]
    fn thread_stacks_and_arenas_are_the_runtimes() {
        let stack = [
            frame(Some("pthread_create@@GLIBC_2.34"), LIBC),
            frame(Some("main"), PROGRAM),
        ];
        assert!(held_by(Origin::Mmap, &stack, true).is_some_and(|what| what.starts_with("thread")));
        // While the program runs, threads it never joins leak their stacks: judged by trend.
        assert_eq!(held_by(Origin::Mmap, &stack, false), None);
        // mmap ← new_heap (no symbol) ← free ← the program: an arena.
        let arena = [
            frame(None, LIBC),
            frame(Some("free"), LIBC),
            frame(Some("worker"), PROGRAM),
        ];
        assert_eq!(held_by(Origin::Mmap, &arena, false), Some("malloc arenas"));
        // A walk that ended inside glibc, which has its debug info: named by malloc's own.
        let cut = [frame(Some("alloc_new_heap"), LIBC)];
        assert_eq!(held_by(Origin::Mmap, &cut, false), Some("malloc arenas"));
        // The program's own mmap, through libc's wrapper.
        let own = [
            frame(Some("mmap64"), LIBC),
            frame(Some("map_table"), PROGRAM),
        ];
        assert_eq!(held_by(Origin::Mmap, &own, true), None);
        // A thread's own mmap: its stack starts at start_thread, not pthread_create.
        let in_thread = [
            frame(Some("map_table"), PROGRAM),
            frame(Some("start_thread"), LIBC),
        ];
        assert_eq!(held_by(Origin::Mmap, &in_thread, true), None);
    }

    #[test]
    fn loader_tls_and_stdio_buffers_are_the_runtimes() {
        let tls = [
            frame(Some("_dl_allocate_tls"), LOADER),
            frame(Some("pthread_create"), LIBC),
        ];
        assert!(held_by(Origin::Heap, &tls, true).is_some());
        assert_eq!(held_by(Origin::Heap, &tls, false), None);
        let stdio = [
            frame(Some("_IO_file_doallocate"), LIBC),
            frame(Some("_IO_doallocbuf"), LIBC),
            frame(Some("main"), PROGRAM),
        ];
        assert_eq!(held_by(Origin::Heap, &stdio, false), Some("stdio buffers"));
        // strdup's caller is what matters: the program's.
        let program = [
            frame(Some("__GI___strdup"), LIBC),
            frame(Some("main"), PROGRAM),
        ];
        assert_eq!(held_by(Origin::Heap, &program, true), None);
        assert_eq!(held_by(Origin::Brk, &stdio, true), None);
    }
}
