//! End-to-end: every one of leaktrace's kernel programs loads on this kernel well inside the
//! verifier's limit, as the most demanding target needs it (Python frames, a Go layout, every
//! scope, sampling), with stacks walked by frame pointers and by unwind tables; and a traced
//! run reports what each program it loaded took.
use std::process::Command;

use leaktrace_tests::{
    Background, bpf_available, build_c_variant, leaktrace, leaktrace_bin, leaktrace_with,
    run_to_exit, u64_of,
};

/// A quarter of the kernel's 1,000,000-instruction limit.
const BUDGET: u64 = 250_000;

#[test]
fn every_program_verifies_in_a_quarter_of_the_limit() {
    if !bpf_available("every_program_verifies_in_a_quarter_of_the_limit") {
        return;
    }
    let output = std::process::Command::new(leaktrace_bin())
        .args(["programs", "--format", "json"])
        .output()
        .expect("run leaktrace programs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "leaktrace programs: {stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("a JSON list");
    for unwind in ["fp", "dwarf"] {
        let programs: Vec<&str> = rows
            .iter()
            .filter(|row| row["unwind"] == unwind)
            .filter_map(|row| row["program"].as_str())
            .collect();
        for wanted in [
            "alloc_enter",
            "alloc_return",
            "page_fault",
            "scope_enter",
            "scope_return",
            "go_newproc",
            "go_span_full",
            "mmap_exit",
            "brk_exit",
        ] {
            assert!(
                programs.contains(&wanted),
                "{wanted} loaded with {unwind}: {programs:?}"
            );
        }
    }
    for row in &rows {
        let verified = u64_of(&row["verified_instructions"]);
        assert!(
            verified > 0 && verified <= BUDGET,
            "{} ({}) verified in {verified} instructions, budget {BUDGET}",
            row["program"],
            row["unwind"]
        );
    }
}

#[test]
fn a_traced_run_reports_each_program_it_loaded() {
    if !bpf_available("a_traced_run_reports_each_program_it_loaded") {
        return;
    }
    // Built without frame pointers: stacks are walked with unwind tables.
    let target = build_c_variant(
        "stack_chain.c",
        "stack_chain_programs",
        "gcc",
        &["-O2", "-fomit-frame-pointer"],
        &[],
    );
    let traced = run_to_exit("programs_dwarf", &target, &["--unwind", "dwarf"], 0);
    let programs = traced.report["programs"].as_array().expect("programs");
    let names: Vec<&str> = programs
        .iter()
        .filter_map(|p| p["program"].as_str())
        .collect();
    for wanted in ["alloc_enter", "alloc_return", "mmap_exit", "brk_exit"] {
        assert!(names.contains(&wanted), "{wanted} in {names:?}");
    }
    for program in programs {
        let verified = u64_of(&program["verified_instructions"]);
        assert!(
            verified > 0 && verified <= BUDGET,
            "{program}: over the budget"
        );
        assert!(program["load_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    }
}

/// A target allocating as fast as it can costs more than a 2% budget: leaktrace measures
/// that and says so. What the free probes cost alone (estimated from the free calls, or
/// measured with the allocation probes out) is far over 2% too on a target doing nothing
/// but malloc+free: it stops tracing and says so, the probes are out from then on, and the
/// target still ends as it would.
#[test]
fn the_cost_budget_backs_off_a_busy_target() {
    if !bpf_available("the_cost_budget_backs_off_a_busy_target") {
        return;
    }
    let target = build_c_variant("bench_pairs.c", "bench_pairs_budget", "gcc", &["-O2"], &[]);
    let traced = run_to_exit(
        "cost_budget",
        &target,
        &["--max-overhead", "2", "--interval", "1s"],
        0,
    );
    let cost = &traced.report["cost"];
    assert!(cost.is_object(), "cost measured: {}", traced.describe());
    assert_eq!(cost["budget_percent"].as_f64(), Some(2.0), "{cost}");
    let trap = cost["trap"]["emulated_ns"].as_f64().unwrap_or(0.0);
    assert!(trap > 0.0, "a trap's cost was measured: {cost}");
    let peak = cost["peak_cpu_share_percent"].as_f64().unwrap_or(0.0);
    assert!(peak > 2.0, "the busy target's probes cost over 2%: {cost}");
    let out = cost["allocation_probes_out_fraction"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        out > 0.0 && out < 1.0,
        "probes out part of the time: {cost}"
    );
    let actions = cost["actions"].as_array().expect("actions");
    assert!(
        actions.iter().any(|a| a
            .as_str()
            .is_some_and(|a| a.contains("over the budget of 2%"))),
        "{cost}"
    );
    assert!(
        traced.stderr().contains("over the budget of 2%"),
        "said on stderr too: {}",
        traced.stderr()
    );
    let frees = cost["frees_only"]["cpu_share_percent"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(frees > 2.0, "frees alone measured, over 2%: {cost}");
    assert!(
        frees <= peak,
        "frees alone cost no more than every probe: {cost}"
    );
    assert!(cost["stopped_at_s"].as_f64().is_some(), "{cost}");
    assert!(
        traced.stderr().contains("tracing stopped"),
        "the stop said on stderr: {}",
        traced.stderr()
    );
}

/// `attach` keeps a budget of 10% of the target's CPU unless told otherwise: on a target
/// allocating as fast as it can (its probes cost far more than 10% of its CPU and of a core,
/// its free probes alone too) it stops tracing; `--max-overhead off` keeps none.
#[test]
fn attach_keeps_a_default_budget_that_off_turns_off() {
    if !bpf_available("attach_keeps_a_default_budget_that_off_turns_off") {
        return;
    }
    let target = build_c_variant("bench_pairs.c", "bench_pairs_budget", "gcc", &["-O2"], &[]);
    let busy = Background::spawn(
        Command::new(&target)
            .args(["pairs", "1000000000"])
            .stdout(std::process::Stdio::null()),
    );
    // Attached before the loader has mapped libc, leaktrace would find no allocator.
    busy.wait_for_library("libc.so");
    let pid = busy.child.id().to_string();
    for (name, extra, budget) in [
        ("default_budget", &[][..], Some(10.0)),
        ("budget_off", &["--max-overhead", "off"][..], None),
    ] {
        let args: Vec<&str> = ["attach", "--pid", &pid, "--duration", "5s"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let traced = leaktrace(name, &args);
        assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
        let cost = &traced.report["cost"];
        assert_eq!(cost["budget_percent"].as_f64(), budget, "{cost}");
        let out = cost["allocation_probes_out_fraction"]
            .as_f64()
            .unwrap_or(0.0);
        let core = cost["core_percent"].as_f64().unwrap_or(0.0);
        match budget {
            Some(_) => {
                assert!(
                    core > 10.0,
                    "a busy target's probes cost over 10% of a core: {cost}"
                );
                // The frees of a loop doing nothing but malloc+free cost far more than 10%
                // alone (nearly all of its CPU): estimated from the first measurement, they
                // stop the attach at once, without a second at full cost to measure them
                // alone. The report says so, and what it saw until then.
                let frees = &cost["frees_only"];
                assert!(
                    frees["cpu_share_percent"].as_f64().unwrap_or(0.0) > 50.0,
                    "frees alone nearly all of the loop's CPU: {cost}"
                );
                assert_eq!(frees["estimated"].as_bool(), Some(true), "{cost}");
                let stopped = cost["stopped_at_s"].as_f64().unwrap_or(f64::MAX);
                assert!(
                    stopped < 3.0,
                    "tracing stopped after the first measurement: {cost}"
                );
                assert!(
                    traced.stderr().contains("would take about"),
                    "the stop said on stderr: {}",
                    traced.stderr()
                );
                assert!(
                    traced.report["duration_s"].as_f64().unwrap_or(f64::MAX) < 5.0,
                    "the attach ended at the stop: {}",
                    traced.report
                );
            }
            None => {
                assert_eq!(out, 0.0, "no budget, probes always in: {cost}");
                assert!(
                    cost["actions"].as_array().is_some_and(Vec::is_empty),
                    "{cost}"
                );
            }
        }
    }
    drop(busy);
}

/// The allocating functions of each file share one uprobe session link, the frees one
/// uprobe_multi link; with LEAKTRACE_PROBE_LINKS=multi (the path of kernels without uprobe
/// sessions) the allocating functions have an entry and a return link, and with per-probe
/// (kernels without uprobe_multi) each probe has its own link. All find the same blocks.
#[test]
fn one_link_per_file_and_the_per_probe_fallback_agree() {
    if !bpf_available("one_link_per_file_and_the_per_probe_fallback_agree") {
        return;
    }
    let target = build_c_variant("stack_chain.c", "stack_chain_links", "gcc", &[], &[]);
    let target = target.to_str().expect("UTF-8 path");
    let held = |traced: &leaktrace_tests::Traced, function: &str| -> (u64, u64) {
        traced
            .stacks_through(function)
            .iter()
            .map(|s| {
                (
                    u64_of(&s["outstanding_allocs"]),
                    u64_of(&s["outstanding_bytes"]),
                )
            })
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let mut seen = Vec::new();
    for (name, links) in [
        ("links_session", "session"),
        ("links_multi", "multi"),
        ("links_per_probe", "per-probe"),
    ] {
        let traced = leaktrace_with(
            name,
            &["run", "--top", "0", "--", target],
            &[("LEAKTRACE_PROBE_LINKS", links)],
            || {},
        );
        assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
        let loaded = |program: &str| {
            traced.report["programs"]
                .as_array()
                .expect("programs")
                .iter()
                .any(|p| p["program"] == program)
        };
        assert_eq!(
            loaded("alloc_enter (uprobe_multi)"),
            links != "per-probe",
            "{}",
            traced.report["programs"]
        );
        assert_eq!(
            loaded("alloc_session (uprobe session)"),
            links == "session",
            "{}",
            traced.report["programs"]
        );
        // 50 blocks of 200 + i bytes, i from 0 to 49, and 50 of 64.
        assert_eq!(
            held(&traced, "store_record"),
            (50, 50 * 200 + 49 * 50 / 2),
            "{links}"
        );
        assert_eq!(held(&traced, "log_line"), (50, 50 * 64), "{links}");
        seen.push(traced.dropped_total());
    }
    assert_eq!(seen, vec![0, 0, 0], "nothing dropped any way");
}
