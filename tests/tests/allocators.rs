//! End-to-end: targets built against each allocator leaktrace knows (jemalloc, tcmalloc,
//! mimalloc, static glibc, static musl, a Rust #[global_allocator], a pool named with
//! --alloc-fn) each leak known blocks from named functions; leaktrace must find each with
//! its count and bytes, see the balanced calls as freed, and say which allocator it probed.
use std::path::Path;

use leaktrace_tests::{
    Background, Traced, bpf_available, build_c_variant, build_rust_variant, free_port, leaktrace,
    leaktrace_bin, run_to_exit, scratch_dir, tool_available, u64_of,
};

/// Leaks of 20 blocks each: (function, bytes per block).
fn assert_leaks(traced: &Traced, leaks: &[(&str, u64)]) {
    for (function, size) in leaks {
        let held: Vec<(u64, u64)> = traced
            .stacks_through(function)
            .iter()
            .map(|stack| {
                (
                    u64_of(&stack["outstanding_allocs"]),
                    u64_of(&stack["outstanding_bytes"]),
                )
            })
            .collect();
        let allocs: u64 = held.iter().map(|h| h.0).sum();
        let bytes: u64 = held.iter().map(|h| h.1).sum();
        assert_eq!(
            (allocs, bytes),
            (20, 20 * size),
            "{function}: 20 blocks of {size} bytes\n{}",
            traced.describe()
        );
    }
}

/// Balanced functions hold nothing; nothing was dropped or freed behind leaktrace's back.
fn assert_clean(traced: &Traced, balanced: &str) {
    let through = traced.stacks_through(balanced);
    assert!(
        !through.is_empty(),
        "{balanced} seen\n{}",
        traced.describe()
    );
    for stack in through {
        assert_eq!(
            u64_of(&stack["outstanding_bytes"]),
            0,
            "{balanced} frees what it takes\n{}",
            traced.describe()
        );
    }
    let dropped = traced.dropped_total();
    assert_eq!(dropped, 0, "nothing dropped\n{}", traced.describe());
    assert_eq!(
        u64_of(&traced.report["events"]["replaced_live"]),
        0,
        "no free was missed"
    );
}

/// Every probe sits on an instruction the kernel emulates (one trap a call), or its function
/// is left to the probed one it calls; each is listed with its offset and instruction.
fn assert_probes_emulated(traced: &Traced) {
    let mut listed = 0;
    for found in traced.report["allocators"].as_array().expect("allocators") {
        let probes = found["probes"].as_array().expect("probes are listed");
        let functions = found["functions"].as_array().expect("functions");
        assert_eq!(
            probes.iter().filter(|p| p["covered_by"].is_null()).count(),
            functions.len(),
            "one probe entry per function probed: {found}"
        );
        for probe in probes {
            listed += 1;
            if probe["covered_by"].is_string() {
                continue;
            }
            assert!(
                probe["emulated"] == true,
                "single-stepped probe in {}: {probe}",
                found["module"]
            );
            assert!(probe["instruction"].as_str().is_some_and(|i| !i.is_empty()));
        }
    }
    assert!(listed > 0, "no probes listed\n{}", traced.describe());
}

/// The allocator leaktrace says it probed, and the functions it probed in it.
fn probed(traced: &Traced, allocator: &str) -> Vec<String> {
    traced.report["allocators"]
        .as_array()
        .expect("allocators")
        .iter()
        .filter(|found| found["allocator"] == allocator)
        .flat_map(|found| found["functions"].as_array().cloned().unwrap_or_default())
        .filter_map(|name| name.as_str().map(str::to_string))
        .collect()
}

fn header_present(test: &str, header: &str) -> bool {
    tool_available(test, Path::new(header))
}

