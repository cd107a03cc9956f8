//! The allocator APIs leaktrace knows: which symbols allocate or free, how each takes its
//! arguments, and which allocator a module is (for the report).
//!
//! glibc and musl export the C family; jemalloc exports it too (or prefixed, `je_` when
//! linked statically as in Redis, `_rjem_` from Rust's tikv-jemallocator) plus mallocx,
//! rallocx, sdallocx and dallocx; tcmalloc adds `tc_*` aliases; mimalloc has the `mi_*` API
//! (and overrides malloc when preloaded); C++ programs allocate with `operator new`; Rust
//! programs with a `#[global_allocator]` go through `__rust_alloc` and its kin. Users name
//! their own arena or pool functions with `--alloc-fn`.
use leak_common::CallShape;

/// A symbol and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownFn {
    pub symbol: String,
    pub shape: CallShape,
}

fn known(symbol: impl Into<String>, shape: CallShape) -> KnownFn {
    KnownFn {
        symbol: symbol.into(),
        shape,
    }
}

/// The C family as glibc, musl, jemalloc and tcmalloc export it.
const C_FAMILY: [(&str, CallShape); 12] = [
    ("malloc", CallShape::malloc(0)),
    ("calloc", CallShape::calloc(0, 1)),
    ("realloc", CallShape::realloc(0, 1)),
    ("reallocarray", CallShape::reallocarray(0, 1, 2)),
    ("posix_memalign", CallShape::posix_memalign(0, 2)),
    ("aligned_alloc", CallShape::malloc(1)),
    ("memalign", CallShape::malloc(1)),
    ("valloc", CallShape::malloc(0)),
    ("pvalloc", CallShape::malloc(0)),
    ("free", CallShape::free(0)),
    // C23 sized frees.
    ("free_sized", CallShape::free(0)),
    ("free_aligned_sized", CallShape::free(0)),
];

/// The names of the C family (malloc, free and their kin), as every C allocator exports them.
pub fn c_family_names() -> impl Iterator<Item = &'static str> {
    C_FAMILY.iter().map(|(name, _)| *name)
}

/// jemalloc's own API (mallocx(size, flags), rallocx(ptr, size, flags), sdallocx(ptr, size,
/// flags), dallocx(ptr, flags)). xallocx resizes in place and is not followed.
const JEMALLOC_API: [(&str, CallShape); 4] = [
    ("mallocx", CallShape::malloc(0)),
    ("rallocx", CallShape::realloc(0, 1)),
    ("sdallocx", CallShape::free(0)),
    ("dallocx", CallShape::free(0)),
];

/// Prefixes jemalloc is built with besides none.
const JEMALLOC_PREFIXES: [&str; 2] = ["je_", "_rjem_"];

/// gperftools' tcmalloc: `tc_*` entry points (malloc and friends are aliases of them).
const TCMALLOC_API: [(&str, CallShape); 32] = [
    ("tc_malloc", CallShape::malloc(0)),
    ("tc_malloc_skip_new_handler", CallShape::malloc(0)),
    ("tc_calloc", CallShape::calloc(0, 1)),
    ("tc_realloc", CallShape::realloc(0, 1)),
    ("tc_memalign", CallShape::malloc(1)),
    ("tc_posix_memalign", CallShape::posix_memalign(0, 2)),
    ("tc_valloc", CallShape::malloc(0)),
    ("tc_pvalloc", CallShape::malloc(0)),
    ("tc_new", CallShape::malloc(0)),
    ("tc_newarray", CallShape::malloc(0)),
    ("tc_new_nothrow", CallShape::malloc(0)),
    ("tc_newarray_nothrow", CallShape::malloc(0)),
    ("tc_new_aligned", CallShape::malloc(0)),
    ("tc_newarray_aligned", CallShape::malloc(0)),
    ("tc_new_aligned_nothrow", CallShape::malloc(0)),
    ("tc_newarray_aligned_nothrow", CallShape::malloc(0)),
    ("tc_free", CallShape::free(0)),
    ("tc_cfree", CallShape::free(0)),
    ("tc_free_sized", CallShape::free(0)),
    ("tc_delete", CallShape::free(0)),
    ("tc_deletearray", CallShape::free(0)),
    ("tc_delete_nothrow", CallShape::free(0)),
    ("tc_deletearray_nothrow", CallShape::free(0)),
    ("tc_delete_sized", CallShape::free(0)),
    ("tc_deletearray_sized", CallShape::free(0)),
    ("tc_delete_aligned", CallShape::free(0)),
    ("tc_deletearray_aligned", CallShape::free(0)),
    ("tc_delete_sized_aligned", CallShape::free(0)),
    ("tc_deletearray_sized_aligned", CallShape::free(0)),
    ("tc_delete_aligned_nothrow", CallShape::free(0)),
    ("tc_deletearray_aligned_nothrow", CallShape::free(0)),
    ("tc_free_aligned_sized", CallShape::free(0)),
];

