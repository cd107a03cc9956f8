//! `cargo xtask bench`'s real services under load, one file each: redis-server (and the
//! reachability scan's pause on it), nginx and PostgreSQL, each driven by its own load
//! generator (redis-benchmark, wrk, pgbench) while leaktrace is attached. What they share is
//! here: the configurations each is measured in, the tracer attached to it, the throughput
//! table and the default budget's summary, ports and processes.
pub mod nginx;
pub mod postgres;
pub mod redis;

use std::{
    fmt::Write as _,
    io::BufRead as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    measure::{median, stop},
    workspace::{leaktrace_bin, root},
};

/// How leaktrace is run against a service's process: a row name, leaktrace's arguments
/// before the pid, and the stderr line that says it is in place (None: untraced).
pub struct Configuration {
    pub name: &'static str,
    pub args: Vec<&'static str>,
    pub ready: Option<&'static str>,
    /// The row of the default budget, whose report's cost the table quotes.
    pub default_budget: bool,
}

/// The rows every service gets: untraced, attached (every call, one in 100, the default
/// budget) and watched (gear 1 alone: a growth threshold no run reaches).
pub fn configurations() -> Vec<Configuration> {
    let attached = Some("attached to");
    vec![
        Configuration {
            name: "untraced",
            args: Vec::new(),
            ready: None,
            default_budget: false,
        },
        Configuration {
            name: "leaktrace attach --max-overhead off (every call, with its stack)",
            args: vec!["attach", "--max-overhead", "off", "--pid"],
            ready: attached,
            default_budget: false,
        },
        Configuration {
            name: "leaktrace attach --sample-rate 100 --max-overhead off",
            args: vec![
                "attach",
                "--sample-rate",
                "100",
                "--max-overhead",
                "off",
                "--pid",
            ],
            ready: attached,
            default_budget: false,
        },
        Configuration {
            name: "leaktrace attach (the default budget: --max-overhead 10)",
            args: vec!["attach", "--pid"],
            ready: attached,
            default_budget: true,
        },
        Configuration {
            name: "leaktrace watch, gear 1 (/proc, page faults 1 in 16 with dwarf stacks)",
            args: vec!["watch", "--escalate-growth", "1G", "--pid"],
            ready: Some("event=watching"),
            default_budget: false,
        },
    ]
}

/// leaktrace attached (or watching) until stopped; its stderr is drained so it never blocks.
pub struct Tracer {
    child: Child,
    drain: Option<std::thread::JoinHandle<()>>,
    /// The report (attach), read once leaktrace has ended.
    report: Option<PathBuf>,
}

impl Tracer {
    /// Starts leaktrace with `args` and `pid`, and waits until it says `ready`.
    pub fn start(args: &[&str], pid: u32, ready: &str) -> Result<Tracer> {
        let attach = args.first() == Some(&"attach");
        let report = attach.then(|| {
            root().join(format!(
                "target/xtask/service-report-{}.json",
                std::process::id()
            ))
        });
        let mut command = Command::new(leaktrace_bin());
        command.args(args).arg(pid.to_string());
        match &report {
            Some(path) => {
                command.args(["--format", "json", "--output"]).arg(path);
            }
            None => {
                command
                    .arg("--report-dir")
                    .arg(root().join("target/xtask/watch-reports"));
            }
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting leaktrace {args:?}"))?;
        let stderr = child.stderr.take().context("piped stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let in_place = lines.any(|line| line.is_ok_and(|line| line.contains(ready)));
        let drain = std::thread::spawn(move || lines.for_each(drop));
        if !in_place {
            let _ = child.wait();
            bail!("leaktrace {args:?} did not attach to process {pid}");
        }
        Ok(Tracer {
            child,
            drain: Some(drain),
            report,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Stops leaktrace (as Ctrl-C does) and returns its report's `cost`, if it wrote one.
    pub fn stop(mut self) -> Option<serde_json::Value> {
        stop(&mut self.child, Duration::from_secs(60));
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        let path = self.report.take()?;
        let text = std::fs::read_to_string(&path).ok();
        let _ = std::fs::remove_file(&path);
        let report: serde_json::Value = serde_json::from_str(&text?).ok()?;
        Some(report["cost"].clone())
    }
}

/// One table row per configuration: throughput (requests or transactions per second) and
/// its ratio to the untraced row, plus what the default budget's runs' reports said.
fn throughput_table(
    what: &str,
    configurations: &[Configuration],
    results: &[Vec<f64>],
    budget_costs: &[serde_json::Value],
) -> String {
    let base = median(results[0].clone());
    let mut table = format!("| {what} | per second (median) | vs untraced |\n|---|---|---|\n");
    for (configuration, values) in configurations.iter().zip(results) {
        let value = median(values.clone());
        let _ = writeln!(
            table,
            "| {} | {value:.0} | {:.0}% |",
            configuration.name,
            100.0 * value / base
        );
    }
    table + &budget_summary(budget_costs, "the target's")
}

/// What the default budget's runs' reports said (their `cost`): the probes' peak share of
/// `whose` CPU, the free probes' share alone, and whether and when tracing stopped. Empty
/// without runs.
pub fn budget_summary(costs: &[serde_json::Value], whose: &str) -> String {
    let values = |field: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Vec<f64> {
        costs.iter().filter_map(field).collect()
    };
    let peaks = values(&|cost| cost["peak_cpu_share_percent"].as_f64());
    if peaks.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "\nWith the default budget the report's `cost` said every probe took {:.1}% of {whose} CPU (median of the runs' peaks)",
        median(peaks)
    );
    let frees = values(&|cost| cost["frees_only"]["cpu_share_percent"].as_f64());
    if !frees.is_empty() {
        let estimated = costs
            .iter()
            .filter(|cost| cost["frees_only"]["estimated"].as_bool() == Some(true))
            .count();
        let how = match estimated {
            0 => "measured while the allocation probes were out".to_string(),
            n if n == frees.len() => {
                "estimated from the first second's free calls, far over the budget".to_string()
            }
            n => format!(
                "estimated from the first second's free calls in {n} runs, measured with the allocation probes out in the others"
            ),
        };
        let _ = write!(
            text,
            ", the free probes alone {:.1}% ({how})",
            median(frees)
        );
    }
    let stops = values(&|cost| cost["stopped_at_s"].as_f64());
    if stops.is_empty() {
        text += "; tracing went on to the end.\n";
    } else {
        let _ = writeln!(
            text,
            "; tracing stopped (the frees alone over the budget) in {} of {} runs, {:.1} s after the attach (median).",
            stops.len(),
            costs.len(),
            median(stops)
        );
    }
    text
}

/// How long the default budget's row measures (a back-off cycle is 10 s or more; the first
/// second or two, before the first measurement, are at full cost).
pub const BUDGET_SECONDS: u64 = 30;

/// A port nothing listens on now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for_port(port: u16) -> Result<()> {
    let ready = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !ready {
        bail!("nothing listens on port {port} after 20 s");
    }
    Ok(())
}

/// The processes `pid` started (its main thread's children).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect()
}