#[test]
fn jemalloc_api_and_sized_frees() {
    let test = "jemalloc_api_and_sized_frees";
    if !bpf_available(test) || !header_present(test, "/usr/include/jemalloc/jemalloc.h") {
        return;
    }
    // Shared, and linked into the executable (as Redis links its own).
    let variants: [(&str, &[&str]); 2] = [
        ("alloc_jemalloc", &["-ljemalloc"]),
        (
            "alloc_jemalloc_static",
            &[
                "-Wl,-Bstatic",
                "-ljemalloc",
                "-Wl,-Bdynamic",
                "-lstdc++",
                "-lm",
                "-ldl",
            ],
        ),
    ];
    for (name, libs) in variants {
        let target = build_c_variant("alloc_jemalloc.c", name, "gcc", &[], libs);
        let traced = run_to_exit(name, &target, &["--top", "0"], 0);
        assert_leaks(
            &traced,
            &[
                ("leak_je_malloc", 1000),
                ("leak_mallocx", 2000),
                ("leak_rallocx", 3000),
            ],
        );
        assert_clean(&traced, "balanced_sized");
        assert_probes_emulated(&traced);
        let found: Vec<&str> = traced.report["allocators"]
            .as_array()
            .expect("allocators")
            .iter()
            .filter(|found| found["allocator"] == "jemalloc")
            .filter_map(|found| found["module"].as_str())
            .collect();
        if name.ends_with("static") {
            assert!(
                found.iter().any(|module| module.ends_with(name)),
                "{name}: jemalloc found in the executable: {found:?}"
            );
        }
        let functions = probed(&traced, "jemalloc");
        for wanted in [
            "malloc", "mallocx", "rallocx", "sdallocx", "dallocx", "free",
        ] {
            assert!(
                functions.iter().any(|f| f == wanted),
                "{name}: {wanted} probed in jemalloc: {functions:?}"
            );
        }
    }
}

#[test]
fn tcmalloc_malloc_tc_malloc_and_its_operator_new() {
    let test = "tcmalloc_malloc_tc_malloc_and_its_operator_new";
    if !bpf_available(test) || !header_present(test, "/usr/include/gperftools/tcmalloc.h") {
        return;
    }
    let target = build_c_variant(
        "alloc_tcmalloc.cpp",
        "alloc_tcmalloc",
        "g++",
        &[],
        &["-ltcmalloc"],
    );
    let traced = run_to_exit("alloc_tcmalloc", &target, &["--top", "0"], 0);
    assert_leaks(
        &traced,
        &[
            ("leak_tc_plain", 1000),
            ("leak_tc_direct", 2000),
            ("leak_tc_new", 3000),
        ],
    );
    assert_clean(&traced, "balanced_tc");
    assert_probes_emulated(&traced);
    assert!(
        !probed(&traced, "tcmalloc").is_empty(),
        "{}",
        traced.describe()
    );
}

#[test]
fn mimalloc_api_with_heaps() {
    let test = "mimalloc_api_with_heaps";
    if !bpf_available(test) || !header_present(test, "/usr/include/mimalloc.h") {
        return;
    }
    let target = build_c_variant(
        "alloc_mimalloc.c",
        "alloc_mimalloc",
        "gcc",
        &[],
        &["-lmimalloc"],
    );
    let traced = run_to_exit("alloc_mimalloc", &target, &["--top", "0"], 0);
    assert_leaks(
        &traced,
        &[
            ("leak_mi_malloc", 1000),
            ("leak_mi_calloc", 2000),
            ("leak_mi_heap", 3000),
        ],
    );
    assert_clean(&traced, "balanced_mi");
    assert_probes_emulated(&traced);
    // mi_malloc and mi_free are aliases of the malloc and free mimalloc exports: probed once,
    // under the first name.
    let functions = probed(&traced, "mimalloc");
    for wanted in ["malloc", "free", "mi_heap_malloc", "mi_free_size"] {
        assert!(
            functions.iter().any(|f| f == wanted),
            "{wanted} probed in mimalloc: {functions:?}"
        );
    }
}

