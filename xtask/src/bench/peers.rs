//! leaktrace against the peers (bcc's memleak, heaptrack, valgrind) on the pairs workload:
//! once with glibc, then with each allocator (glibc, jemalloc, tcmalloc, mimalloc) preloaded.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Result;

use crate::{
    measure::{bcc_pairs, measure, median},
    workspace::{leaktrace_bin, root},
};

/// The same pairs workload under leaktrace (precise and sampled) and the peers that are
/// installed (`cargo xtask bench` installs bcc, heaptrack and valgrind when it can).
pub fn peers(bench_bin: &Path, pairs: u64, runs: usize) -> Result<String> {
    let count = pairs.to_string();
    let out_dir = root().join("target/xtask");
    let mut table =
        String::from("| tool | ns per pair (median) | slowdown vs untraced |\n|---|---|---|\n");
    let mut untraced = Vec::new();
    for _ in 0..runs {
        untraced.push(measure(Command::new(bench_bin).args(["pairs", &count]))?);
    }
    let base = median(untraced);
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut traced = Vec::new();
    for _ in 0..runs {
        traced.push(measure(
            Command::new(leaktrace_bin())
                .args(["run", "--format", "json", "--output", "/dev/null", "--"])
                .arg(bench_bin)
                .args(["pairs", &count]),
        )?);
    }
    rows.push(("leaktrace run (eBPF, every call with its stack)", traced));
    let mut sampled = Vec::new();
    for _ in 0..runs {
        sampled.push(measure(
            Command::new(leaktrace_bin())
                .args(["run", "--sample-rate", "100", "--format", "json"])
                .args(["--output", "/dev/null", "--"])
                .arg(bench_bin)
                .args(["pairs", &count]),
        )?);
    }
    rows.push((
        "leaktrace run --sample-rate 100 (one call in 100 recorded)",
        sampled,
    ));
    if let Some(times) = bcc_pairs(bench_bin, &count, runs, None)? {
        rows.push((
            "bcc memleak-bpfcc -p (eBPF, every call with its stack)",
            times,
        ));
    }
    if which::which("heaptrack").is_ok() {
        let mut times = Vec::new();
        for _ in 0..runs {
            times.push(measure(
                Command::new("heaptrack")
                    .arg(bench_bin)
                    .args(["pairs", &count])
                    .current_dir(&out_dir),
            )?);
        }
        rows.push(("heaptrack (LD_PRELOAD, every call with its stack)", times));
    }
    if which::which("valgrind").is_ok() {
        let mut times = Vec::new();
        for _ in 0..runs {
            times.push(measure(
                Command::new("valgrind")
                    .args(["--tool=memcheck", "--leak-check=full", "--quiet"])
                    .arg(bench_bin)
                    .args(["pairs", &count]),
            )?);
        }
        rows.push(("valgrind memcheck --leak-check=full", times));
    }
    for (tool, times) in rows {
        let value = median(times);
        let _ = writeln!(table, "| {tool} | {value:.0} | {:.0}× |", value / base);
    }
    let _ = writeln!(table, "| untraced | {base:.0} | 1× |");
    println!("{table}");
    Ok(table)
}

/// The allocators of the microbench: name, the library preloaded into bench_pairs (None:
/// glibc's own), and the soname pattern valgrind must intercept in it.
const ALLOCATORS: [(&str, Option<&str>, Option<&str>); 4] = [
    ("glibc", None, None),
    (
        "jemalloc",
        Some("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        Some("*jemalloc*"),
    ),
    (
        "tcmalloc",
        Some("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
        Some("*tcmalloc*"),
    ),
    (
        "mimalloc",
        Some("/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
        Some("*mimalloc*"),
    ),
];

/// malloc(64)+free pairs on each allocator (preloaded into bench_pairs), under leaktrace and
/// the peers that can trace it: ns per pair, median of `runs`.
pub fn allocators(bench_bin: &Path, pairs: u64, runs: usize) -> Result<String> {
    let count = pairs.to_string();
    let mut table = String::from(
        "| allocator | untraced | leaktrace run | run --sample-rate 100 | bcc memleak | heaptrack | valgrind | bcc ÷ leaktrace |\n|---|---|---|---|---|---|---|---|\n",
    );
    let bcc = crate::setup::bcc_memleak();
    for (name, library, soname) in ALLOCATORS {
        if library.is_some_and(|path| !Path::new(path).exists()) {
            let _ = writeln!(table, "| {name} | not installed | | | | | | |");
            continue;
        }
        let preload = |command: &mut Command| {
            if let Some(path) = library {
                command.env("LD_PRELOAD", path);
            }
        };
        let times = |build: &dyn Fn() -> Command| -> Result<f64> {
            let mut values = Vec::new();
            for _ in 0..runs {
                values.push(measure(&mut build())?);
            }
            Ok(median(values))
        };
        let untraced = times(&|| {
            let mut command = Command::new(bench_bin);
            command.args(["pairs", &count]);
            preload(&mut command);
            command
        })?;
        let leaktrace = |extra: &'static [&'static str]| {
            times(&|| {
                let mut command = Command::new(leaktrace_bin());
                command
                    .arg("run")
                    .args(extra)
                    .args(["--format", "json", "--output", "/dev/null", "--"])
                    .arg(bench_bin)
                    .args(["pairs", &count]);
                preload(&mut command);
                command
            })
        };
        let traced = leaktrace(&[])?;
        let sampled = leaktrace(&["--sample-rate", "100"])?;
        let bcc_ns = match &bcc {
            Some(_) => bcc_pairs(bench_bin, &count, runs, library)?.map(median),
            None => None,
        };
        let heaptrack = match which::which("heaptrack") {
            Ok(_) => Some(times(&|| {
                let mut command = Command::new("heaptrack");
                command
                    .arg(bench_bin)
                    .args(["pairs", &count])
                    .current_dir(root().join("target/xtask"));
                preload(&mut command);
                command
            })?),
            Err(_) => None,
        };
        let valgrind = match which::which("valgrind") {
            Ok(_) => Some(times(&|| {
                let mut command = Command::new("valgrind");
                command.args(["--tool=memcheck", "--leak-check=full", "--quiet"]);
                if let Some(soname) = soname {
                    command.arg(format!("--soname-synonyms=somalloc={soname}"));
                }
                command.arg(bench_bin).args(["pairs", &count]);
                preload(&mut command);
                command
            })?),
            Err(_) => None,
        };
        let cell = |value: Option<f64>| value.map_or("n/a".to_string(), |ns| format!("{ns:.0}"));
        let _ = writeln!(
            table,
            "| {name} | {untraced:.0} | {traced:.0} | {sampled:.0} | {} | {} | {} | {} |",
            cell(bcc_ns),
            cell(heaptrack),
            cell(valgrind),
            bcc_ns.map_or("n/a".to_string(), |bcc| format!("{:.1}×", bcc / traced)),
        );
    }
    println!("{table}");
    Ok(table)
}
