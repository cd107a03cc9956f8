//! `cargo xtask soak [--minutes 60]`: leaktrace attached for a long run to a service that
//! leaks slowly under heavy balanced traffic (tests/targets/soak_service.c). Measures
//! leaktrace's resident memory and CPU over time, counts the interval reports, and checks that
//! every leaked block is in the final report or counted as dropped. The results replace the
//! soak section of BENCHMARKS.md (`cargo xtask bench` keeps it). tests/tests/soak.rs is the
//! shortened version CI runs.
use std::{
    fmt::Write as _,
    io::BufRead,
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    measure::cpu_and_memory,
    soak_section::{SECTION_END, SECTION_START, with_section},
    workspace::{compile_c, leaktrace_bin, root},
};

/// Seconds between interval reports.
const INTERVAL_S: u64 = 10;

/// One sample of leaktrace, taken every 10 s: seconds since the start, resident bytes, CPU
/// seconds.
type Sample = (f64, u64, f64);

/// Whether every leaked block is accounted for: the service's count, and what leaktrace's
/// final report says.
struct Accounting {
    /// Blocks the service leaked (it says so as it exits).
    leaked: u64,
    /// Blocks outstanding under leak_slowly in the report, and its verdict.
    seen: u64,
    verdict: String,
    /// Events leaktrace dropped, all kinds together.
    dropped: u64,
    /// Allocator calls traced.
    events: u64,
}

pub fn run(duration: Duration) -> Result<()> {
    let seconds = duration.as_secs().max(60);
    let out_dir = root().join("target/xtask");
    std::fs::create_dir_all(&out_dir)?;
    let service_bin = out_dir.join("soak_service");
    compile_c("soak_service.c", &service_bin)?;
    let go = out_dir.join("soak.go");
    let report = out_dir.join("soak.json");
    let _ = std::fs::remove_file(&go);
    let _ = std::fs::remove_file(&report);
    let service = Command::new(&service_bin)
        .arg(seconds.to_string())
        .arg(&go)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting soak_service")?;
    let (mut tracer, reader) = attach(service.id(), &report, &go)?;
    let samples = sample_until_exit(&mut tracer, seconds)?;
    let status = tracer.wait()?;
    let reports = reader.join().unwrap_or(0);
    let accounting = accounting(&service.wait_with_output()?, &report)?;
    let section = section(seconds, status, reports, &samples, &accounting);
    println!("{section}");
    let path = root().join("BENCHMARKS.md");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, with_section(&current, &section))?;
    println!("xtask: wrote the soak section of BENCHMARKS.md");
    Ok(())
}

/// leaktrace attached to the service, writing interval reports, and a thread reading its log:
/// once the probes are in it tells the service to start (writes `go`), and it counts the
/// interval reports.
fn attach(pid: u32, report: &Path, go: &Path) -> Result<(Child, JoinHandle<u64>)> {
    let mut tracer = Command::new(leaktrace_bin())
        .args(["attach", "--pid", &pid.to_string()])
        .args([
            "-i",
            &format!("{INTERVAL_S}s"),
            "--format",
            "json",
            "--output",
        ])
        .arg(report)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .context("starting leaktrace attach")?;
    let stderr = tracer.stderr.take().context("piped stderr")?;
    let go_file = go.to_path_buf();
    let reader = std::thread::spawn(move || {
        let mut reports = 0u64;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("attached to") {
                let _ = std::fs::write(&go_file, b"go");
            }
            if line.contains("stacks listed") {
                reports += 1;
            }
        }
        reports
    });
    Ok((tracer, reader))
}