/// A static executable carries its allocator: glibc's and musl's are found in it.
#[test]
fn static_glibc_and_static_musl() {
    let test = "static_glibc_and_static_musl";
    if !bpf_available(test) || !tool_available(test, Path::new("/usr/bin/musl-gcc")) {
        return;
    }
    for (compiler, name, allocator) in [
        ("gcc", "alloc_static_glibc", "glibc"),
        ("musl-gcc", "alloc_static_musl", "musl"),
    ] {
        let target = build_c_variant("alloc_plain.c", name, compiler, &["-static"], &[]);
        let traced = run_to_exit(name, &target, &["--top", "0"], 0);
        assert_leaks(
            &traced,
            &[
                ("leak_plain_malloc", 1000),
                ("leak_plain_calloc", 2000),
                ("leak_plain_realloc", 3000),
            ],
        );
        assert_clean(&traced, "balanced_plain");
        assert_probes_emulated(&traced);
        let functions = probed(&traced, allocator);
        assert!(
            functions.iter().any(|f| f == "malloc") && functions.iter().any(|f| f == "free"),
            "{name}: malloc and free probed in the executable as {allocator}\n{}",
            traced.describe()
        );
        let leak = traced.stacks_through("leak_plain_malloc")[0];
        assert!(
            leak["frames"]
                .as_array()
                .expect("frames")
                .iter()
                .any(|frame| frame["function"] == "main"),
            "{name}: the stack reaches main\n{}",
            traced.describe()
        );
    }
}

/// A Rust #[global_allocator] is traced at Rust's allocator shims.
#[test]
fn rust_global_allocator() {
    if !bpf_available("rust_global_allocator") {
        return;
    }
    let target = build_rust_variant(
        "rust_global_alloc.rs",
        "rust_global_alloc",
        &["-O", "-C", "force-frame-pointers=yes"],
    );
    let traced = run_to_exit("rust_global_alloc", &target, &["--top", "0"], 0);
    assert_leaks(&traced, &[("leak_boxes", 1000)]);
    assert_clean(&traced, "churn");
    assert_probes_emulated(&traced);
    let functions = probed(&traced, "Rust global allocator");
    assert!(
        functions.iter().any(|f| f.ends_with("__rust_alloc")),
        "Rust's shims probed: {functions:?}\n{}",
        traced.describe()
    );
}

