//! How the benchmarks measure: a workload's time per operation, the median of runs, a
//! process's CPU time and memory, stopping a tracer we started, and the pairs workload under
//! bcc's memleak. Shared by `bench`, its `services` tables and `soak`.
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{setup, workspace::root};

/// Runs a benchmark program once; returns the ns per pair (or per operation) it printed.
pub fn measure(command: &mut Command) -> Result<f64> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("ns_per_pair=")
                .or_else(|| line.strip_prefix("ns_per_op="))
        })
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| {
            format!(
                "no ns_per_pair in the output of {command:?}: {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The median of some runs' values.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// CPU time of all of a process's threads so far, in nanoseconds (schedstat: finer than the
/// clock ticks of /proc/PID/stat).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .filter_map(|task| {
                let path = task.ok()?.path().join("schedstat");
                std::fs::read_to_string(path)
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum(),
    )
}

/// CPU time (user+system) of a process so far, in seconds, and its peak RSS in bytes.
pub fn cpu_and_peak_rss(pid: u32) -> Option<(f64, u64)> {
    cpu_and_memory(pid, "VmHWM:")
}

/// CPU time (user+system) of a process so far, in seconds, and one memory line of its
/// /proc/PID/status (`VmRSS:`, `VmHWM:`, …) in bytes.
pub fn cpu_and_memory(pid: u32, field: &str) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((ticks as f64 / hz, kib * 1024))
}

/// A child we started: SIGINT first (so a tracer detaches and reports), then SIGKILL if it
/// has not ended within `grace`.
pub fn stop(child: &mut std::process::Child, grace: std::time::Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling a process this program started and has not yet reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// bcc's memleak (Debian bpfcc-tools 0.26, made to run by `setup::bcc_memleak`) attached with
/// -p to the pairs workload, which starts once memleak's probes are in place; with
/// `library`, preloaded into the workload and traced instead of libc (memleak's -O). None
/// when bcc is not available or fails here; the reason is printed.
pub fn bcc_pairs(
    bench_bin: &std::path::Path,
    count: &str,
    runs: usize,
    library: Option<&str>,
) -> Result<Option<Vec<f64>>> {
    let Some((memleak, headers)) = setup::bcc_memleak() else {
        return Ok(None);
    };
    let log_path = root().join("target/xtask/memleak-bpfcc.log");
    let mut times = Vec::new();
    for _ in 0..runs {
        let mut target = Command::new(bench_bin);
        target
            .args(["pairs", count])
            .env("BENCH_WAIT_FOR_PROBES", "2")
            .stdout(std::process::Stdio::piped());
        if let Some(library) = library {
            target.env("LD_PRELOAD", library);
        }
        let mut target = target
            .spawn()
            .context("starting the pairs workload for bcc")?;
        let mut tracer = Command::new(&memleak[0])
            .args(&memleak[1..])
            .args(["-p", &target.id().to_string()])
            .args(library.map(|library| ["-O", library]).into_iter().flatten())
            .env("BCC_KERNEL_SOURCE", &headers)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()
            .context("starting memleak-bpfcc")?;
        let finished = loop {
            if target.try_wait()?.is_some() {
                break true;
            }
            if tracer.try_wait()?.is_some() {
                break false;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        if !finished {
            let _ = target.kill();
            let _ = target.wait();
            eprintln!(
                "xtask bench: memleak-bpfcc ended before the workload ({}); its row is left out",
                log_path.display()
            );
            return Ok(None);
        }
        stop(&mut tracer, std::time::Duration::from_secs(10));
        let out = target.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout
            .lines()
            .find_map(|line| line.strip_prefix("ns_per_pair="))
            .and_then(|value| value.trim().parse().ok())
        {
            Some(ns) => times.push(ns),
            None => {
                eprintln!(
                    "xtask bench: the workload under memleak-bpfcc failed ({}); its row is left out",
                    out.status
                );
                return Ok(None);
            }
        }
    }
    Ok(Some(times))
}
