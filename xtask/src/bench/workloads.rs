//! The pairs workloads of tests/targets/bench_pairs.c, untraced and under `leaktrace run`:
//! the cost to the target, what each way of walking stacks costs, and what `--scope` adds.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Result;

use crate::{
    measure::{measure, median},
    workspace::leaktrace_bin,
};

/// The workloads of tests/targets/bench_pairs.c: mode, what a row measures, share of the
/// pairs it runs (realloc sequences are four calls each).
const WORKLOADS: [(&str, &str, u64); 4] = [
    ("pairs", "malloc(64)+free, one thread", 1),
    (
        "threads",
        "malloc(64)+free, two threads (wall time per pair)",
        1,
    ),
    ("mixed", "malloc+free of 16 B to 64 KiB, one thread", 1),
    (
        "realloc",
        "malloc(16), realloc 64, realloc 256, free (per sequence)",
        4,
    ),
];

/// The cost to the target: each workload untraced and under `leaktrace run`, median of
/// `runs`. The table, and each run's values.
pub fn cost_to_target(bench_bin: &Path, pairs: u64, runs: usize) -> Result<(String, String)> {
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| workload | untraced ns (median of {runs}) | leaktrace ns | added ns | slowdown |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|");
    let mut raw = String::new();
    for (mode, what, weight) in WORKLOADS {
        let count = (pairs / weight).to_string();
        let mut untraced = Vec::new();
        let mut traced = Vec::new();
        for _ in 0..runs {
            untraced.push(measure(Command::new(bench_bin).args([mode, &count]))?);
            traced.push(measure(
                Command::new(leaktrace_bin())
                    .args(["run", "--format", "json", "--output", "/dev/null", "--"])
                    .arg(bench_bin)
                    .args([mode, &count]),
            )?);
        }
        let base = median(untraced.clone());
        let with = median(traced.clone());
        let _ = writeln!(
            table,
            "| {what} | {base:.0} | {with:.0} | {:.0} | {:.0}× |",
            with - base,
            with / base
        );
        let _ = writeln!(
            raw,
            "- {mode}: untraced {untraced:?} ns, traced {traced:?} ns"
        );
        println!("{mode}: untraced {base:.0} ns, traced {with:.0} ns");
    }
    Ok((table, raw))
}

/// The cost of each way to walk stacks, on a shallow stack (pairs: 4 frames) and a deep one
/// (deep: 37 frames), and what each frame adds (the difference over the 33 frames more).
/// bench_pairs keeps frame pointers and calls malloc from its own code: `hybrid` follows
/// the frame-pointer chain through every frame, after a lookup that finds no table there.
pub fn stack_walking(bench_bin: &Path, pairs: u64, runs: usize) -> Result<String> {
    const WAYS: [&str; 3] = ["fp", "hybrid", "dwarf"];
    let count = pairs.to_string();
    let mut table = String::from(
        "| workload | untraced ns | `--unwind fp` ns | `--unwind hybrid` ns | `--unwind dwarf` ns |\n|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    for (mode, what) in [
        ("pairs", "malloc(64)+free, 4 frames deep"),
        ("deep", "malloc(64)+free, 37 frames deep"),
    ] {
        let mut columns = Vec::new();
        for unwind in std::iter::once(None).chain(WAYS.map(Some)) {
            let mut times = Vec::new();
            for _ in 0..runs {
                times.push(match unwind {
                    None => measure(Command::new(bench_bin).args([mode, &count]))?,
                    Some(unwind) => measure(
                        Command::new(leaktrace_bin())
                            .args(["run", "--unwind", unwind, "--format", "json"])
                            .args(["--output", "/dev/null", "--"])
                            .arg(bench_bin)
                            .args([mode, &count]),
                    )?,
                });
            }
            columns.push(median(times));
        }
        let _ = writeln!(
            table,
            "| {what} | {:.0} | {:.0} | {:.0} | {:.0} |",
            columns[0], columns[1], columns[2], columns[3]
        );
        rows.push(columns);
    }
    let per_frame: Vec<String> = WAYS
        .iter()
        .enumerate()
        .map(|(way, name)| {
            let added = (rows[1][way + 1] - rows[1][0]) - (rows[0][way + 1] - rows[0][0]);
            format!("{name} {:.0} ns", added / 33.0)
        })
        .collect();
    let _ = writeln!(
        table,
        "\nWhat a frame adds to a walk (the 33 frames more of the deep stack): {}.",
        per_frame.join(", ")
    );
    println!("{table}");
    Ok(table)
}

/// What --scope adds per call of the scope function: `handled` runs malloc(64)+free inside
/// handle_one(route, i), traced by `leaktrace run` without a scope, with one, and with one
/// labelled by its string argument. Median of `runs`.
pub fn scope_cost(bench_bin: &Path, pairs: u64, runs: usize) -> Result<String> {
    let count = (pairs / 5).to_string();
    let configurations: [(&str, &[&str]); 4] = [
        ("untraced", &[]),
        ("leaktrace run (no scope)", &["run"]),
        (
            "leaktrace run --scope handle_one",
            &["run", "--scope", "handle_one"],
        ),
        (
            "leaktrace run --scope handle_one:arg0=str (4 labels)",
            &["run", "--scope", "handle_one:arg0=str"],
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); configurations.len()];
    for _ in 0..runs {
        for (index, (_, args)) in configurations.iter().enumerate() {
            let time = if args.is_empty() {
                measure(Command::new(bench_bin).args(["handled", &count]))?
            } else {
                measure(
                    Command::new(leaktrace_bin())
                        .args(*args)
                        .args(["--format", "json", "--output", "/dev/null", "--"])
                        .arg(bench_bin)
                        .args(["handled", &count]),
                )?
            };
            times[index].push(time);
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    let mut table = String::from(
        "| configuration | ns per handled call (one malloc+free) | added by the scope |\n|---|---|---|\n",
    );
    for ((name, args), ns) in configurations.iter().zip(&medians) {
        let added = if args.len() > 1 {
            format!("{:.0} ns", ns - medians[1])
        } else {
            String::new()
        };
        let _ = writeln!(table, "| {name} | {ns:.0} | {added} |");
    }
    println!("{table}");
    Ok(table)
}