/// A pool API that never calls malloc, named with --alloc-fn.
#[test]
fn user_named_pool_allocator() {
    if !bpf_available("user_named_pool_allocator") {
        return;
    }
    let target = build_c_variant("pool.c", "pool", "gcc", &[], &[]);
    let traced = run_to_exit(
        "pool",
        &target,
        &[
            "--top",
            "0",
            "--alloc-fn",
            "pool_alloc:malloc:size=2",
            "--alloc-fn",
            "pool_free:free:ptr=2",
        ],
        0,
    );
    assert_leaks(&traced, &[("leak_from_pool", 128)]);
    assert_clean(&traced, "churn_pool");
    assert_probes_emulated(&traced);
    assert_eq!(probed(&traced, "custom"), vec!["pool_alloc", "pool_free"]);

    let missing = std::process::Command::new(leaktrace_bin())
        .args(["run", "--alloc-fn", "no_such_fn:malloc", "--"])
        .arg(&target)
        .output()
        .expect("run leaktrace");
    assert_ne!(missing.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no_such_fn"), "{stderr}");
    // A near miss is told the names closest to it.
    let near = std::process::Command::new(leaktrace_bin())
        .args(["run", "--alloc-fn", "pool_allc:malloc:size=2", "--"])
        .arg(&target)
        .output()
        .expect("run leaktrace");
    let stderr = String::from_utf8_lossy(&near.stderr);
    assert!(stderr.contains("closest: pool_alloc"), "{stderr}");

    // The same pool built as C++: its functions are found by the names users write, not
    // the mangled ones (_Z10pool_allocP4poolm).
    let cxx = build_c_variant("pool.c", "pool_cxx", "g++", &["-x", "c++"], &[]);
    let traced = run_to_exit(
        "pool_cxx",
        &cxx,
        &[
            "--top",
            "0",
            "--alloc-fn",
            "pool_alloc:malloc:size=2",
            "--alloc-fn",
            "pool_free(pool*, void*):free:ptr=2",
        ],
        0,
    );
    assert_leaks(&traced, &[("leak_from_pool", 128)]);
    assert_clean(&traced, "churn_pool");
    let symbols = probed(&traced, "custom");
    assert_eq!(symbols.len(), 2, "{symbols:?}");
    assert!(
        symbols.iter().all(|symbol| symbol.starts_with("_Z")),
        "{symbols:?}"
    );
}

/// Debian's redis-server (jemalloc, no frame pointers) under a balanced redis-benchmark load
/// for a while: jemalloc is found and probed, and nothing is called leaking.
#[test]
fn redis_server_under_a_balanced_load_does_not_leak() {
    let test = "redis_server_under_a_balanced_load_does_not_leak";
    if !bpf_available(test)
        || !tool_available(test, Path::new("/usr/bin/redis-server"))
        || !tool_available(test, Path::new("/usr/bin/redis-benchmark"))
    {
        return;
    }
    let port = free_port().to_string();
    let _server = Background::spawn(
        std::process::Command::new("/usr/bin/redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null()),
    );
    let server_pid = _server.child.id().to_string();
    let listening = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap_or(0))).is_ok()
    });
    assert!(listening, "redis-server listens on {port}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, port) = (stop.clone(), port.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("/usr/bin/redis-benchmark")
                    .args(["-h", "127.0.0.1", "-p", &port, "-q"])
                    .args(["-n", "5000", "-c", "10", "-t", "set,get,lpush,lpop,incr"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        })
    };
    let traced = leaktrace(
        "redis_balanced",
        &[
            "attach",
            "--pid",
            &server_pid,
            "--duration",
            "12s",
            "--top",
            "0",
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.join();
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    assert!(
        !probed(&traced, "jemalloc").is_empty(),
        "jemalloc found\n{}",
        traced.describe()
    );
    let total: u64 = traced
        .stacks()
        .iter()
        .map(|stack| u64_of(&stack["total_allocs"]))
        .sum();
    assert!(total > 10_000, "{total} allocations seen under load");
    // Debian builds redis without frame pointers: auto walks its stacks with .eh_frame.
    assert_eq!(traced.report["unwind"], "dwarf");
    // Debian's redis-server is a link to redis-check-rdb: the report names it as started.
    assert_eq!(traced.report["target"]["name"], "redis-server");
    let exe = traced.report["target"]["exe"].as_str().unwrap_or_default();
    if !exe.ends_with("/redis-server") {
        let text = std::process::Command::new(leaktrace_bin())
            .arg("report")
            .arg(scratch_dir().join("redis_balanced.json"))
            .output()
            .expect("leaktrace report");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains(&format!("(redis-server, running {exe})")),
            "{text}"
        );
    }
    let deep = traced
        .stacks()
        .iter()
        .filter(|stack| {
            stack["frames"]
                .as_array()
                .is_some_and(|frames| frames.len() >= 5)
        })
        .count();
    assert!(
        deep * 2 >= traced.stacks().len(),
        "most redis stacks are deeper than the allocating function: {deep} of {}",
        traced.stacks().len()
    );
    let leaking: Vec<&serde_json::Value> = traced
        .stacks()
        .iter()
        .filter(|stack| stack["verdict"] == "leaking")
        .collect();
    assert!(
        leaking.is_empty(),
        "nothing leaks in a balanced redis: {leaking:#?}"
    );
}

/// Two allocators in one process: the host's glibc and a dlopen'd plugin's mimalloc, probed
/// once it is loaded.
#[test]
fn a_plugin_with_its_own_allocator() {
    let test = "a_plugin_with_its_own_allocator";
    if !bpf_available(test) || !header_present(test, "/usr/include/mimalloc.h") {
        return;
    }
    let plugin = build_c_variant(
        "plugin_mimalloc.c",
        "libplugin_mimalloc.so",
        "gcc",
        &["-shared", "-fPIC"],
        &["-lmimalloc"],
    );
    let host = build_c_variant(
        "two_allocators_host.c",
        "two_allocators_host",
        "gcc",
        &[],
        &["-ldl"],
    );
    let traced = leaktrace(
        "two_allocators",
        &[
            "run",
            "--top",
            "0",
            "--",
            host.to_str().expect("path"),
            plugin.to_str().expect("path"),
        ],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    assert_leaks(&traced, &[("host_leak", 1000), ("plugin_mi_leak", 2000)]);
    assert!(!probed(&traced, "glibc").is_empty());
    assert!(
        !probed(&traced, "mimalloc").is_empty(),
        "the plugin's mimalloc was probed\n{}",
        traced.describe()
    );
}
