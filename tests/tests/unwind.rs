//! End-to-end: stacks through code built without frame pointers, walked with the modules'
//! .eh_frame tables (`--unwind dwarf`; `hybrid`, the default for a program that keeps frame
//! pointers, for the libraries that do not): the allocating function and every caller up to
//! main.
use leaktrace_tests::{
    Target, Traced, bpf_available, build_c_variant, build_rust_variant, leaktrace, run_to_exit,
    u64_of,
};

/// The function names of a stack, innermost first, without inlined frames.
fn callers(stack: &serde_json::Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter(|frame| frame["inlined"] != true)
        .filter_map(|frame| frame["function"].as_str())
        .map(|name| {
            // "crate::function" and "function(int)" read as "function".
            let name = name.split('(').next().unwrap_or(name);
            name.rsplit("::").next().unwrap_or(name).to_string()
        })
        .collect()
}

/// Compiles a C or C++ target at -O2 without frame pointers (the compilers' default).
fn without_frame_pointers(source: &str, name: &str, compiler: &str) -> std::path::PathBuf {
    build_c_variant(
        source,
        name,
        compiler,
        &["-O2", "-fomit-frame-pointer"],
        &[],
    )
}

/// Every kept allocation of `function` comes with the whole chain above it, in order.
fn assert_chain(traced: &Traced, function: &str, chain: &[&str], blocks: u64) {
    let stacks = traced.stacks_through(function);
    let held: u64 = stacks
        .iter()
        .map(|stack| u64_of(&stack["outstanding_allocs"]))
        .sum();
    assert_eq!(
        held,
        blocks,
        "{function}: {blocks} blocks\n{}",
        traced.describe()
    );
    for stack in stacks {
        let names = callers(stack);
        let mut at = names
            .iter()
            .position(|name| name == function)
            .expect("the function is in its stack");
        for caller in chain {
            let found = names[at + 1..].iter().position(|name| name == caller);
            assert!(
                found.is_some(),
                "{function}: {caller} above it in {names:?}\n{}",
                traced.describe()
            );
            at += 1 + found.unwrap_or(0);
        }
    }
}

/// C and C++ at -O2 without frame pointers, and Rust at opt-level 3 (which omits them),
/// each under `leaktrace run --unwind dwarf`.
#[test]
fn run_mode_walks_code_without_frame_pointers() {
    if !bpf_available("run_mode_walks_code_without_frame_pointers") {
        return;
    }
    let c = without_frame_pointers("stack_chain.c", "stack_chain_nofp", "gcc");
    let traced = run_to_exit(
        "stack_chain_nofp",
        &c,
        &["--unwind", "dwarf", "--top", "0"],
        0,
    );
    assert_chain(
        &traced,
        "store_record",
        &["parse_body", "handle_request", "main"],
        50,
    );
    assert_chain(&traced, "log_line", &["handle_request", "main"], 50);
    // The default (auto) sees the executable has no frame pointers and walks with dwarf.
    let traced = run_to_exit("stack_chain_nofp_auto", &c, &["--top", "0"], 0);
    assert_eq!(traced.report["unwind"], "dwarf");
    assert_chain(
        &traced,
        "store_record",
        &["parse_body", "handle_request", "main"],
        50,
    );

    // mmap stacks start inside libc's frameless syscall wrapper: walked with its unwind rows,
    // the caller and main follow, the wrapper is dropped.
    let family = without_frame_pointers("family.c", "family_nofp", "gcc");
    let traced = run_to_exit("family_nofp", &family, &["--top", "0"], 3);
    assert_eq!(traced.report["unwind"], "dwarf");
    let mapped = traced.expect_stack_at("leak_mmap");
    assert_eq!(mapped["origin"], "mmap");
    assert_eq!(u64_of(&mapped["outstanding_bytes"]), 3 * 16384);
    assert_eq!(
        callers(mapped)[..2],
        ["leak_mmap".to_string(), "main".to_string()],
        "{}",
        traced.describe()
    );

    let cxx = without_frame_pointers("stack_chain.cpp", "stack_chain_cxx_nofp", "g++");
    let traced = run_to_exit(
        "stack_chain_cxx_nofp",
        &cxx,
        &["--unwind", "dwarf", "--top", "0"],
        0,
    );
    // Each string is two blocks (the object, and its buffer allocated inside libstdc++).
    assert_chain(
        &traced,
        "store_record",
        &["parse_body", "handle_request", "main"],
        100,
    );

    let rust = build_rust_variant(
        "stack_chain.rs",
        "stack_chain_rust_nofp",
        &["-C", "opt-level=3"],
    );
    let traced = run_to_exit(
        "stack_chain_rust_nofp",
        &rust,
        &["--unwind", "dwarf", "--top", "0"],
        0,
    );
    assert_chain(
        &traced,
        "store_record",
        &["parse_body", "handle_request", "main"],
        50,
    );
}

