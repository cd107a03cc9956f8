//! `cargo xtask bench`: the cost leaktrace adds to a target, as ratios measured in one run.
//! Results go to BENCHMARKS.md.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{compile_c, leaktrace_bin, root};

/// Runs the pairs benchmark once; returns ns per malloc+free pair.
fn measure(command: &mut Command) -> Result<f64> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("ns_per_pair="))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| {
            format!(
                "no ns_per_pair in the output of {command:?}: {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// What the numbers are made of (measured on these machines; ../shared/notes).
const WHERE_THE_TIME_GOES: &str = "\
Where the time goes: every traced call traps into the kernel. `malloc` costs an entry trap on
an instruction the kernel emulates (`push %r12`), a uretprobe and a user stack capture (about
3.1 µs together); `free` costs one trap. glibc's `free` starts with `test %rdi,%rdi`, which the
kernel would single-step (about 5.3 µs); leaktrace puts the probe on the `je` after it, which it
emulates (about 1.15 µs), because the `test` changes nothing the probe reads
(leak-user/src/probe_site.rs). Before that move this benchmark measured 8,492 ns per pair.
The shared notes measured bcc's memleak at about 11 µs per pair on this benchmark.
";

pub fn run(pairs: u64, runs: usize) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let out_dir = root().join("target/xtask");
    std::fs::create_dir_all(&out_dir)?;
    let bench_bin = out_dir.join("bench_pairs");
    compile_c("bench_pairs.c", &bench_bin)?;
    let pairs_arg = pairs.to_string();

    let mut untraced = Vec::new();
    let mut traced = Vec::new();
    for _ in 0..runs {
        untraced.push(measure(Command::new(&bench_bin).arg(&pairs_arg))?);
        traced.push(measure(
            Command::new(leaktrace_bin())
                .args(["run", "--format", "json", "--output", "/dev/null", "--"])
                .arg(&bench_bin)
                .arg(&pairs_arg),
        )?);
    }
    let base = median(untraced.clone());
    let with = median(traced.clone());
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| configuration | ns per malloc(64)+free pair (median of {runs}) | added ns | slowdown |"
    );
    let _ = writeln!(table, "|---|---|---|---|");
    let _ = writeln!(table, "| untraced | {base:.0} | – | 1.0× |");
    let _ = writeln!(
        table,
        "| leaktrace run (precise) | {with:.0} | {:.0} | {:.1}× |",
        with - base,
        with / base
    );
    println!("{table}");
    let document = format!(
        "# Benchmarks\n\n\
         Measured by `cargo xtask bench --pairs {pairs} --runs {runs}` (as root), all rows in one run \
         on the same machine. The target (`tests/targets/bench_pairs.c`) times {pairs} \
         `malloc(64)` + `free` pairs with CLOCK_MONOTONIC and prints ns per pair; the traced row \
         runs it under `leaktrace run`.\n\n\
         ## malloc+free pairs, single thread\n\n{table}\n\
         Runs: untraced {untraced:?} ns, traced {traced:?} ns.\n\n{WHERE_THE_TIME_GOES}"
    );
    std::fs::write(root().join("BENCHMARKS.md"), document)?;
    println!("xtask: wrote BENCHMARKS.md");
    Ok(())
}