/// mimalloc's API. The `mi_heap_*` calls take the heap first. mi_strdup and friends are
/// left out: their size is not an argument.
const MIMALLOC_API: [(&str, CallShape); 48] = [
    ("mi_malloc", CallShape::malloc(0)),
    ("mi_zalloc", CallShape::malloc(0)),
    ("mi_malloc_small", CallShape::malloc(0)),
    ("mi_zalloc_small", CallShape::malloc(0)),
    ("mi_calloc", CallShape::calloc(0, 1)),
    ("mi_mallocn", CallShape::calloc(0, 1)),
    ("mi_realloc", CallShape::realloc(0, 1)),
    ("mi_reallocf", CallShape::realloc(0, 1)),
    ("mi_rezalloc", CallShape::realloc(0, 1)),
    ("mi_reallocn", CallShape::reallocarray(0, 1, 2)),
    ("mi_recalloc", CallShape::reallocarray(0, 1, 2)),
    ("mi_malloc_aligned", CallShape::malloc(0)),
    ("mi_zalloc_aligned", CallShape::malloc(0)),
    ("mi_malloc_aligned_at", CallShape::malloc(0)),
    ("mi_zalloc_aligned_at", CallShape::malloc(0)),
    ("mi_calloc_aligned", CallShape::calloc(0, 1)),
    ("mi_calloc_aligned_at", CallShape::calloc(0, 1)),
    ("mi_realloc_aligned", CallShape::realloc(0, 1)),
    ("mi_realloc_aligned_at", CallShape::realloc(0, 1)),
    ("mi_rezalloc_aligned", CallShape::realloc(0, 1)),
    ("mi_rezalloc_aligned_at", CallShape::realloc(0, 1)),
    ("mi_new", CallShape::malloc(0)),
    ("mi_new_aligned", CallShape::malloc(0)),
    ("mi_new_nothrow", CallShape::malloc(0)),
    ("mi_new_aligned_nothrow", CallShape::malloc(0)),
    ("mi_new_n", CallShape::calloc(0, 1)),
    ("mi_new_realloc", CallShape::realloc(0, 1)),
    ("mi_new_reallocn", CallShape::reallocarray(0, 1, 2)),
    ("mi_posix_memalign", CallShape::posix_memalign(0, 2)),
    ("mi_memalign", CallShape::malloc(1)),
    ("mi_aligned_alloc", CallShape::malloc(1)),
    ("mi_valloc", CallShape::malloc(0)),
    ("mi_pvalloc", CallShape::malloc(0)),
    ("mi_free", CallShape::free(0)),
    ("mi_cfree", CallShape::free(0)),
    ("mi_free_size", CallShape::free(0)),
    ("mi_free_aligned", CallShape::free(0)),
    ("mi_free_size_aligned", CallShape::free(0)),
    ("mi_heap_malloc", CallShape::malloc(1)),
    ("mi_heap_zalloc", CallShape::malloc(1)),
    ("mi_heap_malloc_small", CallShape::malloc(1)),
    ("mi_heap_malloc_aligned", CallShape::malloc(1)),
    ("mi_heap_zalloc_aligned", CallShape::malloc(1)),
    ("mi_heap_calloc", CallShape::calloc(1, 2)),
    ("mi_heap_mallocn", CallShape::calloc(1, 2)),
    ("mi_heap_realloc", CallShape::realloc(1, 2)),
    ("mi_heap_reallocf", CallShape::realloc(1, 2)),
    ("mi_heap_reallocn", CallShape::reallocarray(1, 2, 3)),
];

