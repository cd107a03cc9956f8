//! A shortened soak (the hour-long one is `cargo xtask soak`): a service leaking slowly under
//! heavy balanced traffic, attached before it starts leaking and traced until it exits. leaktrace's memory and CPU stay flat,
//! every interval report comes, and every leaked block is either in the report or counted
//! as dropped.
use std::{
    io::BufRead,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leaktrace_tests::{bpf_available, build_c, leaktrace_bin, scratch_dir, u64_of};

/// Seconds the service runs; reports come every 5 s.
const SECONDS: u64 = 45;

/// (seconds since start, resident bytes, CPU seconds) of a process.
fn sample(pid: u32, since: Instant) -> Option<(f64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // utime and stime, fields 14 and 15 of stat: 11 and 12 after the command.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((
        since.elapsed().as_secs_f64(),
        rss_kib * 1024,
        ticks as f64 / per_second,
    ))
}

#[test]
fn a_slow_leak_under_heavy_traffic_stays_flat() {
    if !bpf_available("a_slow_leak_under_heavy_traffic_stays_flat") {
        return;
    }
    let program = build_c("soak_service.c", &["-pthread", "-fno-omit-frame-pointer"]);
    let go = scratch_dir().join("soak.go");
    let _ = std::fs::remove_file(&go);
    let service = Command::new(&program)
        .arg(SECONDS.to_string())
        .arg(&go)
        .env("LD_LIBRARY_PATH", leaktrace_tests::private_libc_dir())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start soak_service");
    let report = scratch_dir().join("soak.json");
    let _ = std::fs::remove_file(&report);
    let started = Instant::now();
    // Traced until the service exits on its own (status 3: the target exited), every call:
    // the default budget would take the allocation probes out of this busy service for most
    // of the time, and the leak's count is checked exactly.
    let mut tracer = Command::new(leaktrace_bin())
        .args(["attach", "--pid", &service.id().to_string(), "-i", "5s"])
        .args(["--max-overhead", "off"])
        .args(["--format", "json", "--output"])
        .arg(&report)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start leaktrace attach");
    let pid = tracer.id();
    let stderr = tracer.stderr.take().expect("piped");
    let reports = std::thread::spawn(move || {
        let mut reports = 0;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("attached to") {
                std::fs::write(&go, b"go").expect("tell the service to go");
            }
            if line.contains("stacks listed") {
                reports += 1;
            }
        }
        reports
    });
    let mut samples = Vec::new();
    while tracer.try_wait().ok().flatten().is_none() {
        if let Some(sample) = sample(pid, started) {
            samples.push(sample);
        }
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            started.elapsed() < Duration::from_secs(SECONDS * 4),
            "leaktrace did not end"
        );
    }
    assert_eq!(tracer.wait().expect("leaktrace").code(), Some(3));
    let interval_reports: u64 = reports.join().expect("stderr reader");
    let out = service.wait_with_output().expect("service output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let leaked: u64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("leaked="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the service's count: {stdout}"));

    // Every 5 s report came (the first may fall before the first one's interval ends).
    assert!(
        interval_reports >= SECONDS / 5 - 1,
        "{interval_reports} interval reports in {SECONDS} s"
    );
    // Memory and CPU: the last third of the run against the first third (after the start).
    let third = samples.len() / 3;
    assert!(third >= 5, "{} samples", samples.len());
    let (early, late) = (&samples[2..third], &samples[samples.len() - third..]);
    let peak = |part: &[(f64, u64, f64)]| part.iter().map(|s| s.1).max().unwrap_or(0);
    let rate = |part: &[(f64, u64, f64)]| {
        let (first, last) = (part[0], part[part.len() - 1]);
        (last.2 - first.2) / (last.0 - first.0)
    };
    eprintln!(
        "leaktrace: RSS {:.1} → {:.1} MiB, CPU {:.1}% → {:.1}% of a core; {interval_reports} reports; {leaked} blocks leaked",
        peak(early) as f64 / 1048576.0,
        peak(late) as f64 / 1048576.0,
        rate(early) * 100.0,
        rate(late) * 100.0
    );
    assert!(
        peak(late) <= peak(early) + (8 << 20),
        "RSS grew: {:?}",
        samples
    );
    assert!(
        rate(late) <= rate(early) * 1.5 + 0.02,
        "CPU grew: {:?}",
        samples
    );
    // Every leaked block is in the report, or counted as dropped.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    let dropped: u64 = report["dropped"]
        .as_object()
        .expect("dropped")
        .values()
        .map(u64_of)
        .sum();
    let leak = report["stacks"]
        .as_array()
        .and_then(|stacks| {
            stacks
                .iter()
                .find(|stack| stack["frames"][0]["function"] == "leak_slowly")
        })
        .unwrap_or_else(|| panic!("no leak_slowly stack"));
    let seen = u64_of(&leak["outstanding_allocs"]);
    assert!(
        seen <= leaked && seen + dropped >= leaked,
        "{leaked} leaked, {seen} in the report, {dropped} dropped: {}",
        report["dropped"]
    );
}
