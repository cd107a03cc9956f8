//! End-to-end: language runtimes.
//! - Node.js: a service leaking through a native path (Buffers, which Node allocates with
//!   malloc) is named by its JavaScript function, through the perf map
//!   `node --perf-basic-prof` writes; without the map, the report says how to get one.
//! - Go: a service that leaks goroutines at one `go` statement and keeps a growing slice in
//!   another handler; both are named with file and line, attached and launched. Where the
//!   program's heap profile is on, its small objects are read from it, with pprof's figures,
//!   and a handler whose goroutines finish is not flagged; where it is off, the report says
//!   so and follows spans.
//! - CPython 3.11: a service leaking bytearrays (malloc'd buffers) from one function is named
//!   by its Python function, file and line, read from the interpreter's frames.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use leaktrace_tests::{
    Target, Traced, bpf_available, build_go, build_go_with, leaktrace, leaktrace_with, scratch_dir,
    targets_dir, tool_available, u64_of,
};

const NODE: &str = "/usr/bin/node";

/// node running tests/targets/leaky_node.js, killed when dropped (only ever our child).
struct Node {
    child: Child,
}

impl Node {
    fn start(flags: &[&str]) -> Node {
        let mut child = Command::new(NODE)
            .args(flags)
            .arg(targets_dir().join("leaky_node.js"))
            .arg("120")
            // --perf-basic-prof also makes V8 write isolate-…-PID-v8.log to its directory.
            .current_dir(scratch_dir())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("node's first line");
        assert_eq!(line.trim(), "ready");
        // Let the hot functions get compiled (their perf map lines are written then).
        std::thread::sleep(std::time::Duration::from_secs(2));
        Node { child }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
        let log_suffix = format!("-{pid}-v8.log");
        for entry in std::fs::read_dir(scratch_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("isolate-") && name.ends_with(&log_suffix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn has_frame(stack: &serde_json::Value, function: &str) -> bool {
    stack["frames"]
        .as_array()
        .is_some_and(|frames| frames.iter().any(|frame| frame["function"] == function))
}

#[test]
fn node_functions_name_the_leak() {
    if !bpf_available("node_functions_name_the_leak")
        || !tool_available("node_functions_name_the_leak", Path::new(NODE))
    {
        return;
    }
    let node = Node::start(&[
        "--perf-basic-prof",
        "--interpreted-frames-native-stack",
        "--expose-gc",
    ]);
    let traced = leaktrace(
        "node_perf_map",
        &["attach", "--pid", &node.pid(), "-d", "6s", "--top", "0"],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let runtime = &traced.report["runtimes"][0];
    assert_eq!(runtime["runtime"], "node", "{}", traced.report["runtimes"]);
    assert_eq!(
        runtime["perf_map"],
        format!("/tmp/perf-{}.map", node.pid()),
        "{runtime}"
    );
    let leak = traced
        .stacks()
        .iter()
        .find(|stack| stack["verdict"] == "leaking" && has_frame(stack, "stashUpload"))
        .unwrap_or_else(|| {
            panic!(
                "no leaking stack through stashUpload: {}",
                traced.describe()
            )
        });
    // 10 Buffers of 16 KiB every 100 ms: 1.6 MB/s, kept.
    assert!(u64_of(&leak["outstanding_bytes"]) >= 40 * 16384, "{leak}");
    let frame = leak["frames"]
        .as_array()
        .and_then(|frames| {
            frames
                .iter()
                .find(|frame| frame["function"] == "stashUpload")
        })
        .expect("the frame");
    assert_eq!(frame["module"], "[jit]", "{frame}");
    assert!(
        frame["file"]
            .as_str()
            .is_some_and(|file| file.ends_with("leaky_node.js")),
        "{frame}"
    );
    assert_eq!(frame["line"], 10, "{frame}");
    // The JavaScript callers are named too: node's timer loop called the interval callback.
    assert!(has_frame(leak, "listOnTimeout"), "{leak}");
    // handleRead's Buffers are collected (a GC every 500 ms): never a leak.
    assert!(
        !traced
            .stacks()
            .iter()
            .any(|stack| stack["verdict"] == "leaking" && has_frame(stack, "handleRead")),
        "{}",
        traced.describe()
    );
}

#[test]
fn node_without_a_perf_map_is_told_how() {
    if !bpf_available("node_without_a_perf_map_is_told_how")
        || !tool_available("node_without_a_perf_map_is_told_how", Path::new(NODE))
    {
        return;
    }
    let node = Node::start(&[]);
    let traced = leaktrace(
        "node_no_perf_map",
        &["attach", "--pid", &node.pid(), "-d", "2s"],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let runtime = &traced.report["runtimes"][0];
    assert_eq!(runtime["runtime"], "node", "{}", traced.report["runtimes"]);
    assert!(runtime["perf_map"].is_null(), "{runtime}");
    assert!(
        runtime["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("--perf-basic-prof")),
        "{runtime}"
    );
}

const GO: &str = "/usr/bin/go";

/// The Go target, built once for the tests of this file (a rebuild would replace the file
/// under a running one).
fn go_target() -> &'static Path {
    static PROGRAM: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| build_go("goroutines.go"))
}

/// The line of tests/targets/SOURCE that holds `marker`.
fn line_of(source: &str, marker: &str) -> u64 {
    let text = std::fs::read_to_string(targets_dir().join(source)).expect("read the source");
    text.lines()
        .position(|line| line.contains(marker))
        .map(|index| index as u64 + 1)
        .unwrap_or_else(|| panic!("{marker} is not in {source}"))
}

/// The goroutine site started at FUNCTION, if listed.
fn goroutine_site<'a>(traced: &'a Traced, function: &str) -> Option<&'a serde_json::Value> {
    traced.report["goroutines"]["sites"]
        .as_array()?
        .iter()
        .find(|site| site["site"]["function"] == function)
}

/// The Go target's two leaks, and its control, as any Go report must show them.
fn assert_go_leaks_named(traced: &Traced, seconds: u64) {
    assert_go_leaks_named_with(traced, seconds, true);
}

/// As above; `complete`: the runtime hint must be empty (a stripped binary gets one).
fn assert_go_leaks_named_with(traced: &Traced, seconds: u64, complete: bool) {
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    assert_eq!(traced.dropped_total(), 0, "{}", traced.report["dropped"]);
    let runtime = &traced.report["runtimes"][0];
    assert_eq!(runtime["runtime"], "go", "{}", traced.report["runtimes"]);
    assert!(
        runtime["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("go1.")),
        "{runtime}"
    );
    if complete {
        assert!(runtime["hint"].is_null(), "{runtime}");
    }
    // goroutines.go never calls runtime.MemProfile: the linker turned the heap profile off
    // (stripped or not), and the report says what it does instead.
    let heap = runtime["heap"].as_str().unwrap_or_default();
    assert!(heap.contains("heap profile is off"), "{runtime}");
    assert!(heap.contains("a span at a time"), "{runtime}");

    // One goroutine per request (about 90 a second) is never released.
    let leak = goroutine_site(traced, "main.handleSubscribe")
        .unwrap_or_else(|| panic!("no handleSubscribe site: {}", traced.report["goroutines"]));
    assert_eq!(leak["verdict"], "leaking", "{leak}");
    assert!(
        leak["site"]["file"]
            .as_str()
            .is_some_and(|file| file.ends_with("tests/targets/goroutines.go")),
        "{leak}"
    );
    assert_eq!(
        u64_of(&leak["site"]["line"]),
        line_of("goroutines.go", "// leaks: nobody ever sends on wait"),
        "{leak}"
    );
    assert_eq!(leak["stack"][1]["function"], "main.main", "{leak}");
    assert!(u64_of(&leak["alive"]) >= 20 * seconds, "{leak}");
    assert_eq!(u64_of(&leak["exited"]), 0, "{leak}");
    assert!(
        leak["growth_per_s"].as_f64().unwrap_or(0.0) > 20.0,
        "{leak}"
    );

    // handleEcho's channels are garbage, in the size class of handleSubscribe's, which stay:
    // with the profile off, spans of that class may be charged to either, so neither is
    // flagged (and the goroutine site names the leak).
    let flagged: Vec<&serde_json::Value> = traced
        .stacks()
        .iter()
        .filter(|stack| {
            through(stack, "main.handleEcho")
                && ["leaking", "suspect", "growing"]
                    .contains(&stack["verdict"].as_str().unwrap_or(""))
        })
        .collect();
    assert!(flagged.is_empty(), "flagged: {flagged:#?}");

    // handleEcho's goroutines all end.
    let echo = goroutine_site(traced, "main.handleEcho")
        .unwrap_or_else(|| panic!("no handleEcho site: {}", traced.report["goroutines"]));
    assert_ne!(echo["verdict"], "leaking", "{echo}");
    assert!(u64_of(&echo["created"]) >= 40 * seconds, "{echo}");
    assert!(u64_of(&echo["alive"]) <= 2, "{echo}");
    let totals = &traced.report["goroutines"];
    assert!(
        u64_of(&totals["alive"]) >= u64_of(&leak["alive"]),
        "{totals}"
    );

    // The Go heap: every request's 16 KiB payload is kept in a global slice.
    let upload_line = line_of("goroutines.go", "// leaks: kept in uploads");
    let heap = traced
        .stacks()
        .iter()
        .find(|stack| {
            stack["verdict"] == "leaking"
                && stack["frames"].as_array().is_some_and(|frames| {
                    frames.iter().any(|frame| {
                        frame["function"] == "main.handleUpload"
                            && frame["line"].as_u64() == Some(upload_line)
                    })
                })
        })
        .unwrap_or_else(|| {
            panic!(
                "no leaking stack through handleUpload: {}",
                traced.describe()
            )
        });
    assert_eq!(heap["origin"], "heap", "{heap}");
    assert!(
        u64_of(&heap["outstanding_bytes"]) >= 30 * 16384 * seconds,
        "{heap}"
    );
    // Large objects (64 KiB, a span each, seen after allocLarge returns): about 9 a second.
    let archive_line = line_of("goroutines.go", "// leaks: a large object kept in archives");
    let large: u64 = traced
        .stacks()
        .iter()
        .filter(|stack| {
            stack["frames"].as_array().is_some_and(|frames| {
                frames.iter().any(|frame| {
                    frame["function"] == "main.handleArchive"
                        && frame["line"].as_u64() == Some(archive_line)
                })
            })
        })
        .map(|stack| u64_of(&stack["outstanding_bytes"]))
        .sum();
    assert!(
        large >= 4 * (64 << 10) * seconds,
        "large objects through handleArchive: {large} bytes\n{}",
        traced.describe()
    );
    let allocator = &traced.report["allocators"][0];
    assert_eq!(allocator["allocator"], "Go runtime", "{allocator}");
    let stepped: Vec<&serde_json::Value> = allocator["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter(|probe| probe["emulated"] != true)
        .collect();
    assert!(stepped.is_empty(), "single-stepped Go probes: {stepped:?}");
}

/// The newest Go toolchain `cargo xtask setup` installs (from bookworm-backports): the Go
/// tests below run with it too, so what is found by name, read from DWARF or taken from
/// the layout table is checked on the oldest and the newest release at hand.
const NEWEST_GO: &str = "/usr/lib/go-1.23/bin/go";

/// Whether a Go test can run: eBPF, and the toolchain GO (else a visible skip, or a failure
/// where every test must run).
fn go_ready(test: &str, go: &str) -> bool {
    bpf_available(test) && tool_available(test, Path::new(go))
}

/// Attached to PROGRAM (goroutines.go built by some toolchain) after it ran for a second:
/// both leaks and the control, with the goroutines started before the attach counted too
/// (from the runtime's list).
fn go_attached(name: &str, program: &Path) -> Traced {
    let target = Target::start(program, &["120"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let traced = leaktrace(
        name,
        &["attach", "--pid", &target.pid(), "-d", "6s", "--top", "0"],
    );
    assert_go_leaks_named(&traced, 6);
    let leak = goroutine_site(&traced, "main.handleSubscribe").expect("listed");
    assert!(u64_of(&leak["alive_at_start"]) >= 40, "{leak}");
    traced
}

#[test]
fn go_goroutine_and_heap_leaks_are_named_when_attached() {
    if !go_ready("go_goroutine_and_heap_leaks_are_named_when_attached", GO) {
        return;
    }
    go_attached("go_attached", go_target());
}

#[test]
fn go_1_23_leaks_are_named_when_attached() {
    if !go_ready("go_1_23_leaks_are_named_when_attached", NEWEST_GO) {
        return;
    }
    let program = build_go_with(
        Path::new(NEWEST_GO),
        "goroutines.go",
        "goroutines_1_23",
        &[],
    );
    let traced = go_attached("go_1_23_attached", &program);
    let version = traced.report["runtimes"][0]["version"]
        .as_str()
        .unwrap_or_default();
    assert!(version.starts_with("go1.23"), "{version}");
}

/// No ELF symbol table and no DWARF: names, files and lines from .gopclntab, probe points
/// too, and the runtime layout from the release's known one.
fn go_stripped(name: &str, go: &Path) {
    let program = build_go_with(go, "goroutines.go", name, &["-ldflags=-s -w"]);
    let target = Target::start(&program, &["120"]);
    let traced = leaktrace(
        name,
        &["attach", "--pid", &target.pid(), "-d", "6s", "--top", "0"],
    );
    assert_go_leaks_named_with(&traced, 6, false);
    let hint = traced.report["runtimes"][0]["hint"]
        .as_str()
        .unwrap_or_default();
    assert!(hint.contains("-ldflags=-s"), "{hint}");
}

#[test]
fn a_stripped_go_binary_is_named_from_its_own_table() {
    if !go_ready("a_stripped_go_binary_is_named_from_its_own_table", GO) {
        return;
    }
    go_stripped("goroutines_stripped", Path::new(GO));
}

#[test]
fn a_stripped_go_1_23_binary_is_named_from_its_own_table() {
    if !go_ready(
        "a_stripped_go_1_23_binary_is_named_from_its_own_table",
        NEWEST_GO,
    ) {
        return;
    }
    go_stripped("goroutines_stripped_1_23", Path::new(NEWEST_GO));
}

/// A stack has a frame of FUNCTION.
fn through(stack: &serde_json::Value, function: &str) -> bool {
    stack["frames"]
        .as_array()
        .is_some_and(|frames| frames.iter().any(|frame| frame["function"] == function))
}

/// go_heap_profile.go built by GO, attached after a second: its small objects are read
/// from the runtime's heap profile, so the growing slice is named and leaking while the
/// garbage channels of the handler whose goroutines finish are not flagged (spans charged
/// whole to the stack that filled them called it growing); large objects are counted from
/// their spans; goroutines per site as always.
fn go_profile_attached(name: &str, go: &Path, flags: &[&str]) {
    let program = build_go_with(go, "go_heap_profile.go", name, flags);
    let target = Target::start(&program, &["120"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    // 8 s: at the default rate the profile samples this slice about three times a second.
    let traced = leaktrace(
        name,
        &["attach", "--pid", &target.pid(), "-d", "8s", "--top", "0"],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    assert_eq!(traced.dropped_total(), 0, "{}", traced.report["dropped"]);
    let runtime = &traced.report["runtimes"][0];
    assert!(
        runtime["heap"]
            .as_str()
            .is_some_and(|heap| heap.starts_with("from the runtime's heap profile")),
        "{runtime}"
    );
    let site = goroutine_site(&traced, "main.handleSubscribe")
        .unwrap_or_else(|| panic!("no handleSubscribe site: {}", traced.report["goroutines"]));
    assert_eq!(site["verdict"], "leaking", "{site}");

    let upload_line = line_of("go_heap_profile.go", "// leaks: kept in uploads");
    let upload = traced
        .stacks()
        .iter()
        .find(|stack| {
            stack["frames"][0]["function"] == "main.handleUpload"
                && stack["frames"][0]["line"].as_u64() == Some(upload_line)
        })
        .unwrap_or_else(|| panic!("no stack from handleUpload: {}", traced.describe()));
    assert_eq!(upload["verdict"], "leaking", "{upload}");
    assert_eq!(upload["origin"], "heap", "{upload}");
    // About 90 payloads of 16 KiB a second since the program started, sampled and scaled.
    assert!(
        u64_of(&upload["outstanding_bytes"]) >= 30 * 16384 * 8,
        "{upload}"
    );
    assert!(u64_of(&upload["at_last_gc"]["bytes"]) > 0, "{upload}");

    let archive = traced
        .stacks()
        .iter()
        .find(|stack| through(stack, "main.handleArchive"))
        .unwrap_or_else(|| panic!("no stack through handleArchive: {}", traced.describe()));
    assert_eq!(archive["verdict"], "leaking", "{archive}");
    assert!(archive["at_last_gc"].is_null(), "from spans: {archive}");
    assert_eq!(
        u64_of(&archive["outstanding_bytes"]) % (64 << 10),
        0,
        "{archive}"
    );

    let flagged: Vec<&serde_json::Value> = traced
        .stacks()
        .iter()
        .filter(|stack| {
            (through(stack, "main.handleEcho") || through(stack, "runtime.malg"))
                && ["leaking", "suspect", "growing"]
                    .contains(&stack["verdict"].as_str().unwrap_or(""))
        })
        .collect();
    assert!(flagged.is_empty(), "flagged: {flagged:#?}");
}

#[test]
fn go_heap_profile_names_the_growing_slice_and_not_the_finishing_handler() {
    if !go_ready(
        "go_heap_profile_names_the_growing_slice_and_not_the_finishing_handler",
        GO,
    ) {
        return;
    }
    go_profile_attached("go_heap_profile", Path::new(GO), &[]);
}

#[test]
fn go_1_23_heap_profile_names_the_growing_slice() {
    if !go_ready("go_1_23_heap_profile_names_the_growing_slice", NEWEST_GO) {
        return;
    }
    go_profile_attached("go_heap_profile_1_23", Path::new(NEWEST_GO), &[]);
}

/// No symbol table and no DWARF: the profile's variables are found where the runtime's code
/// reads them.
#[test]
fn a_stripped_go_binary_heap_profile_is_found_from_its_code() {
    if !go_ready(
        "a_stripped_go_binary_heap_profile_is_found_from_its_code",
        NEWEST_GO,
    ) {
        return;
    }
    go_profile_attached(
        "go_heap_profile_stripped",
        Path::new(NEWEST_GO),
        &["-ldflags=-s -w"],
    );
}

/// pprof's `-top` flat in-use bytes per function, from `go tool pprof -sample_index=inuse_space`.
fn pprof_in_use(program: &Path, profile: &Path) -> std::collections::BTreeMap<String, u64> {
    let output = Command::new(GO)
        .args([
            "tool",
            "pprof",
            "-sample_index=inuse_space",
            "-top",
            "-unit=B",
        ])
        .arg(program)
        .arg(profile)
        .output()
        .expect("run go tool pprof");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let bytes = fields.first()?.strip_suffix('B')?.parse::<u64>().ok()?;
            let function = fields.get(5..)?.join(" ");
            let function = function.trim_end_matches(" (inline)").to_string();
            Some((function, bytes))
        })
        .collect()
}

/// Launched: at its exit the in-use bytes leaktrace gives as of the last GC, per innermost
/// function, are the ones pprof reads from the profile the program wrote as it ended (with
/// the collector stopped, so no GC came between). Large objects (handleArchive) are counted
/// from their spans, and pprof's sampled estimate of them is not compared.
#[test]
fn go_heap_profile_figures_are_pprofs() {
    if !go_ready("go_heap_profile_figures_are_pprofs", GO) {
        return;
    }
    let program = build_go_with(
        Path::new(GO),
        "go_heap_profile.go",
        "go_heap_profile_run",
        &[],
    );
    let profile = scratch_dir().join("go_heap_profile_run.pb.gz");
    let _ = std::fs::remove_file(&profile);
    let profile_text = profile.display().to_string();
    let traced = leaktrace_with(
        "go_heap_profile_run",
        &[
            "run",
            "--top",
            "0",
            "--",
            &program.display().to_string(),
            "4",
        ],
        &[("HEAP_PROFILE", &profile_text)],
        || {},
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let pprof = pprof_in_use(&program, &profile);
    let mut ours: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for stack in traced.stacks() {
        if let (Some(function), Some(bytes)) = (
            stack["frames"][0]["function"].as_str(),
            stack["at_last_gc"]["bytes"].as_u64(),
        ) {
            *ours.entry(function.to_string()).or_default() += bytes;
        }
    }
    // The handlers' own small objects (the goroutines' records are counted per site, and
    // leaktrace leaves them out of the heap's stacks).
    let compared = [
        "main.handleUpload",
        "main.handleSubscribe",
        "main.handleEcho",
    ];
    assert!(
        pprof
            .get("main.handleUpload")
            .is_some_and(|bytes| *bytes > 0),
        "pprof: {pprof:?}"
    );
    for function in compared {
        assert_eq!(
            ours.get(function).copied().unwrap_or(0),
            pprof.get(function).copied().unwrap_or(0),
            "{function}: leaktrace {ours:?}, pprof {pprof:?}"
        );
    }
}

/// goroutine_count.go built by GO: 3000 goroutines started at recursion depths 0–399
/// (many `go` statements grow the stack, passing the probe twice) are counted as 3000.
fn goroutines_counted_once(name: &str, go: &Path) {
    let program = build_go_with(go, "goroutine_count.go", name, &[])
        .display()
        .to_string();
    let traced = leaktrace(name, &["run", "--top", "0", "--", &program]);
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let site = traced.report["goroutines"]["sites"]
        .as_array()
        .and_then(|sites| {
            sites.iter().find(|site| {
                site["site"]["line"].as_u64()
                    == Some(line_of("goroutine_count.go", "// the counted go statement"))
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no site at the go statement: {}",
                traced.report["goroutines"]
            )
        });
    assert_eq!(u64_of(&site["created"]), 3000, "{site}");
    assert_eq!(u64_of(&site["alive"]), 3000, "{site}");
}

#[test]
fn every_goroutine_is_counted_once_even_when_its_go_statement_grows_the_stack() {
    if !go_ready(
        "every_goroutine_is_counted_once_even_when_its_go_statement_grows_the_stack",
        GO,
    ) {
        return;
    }
    goroutines_counted_once("goroutine_count", Path::new(GO));
}

#[test]
fn go_1_23_goroutines_are_counted_once_each() {
    if !go_ready("go_1_23_goroutines_are_counted_once_each", NEWEST_GO) {
        return;
    }
    goroutines_counted_once("goroutine_count_1_23", Path::new(NEWEST_GO));
}

#[test]
fn go_leaks_are_named_in_a_launched_program() {
    if !go_ready("go_leaks_are_named_in_a_launched_program", GO) {
        return;
    }
    let program = go_target().display().to_string();
    let traced = leaktrace("go_run", &["run", "--top", "0", "--", &program, "5"]);
    assert_go_leaks_named(&traced, 4);
    let leak = goroutine_site(&traced, "main.handleSubscribe").expect("listed");
    assert_eq!(u64_of(&leak["alive_at_start"]), 0, "{leak}");
}

const PYTHON: &str = "/usr/bin/python3";

#[test]
fn python_functions_name_the_leak() {
    if !bpf_available("python_functions_name_the_leak")
        || !tool_available("python_functions_name_the_leak", Path::new(PYTHON))
    {
        return;
    }
    let mut child = Command::new(PYTHON)
        .arg(targets_dir().join("leaky_python.py"))
        .arg("120")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("python's first line");
    assert_eq!(line.trim(), "ready");
    let python = Target { child };
    let traced = leaktrace(
        "python_frames",
        &["attach", "--pid", &python.pid(), "-d", "6s", "--top", "0"],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let runtime = &traced.report["runtimes"][0];
    assert_eq!(
        runtime["runtime"], "python",
        "{}",
        traced.report["runtimes"]
    );
    let version = runtime["version"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.11."), "{runtime}");
    assert!(runtime["hint"].is_null(), "{runtime}");

    let python_frame = |stack: &serde_json::Value, function: &str| -> Option<serde_json::Value> {
        stack["frames"]
            .as_array()?
            .iter()
            .find(|frame| frame["function"] == function && frame["module"] == "[python]")
            .cloned()
    };
    let leak = traced
        .stacks()
        .iter()
        .find(|stack| {
            stack["verdict"] == "leaking" && python_frame(stack, "cache_request").is_some()
        })
        .unwrap_or_else(|| {
            panic!(
                "no leaking stack through cache_request: {}",
                traced.describe()
            )
        });
    // 10 bytearrays of 16 KiB every 100 ms, kept.
    assert!(u64_of(&leak["outstanding_bytes"]) >= 40 * 16384, "{leak}");
    let frame = python_frame(leak, "cache_request").expect("found above");
    assert!(
        frame["file"]
            .as_str()
            .is_some_and(|file| file.ends_with("tests/targets/leaky_python.py")),
        "{frame}"
    );
    assert_eq!(
        u64_of(&frame["line"]),
        line_of("leaky_python.py", "# leaks: kept in CACHE"),
        "{frame}"
    );
    // Its Python caller, at the line that calls it, and the module's code below that.
    let caller = python_frame(leak, "main").expect("main in the stack");
    assert_eq!(
        u64_of(&caller["line"]),
        line_of("leaky_python.py", "    cache_request(i)"),
        "{caller}"
    );
    assert!(python_frame(leak, "<module>").is_some(), "{leak}");
    // glibc trimming its heap inside free() is not the program's break growing (it read as
    // a leaking [brk] stack through free while malloc's own growth went unseen).
    assert!(
        !traced
            .stacks()
            .iter()
            .any(|stack| stack["origin"] == "brk" && stack["verdict"] == "leaking"),
        "{}",
        traced.describe()
    );
    // handle_read's bytearrays are freed at once.
    assert!(
        !traced
            .stacks()
            .iter()
            .any(|stack| stack["verdict"] == "leaking"
                && python_frame(stack, "handle_read").is_some()),
        "{}",
        traced.describe()
    );
    assert!(
        traced
            .stacks()
            .iter()
            .any(|stack| python_frame(stack, "handle_read").is_some()),
        "handle_read's stack is listed: {}",
        traced.describe()
    );
}