/// Attached to a running service built without frame pointers.
#[test]
fn attach_walks_code_without_frame_pointers() {
    if !bpf_available("attach_walks_code_without_frame_pointers") {
        return;
    }
    let service = without_frame_pointers("leaky_service.c", "leaky_service_nofp", "gcc");
    let target = Target::start(&service, &[]);
    let traced = leaktrace(
        "leaky_service_nofp",
        &[
            "attach",
            "--pid",
            &target.pid(),
            "--duration",
            "3s",
            "--unwind",
            "dwarf",
        ],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let leak = traced.expect_stack_at("cache_insert");
    assert_eq!(leak["verdict"], "leaking");
    let names = callers(leak);
    assert!(
        names.iter().any(|name| name == "main"),
        "the stack reaches main: {names:?}"
    );
}

/// A stack 100 calls deep is walked whole (up to 127 frames, as with frame pointers).
#[test]
fn deep_stacks_are_walked_whole() {
    if !bpf_available("deep_stacks_are_walked_whole") {
        return;
    }
    let target = without_frame_pointers("deep_recursion.c", "deep_recursion_nofp", "gcc");
    let traced = run_to_exit("deep_recursion_nofp", &target, &["--unwind", "dwarf"], 0);
    let leak = traced.expect_stack_at("descend");
    let names = callers(leak);
    let depth = names.iter().filter(|name| *name == "descend").count();
    assert_eq!(depth, 101, "every level of the recursion: {names:?}");
    assert!(names.iter().any(|name| name == "main"), "{names:?}");
}

/// A program built with frame pointers that leaks through glibc and libstdc++, which are
/// built without them (tests/targets/through_libraries.cpp): `--unwind auto` walks it the
/// hybrid way (the frame-pointer chain through the program, the libraries' tables through
/// them) and names each leaking function and its callers, where frame pointers alone stop
/// in the library.
#[test]
fn a_frame_pointer_program_is_walked_through_libraries_without_them() {
    if !bpf_available("a_frame_pointer_program_is_walked_through_libraries_without_them") {
        return;
    }
    let target = build_c_variant(
        "through_libraries.cpp",
        "through_libraries",
        "g++",
        &["-O1"],
        &[],
    );
    let traced = run_to_exit("through_libraries", &target, &[], 0);
    assert_eq!(traced.report["unwind"], "hybrid", "{}", traced.describe());
    for function in [
        "leak_via_strdup",
        "leak_via_asprintf",
        "leak_via_getline",
        "leak_via_fopen",
        "leak_via_string",
    ] {
        assert_chain(&traced, function, &["leak_everything", "main"], 50);
    }
    // Frame pointers alone: the walk stops inside strdup, which keeps none.
    let chained = run_to_exit("through_libraries_fp", &target, &["--unwind", "fp"], 0);
    assert_eq!(chained.report["unwind"], "fp");
    assert!(
        chained.stacks_through("leak_via_strdup").is_empty(),
        "{}",
        chained.describe()
    );
}