/// C++ allocation operators: `operator new` and `new[]` in every variant take the size first
/// and behave like malloc; every `operator delete` takes the pointer first and behaves like
/// free. Probing them (not only the malloc they call) keeps the C++ caller in the stack,
/// because libstdc++ is built without frame pointers, and sees tcmalloc's and jemalloc's
/// own operators, which do not call malloc.
pub const CXX_NEW_SYMBOLS: [&str; 8] = [
    "_Znwm",
    "_Znam",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
];
pub const CXX_DELETE_SYMBOLS: [&str; 12] = [
    "_ZdlPv",
    "_ZdaPv",
    "_ZdlPvm",
    "_ZdaPvm",
    "_ZdlPvRKSt9nothrow_t",
    "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_t",
    "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t",
    "_ZdaPvmSt11align_val_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
];

/// Rust's allocator shims: `__rust_alloc(size, align)`, `__rust_alloc_zeroed(size, align)`,
/// `__rust_realloc(ptr, old_size, align, new_size)`, `__rust_dealloc(ptr, size, align)`.
/// Newer compilers mangle them with v0 mangling (`_RNvCs…_7___rustc12___rust_alloc`: the
/// length, a `_` separating it from a name that starts with `_`, the name).
const RUST_SHIMS: [(&str, CallShape); 4] = [
    ("__rust_alloc", CallShape::malloc(0)),
    ("__rust_alloc_zeroed", CallShape::malloc(0)),
    ("__rust_realloc", CallShape::realloc(0, 3)),
    ("__rust_dealloc", CallShape::free(0)),
];

/// Every symbol probed by default (but the Rust shims, see `rust_shim`), with what it does.
pub fn known_functions() -> Vec<KnownFn> {
    let mut all: Vec<KnownFn> = Vec::new();
    let table = |entries: &[(&str, CallShape)], prefix: &str, all: &mut Vec<KnownFn>| {
        for (symbol, shape) in entries {
            all.push(known(format!("{prefix}{symbol}"), *shape));
        }
    };
    table(&C_FAMILY, "", &mut all);
    table(&JEMALLOC_API, "", &mut all);
    for prefix in JEMALLOC_PREFIXES {
        table(&C_FAMILY, prefix, &mut all);
        table(&JEMALLOC_API, prefix, &mut all);
    }
    table(&TCMALLOC_API, "", &mut all);
    table(&MIMALLOC_API, "", &mut all);
    for symbol in CXX_NEW_SYMBOLS {
        all.push(known(symbol, CallShape::malloc(0)));
    }
    for symbol in CXX_DELETE_SYMBOLS {
        all.push(known(symbol, CallShape::free(0)));
    }
    all
}

/// The Rust shim `symbol` stands for, plain or v0-mangled (`_R…12___rust_alloc`).
pub fn rust_shim(symbol: &str) -> Option<CallShape> {
    RUST_SHIMS.iter().find_map(|(name, shape)| {
        let mangled_tail = format!("{}_{name}", name.len());
        (symbol == *name || (symbol.starts_with("_R") && symbol.ends_with(&mangled_tail)))
            .then_some(*shape)
    })
}

/// Whether a Rust program has its own `#[global_allocator]`: its shims then call
/// `__rg_alloc` (with the default System allocator, `__rdl_alloc`, which is plain malloc).
pub fn is_rust_global_allocator(symbol: &str) -> bool {
    symbol == "__rg_alloc" || (symbol.starts_with("_R") && symbol.ends_with("10___rg_alloc"))
}

