//! End-to-end: leaktrace's reachability classes against valgrind memcheck's on the same
//! program (tests/targets/reach_cases.c), case by case.
use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use leaktrace_tests::{
    Background, Target, bpf_available, build_c, build_c_variant, free_port, leaktrace,
    leaktrace_bin, leaktrace_then, run_to_exit, run_to_exit_with, scratch_dir, tool_available,
    u64_of,
};
use serde_json::Value;

/// The cases of reach_cases.c: each names the function its blocks are allocated under.
const CASES: [&str; 9] = [
    "keep_in_global",
    "keep_in_tls",
    "keep_on_stack",
    "keep_in_register",
    "lose_plainly",
    "lose_cycle",
    "lose_parent",
    "keep_interior",
    "grow_cache",
];

/// Bytes per class ("lost", "indirectly_lost", "interior", "reachable") for one case.
type Classes = BTreeMap<String, u64>;

/// The case of `cases` a stack belongs to: the innermost of its frames that names one.
fn case_of<'a>(
    cases: &[&'static str],
    functions: impl Iterator<Item = &'a str>,
) -> Option<&'static str> {
    let mut found = None;
    for function in functions {
        if let Some(case) = cases.iter().find(|case| **case == function) {
            found = Some(*case);
            break;
        }
    }
    found
}

/// Whether a test that compares with valgrind can run: eBPF, and valgrind installed.
fn with_valgrind(test: &str) -> bool {
    bpf_available(test) && tool_available(test, Path::new("/usr/bin/valgrind"))
}

/// valgrind's report (its standard error) on `program ARGS`, every leak kind listed.
fn valgrind_report(program: &Path, args: &[&str]) -> String {
    valgrind_report_with(&[], program, args)
}

/// valgrind's report with valgrind options `options` too.
fn valgrind_report_with(options: &[&str], program: &Path, args: &[&str]) -> String {
    let out = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--show-leak-kinds=all",
            "--num-callers=30",
        ])
        .args(options)
        .arg(program)
        .args(args)
        .output()
        .expect("run valgrind");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// valgrind's loss records by case of `cases`, in leaktrace's class names.
fn valgrind_classes(program: &Path, cases: &[&'static str]) -> BTreeMap<&'static str, Classes> {
    valgrind_classes_with(program, &[], cases)
}

/// valgrind's loss records on `program ARGS` by case of `cases`.
fn valgrind_classes_with(
    program: &Path,
    args: &[&str],
    cases: &[&'static str],
) -> BTreeMap<&'static str, Classes> {
    let text = valgrind_report(program, args);
    let lines: Vec<&str> = text.lines().collect();
    classes_in_valgrind_lines(&lines, cases)
}

/// The loss records of valgrind's report lines by case of `cases`.
fn classes_in_valgrind_lines(
    lines: &[&str],
    cases: &[&'static str],
) -> BTreeMap<&'static str, Classes> {
    let mut found: BTreeMap<&'static str, Classes> = BTreeMap::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(at) = line.find(" bytes in ") else {
            continue;
        };
        let head = line[..at].rsplit("== ").next().unwrap_or("").trim();
        // "128 (64 direct, 64 indirect)" counts the block itself as 64.
        let bytes: u64 = match head.split_once(" (") {
            Some((_, detail)) => detail
                .split_whitespace()
                .next()
                .and_then(|n| n.replace(',', "").parse().ok())
                .unwrap_or(0),
            None => head.replace(',', "").parse().unwrap_or(0),
        };
        let class = if line.contains("are definitely lost") {
            "lost"
        } else if line.contains("are indirectly lost") {
            "indirectly_lost"
        } else if line.contains("are possibly lost") {
            "interior"
        } else if line.contains("are still reachable") {
            "reachable"
        } else {
            continue;
        };
        let frames = lines[index + 1..]
            .iter()
            .take_while(|frame| frame.contains(" at 0x") || frame.contains(" by 0x"))
            .filter_map(|frame| {
                let name = frame.split(": ").nth(1)?;
                Some(name.split(' ').next().unwrap_or(name))
            });
        if let Some(case) = case_of(cases, frames) {
            *found
                .entry(case)
                .or_default()
                .entry(class.to_string())
                .or_default() += bytes;
        }
    }
    found
}

