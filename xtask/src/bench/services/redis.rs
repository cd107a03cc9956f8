//! redis-server (Debian, jemalloc) on loopback: its throughput under `redis-benchmark` with
//! leaktrace attached or watching, and how long `attach --reachability` stops it.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{Configuration, Tracer, budget_summary, configurations, free_port};
use crate::{
    measure::{cpu_and_peak_rss, cpu_ns, median, stop},
    workspace::{leaktrace_bin, root},
};

/// Requests per second of SET and GET from redis-benchmark against a redis-server on
/// loopback, `requests` of each.
fn redis_rps(port: u16, requests: u64) -> Result<(f64, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            "50",
            "-t",
            "set,get",
            "--csv",
            "-q",
        ])
        .output()
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = |test: &str| {
        text.lines()
            .find(|line| line.starts_with(&format!("\"{test}\"")))
            .and_then(|line| line.split(',').nth(1))
            .and_then(|value| value.trim_matches('"').parse::<f64>().ok())
    };
    match (rps("SET"), rps("GET")) {
        (Some(set), Some(get)) => Ok((set, get)),
        _ => bail!("no SET/GET rates in redis-benchmark's output: {text}"),
    }
}

pub const REDIS_REQUESTS: u64 = 200_000;
/// The default budget's row: about 30 s at an untraced rate, so that its back-off cycles
/// (10 s or more) weigh more than the first second at full cost.
pub const REDIS_BUDGET_REQUESTS: u64 = 1_500_000;

/// redis-server (Debian, jemalloc) under redis-benchmark, untraced and with leaktrace
/// attached (every call, and one in 100), alternating, median of `runs`.
pub fn redis(runs: usize) -> Result<String> {
    if which::which("redis-server").is_err() || which::which("redis-benchmark").is_err() {
        return Ok("redis-server or redis-benchmark is not installed: row left out.\n".into());
    }
    let (mut server, port) = start_redis(&[])?;
    let result = (|| -> Result<String> {
        redis_rps(port, REDIS_REQUESTS)?; // warm-up
        let mut configurations = configurations();
        configurations.push(Configuration {
            name: "leaktrace watch --watch-mmap, gear 1 (the same, and mmap/brk tracepoints)",
            args: vec!["watch", "--escalate-growth", "1G", "--watch-mmap", "--pid"],
            ready: Some("event=watching"),
            default_budget: false,
        });
        let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); configurations.len()];
        let mut watch_cost: Vec<(f64, u64)> = Vec::new();
        let mut budget_costs = Vec::new();
        for _ in 0..runs {
            for (index, configuration) in configurations.iter().enumerate() {
                let requests = if configuration.default_budget {
                    REDIS_BUDGET_REQUESTS
                } else {
                    REDIS_REQUESTS
                };
                let Some(ready) = configuration.ready else {
                    results[index].push(redis_rps(port, requests)?);
                    continue;
                };
                let tracer = Tracer::start(&configuration.args, server.id(), ready)?;
                let cpu_before = cpu_ns(tracer.id());
                let started = std::time::Instant::now();
                let measured = redis_rps(port, requests);
                if configuration.args == ["watch", "--escalate-growth", "1G", "--pid"]
                    && let (Some(before), Some(after), Some((_, peak))) = (
                        cpu_before,
                        cpu_ns(tracer.id()),
                        cpu_and_peak_rss(tracer.id()),
                    )
                {
                    let seconds = (after - before) as f64 / 1e9;
                    watch_cost.push((seconds / started.elapsed().as_secs_f64(), peak));
                }
                let cost = tracer.stop();
                if configuration.default_budget
                    && let Some(cost) = cost
                {
                    budget_costs.push(cost);
                }
                results[index].push(measured?);
            }
        }
        let (base_set, base_get) = (
            median(results[0].iter().map(|r| r.0).collect()),
            median(results[0].iter().map(|r| r.1).collect()),
        );
        let mut table = String::from(
            "| redis-server | SET requests/s | GET requests/s | throughput vs untraced |\n|---|---|---|---|\n",
        );
        for (configuration, runs) in configurations.iter().zip(&results) {
            let set = median(runs.iter().map(|r| r.0).collect());
            let get = median(runs.iter().map(|r| r.1).collect());
            let _ = writeln!(
                table,
                "| {} | {set:.0} | {get:.0} | {:.0}% / {:.0}% |",
                configuration.name,
                100.0 * set / base_set,
                100.0 * get / base_get
            );
        }
        table += &budget_summary(&budget_costs, "redis's");
        if !watch_cost.is_empty() {
            let cpu = median(watch_cost.iter().map(|c| c.0).collect());
            let peak = watch_cost.iter().map(|c| c.1).max().unwrap_or(0);
            let _ = writeln!(
                table,
                "\nThe watcher itself during the gear-1 runs: {:.3}% of a core, {:.1} MiB peak RSS.",
                100.0 * cpu,
                peak as f64 / 1048576.0
            );
        }
        Ok(table)
    })();
    stop(&mut server, std::time::Duration::from_secs(5));
    let table = result?;
    println!("{table}");
    Ok(table)
}

