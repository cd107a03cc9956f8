//! PostgreSQL (Debian's) with its data in a scratch folder, driven by `pgbench` on loopback;
//! leaktrace attached to the client's backend a few seconds into each run.
use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    BUDGET_SECONDS, Configuration, Tracer, children, configurations, free_port, throughput_table,
    wait_for_port,
};
use crate::measure::{median, stop};

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
