//! nginx (Debian, glibc) with one worker serving a 4 KiB file on loopback, driven by `wrk`;
//! leaktrace attached to the worker.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{
    BUDGET_SECONDS, Tracer, children, configurations, free_port, throughput_table, wait_for_port,
};
use crate::{measure::stop, workspace::root};

/// nginx (Debian, glibc) with one worker serving a 4 KiB file on loopback under `wrk`;
/// leaktrace attached to the worker. Configurations alternate within each run.
pub fn nginx(runs: usize) -> Result<String> {
    if which::which("nginx").is_err() || which::which("wrk").is_err() {
        return Ok("nginx or wrk is not installed: rows left out.\n".into());
    }
    let dir = root().join("target/xtask/nginx");
    std::fs::create_dir_all(dir.join("html"))?;
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::write(dir.join("html/index.html"), "x".repeat(4096))?;
    let port = free_port()?;
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n\
             pid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/tmp;\n\
             server {{ listen 127.0.0.1:{port}; root {dir}/html; }}\n}}\n",
            dir = dir.display()
        ),
    )?;
    let mut master = Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let result = (|| -> Result<String> {
        wait_for_port(port)?;
        let worker = children(master.id())
            .first()
            .copied()
            .context("nginx started no worker")?;
        let url = format!("http://127.0.0.1:{port}/index.html");
        wrk(&url, 2)?; // warm-up
        let configurations = configurations();
        let mut results = vec![Vec::new(); configurations.len()];
        let mut budget_costs = Vec::new();
        for _ in 0..runs {
            for (index, configuration) in configurations.iter().enumerate() {
                let seconds = if configuration.default_budget {
                    BUDGET_SECONDS
                } else {
                    WRK_SECONDS
                };
                let Some(ready) = configuration.ready else {
                    results[index].push(wrk(&url, seconds)?);
                    continue;
                };
                let tracer = Tracer::start(&configuration.args, worker, ready)?;
                let measured = wrk(&url, seconds);
                let cost = tracer.stop();
                if configuration.default_budget
                    && let Some(cost) = cost
                {
                    budget_costs.push(cost);
                }
                results[index].push(measured?);
            }
        }
        Ok(throughput_table(
            "nginx worker",
            &configurations,
            &results,
            &budget_costs,
        ))
    })();
    stop(&mut master, Duration::from_secs(10));
    let table = result?;
    println!("{table}");
    Ok(table)
}

/// How long each `wrk` run lasts, but the default budget's (BUDGET_SECONDS).
pub const WRK_SECONDS: u64 = 5;

/// Requests per second `wrk` got in `seconds` with 20 connections.
fn wrk(url: &str, seconds: u64) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t1", "-c20", &format!("-d{seconds}s"), url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}