/// leaktrace's reachability by case of `cases`, from its JSON report.
fn leaktrace_classes(report: &Value, cases: &[&'static str]) -> BTreeMap<&'static str, Classes> {
    let mut found: BTreeMap<&'static str, Classes> = BTreeMap::new();
    for stack in report["stacks"].as_array().expect("stacks") {
        let frames = stack["frames"].as_array().expect("frames");
        let Some(case) = case_of(
            cases,
            frames.iter().filter_map(|frame| frame["function"].as_str()),
        ) else {
            continue;
        };
        let reachability = &stack["reachability"];
        assert!(reachability.is_object(), "no reachability in {stack}");
        for class in ["lost", "indirectly_lost", "interior", "reachable"] {
            let bytes = u64_of(&reachability[class]["bytes"]);
            // Zero-byte blocks are counted too, as valgrind lists them ("0 bytes in 1 blocks").
            if u64_of(&reachability[class]["blocks"]) > 0 {
                *found
                    .entry(case)
                    .or_default()
                    .entry(class.to_string())
                    .or_default() += bytes;
            }
        }
    }
    found
}

#[test]
fn classes_match_valgrind_on_every_case() {
    if !with_valgrind("classes_match_valgrind_on_every_case") {
        return;
    }
    let program = build_c("reach_cases.c", &["-pthread"]);
    let expected = valgrind_classes(&program, &CASES);
    assert_eq!(
        expected.len(),
        CASES.len(),
        "valgrind's records do not cover every case: {expected:?}"
    );

    // leaktrace attaches first; the program allocates once it is told to, then keeps
    // running (the thread cases need live threads), growing its cache.
    let go = scratch_dir().join("reach_cases.go");
    let _ = std::fs::remove_file(&go);
    let target = Target::start(&program, &["wait", go.to_str().expect("utf-8")]);
    let pid = target.pid();
    let traced = leaktrace_then(
        "reach_cases",
        &[
            "attach",
            "--pid",
            &pid,
            "--reachability",
            "--top",
            "0",
            "-i",
            "1s",
            "-d",
            "4s",
        ],
        || std::fs::write(&go, b"go").expect("tell the target to go"),
    );
    let found = leaktrace_classes(&traced.report, &CASES);
    for case in CASES {
        let mine = found.get(case).cloned().unwrap_or_default();
        let theirs = expected.get(case).cloned().unwrap_or_default();
        if case == "grow_cache" {
            // Still growing when leaktrace looked: the classes match, the bytes do not.
            assert_eq!(
                mine.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>(),
                "{case}: leaktrace {mine:?}, valgrind {theirs:?}"
            );
        } else {
            assert_eq!(mine, theirs, "{case}: leaktrace vs valgrind");
        }
    }
    // Memory that keeps rising but is still reachable is growth, not a leak.
    let cache = traced
        .stacks()
        .iter()
        .find(|stack| stack["frames"][0]["function"] == "grow_cache")
        .expect("grow_cache stack");
    assert_ne!(cache["verdict"], "leaking", "{cache}");
    let scan = &traced.report["reachability_scan"];
    assert!(
        scan["paused_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{scan}"
    );
    assert!(u64_of(&scan["scanned_bytes"]) > 0, "{scan}");
    assert_eq!(scan["truncated"], false);
    // The flame graph's input splits each stack by class, as the JSON does.
    let saved = scratch_dir().join("reach_cases.json");
    let out = Command::new(leaktrace_bin())
        .args([
            "report",
            saved.to_str().expect("utf-8"),
            "--format",
            "folded",
        ])
        .output()
        .expect("run leaktrace report");
    assert!(out.status.success(), "{out:?}");
    let folded = String::from_utf8_lossy(&out.stdout);
    let lost = expected["lose_plainly"]["lost"];
    assert!(
        folded
            .lines()
            .any(|line| line.ends_with(&format!("lose_plainly;[lost] {lost}"))),
        "{folded}"
    );
    assert!(
        folded
            .lines()
            .any(|line| line.contains("keep_in_global;[still reachable] ")),
        "{folded}"
    );
    // The target runs on after the scan.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("target alive");
    assert!(!stat.contains(") Z ") && !stat.contains(") T "), "{stat}");
}

/// valgrind's LEAK SUMMARY: bytes and blocks definitely and indirectly lost.
fn valgrind_lost(program: &Path) -> (u64, u64) {
    lost_in_valgrind_report(&valgrind_report(program, &[]))
}

/// The bytes and blocks definitely and indirectly lost by the LEAK SUMMARY of `report`.
fn lost_in_valgrind_report(report: &str) -> (u64, u64) {
    let mut lost = (0, 0);
    for line in report.lines() {
        let Some((_, figures)) = line
            .split_once("definitely lost: ")
            .or_else(|| line.split_once("indirectly lost: "))
        else {
            continue;
        };
        // "1,234 bytes in 5 blocks"
        let numbers: Vec<u64> = figures
            .split_whitespace()
            .filter_map(|word| word.replace(',', "").parse().ok())
            .collect();
        if let [bytes, blocks, ..] = numbers[..] {
            lost.0 += bytes;
            lost.1 += blocks;
        }
    }
    lost
}

/// The cases of exit_cases.c, judged when the program exits.
const EXIT_CASES: [&str; 25] = [
    "lose_in_loop",
    "lose_after_printf",
    "lose_zero",
    "lose_in_dead_frame",
    "keep_once",
    "keep_in_main",
    "keep_on_thread",
    "keep_in_spinning_register",
    "keep_in_blocked_register",
    "lose_on_live_thread",
    "lose_on_ended_thread",
    "lose_thread_argument",
    "lose_thread_result",
    "keep_unjoined_result",
    "keep_in_specific",
    "keep_in_thread_specific",
    "keep_as_integer",
    "lose_unaligned",
    "lose_self_pointing",
    "keep_huge",
    "lose_huge",
    "lose_realloc_zero",
    "keep_on_coroutine",
    "keep_in_static_tls",
    "keep_in_dynamic_tls",
];

/// `leaktrace run` judges what a program holds at its exit as valgrind does, case by case
/// (tests/targets/exit_cases.c lists them): the exiting thread's stack is a root from the
/// frame that called exit up only (a pointer left in a dead frame, or in fprintf's callees'
/// frames, does not keep a block; one the caller held in a register the exit path saved
/// does); every other live thread's registers are roots and its stack from its stack
/// pointer up, a thread that ended leaves only dead frames; a thread's descriptor and its
/// static and dynamic TLS are roots, even where the kernel merged the main thread's mapping
/// with a chunk malloc mapped; a lost zero-byte
/// block is a leak, and a block still pointed to is `reachable`, not growing. The summary
/// line counts what was lost, and --error-exitcode turns it into the exit status.
#[test]
fn run_at_exit_matches_valgrind_on_every_case() {
    let test = "run_at_exit_matches_valgrind_on_every_case";
    if !with_valgrind(test) {
        return;
    }
    let program = build_c("exit_cases.c", &["-O1", "-pthread"]);
    // The library it loads with dlopen, for a thread-local in dynamic TLS.
    let library = build_c_variant(
        "exit_cases_tls.c",
        "libexit_cases_tls.so",
        "gcc",
        &["-shared", "-fPIC"],
        &[],
    );
    let library_path = library.to_str().expect("utf-8");
    // One valgrind run answers both per case and in total, so the two cannot disagree.
    let report = valgrind_report(&program, &[library_path]);
    let lines: Vec<&str> = report.lines().collect();
    let expected = classes_in_valgrind_lines(&lines, &EXIT_CASES);
    assert_eq!(
        expected.len(),
        EXIT_CASES.len(),
        "valgrind's records do not cover every case: {expected:?}"
    );
    let program_path = program.to_str().expect("utf-8");
    let traced = leaktrace(
        "exit_cases",
        &[
            "run",
            "--top",
            "0",
            "--error-exitcode",
            "9",
            "--",
            program_path,
            library_path,
        ],
    );
    assert_eq!(
        traced.output.status.code(),
        Some(9),
        "the program leaks: --error-exitcode; {}",
        traced.stderr()
    );
    let found = leaktrace_classes(&traced.report, &EXIT_CASES);
    for case in EXIT_CASES {
        let mine = found.get(case).cloned().unwrap_or_default();
        let theirs = expected.get(case).cloned().unwrap_or_default();
        assert_eq!(mine, theirs, "{case}: leaktrace vs valgrind");
    }
    for stack in traced.stacks() {
        let functions = stack["frames"].as_array().expect("frames");
        let Some(case) = case_of(
            &EXIT_CASES,
            functions
                .iter()
                .filter_map(|frame| frame["function"].as_str()),
        ) else {
            continue;
        };
        // Lost at exit is a leak; all still pointed to is reachable (not growing).
        let lost = expected[case].contains_key("lost");
        let wanted = if lost { "leaking" } else { "reachable" };
        assert_eq!(stack["verdict"], wanted, "{case}: {stack}");
    }
    // realloc(p, 0) freed its block: nothing of it is held.
    assert!(
        traced
            .stacks()
            .iter()
            .filter(
                |stack| stack["frames"].as_array().is_some_and(|frames| frames
                    .iter()
                    .any(|frame| frame["function"] == "gone_in_realloc"))
            )
            .all(|stack| u64_of(&stack["outstanding_bytes"]) == 0),
        "{}",
        traced.describe()
    );
    // The cases were written to lose what their names say.
    for case in EXIT_CASES {
        assert_eq!(
            expected[case].contains_key("lost"),
            case.starts_with("lose_"),
            "{case}: valgrind says {:?}",
            expected[case]
        );
    }
    // The summary agrees with valgrind's over the whole program, cases or not.
    let (lost_bytes, lost_blocks) = lost_in_valgrind_report(&report);
    let summary = &traced.report["leak_summary"];
    let theirs: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|line| line.contains(" lost: ") || line.contains("reachable: "))
        .collect();
    assert_eq!(
        u64_of(&summary["leaked_bytes"]),
        lost_bytes,
        "{summary} valgrind: {theirs:?}"
    );
    assert_eq!(
        u64_of(&summary["leaked_blocks"]),
        lost_blocks,
        "{summary} valgrind: {theirs:?}"
    );
    assert!(
        traced.stderr().contains(&format!(
            "SUMMARY: {lost_bytes} bytes leaked in {lost_blocks} blocks"
        )),
        "{}",
        traced.stderr()
    );
    // A pointer only in callee-saved registers when main calls exit(): the exit path saves
    // them in its own frames, which the scan leaves out, but not what they saved.
    let text = valgrind_report(&program, &["register"]);
    let lines: Vec<&str> = text.lines().collect();
    let theirs = classes_in_valgrind_lines(&lines, &["keep_in_saved_register"]);
    assert_eq!(
        theirs["keep_in_saved_register"]["reachable"], 24,
        "valgrind: {theirs:?}"
    );
    let register = leaktrace(
        "exit_cases_register",
        &["run", "--top", "0", "--", program_path, "register"],
    );
    assert_eq!(
        register.output.status.code(),
        Some(0),
        "{}",
        register.stderr()
    );
    let mine = leaktrace_classes(&register.report, &["keep_in_saved_register"]);
    assert_eq!(
        mine["keep_in_saved_register"]["reachable"],
        24,
        "{}",
        register.describe()
    );
    assert_eq!(
        u64_of(&register.report["leak_summary"]["leaked_blocks"]),
        0,
        "{}",
        register.report["leak_summary"]
    );
    // A program that frees what it allocates keeps its own status.
    let clean = leaktrace(
        "exit_cases_clean",
        &["run", "--error-exitcode", "9", "--", program_path, "clean"],
    );
    assert_eq!(clean.output.status.code(), Some(3), "{}", clean.stderr());
    assert_eq!(
        u64_of(&clean.report["leak_summary"]["leaked_blocks"]),
        0,
        "{}",
        clean.report["leak_summary"]
    );
}

/// `run -- script` where the script is a `#!/bin/sh` wrapper that execs the program: the
/// allocator is found in the interpreter the kernel runs, the program the wrapper execs is
/// followed (its break, libraries and tables taken afresh), and its leaks are named and
/// counted as when it is run directly.
#[test]
fn a_wrapper_script_is_followed_into_the_program_it_execs() {
    let test = "a_wrapper_script_is_followed_into_the_program_it_execs";
    if !bpf_available(test) {
        return;
    }
    let program = build_c("exit_cases.c", &["-O1", "-pthread"]);
    let script = scratch_dir().join("exit_cases_wrapper.sh");
    std::fs::write(
        &script,
        format!(
            "#!/usr/bin/env sh\n# A wrapper, as test runners and version managers use.\nexec {} \"$@\"\n",
            program.display()
        ),
    )
    .expect("write the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make it executable");
    let traced = leaktrace(
        "exit_cases_wrapper",
        &["run", "--top", "0", "--", script.to_str().expect("utf-8")],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let direct = leaktrace(
        "exit_cases_direct",
        &["run", "--top", "0", "--", program.to_str().expect("utf-8")],
    );
    let summary = &traced.report["leak_summary"];
    assert_eq!(
        summary["leaked_bytes"], direct.report["leak_summary"]["leaked_bytes"],
        "{summary}"
    );
    assert_eq!(
        summary["leaked_blocks"], direct.report["leak_summary"]["leaked_blocks"],
        "{summary}"
    );
    assert!(u64_of(&summary["leaked_blocks"]) >= 14, "{summary}");
    let classes = leaktrace_classes(&traced.report, &EXIT_CASES);
    assert_eq!(classes["lose_in_loop"]["lost"], 3 * 48, "{classes:?}");
    // The shell's break is not measured against the program's: nothing absurd held.
    let held: u64 = traced
        .stacks()
        .iter()
        .map(|stack| u64_of(&stack["outstanding_bytes"]))
        .sum();
    assert!(held < 1 << 30, "{held} bytes held: {}", traced.describe());
}

/// valgrind's suppressed bytes under `--suppressions FILE` of its own format.
fn valgrind_suppressed(program: &Path, suppressions: &Path) -> u64 {
    let out = Command::new("valgrind")
        .args(["--leak-check=full"])
        .arg(format!("--suppressions={}", suppressions.display()))
        .arg(program)
        .output()
        .expect("run valgrind");
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|line| line.split_once("suppressed: "))
        .and_then(|(_, figures)| figures.split_whitespace().next())
        .and_then(|bytes| bytes.replace(',', "").parse().ok())
        .expect("valgrind's suppressed line")
}

/// Suppression files as test suites keep them: valgrind's format (the same file valgrind
/// reads, and the same bytes suppressed) and LeakSanitizer's `leak:` lines. What they accept
/// is counted apart and is no leak; what is left still fails --error-exitcode; a file with a
/// line that is neither is refused with its name and line.
#[test]
fn suppressions_in_valgrind_and_leaksanitizer_formats() {
    let test = "suppressions_in_valgrind_and_leaksanitizer_formats";
    if !with_valgrind(test) {
        return;
    }
    let program = build_c("exit_cases.c", &["-O1", "-pthread"]);
    let valgrind_file = scratch_dir().join("exit_cases.vg.supp");
    std::fs::write(
        &valgrind_file,
        "{\n   dropped in a loop\n   Memcheck:Leak\n   match-leak-kinds: definite\n   fun:malloc\n   fun:lose_in_loop\n   fun:drop_in_loop\n   ...\n   fun:main\n}\n",
    )
    .expect("write");
    let lsan_file = scratch_dir().join("exit_cases.lsan.supp");
    std::fs::write(
        &lsan_file,
        "# printed, then dropped\nleak:lose_after_printf\n",
    )
    .expect("write");
    let suppressed_by_valgrind = valgrind_suppressed(&program, &valgrind_file);
    assert_eq!(suppressed_by_valgrind, 3 * 48);
    let traced = leaktrace(
        "exit_cases_suppressed",
        &[
            "run",
            "--top",
            "0",
            "--error-exitcode",
            "9",
            "--suppressions",
            valgrind_file.to_str().expect("utf-8"),
            "--suppressions",
            lsan_file.to_str().expect("utf-8"),
            "--",
            program.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(traced.output.status.code(), Some(9), "{}", traced.stderr());
    let summary = &traced.report["leak_summary"];
    assert_eq!(
        u64_of(&summary["suppressed_bytes"]),
        suppressed_by_valgrind + 72,
        "{summary}"
    );
    // Left: what valgrind finds lost but for the four blocks suppressed.
    let (lost_bytes, lost_blocks) = valgrind_lost(&program);
    assert_eq!(
        u64_of(&summary["leaked_bytes"]),
        lost_bytes - 3 * 48 - 72,
        "{summary}"
    );
    assert_eq!(
        u64_of(&summary["leaked_blocks"]),
        lost_blocks - 4,
        "{summary}"
    );
    for (function, by) in [
        ("lose_in_loop", "dropped in a loop"),
        ("lose_after_printf", "leak:lose_after_printf"),
    ] {
        let stack = traced.expect_stack_at(function);
        assert_eq!(stack["suppressed_by"], by, "{stack}");
        assert_ne!(stack["verdict"], "leaking", "{stack}");
    }
    // A line that is neither format: one clear line, status 2, nothing started.
    let bad = scratch_dir().join("bad.supp");
    std::fs::write(&bad, "leak:fine\nfun:malloc\n").expect("write");
    let out = Command::new(leaktrace_bin())
        .args(["run", "--suppressions", bad.to_str().expect("utf-8"), "--"])
        .arg(&program)
        .output()
        .expect("run leaktrace");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2: `fun:malloc`", bad.display())),
        "{stderr}"
    );
}

/// A threaded program that leaks nothing (tests/targets/threads_clean.c) has nothing
/// leaking under `run`, as under valgrind: glibc's cache of ended threads' stacks, the arena
/// a thread's first free reserves and each thread's loader TLS are the C runtime's, listed
/// apart and never leaking, and --error-exitcode leaves the program's status alone.
#[test]
fn a_threaded_program_that_leaks_nothing_has_no_leak() {
    let test = "a_threaded_program_that_leaks_nothing_has_no_leak";
    if !with_valgrind(test) {
        return;
    }
    let program = build_c("threads_clean.c", &["-O2", "-pthread"]);
    assert_eq!(valgrind_lost(&program), (0, 0), "valgrind: nothing lost");
    let traced = leaktrace(
        "threads_clean",
        &[
            "run",
            "--top",
            "0",
            "--error-exitcode",
            "9",
            "--",
            program.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    for stack in traced.stacks() {
        assert!(
            !matches!(stack["verdict"].as_str(), Some("leaking" | "growing")),
            "nothing of a leak-free program leaks: {stack}"
        );
    }
    let summary = &traced.report["leak_summary"];
    assert_eq!(u64_of(&summary["leaked_blocks"]), 0, "{summary}");
    assert_eq!(u64_of(&summary["possibly_lost_blocks"]), 0, "{summary}");
    let held: Vec<&str> = traced
        .stacks()
        .iter()
        .filter_map(|stack| stack["held_by_c_runtime"].as_str())
        .collect();
    assert!(
        held.iter().any(|what| what.starts_with("thread stacks")),
        "the cached thread stacks are the C runtime's: {held:?}"
    );
    // At least the stacks of the last two threads (8 MiB each, glibc's default).
    assert!(u64_of(&summary["c_runtime_bytes"]) >= 16 << 20, "{summary}");
    assert!(
        traced
            .stderr()
            .contains("SUMMARY: 0 bytes leaked in 0 blocks"),
        "{}",
        traced.stderr()
    );
}

/// A redis connection speaking RESP, one command at a time.
struct Redis {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl Redis {
    fn connect(port: u16) -> Redis {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("timeout");
        Redis {
            reader: std::io::BufReader::new(stream.try_clone().expect("clone stream")),
            writer: stream,
        }
    }

    /// Sends a command; its reply as text (a bulk string's contents, a status, an integer),
    /// or Err with what went wrong.
    fn command(&mut self, args: &[&str]) -> Result<String, String> {
        use std::io::{BufRead, Read, Write};

        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request += &format!("${}\r\n{arg}\r\n", arg.len());
        }
        self.writer
            .write_all(request.as_bytes())
            .map_err(|err| err.to_string())?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|err| err.to_string())?;
        let line = line.trim_end();
        match line.split_at_checked(1) {
            Some(("+" | ":", rest)) => Ok(rest.to_string()),
            Some(("$", "-1")) => Err("nil".into()),
            Some(("$", length)) => {
                let length: usize = length.parse().map_err(|_| line.to_string())?;
                let mut body = vec![0; length + 2];
                self.reader
                    .read_exact(&mut body)
                    .map_err(|err| err.to_string())?;
                body.truncate(length);
                String::from_utf8(body).map_err(|err| err.to_string())
            }
            _ => Err(format!("reply {line:?}")),
        }
    }
}

/// What the client saw while leaktrace scanned the server.
#[derive(Default)]
struct Served {
    requests: u64,
    errors: Vec<String>,
    longest_wait: std::time::Duration,
    /// Requests answered after leaktrace had exited.
    after_scan: u64,
    keys_set: u64,
}

fn value_of(key: u64) -> String {
    format!("{key:08}-").repeat(12)
}

/// redis-server holding about 100 MiB under a steady SET/GET load: `attach --reachability`
/// stops it to scan, and every request is answered correctly during and after the scan,
/// with the data intact. The pause is measured and printed.
#[test]
fn a_server_under_load_keeps_serving_through_a_scan() {
    let test = "a_server_under_load_keeps_serving_through_a_scan";
    if !bpf_available(test) || !tool_available(test, Path::new("/usr/bin/redis-server")) {
        return;
    }
    let port = free_port();
    let server = Background::spawn(
        Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes"])
            .stdout(std::process::Stdio::null()),
    );
    let pid = server.child.id().to_string();
    let up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "redis-server listens on {port}");
    // Memory from before the attach: untracked, so scanned as roots.
    const PREFILLED: u64 = 400_000;
    let mut admin = Redis::connect(port);
    admin
        .command(&["DEBUG", "POPULATE", &PREFILLED.to_string(), "old", "200"])
        .expect("prefill");

    let stop = Arc::new(AtomicBool::new(false));
    let scanned = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, scanned) = (stop.clone(), scanned.clone());
        std::thread::spawn(move || {
            let mut redis = Redis::connect(port);
            let mut served = Served::default();
            let mut key = 0u64;
            while !stop.load(Ordering::Relaxed) {
                key += 1;
                let started = Instant::now();
                let name = format!("new:{key}");
                let set = redis.command(&["SET", &name, &value_of(key)]);
                let got = redis.command(&["GET", &format!("new:{}", key.div_ceil(2))]);
                served.longest_wait = served.longest_wait.max(started.elapsed());
                served.requests += 2;
                if scanned.load(Ordering::Relaxed) {
                    served.after_scan += 2;
                }
                match (set, got) {
                    (Ok(status), Ok(value))
                        if status == "OK" && value == value_of(key.div_ceil(2)) => {}
                    other => served.errors.push(format!("key {key}: {other:?}")),
                }
            }
            served.keys_set = key;
            served
        })
    };
    let traced = leaktrace(
        "redis_reachability",
        &[
            "attach",
            "--pid",
            &pid,
            "--reachability",
            "--top",
            "0",
            "-i",
            "1s",
            "-d",
            "5s",
        ],
    );
    scanned.store(true, Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let served = client.join().expect("client thread");
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());

    let scan = &traced.report["reachability_scan"];
    let paused_ms = scan["paused_ms"].as_f64().unwrap_or(0.0);
    let scanned_bytes = u64_of(&scan["scanned_bytes"]);
    eprintln!(
        "{test}: paused {paused_ms:.1} ms for {} MiB scanned ({:.0} ms per GiB), {} blocks; \
         client: {} requests, longest wait {:.1} ms, {} after the scan",
        scanned_bytes >> 20,
        paused_ms / (scanned_bytes as f64 / f64::from(1 << 30)),
        u64_of(&scan["blocks"]),
        served.requests,
        served.longest_wait.as_secs_f64() * 1e3,
        served.after_scan,
    );
    assert!(paused_ms > 0.0, "{scan}");
    assert!(
        scanned_bytes > 64 << 20,
        "the prefilled data was scanned: {scan}"
    );
    assert_eq!(scan["truncated"], false);
    assert!(
        served.errors.is_empty(),
        "{:?}",
        &served.errors[..served.errors.len().min(5)]
    );
    assert!(served.after_scan > 0, "the server answers after the scan");
    assert!(served.requests > 1000, "{} requests", served.requests);

    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for stack in traced.stacks() {
        for class in ["lost", "indirectly_lost", "interior", "reachable"] {
            *totals.entry(class).or_default() += u64_of(&stack["reachability"][class]["bytes"]);
        }
    }
    eprintln!("{test}: classes {totals:?}");
    // What redis stores it keeps pointers to (sds strings by their middle, past the header:
    // interior, as valgrind would say "possibly lost").
    let classified: u64 = totals.values().sum();
    let lost = totals["lost"] + totals["indirectly_lost"];
    assert!(classified > 0, "{totals:?}");
    // Where the lost blocks come from, should there be any.
    let losing: Vec<String> = traced
        .stacks()
        .iter()
        .filter(|stack| {
            u64_of(&stack["reachability"]["lost"]["bytes"])
                + u64_of(&stack["reachability"]["indirectly_lost"]["bytes"])
                > 0
        })
        .take(5)
        .map(|stack| format!("{} {}", stack["reachability"], stack["frames"]))
        .collect();
    assert!(
        lost * 100 <= classified,
        "a healthy redis loses nothing: {totals:?}; from {losing:#?}"
    );

    // Nothing was lost or changed: every key is there with its value.
    let keys: u64 = admin
        .command(&["DBSIZE"])
        .expect("DBSIZE")
        .parse()
        .expect("a count");
    assert_eq!(keys, PREFILLED + served.keys_set);
    for key in [1, served.keys_set / 2, served.keys_set] {
        assert_eq!(
            admin.command(&["GET", &format!("new:{key}")]),
            Ok(value_of(key))
        );
    }
    drop(server);
}

/// valgrind's loss records by case of `cases`, for each process of its report ("==PID== "
/// starts each line).
fn valgrind_classes_by_process(
    text: &str,
    cases: &[&'static str],
) -> Vec<BTreeMap<&'static str, Classes>> {
    let mut by_pid: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(pid) = line
            .strip_prefix("==")
            .and_then(|rest| rest.split("==").next())
        {
            by_pid.entry(pid).or_default().push(line);
        }
    }
    by_pid
        .values()
        .map(|lines| classes_in_valgrind_lines(lines, cases))
        .collect()
}

