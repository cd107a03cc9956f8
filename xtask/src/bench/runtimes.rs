//! Language runtimes: what the Go runtime's probes and reading CPython's frames cost (each
//! workload of tests/targets/go_bench.go and py_bench.py, untraced and under `leaktrace run`),
//! and what reading a Go program's heap profile costs leaktrace.
use std::{fmt::Write as _, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    measure::{measure, median},
    workspace::{leaktrace_bin, root},
};

/// The language-runtime workloads: program, workload, operations, what a row measures.
const RUNTIME_WORKLOADS: [(&str, &str, u64, &str); 4] = [
    (
        "go",
        "alloc",
        20_000_000,
        "Go: `make([]byte, 64)` kept in a global (one span probe per 128)",
    ),
    (
        "go",
        "goroutines",
        500_000,
        "Go: a goroutine started and ended (`go wg.Done()`)",
    ),
    (
        "python",
        "malloc",
        1_000_000,
        "CPython 3.11: `bytearray(1024)`, malloc'd and freed, stack with Python frames",
    ),
    (
        "python",
        "objects",
        5_000_000,
        "CPython 3.11: `[i]`, from CPython's own arenas (no probe)",
    ),
];

/// tests/targets/NAME.go built into target/xtask/NAME.
fn build_go(name: &str) -> Result<PathBuf> {
    let out_dir = root().join("target/xtask");
    std::fs::create_dir_all(&out_dir)?;
    let program = out_dir.join(name);
    let status = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&program)
        .arg(root().join(format!("tests/targets/{name}.go")))
        .env("GOCACHE", root().join("target/go-cache"))
        .env("GOFLAGS", "-buildvcs=false")
        .status()
        .context("running go build (cargo xtask setup installs golang-go)")?;
    if !status.success() {
        bail!("go build of tests/targets/{name}.go failed");
    }
    Ok(program)
}

/// The cost of the Go runtime probes and of reading CPython's frames: each workload of
/// tests/targets/go_bench.go and py_bench.py untraced and under `leaktrace run`.
pub fn runtimes(runs: usize) -> Result<String> {
    let go_bench = build_go("go_bench")?;
    let py_bench = root().join("tests/targets/py_bench.py");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| workload | untraced ns/op (median of {runs}) | leaktrace ns/op | added ns | slowdown |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|");
    for (program, workload, count, what) in RUNTIME_WORKLOADS {
        let mut target: Vec<std::ffi::OsString> = match program {
            "go" => vec![go_bench.clone().into()],
            _ => vec!["/usr/bin/python3".into(), py_bench.clone().into()],
        };
        target.extend([workload.into(), count.to_string().into()]);
        let command = |traced: bool| {
            let mut command = Command::new(if traced {
                leaktrace_bin().into_os_string()
            } else {
                target[0].clone()
            });
            if traced {
                command.args(["run", "--format", "json", "--output", "/dev/null", "--"]);
                command.args(&target);
            } else {
                command.args(&target[1..]);
            }
            command
        };
        let (mut untraced, mut traced) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            untraced.push(measure(&mut command(false))?);
            traced.push(measure(&mut command(true))?);
        }
        let (base, with) = (median(untraced), median(traced));
        let _ = writeln!(
            table,
            "| {what} | {base:.0} | {with:.0} | {:.0} | {:.2}× |",
            with - base,
            with / base
        );
        println!("{program} {workload}: untraced {base:.0} ns, traced {with:.0} ns");
    }
    let _ = writeln!(table, "\n{}", go_profile_read()?);
    println!("{table}");
    Ok(table)
}

/// What reading a Go program's heap profile costs leaktrace (see leak-user/src/collect/go_profile.rs):
/// tests/targets/go_profile_bench.go holds a few thousand buckets; leaktrace attached for
/// 3 s logs each read. A sentence for BENCHMARKS.md.
fn go_profile_read() -> Result<String> {
    use std::io::BufRead;
    let program = build_go("go_profile_bench")?;
    let mut target = Command::new(&program)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting go_profile_bench")?;
    let mut ready = String::new();
    if let Some(stdout) = target.stdout.take() {
        std::io::BufReader::new(stdout).read_line(&mut ready)?;
    }
    let traced = Command::new(leaktrace_bin())
        .args(["attach", "--pid", &target.id().to_string(), "-d", "3s"])
        .args(["--format", "json", "--output", "/dev/null"])
        .env("RUST_LOG", "leaktrace=debug")
        .output();
    // Our own child, by pid.
    let _ = target.kill();
    let _ = target.wait();
    let traced = traced.context("running leaktrace attach")?;
    // "Go heap profile of pid P: B buckets read in X ms"
    let reads: Vec<(u64, f64)> = String::from_utf8_lossy(&traced.stderr)
        .lines()
        .filter_map(|line| {
            let rest = line.split("Go heap profile of pid ").nth(1)?;
            let (_, rest) = rest.split_once(": ")?;
            let (buckets, rest) = rest.split_once(" buckets read in ")?;
            Some((
                buckets.parse().ok()?,
                rest.trim_end_matches(" ms").parse().ok()?,
            ))
        })
        .collect();
    let Some(((buckets, first), rest)) = reads.split_first().map(|(f, r)| (*f, r)) else {
        bail!(
            "leaktrace logged no read of the Go heap profile:\n{}",
            String::from_utf8_lossy(&traced.stderr)
        );
    };
    let after = if rest.is_empty() {
        first
    } else {
        median(rest.iter().map(|(_, ms)| *ms).collect())
    };
    let line = format!(
        "Reading Go's heap profile (`go_profile_bench.go`: {buckets} buckets, every \
         allocation recorded) costs leaktrace {first:.1} ms at the first read (every bucket's \
         stack) and {after:.2} ms at each read after (the median of {} reads, one per \
         sample: the new buckets and every bucket's counts); the target is not stopped.",
        rest.len()
    );
    println!("{line}");
    Ok(line)
}
