//! The agent's own cost: leaktrace's CPU share and peak RSS while attached to a process
//! holding a million live allocations, how long an attach takes beyond the time traced, and
//! how long symbolizing 10k distinct stacks takes.
use std::{fmt::Write as _, io::BufRead as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    measure::cpu_and_peak_rss,
    workspace::{compile_c, leaktrace_bin, root},
};

/// Live allocations the agent-cost row holds, and for how long.
const HELD_ALLOCATIONS: u64 = 1_000_000;
const HOLD_SECONDS: u64 = 40;
/// The CPU share is measured over this long, after a warm-up that lets the first report
/// (and its first walk of the live map) pass: what a long-running sidecar pays.
const MEASURE_SECONDS: u64 = 20;
const WARM_UP_SECONDS: u64 = 8;

/// leaktrace's CPU share and peak RSS while attached to a process holding a million live
/// allocations it saw being made (reports every 5 s, each walking the live map), and how long
/// an attach takes beyond the time traced.
pub fn agent_cost(bench_bin: &Path) -> Result<String> {
    let (cpu_share, peak_rss) = while_holding(bench_bin)?;
    let (attach_s, phases) = attach_time(bench_bin)?;
    Ok(format!(
        "| measure | value | target |\n|---|---|---|\n\
         | CPU while attached to a process holding {HELD_ALLOCATIONS} traced live allocations, over {MEASURE_SECONDS} s after the first report (reports every 5 s, samples every 200 ms, the live map walked within a 0.5% budget) | {cpu_share:.2}% of a core | ≤ 1% |\n\
         | peak RSS of leaktrace meanwhile | {:.1} MiB | ≤ 64 MiB |\n\
         | `attach --duration 1s` to a live process: time beyond the 1 s traced ({phases}) | {attach_s:.2} s | |\n",
        peak_rss as f64 / (1024.0 * 1024.0)
    ))
}

/// leaktrace's CPU share (percent of a core) over MEASURE_SECONDS after a warm-up, and its
/// peak RSS, while attached to a process holding HELD_ALLOCATIONS allocations it saw being
/// made.
fn while_holding(bench_bin: &Path) -> Result<(f64, u64)> {
    let mut holder = Command::new(bench_bin)
        .args([
            "hold",
            &HELD_ALLOCATIONS.to_string(),
            &HOLD_SECONDS.to_string(),
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the holding target")?;
    let mut tracer = Command::new(leaktrace_bin())
        .args([
            "attach",
            "--pid",
            &holder.id().to_string(),
            "--interval",
            "5s",
        ])
        .args(["--duration", &(HOLD_SECONDS + 2).to_string()])
        .args(["--max-allocs", &(2 * HELD_ALLOCATIONS).to_string()])
        .args(["--format", "json", "--output", "/dev/null"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting leaktrace for the agent-cost run")?;
    // What leaktrace said, for the error when it is gone before it is measured.
    let tracer_stderr = tracer.stderr.take().context("piped stderr")?;
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { tracer_stderr }, &mut text);
        text
    });
    let mut line = String::new();
    let stdout = holder.stdout.take().context("piped stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("holding=") {
        bail!("the holding target did not start: {line}");
    }
    let pid = tracer.id();
    std::thread::sleep(std::time::Duration::from_secs(WARM_UP_SECONDS));
    let gone = |tracer: &mut std::process::Child| -> anyhow::Error {
        let status = tracer.try_wait().ok().flatten();
        anyhow::anyhow!("leaktrace (pid {pid}) ended before it was measured: {status:?}")
    };
    let Some((cpu_start, _)) = cpu_and_peak_rss(pid) else {
        let error = gone(&mut tracer);
        let _ = holder.kill();
        let _ = tracer.wait();
        bail!("{error}; it said: {}", said.join().unwrap_or_default());
    };
    let started = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(MEASURE_SECONDS));
    let Some((cpu_end, peak_rss)) = cpu_and_peak_rss(pid) else {
        let error = gone(&mut tracer);
        let _ = holder.kill();
        let _ = tracer.wait();
        bail!("{error}; it said: {}", said.join().unwrap_or_default());
    };
    let wall = started.elapsed().as_secs_f64();
    let status = tracer.wait()?;
    let _ = holder.kill();
    let _ = holder.wait();
    // Exit 3: the holder exited first (it may, after HOLD_SECONDS); the report is written.
    if !status.success() && status.code() != Some(3) {
        bail!("the agent-cost run failed: {status}");
    }
    let cpu_share = 100.0 * (cpu_end - cpu_start) / wall;
    Ok((cpu_share, peak_rss))
}