/// The cases of forks.c, each in the process that allocates it.
const FORK_CASES: [&str; 4] = ["parent_lose", "child_lose", "grandchild_lose", "child_keep"];

/// `run` follows forked children from their first instruction, each reported apart with its
/// own summary line, as valgrind reports each process it traced: a child's own blocks match
/// valgrind's records for that process case by case (valgrind also lists the blocks a child
/// inherited; leaktrace reports only what the child allocated). A child that executes
/// another program is let go, unless --trace-children.
#[test]
fn forked_children_are_reported_apart_as_valgrind_reports_them() {
    let test = "forked_children_are_reported_apart_as_valgrind_reports_them";
    if !with_valgrind(test) {
        return;
    }
    let program = build_c("forks.c", &["-O1"]);
    // valgrind's records, by process ("==PID== " starts each line).
    let valgrind = valgrind_classes_by_process(&valgrind_report(&program, &[]), &FORK_CASES);
    // Where a case is the process's own: in valgrind's one process that has it alone
    // (parent_lose is in every process, child_keep also in the grandchild, inherited).
    let valgrind_own = |case: &str, without: &[&str]| -> Classes {
        let owners: Vec<&BTreeMap<&str, Classes>> = valgrind
            .iter()
            .filter(|classes| classes.contains_key(case))
            .filter(|classes| without.iter().all(|other| !classes.contains_key(other)))
            .collect();
        assert_eq!(owners.len(), 1, "{case}: valgrind's processes {valgrind:?}");
        let mut own = owners[0][case].clone();
        own.retain(|_, bytes| *bytes > 0);
        own
    };

    let traced = leaktrace(
        "forks",
        &["run", "--top", "0", "--", program.to_str().expect("utf-8")],
    );
    assert_eq!(traced.output.status.code(), Some(5), "{}", traced.stderr());
    assert_eq!(
        String::from_utf8_lossy(&traced.output.stdout),
        "children exited with 4 0 0\n",
        "the program's output is its own"
    );
    let report = &traced.report;
    let main_pid = u64_of(&report["target"]["pid"]);
    let children = report["children"].as_array().expect("children");
    // Two children and a grandchild; the child that executed /bin/true was let go.
    assert_eq!(children.len(), 3, "{}", traced.describe());
    let child_with = |case: &str| -> &Value {
        let with: Vec<&Value> = children
            .iter()
            .filter(|child| leaktrace_classes(child, &FORK_CASES).contains_key(case))
            .collect();
        assert_eq!(with.len(), 1, "{case} in {} children", with.len());
        with[0]
    };
    let own = |child: &Value, case: &str| -> Classes {
        let mut classes = leaktrace_classes(child, &FORK_CASES)
            .remove(case)
            .unwrap_or_default();
        classes.retain(|_, bytes| *bytes > 0);
        classes
    };

    let first = child_with("child_lose");
    assert_eq!(
        own(first, "child_lose"),
        valgrind_own("child_lose", &["child_keep"])
    );
    assert_eq!(own(first, "child_lose")["lost"], 10 * 1337);
    assert_eq!(u64_of(&first["forked_by"]), main_pid);
    assert_eq!(first["exited"]["code"], 4, "{first}");

    let second = child_with("child_keep");
    assert_eq!(
        own(second, "child_keep"),
        valgrind_own("child_keep", &["grandchild_lose"])
    );
    assert_eq!(u64_of(&second["forked_by"]), main_pid);

    let grandchild = child_with("grandchild_lose");
    assert_eq!(
        own(grandchild, "grandchild_lose"),
        valgrind_own("grandchild_lose", &[])
    );
    assert_eq!(own(grandchild, "grandchild_lose")["lost"], 3 * 96);
    assert_eq!(
        u64_of(&grandchild["forked_by"]),
        u64_of(&second["target"]["pid"]),
        "the grandchild is the second child's"
    );
    // What a child inherited is not its own.
    for child in children {
        assert!(
            !leaktrace_classes(child, &FORK_CASES).contains_key("parent_lose"),
            "{child}"
        );
    }
    // The parent's own: both its lost blocks, as valgrind's parent process says.
    let parent = leaktrace_classes(report, &FORK_CASES);
    assert_eq!(
        parent.keys().copied().collect::<Vec<&str>>(),
        ["parent_lose"],
        "{parent:?}"
    );
    assert_eq!(parent["parent_lose"]["lost"], 1000);
    // A summary line for each process.
    let stderr = traced.stderr();
    for child in children {
        let pid = u64_of(&child["target"]["pid"]);
        let leaked = u64_of(&child["leak_summary"]["leaked_bytes"]);
        assert!(
            stderr.contains(&format!("child {pid}: SUMMARY: {leaked} bytes leaked")),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("leaktrace: SUMMARY: 1000 bytes leaked in 2 blocks"),
        "{stderr}"
    );

    // With --trace-children, the child that executed /bin/true is followed into it.
    let following = run_to_exit(
        "forks_trace_children",
        &program,
        &["--top", "0", "--trace-children"],
        5,
    );
    let children = following.report["children"].as_array().expect("children");
    assert_eq!(children.len(), 4, "{}", following.describe());
    assert!(
        children.iter().any(|child| child["target"]["exe"]
            .as_str()
            .is_some_and(|exe| exe.ends_with("/true"))),
        "{}",
        following.describe()
    );
}

/// The cases of spawns.c, one in each child.
const SPAWN_CASES: [&str; 4] = [
    "spawned_lose",
    "vforked_lose",
    "forked_lose",
    "thread_forked_lose",
];

/// Children started the ways test runners and build tools start them — posix_spawn, vfork
/// then exec, fork then exec of a program with another allocator — are followed into what
/// they execute with --trace-children, from its first instruction, each reported apart with
/// the loss records valgrind --trace-children=yes gives that process, and so is a child a
/// second thread forked; without the flag none is traced (the first three execute a
/// program, and threads other than the first are not traced).
#[test]
fn spawned_children_are_followed_into_their_programs_as_valgrind_follows_them() {
    let test = "spawned_children_are_followed_into_their_programs_as_valgrind_follows_them";
    if !with_valgrind(test) || !tool_available(test, Path::new("/usr/include/jemalloc/jemalloc.h"))
    {
        return;
    }
    let program = build_c("spawns.c", &["-O1"]);
    let with_jemalloc = build_c_variant(
        "spawns.c",
        "spawns_jemalloc",
        "gcc",
        &["-O1"],
        &["-ljemalloc"],
    );
    let valgrind = valgrind_classes_by_process(
        &valgrind_report_with(&["--trace-children=yes"], &program, &[]),
        &SPAWN_CASES,
    );
    let theirs = |case: &str| -> Classes {
        let owners: Vec<&BTreeMap<&str, Classes>> = valgrind
            .iter()
            .filter(|classes| classes.contains_key(case))
            .collect();
        assert_eq!(owners.len(), 1, "{case}: valgrind's processes {valgrind:?}");
        owners[0][case].clone()
    };
    let expected = [
        ("spawned_lose", 7 * 211, 11, program.as_path()),
        ("vforked_lose", 5 * 99, 12, program.as_path()),
        ("forked_lose", 4 * 333, 13, with_jemalloc.as_path()),
        ("thread_forked_lose", 6 * 77, 14, program.as_path()),
    ];

    let following = run_to_exit_with(
        "spawns_trace_children",
        &program,
        &[with_jemalloc.to_str().expect("utf-8")],
        &["--top", "0", "--trace-children"],
        3,
    );
    assert_eq!(
        String::from_utf8_lossy(&following.output.stdout),
        "children exited with 11 12 13 14\n",
        "the program's output is its own"
    );
    let main_pid = u64_of(&following.report["target"]["pid"]);
    let children = following.report["children"].as_array().expect("children");
    assert_eq!(children.len(), 4, "{}", following.describe());
    for (case, bytes, status, exe) in expected {
        let with: Vec<&Value> = children
            .iter()
            .filter(|child| leaktrace_classes(child, &SPAWN_CASES).contains_key(case))
            .collect();
        assert_eq!(
            with.len(),
            1,
            "{case} in {} children: {}",
            with.len(),
            following.describe()
        );
        let child = with[0];
        let mut own = leaktrace_classes(child, &SPAWN_CASES);
        assert_eq!(own.len(), 1, "{case}: {own:?}");
        let mut classes = own.remove(case).unwrap_or_default();
        classes.retain(|_, bytes| *bytes > 0);
        assert_eq!(
            classes,
            Classes::from([("lost".to_string(), bytes)]),
            "{case}: {child}"
        );
        if exe == program.as_path() {
            assert_eq!(classes, theirs(case), "{case}: leaktrace vs valgrind");
        }
        assert_eq!(u64_of(&child["forked_by"]), main_pid, "{case}: {child}");
        assert_eq!(child["exited"]["code"], status, "{case}: {child}");
        assert_eq!(
            child["target"]["exe"],
            exe.to_str().expect("utf-8"),
            "{case}"
        );
    }
    // The jemalloc child's allocator is found in the program it executed.
    let jemalloc_child = children
        .iter()
        .find(|child| child["target"]["exe"] == with_jemalloc.to_str().expect("utf-8"))
        .expect("the jemalloc child");
    assert!(
        jemalloc_child["allocators"]
            .to_string()
            .contains("jemalloc"),
        "{jemalloc_child}"
    );
    assert_eq!(
        u64_of(&following.report["leak_summary"]["leaked_blocks"]),
        0
    );

    // Without --trace-children, children that execute a program are let go.
    let alone = run_to_exit("spawns", &program, &["--top", "0"], 3);
    assert_eq!(
        String::from_utf8_lossy(&alone.output.stdout),
        "children exited with 11 12 13 14\n"
    );
    let children = alone.report["children"].as_array().map_or(0, Vec::len);
    assert_eq!(children, 0, "{}", alone.describe());
}

/// Blocks lost after the allocator reused freed memory for them stay lost with every
/// allocator: neither the allocator's caches (jemalloc's and tcmalloc's thread caches,
/// mimalloc's pages, glibc's tcache) nor the slots the exit path's frames leave unwritten
/// (the scan at exit starts at the frame that called exit, as LeakSanitizer's does) keep
/// them; with glibc, valgrind says the same.
#[test]
fn blocks_lost_after_reuse_are_lost_with_every_allocator() {
    let test = "blocks_lost_after_reuse_are_lost_with_every_allocator";
    if !with_valgrind(test) {
        return;
    }
    let variants: [(&str, &[&str], &str); 4] = [
        ("reuse_lost_glibc", &[], "/usr/include/stdlib.h"),
        (
            "reuse_lost_jemalloc",
            &["-ljemalloc"],
            "/usr/include/jemalloc/jemalloc.h",
        ),
        (
            "reuse_lost_tcmalloc",
            &["-ltcmalloc"],
            "/usr/include/gperftools/tcmalloc.h",
        ),
        (
            "reuse_lost_mimalloc",
            &["-lmimalloc"],
            "/usr/include/mimalloc.h",
        ),
    ];
    for (name, libs, header) in variants {
        if !tool_available(test, Path::new(header)) {
            return;
        }
        let program = build_c_variant("reuse_lost.c", name, "gcc", &["-O1"], libs);
        let traced = leaktrace(
            name,
            &["run", "--top", "0", "--", program.to_str().expect("utf-8")],
        );
        assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
        let classes = leaktrace_classes(&traced.report, &["lose_reused"]);
        let mut lost = classes.get("lose_reused").cloned().unwrap_or_default();
        lost.retain(|_, bytes| *bytes > 0);
        assert_eq!(
            lost,
            Classes::from([("lost".to_string(), 20 * 48)]),
            "{name}: {}",
            traced.describe()
        );
        // Nothing else is lost: the allocators' own blocks are not the program's.
        let summary = &traced.report["leak_summary"];
        assert_eq!(u64_of(&summary["leaked_blocks"]), 20, "{name}: {summary}");
        if libs.is_empty() {
            let mut theirs = valgrind_classes(&program, &["lose_reused"])
                .remove("lose_reused")
                .unwrap_or_default();
            theirs.retain(|_, bytes| *bytes > 0);
            assert_eq!(lost, theirs, "{name}: leaktrace vs valgrind");
        }
    }
}
