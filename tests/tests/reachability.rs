//! End-to-end: leaktrace's reachability classes against valgrind memcheck's on the same
//! program (tests/targets/reach_cases.c), case by case.
use std::{collections::BTreeMap, path::Path, process::Command};

use leaktrace_tests::{
    Target, bpf_available, build_c, leaktrace_bin, leaktrace_then, scratch_dir, tool_available,
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

/// The case a stack belongs to: the innermost of its frames that names one.
fn case_of<'a>(functions: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let mut found = None;
    for function in functions {
        if let Some(case) = CASES.iter().find(|case| **case == function) {
            found = Some(*case);
            break;
        }
    }
    found
}

/// valgrind's loss records by case, in leaktrace's class names.
fn valgrind_classes(program: &Path) -> BTreeMap<&'static str, Classes> {
    let out = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--show-leak-kinds=all",
            "--num-callers=30",
        ])
        .arg(program)
        .output()
        .expect("run valgrind");
    let text = String::from_utf8_lossy(&out.stderr);
    let mut cases: BTreeMap<&'static str, Classes> = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
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
        if let Some(case) = case_of(frames) {
            *cases
                .entry(case)
                .or_default()
                .entry(class.to_string())
                .or_default() += bytes;
        }
    }
    cases
}

/// leaktrace's reachability by case, from its JSON report.
fn leaktrace_classes(report: &Value) -> BTreeMap<&'static str, Classes> {
    let mut cases: BTreeMap<&'static str, Classes> = BTreeMap::new();
    for stack in report["stacks"].as_array().expect("stacks") {
        let frames = stack["frames"].as_array().expect("frames");
        let Some(case) = case_of(frames.iter().filter_map(|frame| frame["function"].as_str()))
        else {
            continue;
        };
        let reachability = &stack["reachability"];
        assert!(reachability.is_object(), "no reachability in {stack}");
        for class in ["lost", "indirectly_lost", "interior", "reachable"] {
            let bytes = u64_of(&reachability[class]["bytes"]);
            if bytes > 0 {
                *cases
                    .entry(case)
                    .or_default()
                    .entry(class.to_string())
                    .or_default() += bytes;
            }
        }
    }
    cases
}

#[test]
fn classes_match_valgrind_on_every_case() {
    if !bpf_available("classes_match_valgrind_on_every_case")
        || !tool_available(
            "classes_match_valgrind_on_every_case",
            Path::new("/usr/bin/valgrind"),
        )
    {
        return;
    }
    let program = build_c("reach_cases.c", &["-pthread"]);
    let expected = valgrind_classes(&program);
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
    let found = leaktrace_classes(&traced.report);
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
