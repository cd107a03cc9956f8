//! `cargo xtask bench`, continued: leaktrace attached to real services under load (nginx,
//! PostgreSQL; redis is in bench/mod.rs), the pairs microbench on each allocator with the peers,
//! how long leaktrace takes to start and end, and what the kernel's verifier takes.
use std::{
    fmt::Write as _,
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    measure::{bcc_pairs, measure, median, stop},
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

/// A PostgreSQL server (Debian's) with its data in a scratch folder, stopped when dropped.
struct Postgres {
    server: Child,
    port: u16,
    data: PathBuf,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.server, Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Debian's PostgreSQL programs folder (the newest version installed).
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn start_postgres(bin: &Path) -> Result<Postgres> {
    use std::os::unix::{fs::chown, process::CommandExt as _};
    // PostgreSQL refuses to run as root: its programs run as Debian's postgres user.
    let (uid, gid) = user_ids("postgres").context("no postgres user")?;
    let data = std::env::temp_dir().join(format!("leaktrace-bench-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    chown(&data, Some(uid), Some(gid))?;
    let as_postgres = |program: &str| {
        let mut command = Command::new(bin.join(program));
        command.uid(uid).gid(gid).current_dir(&data);
        command
    };
    run_quietly(
        as_postgres("initdb")
            .args(["-A", "trust", "--no-sync", "-D"])
            .arg(data.join("db")),
        "initdb",
    )?;
    let port = free_port()?;
    let server = as_postgres("postgres")
        .arg("-D")
        .arg(data.join("db"))
        .args(["-p", &port.to_string(), "-k"])
        .arg(&data)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting postgres")?;
    let postgres = Postgres { server, port, data };
    wait_for_port(port)?;
    run_quietly(
        Command::new(bin.join("pgbench"))
            .args(["-i", "-s", "5", "-q", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &port.to_string(), "postgres"]),
        "pgbench -i",
    )?;
    Ok(postgres)
}

/// Runs `command` to its end with its output discarded; an error unless it succeeds.
fn run_quietly(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Seconds of pgbench per configuration, when leaktrace attaches, and how long after it is
/// in place its transactions are counted (the untraced ones are those before the attach).
pub const PGBENCH_SECONDS: u64 = 14;
/// How long the default budget's row measures (a back-off cycle is 10 s or more; the first
/// second or two, before the first measurement, are at full cost).
pub const BUDGET_SECONDS: u64 = 30;
pub const PGBENCH_ATTACH_AFTER: Duration = Duration::from_secs(4);
const PGBENCH_SETTLE_S: f64 = 1.0;

/// PostgreSQL's pgbench (TPC-B like, one client) on loopback, leaktrace attached to the
/// client's backend. Each run of each configuration is one pgbench of 14 s: the
/// transactions per second before the attach against those while attached (pgbench's own
/// per-second progress, with Unix timestamps), so each ratio comes from one run.
pub fn postgres(runs: usize) -> Result<String> {
    let Some(bin) = postgres_bin() else {
        return Ok("PostgreSQL is not installed: rows left out.\n".into());
    };
    let server = start_postgres(&bin)?;
    let configurations = configurations();
    // Per run: the untraced row's rate, the others' ratio to the rate before their attach.
    let mut results = vec![Vec::new(); configurations.len()];
    let mut budget_costs = Vec::new();
    for _ in 0..runs {
        for (index, configuration) in configurations.iter().enumerate() {
            let (before, during, cost) = pgbench_run(&bin, &server, configuration)?;
            if configuration.default_budget
                && let Some(cost) = cost
            {
                budget_costs.push(cost);
            }
            results[index].push(match configuration.ready {
                Some(_) => during / before,
                None => during,
            });
        }
    }
    // In the table's unit: each ratio times the untraced rate.
    let untraced = median(results[0].clone());
    let scaled: Vec<Vec<f64>> = results
        .iter()
        .enumerate()
        .map(|(index, values)| {
            let scale = if index == 0 { 1.0 } else { untraced };
            values.iter().map(|value| value * scale).collect()
        })
        .collect();
    drop(server);
    let table = throughput_table(
        "PostgreSQL backend (pgbench, tps)",
        &configurations,
        &scaled,
        &budget_costs,
    );
    println!("{table}");
    Ok(table)
}

/// One pgbench run with `configuration` attached to its backend: transactions per second
/// before the attach and while attached (untraced: the whole run, twice), and the report's
/// cost. The default budget's run is longer: it keeps its budget over cycles of 10 s or more.
fn pgbench_run(
    bin: &Path,
    server: &Postgres,
    configuration: &Configuration,
) -> Result<(f64, f64, Option<serde_json::Value>)> {
    let seconds = if configuration.default_budget {
        BUDGET_SECONDS
    } else {
        PGBENCH_SECONDS
    };
    let mut pgbench = Command::new(bin.join("pgbench"))
        .args(["-c", "1", "-j", "1", "-P", "1", "--progress-timestamp"])
        .args(["-T", &seconds.to_string(), "-h", "127.0.0.1"])
        .args(["-U", "postgres", "-p", &server.port.to_string(), "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting pgbench")?;
    let stderr = pgbench.stderr.take().context("piped stderr")?;
    let progress = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| progress_line(&line))
            .collect::<Vec<(f64, f64)>>()
    });
    std::thread::sleep(PGBENCH_ATTACH_AFTER);
    let attach_at = unix_now();
    let (tracer, ready_at) = match configuration.ready {
        Some(ready) => {
            let backend = children(server.server.id())
                .into_iter()
                .find(|pid| is_pgbench_backend(*pid))
                .context("no backend serving pgbench found")?;
            let tracer = Tracer::start(&configuration.args, backend, ready)?;
            (Some(tracer), unix_now())
        }
        None => (None, attach_at),
    };
    let _ = pgbench.wait();
    let end_at = unix_now();
    let cost = tracer.and_then(Tracer::stop);
    let seconds = progress
        .join()
        .map_err(|_| anyhow::anyhow!("progress reader"))?;
    let mean = |from: f64, to: f64| {
        let inside: Vec<f64> = seconds
            .iter()
            .filter(|(at, _)| *at > from && *at <= to)
            .map(|(_, tps)| *tps)
            .collect();
        (!inside.is_empty()).then(|| inside.iter().sum::<f64>() / inside.len() as f64)
    };
    let before = mean(0.0, attach_at).context("no pgbench progress before the attach")?;
    let during = match configuration.ready {
        Some(_) => mean(ready_at + PGBENCH_SETTLE_S, end_at),
        None => mean(0.0, end_at),
    }
    .context("no pgbench progress while attached")?;
    Ok((before, during, cost))
}

/// "progress: 1733531234.123 s, 812.4 tps, lat …": (Unix time, tps).
fn progress_line(line: &str) -> Option<(f64, f64)> {
    let rest = line.strip_prefix("progress: ")?;
    let mut fields = rest.split(", ");
    let at = fields.next()?.strip_suffix(" s")?.parse().ok()?;
    let tps = fields.next()?.strip_suffix(" tps")?.parse().ok()?;
    Some((at, tps))
}

/// Whether `pid` is a PostgreSQL backend serving pgbench (its title names the database
/// and the client: "postgres: postgres postgres 127.0.0.1(…) …").
fn is_pgbench_backend(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|title| String::from_utf8_lossy(&title).contains("127.0.0.1("))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
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

/// Wall time of `leaktrace run -- /bin/true` against valgrind and heaptrack, and of
/// `attach --duration 1s` on a sleeping process: what starting and ending cost. Median of
/// `runs`.
pub fn start_and_end(runs: usize) -> Result<String> {
    let wall = |build: &dyn Fn() -> Command| -> Result<f64> {
        let mut values = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            let status = build()
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("timing a command")?;
            if !status.success() {
                bail!("{:?} failed ({status})", build());
            }
            values.push(started.elapsed().as_secs_f64());
        }
        Ok(median(values))
    };
    let leaktrace = wall(&|| {
        let mut command = Command::new(leaktrace_bin());
        command.args([
            "run",
            "--format",
            "json",
            "--output",
            "/dev/null",
            "--",
            "/bin/true",
        ]);
        command
    })?;
    let mut table = String::from("| command | wall time (median) |\n|---|---|\n");
    let _ = writeln!(table, "| `leaktrace run -- /bin/true` | {leaktrace:.2} s |");
    if which::which("valgrind").is_ok() {
        let valgrind = wall(&|| {
            let mut command = Command::new("valgrind");
            command.args(["--leak-check=full", "--quiet", "/bin/true"]);
            command
        })?;
        let _ = writeln!(
            table,
            "| `valgrind --leak-check=full /bin/true` | {valgrind:.2} s (leaktrace: {:.1}×) |",
            leaktrace / valgrind
        );
    }
    if which::which("heaptrack").is_ok() {
        let heaptrack = wall(&|| {
            let mut command = Command::new("heaptrack");
            command
                .arg("/bin/true")
                .current_dir(root().join("target/xtask"));
            command
        })?;
        let _ = writeln!(table, "| `heaptrack /bin/true` | {heaptrack:.2} s |");
    }
    // A shell starting 20 programs, as test suites do by the thousand: each fork is a new
    // session held until its probes are in; with --trace-children each program executed
    // is one too.
    let script = "for i in $(seq 20); do /bin/true; done";
    let shell = wall(&|| {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    })?;
    let _ = writeln!(table, "| `sh -c '{script}'` untraced | {shell:.2} s |");
    for follow in [false, true] {
        let flag = if follow { " --trace-children" } else { "" };
        let traced = wall(&|| {
            let mut command = Command::new(leaktrace_bin());
            command.args(["run", "--format", "json", "--output", "/dev/null"]);
            if follow {
                command.arg("--trace-children");
            }
            command.args(["--", "sh", "-c", script]);
            command
        })?;
        let mut row = format!(
            "| `leaktrace run{flag} -- sh -c '…'` | {traced:.2} s ({:.0} ms a child more than `run -- /bin/true`)",
            (traced - leaktrace) * 1e3 / 20.0
        );
        if which::which("valgrind").is_ok() {
            let valgrind = wall(&|| {
                let mut command = Command::new("valgrind");
                command.args(["--leak-check=full", "--quiet"]);
                if follow {
                    command.arg("--trace-children=yes");
                }
                command.args(["sh", "-c", script]);
                command
            })?;
            let _ = write!(
                row,
                "; valgrind{}: {valgrind:.2} s (leaktrace: {:.1}×)",
                if follow { " --trace-children=yes" } else { "" },
                traced / valgrind
            );
        }
        let _ = writeln!(table, "{row} |");
    }
    let mut sleeper = Command::new("sleep")
        .arg("600")
        .spawn()
        .context("starting sleep")?;
    let pid = sleeper.id().to_string();
    let attach = wall(&|| {
        let mut command = Command::new(leaktrace_bin());
        command
            .args(["attach", "--pid", &pid, "--duration", "1s"])
            .args(["--format", "json", "--output", "/dev/null"]);
        command
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = writeln!(
        table,
        "| `leaktrace attach --pid PID --duration 1s` (a sleeping process) | {:.2} s |",
        attach?
    );
    println!("{table}");
    Ok(table)
}

/// What the kernel's verifier took for each program (`leaktrace programs --format json`).
pub fn programs() -> Result<String> {
    let out = Command::new(leaktrace_bin())
        .args(["programs", "--format", "json"])
        .output()
        .context("running leaktrace programs")?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "leaktrace programs: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut table = String::from(
        "| program | stacks | instructions verified | of the 1,000,000 limit | load ms |\n|---|---|---|---|---|\n",
    );
    for row in rows {
        let verified = row["verified_instructions"].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            table,
            "| {} | {} | {verified:.0} | {:.1}% | {:.1} |",
            row["program"].as_str().unwrap_or("?"),
            row["unwind"].as_str().unwrap_or("?"),
            verified / 10_000.0,
            row["load_ms"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(table)
}

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

/// A user's uid and gid, from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name))
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}

#[cfg(test)]
mod tests {
    use super::progress_line;

    #[test]
    fn reads_pgbench_progress_with_timestamps() {
        assert_eq!(
            progress_line(
                "progress: 1733531234.123 s, 812.4 tps, lat 1.229 ms stddev 0.301, 0 failed"
            ),
            Some((1733531234.123, 812.4))
        );
        assert_eq!(progress_line("starting vacuum...end."), None);
    }
}
