//! Starting and ending: the wall time of `leaktrace run` and `attach` against valgrind and
//! heaptrack, what each child of a traced shell adds, and what the kernel's verifier takes
//! for each program leaktrace loads.
use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    measure::median,
    workspace::{leaktrace_bin, root},
};

/// Wall time of `leaktrace run -- /bin/true` against valgrind and heaptrack, and of
/// `attach --duration 1s` on a sleeping process: what starting and ending cost. Median of
/// `runs`.
pub fn start_and_end(runs: usize) -> Result<String> {
    let leaktrace = wall(runs, &|| {
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
        let valgrind = wall(runs, &|| {
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
        let heaptrack = wall(runs, &|| {
            let mut command = Command::new("heaptrack");
            command
                .arg("/bin/true")
                .current_dir(root().join("target/xtask"));
            command
        })?;
        let _ = writeln!(table, "| `heaptrack /bin/true` | {heaptrack:.2} s |");
    }
    table += &children_rows(runs, leaktrace)?;
    table += &attach_row(runs)?;
    println!("{table}");
    Ok(table)
}

/// The median wall time of `runs` runs of the command `build` makes, its output discarded;
/// an error unless each run succeeds.
fn wall(runs: usize, build: &dyn Fn() -> Command) -> Result<f64> {
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
}

/// What each child of a traced shell adds, with and without --trace-children (against
/// valgrind's), over `leaktrace`, the wall time of `run -- /bin/true`.
fn children_rows(runs: usize, leaktrace: f64) -> Result<String> {
    let mut table = String::new();
    // A shell starting 20 programs, as test suites do by the thousand: each fork is a new
    // session held until its probes are in; with --trace-children each program executed
    // is one too.
    let script = "for i in $(seq 20); do /bin/true; done";
    let shell = wall(runs, &|| {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    })?;
    let _ = writeln!(table, "| `sh -c '{script}'` untraced | {shell:.2} s |");
    for follow in [false, true] {
        let flag = if follow { " --trace-children" } else { "" };
        let traced = wall(runs, &|| {
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
            let valgrind = wall(runs, &|| {
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
    Ok(table)
}

/// `leaktrace attach --duration 1s` to a sleeping process.
fn attach_row(runs: usize) -> Result<String> {
    let mut sleeper = Command::new("sleep")
        .arg("600")
        .spawn()
        .context("starting sleep")?;
    let pid = sleeper.id().to_string();
    let attach = wall(runs, &|| {
        let mut command = Command::new(leaktrace_bin());
        command
            .args(["attach", "--pid", &pid, "--duration", "1s"])
            .args(["--format", "json", "--output", "/dev/null"]);
        command
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    Ok(format!(
        "| `leaktrace attach --pid PID --duration 1s` (a sleeping process) | {:.2} s |\n",
        attach?
    ))
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