/// leaktrace's resident memory and CPU time every 10 s until it exits (it does when the
/// service does, after `seconds`); an error, and leaktrace killed, if it is still there long
/// after.
fn sample_until_exit(tracer: &mut Child, seconds: u64) -> Result<Vec<Sample>> {
    let pid = tracer.id();
    let started = Instant::now();
    let mut samples = Vec::new();
    loop {
        if tracer.try_wait()?.is_some() {
            break;
        }
        if let Some((cpu, rss)) = cpu_and_memory(pid, "VmRSS:") {
            samples.push((started.elapsed().as_secs_f64(), rss, cpu));
        }
        if started.elapsed() > Duration::from_secs(seconds * 3 + 300) {
            let _ = tracer.kill();
            bail!("leaktrace did not end after the service's {seconds} s");
        }
        std::thread::sleep(Duration::from_secs(10));
    }
    Ok(samples)
}

/// The service's leaked count (from its output) against leaktrace's final report.
fn accounting(service: &Output, report: &Path) -> Result<Accounting> {
    let leaked: u64 = String::from_utf8_lossy(&service.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("leaked="))
        .and_then(|n| n.trim().parse().ok())
        .context("the service's leaked count")?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(report)?)?;
    let dropped: u64 = json["dropped"]
        .as_object()
        .map(|d| d.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    let leak_slowly = json["stacks"].as_array().and_then(|stacks| {
        stacks
            .iter()
            .find(|stack| stack["frames"][0]["function"] == "leak_slowly")
    });
    let seen = leak_slowly
        .and_then(|stack| stack["outstanding_allocs"].as_u64())
        .unwrap_or(0);
    let verdict = leak_slowly
        .and_then(|stack| stack["verdict"].as_str())
        .unwrap_or("absent")
        .to_string();
    let events = json["events"]["allocations"].as_u64().unwrap_or(0);
    Ok(Accounting {
        leaked,
        seen,
        verdict,
        dropped,
        events,
    })
}

/// Ten slices of the run: leaktrace's RSS at the end of each, and its CPU share in each.
fn usage_table(samples: &[Sample]) -> String {
    let mut table = String::from(
        "| minutes | leaktrace RSS | leaktrace CPU (share of a core) |\n|---|---|---|\n",
    );
    let slices = 10.min(samples.len().saturating_sub(1)).max(1);
    let step = (samples.len().saturating_sub(1) / slices).max(1);
    let mut index = 0;
    while index + step < samples.len() {
        let (from, to) = (samples[index], samples[index + step]);
        let _ = writeln!(
            table,
            "| {:.0}–{:.0} | {:.1} MiB | {:.2}% |",
            from.0 / 60.0,
            to.0 / 60.0,
            to.1 as f64 / 1048576.0,
            100.0 * (to.2 - from.2) / (to.0 - from.0)
        );
        index += step;
    }
    table
}

/// The soak section of BENCHMARKS.md, markers included.
fn section(
    seconds: u64,
    status: ExitStatus,
    reports: u64,
    samples: &[Sample],
    accounting: &Accounting,
) -> String {
    let Accounting {
        leaked,
        seen,
        verdict,
        dropped,
        events,
    } = accounting;
    let table = usage_table(samples);
    let expected_reports = seconds / INTERVAL_S;
    format!(
        "{SECTION_START}\n## Soak: {minutes} minutes\n\n\
         `cargo xtask soak --minutes {minutes}`: `tests/targets/soak_service.c` (two threads \
         allocating and freeing 16 B–4 KiB at full speed, one 64-byte block leaked every 10 ms) \
         with `leaktrace attach -i {INTERVAL_S}s` from before its first leak to its exit \
         (leaktrace's exit status: {status}; 3 means the target exited, as expected).\n\n{table}\n\
         - interval reports: {reports} of {expected_reports} expected\n\
         - allocator calls traced: {events}\n\
         - leaked blocks: {leaked}; in the final report under leak_slowly: {seen} ({verdict}); \
         dropped events: {dropped}{gap}\n{SECTION_END}\n",
        minutes = seconds / 60,
        status = status.code().unwrap_or(-1),
        gap = if seen + dropped >= *leaked && seen <= leaked {
            " (every leaked block accounted for)"
        } else {
            " (NOT every leaked block accounted for)"
        },
    )
}