/// Which allocator a module's defined symbols say it is.
pub fn identify(symbols: &[&str], module_path: &str) -> &'static str {
    let has = |name: &str| symbols.contains(&name);
    let file = module_path.rsplit('/').next().unwrap_or(module_path);
    if has("mi_malloc") {
        "mimalloc"
    } else if has("tc_malloc") || has("tc_version") {
        "tcmalloc"
    } else if has("mallocx")
        || JEMALLOC_PREFIXES
            .iter()
            .any(|prefix| has(&format!("{prefix}malloc")))
    {
        "jemalloc"
    } else if has("malloc_trim") || has("__libc_malloc") && has("mallinfo") {
        "glibc"
    } else if file.contains("musl") || has("__libc_malloc_impl") || has("__malloc_donate") {
        "musl"
    } else if symbols.iter().any(|symbol| rust_shim(symbol).is_some()) {
        "Rust global allocator"
    } else if has("malloc") && has("free") {
        "malloc"
    } else {
        "C++ operators"
    }
}

/// `text` split at the colons that are not part of a `::`, into `limit` parts at most (the
/// last keeps the rest).
fn split_at_single_colons(text: &str, limit: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        if parts.len() + 1 == limit {
            break;
        }
        let single =
            byte == b':' && bytes.get(at + 1) != Some(&b':') && (at == 0 || bytes[at - 1] != b':');
        if single {
            parts.push(&text[start..at]);
            start = at + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A user-named allocator function from `--alloc-fn NAME:KIND[:ARGS]`.
///
/// KIND is malloc (size in argument 1), calloc (count 1, size 2), realloc (block 1, size 2)
/// or free (block 1); ARGS moves them, as comma-separated `size=N`, `count=N`, `ptr=N` with
/// 1-based argument positions (at most 6): `pool_alloc:malloc:size=2`.
pub fn parse_alloc_fn(text: &str) -> Result<KnownFn, String> {
    // The fields are split at single colons: a C++ or Rust name keeps its `::`.
    let mut parts = split_at_single_colons(text, 3).into_iter();
    let name = parts.next().unwrap_or("").trim();
    let kind = parts.next().map(str::trim);
    let args = parts.next();
    let usage = || {
        format!(
            "--alloc-fn '{text}': expected NAME:KIND[:ARGS], KIND one of malloc, calloc, realloc, free, ARGS like size=2,ptr=1 (e.g. pool_alloc:malloc:size=2)"
        )
    };
    if name.is_empty() {
        return Err(usage());
    }
    let mut shape = match kind {
        Some("malloc") => CallShape::malloc(0),
        Some("calloc") => CallShape::calloc(0, 1),
        Some("realloc") => CallShape::realloc(0, 1),
        Some("free") => CallShape::free(0),
        _ => return Err(usage()),
    };
    for assignment in args.into_iter().flat_map(|args| args.split(',')) {
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(usage());
        };
        let position = match value.trim().parse::<u8>() {
            Ok(position @ 1..=6) => position - 1,
            _ => {
                return Err(format!(
                    "--alloc-fn '{text}': argument positions go from 1 to 6, not '{}'",
                    value.trim()
                ));
            }
        };
        let free = shape.func == leak_common::AllocFn::Free;
        match key.trim() {
            "size" if !free => shape.size = position,
            "count" if shape.func == leak_common::AllocFn::Calloc => shape.count = position,
            "ptr" if free || shape.func == leak_common::AllocFn::Realloc => shape.ptr = position,
            other => {
                return Err(format!(
                    "--alloc-fn '{text}': a {} function has no '{other}' argument",
                    kind.unwrap_or("")
                ));
            }
        }
    }
    Ok(known(name, shape))
}

#[cfg(test)]
mod tests {
    use leak_common::AllocFn;

    use super::*;

    #[test]
    fn the_table_has_each_allocator_api() {
        let all = known_functions();
        let shape = |symbol: &str| {
            all.iter()
                .find(|known| known.symbol == symbol)
                .map(|known| known.shape)
        };
        assert_eq!(shape("malloc"), Some(CallShape::malloc(0)));
        assert_eq!(shape("je_sdallocx"), Some(CallShape::free(0)));
        assert_eq!(shape("_rjem_rallocx"), Some(CallShape::realloc(0, 1)));
        assert_eq!(shape("mi_heap_calloc"), Some(CallShape::calloc(1, 2)));
        assert_eq!(shape("tc_delete_sized"), Some(CallShape::free(0)));
        assert_eq!(shape("_ZdlPvm"), Some(CallShape::free(0)));
        let mut symbols: Vec<&str> = all.iter().map(|known| known.symbol.as_str()).collect();
        symbols.sort_unstable();
        let count = symbols.len();
        symbols.dedup();
        assert_eq!(symbols.len(), count, "no symbol twice");
    }

    #[test]
    fn rust_shims_plain_and_mangled() {
        assert_eq!(rust_shim("__rust_alloc"), Some(CallShape::malloc(0)));
        assert_eq!(
            rust_shim("_RNvCsdnU8IMkZNjk_7___rustc12___rust_alloc"),
            Some(CallShape::malloc(0))
        );
        assert_eq!(
            rust_shim("_RNvCsdnU8IMkZNjk_7___rustc14___rust_realloc"),
            Some(CallShape::realloc(0, 3))
        );
        assert_eq!(
            rust_shim("_RNvCsdnU8IMkZNjk_7___rustc15___rust_alloc_x"),
            None
        );
        assert_eq!(rust_shim("my__rust_alloc"), None);
        assert!(is_rust_global_allocator(
            "_RNvCsdnU8IMkZNjk_7___rustc10___rg_alloc"
        ));
    }

    #[test]
    fn identifies_allocators_by_their_symbols() {
        assert_eq!(
            identify(&["malloc", "free", "mi_malloc"], "/x/libmimalloc.so.2"),
            "mimalloc"
        );
        assert_eq!(
            identify(&["malloc", "tc_malloc"], "/x/libtcmalloc.so.4"),
            "tcmalloc"
        );
        assert_eq!(
            identify(&["je_malloc", "je_free"], "/usr/bin/redis-server"),
            "jemalloc"
        );
        assert_eq!(
            identify(&["malloc", "mallocx"], "/x/libjemalloc.so.2"),
            "jemalloc"
        );
        assert_eq!(
            identify(&["malloc", "free", "malloc_trim"], "/x/libc.so.6"),
            "glibc"
        );
        assert_eq!(
            identify(&["malloc", "free"], "/lib/ld-musl-x86_64.so.1"),
            "musl"
        );
        assert_eq!(identify(&["malloc", "free"], "/opt/app"), "malloc");
        assert_eq!(identify(&["_Znwm"], "/x/libstdc++.so.6"), "C++ operators");
    }

    #[test]
    fn parses_user_named_functions() {
        let pool = parse_alloc_fn("pool_alloc:malloc:size=2").expect("valid");
        assert_eq!(pool.symbol, "pool_alloc");
        assert_eq!(pool.shape, CallShape::malloc(1));
        assert_eq!(
            parse_alloc_fn("pool_free:free:ptr=2").expect("valid").shape,
            CallShape::free(1)
        );
        assert_eq!(
            parse_alloc_fn("arr:calloc:count=2,size=3")
                .expect("valid")
                .shape,
            CallShape::calloc(1, 2)
        );
        assert_eq!(
            parse_alloc_fn("grow:realloc").expect("valid").shape.func,
            AllocFn::Realloc
        );
        // C++ and Rust names keep their `::`.
        let method = parse_alloc_fn("arena::Pool::take:malloc:size=2").expect("valid");
        assert_eq!(method.symbol, "arena::Pool::take");
        assert_eq!(method.shape, CallShape::malloc(1));
        assert_eq!(
            parse_alloc_fn("pool_free(pool*, void*):free:ptr=2")
                .expect("valid")
                .symbol,
            "pool_free(pool*, void*)"
        );
        for bad in [
            "",
            "pool_alloc",
            "pool_alloc:new",
            "pool_alloc:malloc:size=0",
            "pool_alloc:malloc:size=7",
            "pool_alloc:malloc:ptr=1",
            "pool_free:free:size=1",
            "pool_alloc:malloc:size",
        ] {
            let err = parse_alloc_fn(bad).expect_err("invalid");
            assert!(err.starts_with("--alloc-fn"), "{bad}: {err}");
        }
    }
}