/// A redis-server of our own on a free loopback port, listening; stop it with `stop`.
fn start_redis(extra: &[&str]) -> Result<(std::process::Child, u16)> {
    let port = free_port()?;
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let ready = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !ready {
        stop(&mut server, std::time::Duration::from_secs(5));
        bail!("redis-server did not start listening on port {port}");
    }
    Ok((server, port))
}

/// Keys redis holds before the reachability scan: about 1 GiB of resident memory.
pub const REACHABILITY_KEYS: u64 = 3_000_000;

/// How long `attach --reachability` stops a real service: redis-server holding about 1 GiB
/// (filled before the attach, so untracked and scanned as roots) while redis-benchmark keeps
/// setting and getting keys; the pause and bytes read come from the report. Median of `runs`.
pub fn reachability(runs: usize) -> Result<String> {
    if which::which("redis-server").is_err()
        || which::which("redis-benchmark").is_err()
        || which::which("redis-cli").is_err()
    {
        return Ok(
            "redis-server, redis-benchmark or redis-cli is not installed: left out.\n".into(),
        );
    }
    let (mut server, port) = start_redis(&["--enable-debug-command", "yes"])?;
    let result = (|| -> Result<String> {
        let filled = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "DEBUG", "POPULATE"])
            .args([&REACHABILITY_KEYS.to_string(), "old", "200"])
            .output()
            .context("running redis-cli")?;
        if !String::from_utf8_lossy(&filled.stdout).contains("OK") {
            bail!("DEBUG POPULATE failed: {filled:?}");
        }
        let pid = server.id();
        let report = root().join("target/xtask/reachability.json");
        let mut scans = Vec::new();
        for _ in 0..runs {
            let mut load = Command::new("redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .args([
                    "-n",
                    "100000000",
                    "-c",
                    "10",
                    "-t",
                    "set,get",
                    "-r",
                    "1000000",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("starting redis-benchmark")?;
            std::thread::sleep(std::time::Duration::from_secs(1));
            let traced = Command::new(leaktrace_bin())
                .args(["attach", "--pid", &pid.to_string(), "--reachability"])
                .args(["--duration", "3s", "--format", "json", "--output"])
                .arg(&report)
                .output()
                .context("running leaktrace attach --reachability")?;
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|status| {
                    let line = status
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))?
                        .to_string();
                    line.split_whitespace().nth(1)?.parse::<u64>().ok()
                })
                .unwrap_or(0)
                * 1024;
            stop(&mut load, std::time::Duration::from_secs(5));
            if !traced.status.success() {
                bail!(
                    "leaktrace attach --reachability failed: {}",
                    String::from_utf8_lossy(&traced.stderr)
                );
            }
            let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
            let scan = &json["reachability_scan"];
            let paused_ms = scan["paused_ms"]
                .as_f64()
                .context("paused_ms in the report")?;
            let scanned = scan["scanned_bytes"].as_u64().unwrap_or(0);
            let blocks = scan["blocks"].as_u64().unwrap_or(0);
            println!("reachability: paused {paused_ms:.0} ms, {scanned} bytes, {blocks} blocks");
            scans.push((paused_ms, scanned, blocks, rss));
        }
        let mib = |bytes: u64| bytes as f64 / 1048576.0;
        let mut table = String::from(
            "| redis-server RSS | bytes scanned | tracked blocks classified | target stopped | per GiB scanned |\n|---|---|---|---|---|\n",
        );
        let mut per_gib = Vec::new();
        for (paused_ms, scanned, blocks, rss) in &scans {
            let gib = *scanned as f64 / f64::from(1 << 30);
            per_gib.push(paused_ms / gib);
            let _ = writeln!(
                table,
                "| {:.0} MiB | {:.0} MiB | {blocks} | {paused_ms:.0} ms | {:.0} ms |",
                mib(*rss),
                mib(*scanned),
                paused_ms / gib
            );
        }
        let _ = writeln!(
            table,
            "\nMedian: **{:.0} ms of pause per GiB scanned.**",
            median(per_gib)
        );
        Ok(table)
    })();
    stop(&mut server, std::time::Duration::from_secs(5));
    let table = result?;
    println!("{table}");
    Ok(table)
}