/// How long `attach --duration 1s` to an idle process takes beyond the second traced, and
/// its phases, from leaktrace's log.
fn attach_time(bench_bin: &Path) -> Result<(f64, String)> {
    let mut line = String::new();
    let mut idle = Command::new(bench_bin)
        .args(["hold", "1000", "30"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = idle.stdout.take().context("piped stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let attach_started = std::time::Instant::now();
    let attach = Command::new(leaktrace_bin())
        .args([
            "attach",
            "--pid",
            &idle.id().to_string(),
            "--duration",
            "1s",
        ])
        .args(["--format", "json", "--output", "/dev/null"])
        .env("RUST_LOG", "leaktrace=debug")
        .output()?;
    let attach_s = attach_started.elapsed().as_secs_f64() - 1.0;
    let _ = idle.kill();
    let _ = idle.wait();
    if !attach.status.success() {
        bail!("the attach timing run failed: {}", attach.status);
    }
    // "probes in place in N ms", "final report built in N ms", "probes detached in N ms"
    let log = String::from_utf8_lossy(&attach.stderr);
    let phase_ms = |phase: &str| -> String {
        log.lines()
            .find_map(|line| {
                let rest = &line[line.find(phase)? + phase.len()..];
                rest.trim().strip_suffix("ms")?.trim().parse::<f64>().ok()
            })
            .map_or_else(|| "?".to_string(), |ms| format!("{ms:.0} ms"))
    };
    let phases = format!(
        "probes in place {}, final report {}, detach {}",
        phase_ms("probes in place in"),
        phase_ms("final report built in"),
        phase_ms("probes detached in")
    );
    Ok((attach_s, phases))
}

/// The symbolization row's target: `FANOUT`² distinct stacks, leaf_J ← mid_I (one call site
/// per J) ← main (one per I): about as many distinct return addresses as stacks.
const FANOUT: usize = 100;

fn stacks_source() -> String {
    let mut c = String::from(
        "// Generated by `cargo xtask bench`: many distinct allocation stacks.\n\
         #include <stdlib.h>\n\
         static void *volatile kept[FANOUT_SQUARED];\nstatic int next;\n",
    )
    .replace("FANOUT_SQUARED", &(FANOUT * FANOUT).to_string());
    for j in 0..FANOUT {
        let _ = writeln!(
            c,
            "__attribute__((noinline)) void leaf_{j}(void) {{ kept[next++] = malloc({}); __asm__ volatile(\"\"); }}",
            16 + j
        );
    }
    for i in 0..FANOUT {
        let _ = writeln!(
            c,
            "__attribute__((noinline)) void mid_{i}(int j) {{\n  switch (j) {{"
        );
        for j in 0..FANOUT {
            let _ = writeln!(c, "  case {j}: leaf_{j}(); break;");
        }
        let _ = writeln!(c, "  }}\n  __asm__ volatile(\"\");\n}}");
    }
    c.push_str("int main(void) {\n  for (int j = 0; j < ");
    let _ = writeln!(c, "{FANOUT}; j++) {{");
    for i in 0..FANOUT {
        let _ = writeln!(c, "    mid_{i}(j);");
    }
    c.push_str("  }\n  return 0;\n}\n");
    c
}

/// Time leaktrace takes to symbolize 10k distinct stacks (from its own log line).
pub fn symbolization() -> Result<String> {
    let out_dir = root().join("target/xtask");
    let source = out_dir.join("bench_stacks.c");
    std::fs::write(&source, stacks_source())?;
    let bin = out_dir.join("bench_stacks");
    compile_c(source.to_str().context("UTF-8 path")?, &bin)?;
    let out = Command::new(leaktrace_bin())
        .args(["run", "--format", "json", "--output", "/dev/null", "--"])
        .arg(&bin)
        .env("RUST_LOG", "info")
        .output()
        .context("running leaktrace on bench_stacks")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "symbolized A new addresses of S stacks in T ms"
    let (addresses, stacks, ms) = stderr
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("symbolized ")? + "symbolized ".len()..];
            let words: Vec<&str> = rest.split_whitespace().collect();
            Some((
                words.first()?.parse::<u64>().ok()?,
                words.get(4)?.parse::<u64>().ok()?,
                words.get(7)?.parse::<f64>().ok()?,
            ))
        })
        .max_by_key(|(_, stacks, _)| *stacks)
        .with_context(|| format!("no symbolization line in leaktrace's log: {stderr}"))?;
    Ok(format!(
        "| symbolize {stacks} distinct stacks ({addresses} distinct return addresses, DWARF line info) in the final report | {ms:.0} ms | |\n"
    ))
}
