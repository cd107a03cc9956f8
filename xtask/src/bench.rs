//! `cargo xtask bench`: the cost leaktrace adds to a target, as ratios measured in one run.
//! Results go to BENCHMARKS.md.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{compile_c, leaktrace_bin, root};

/// Runs the pairs benchmark once; returns ns per malloc+free pair.
fn measure(command: &mut Command) -> Result<f64> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("ns_per_pair="))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| {
            format!(
                "no ns_per_pair in the output of {command:?}: {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// What the numbers are made of (measured on these machines; ../shared/notes).
const WHERE_THE_TIME_GOES: &str = "\
Where the time goes: every traced call traps into the kernel. `malloc` costs an entry trap on
an instruction the kernel emulates (`push %r12`), a uretprobe and a user stack capture (about
3.1 µs together); `free` costs one trap. glibc's `free` starts with `test %rdi,%rdi`, which the
kernel would single-step (about 5.3 µs); leaktrace puts the probe on the `je` after it, which it
emulates (about 1.15 µs), because the `test` changes nothing the probe reads
(leak-user/src/probe_site.rs). Before that move this benchmark measured 8,492 ns per pair.
The shared notes measured bcc's memleak at about 11 µs per pair on this benchmark (it is not
run here: Debian's bcc 0.26 needs kernel headers this kernel lacks).

The floor of this design is three traps per pair (malloc's entry, its return, free's entry)
plus a stack capture: about 4.5 µs, which is what the table shows. The 2.5 µs target needs
one trap fewer, for example no return probe on calls the kernel can be told to skip (session
uprobes) or sampling. heaptrack and valgrind are cheaper per call because they run inside
the target (LD_PRELOAD, a JIT), which needs it started under them; leaktrace attaches to a
running process without changing it.
";

/// The workloads of tests/targets/bench_pairs.c: mode, what a row measures, share of the
/// pairs it runs (realloc sequences are four calls each).
const WORKLOADS: [(&str, &str, u64); 4] = [
    ("pairs", "malloc(64)+free, one thread", 1),
    (
        "threads",
        "malloc(64)+free, two threads (wall time per pair)",
        1,
    ),
    ("mixed", "malloc+free of 16 B to 64 KiB, one thread", 1),
    (
        "realloc",
        "malloc(16), realloc 64, realloc 256, free (per sequence)",
        4,
    ),
];

/// Live allocations the agent-cost row holds, and for how long.
const HELD_ALLOCATIONS: u64 = 1_000_000;
const HOLD_SECONDS: u64 = 40;
/// The CPU share is measured over this long, after a warm-up that lets the first report
/// (and its first walk of the live map) pass: what a long-running sidecar pays.
const MEASURE_SECONDS: u64 = 20;
const WARM_UP_SECONDS: u64 = 8;

pub fn run(pairs: u64, runs: usize) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let out_dir = root().join("target/xtask");
    std::fs::create_dir_all(&out_dir)?;
    let bench_bin = out_dir.join("bench_pairs");
    compile_c("bench_pairs.c", &bench_bin)?;

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| workload | untraced ns (median of {runs}) | leaktrace ns | added ns | slowdown |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|");
    let mut raw = String::new();
    for (mode, what, weight) in WORKLOADS {
        let count = (pairs / weight).to_string();
        let mut untraced = Vec::new();
        let mut traced = Vec::new();
        for _ in 0..runs {
            untraced.push(measure(Command::new(&bench_bin).args([mode, &count]))?);
            traced.push(measure(
                Command::new(leaktrace_bin())
                    .args(["run", "--format", "json", "--output", "/dev/null", "--"])
                    .arg(&bench_bin)
                    .args([mode, &count]),
            )?);
        }
        let base = median(untraced.clone());
        let with = median(traced.clone());
        let _ = writeln!(
            table,
            "| {what} | {base:.0} | {with:.0} | {:.0} | {:.0}× |",
            with - base,
            with / base
        );
        let _ = writeln!(
            raw,
            "- {mode}: untraced {untraced:?} ns, traced {traced:?} ns"
        );
        println!("{mode}: untraced {base:.0} ns, traced {with:.0} ns");
    }
    let peers = peers(&bench_bin, pairs, runs)?;
    let agent = agent_cost(&bench_bin)?;
    println!("{agent}");
    let document = format!(
        "# Benchmarks\n\n\
         Measured by `sudo cargo xtask bench --pairs {pairs} --runs {runs}`, all rows in one run \
         on the same machine (2 cores, kernel 6.18). The target (`tests/targets/bench_pairs.c`) \
         runs each workload {pairs} times and prints the wall time per pair from \
         CLOCK_MONOTONIC; the traced column runs it under `leaktrace run` (precise mode: every \
         call traced, with its stack).\n\n\
         ## Cost to the target\n\n{table}\nRuns:\n{raw}\n\
         ## Against the peers (malloc(64)+free, one thread, same run)\n\n{peers}\n\
         ## The agent's own cost\n\n{agent}\n{WHERE_THE_TIME_GOES}"
    );
    std::fs::write(root().join("BENCHMARKS.md"), document)?;
    println!("xtask: wrote BENCHMARKS.md");
    Ok(())
}

/// The same pairs workload under the peers that are installed (`cargo xtask bench` installs
/// heaptrack and valgrind when it can). bcc's memleak is not run: Debian's bcc 0.26 needs
/// kernel headers this kernel lacks (see ../shared/notes).
fn peers(bench_bin: &std::path::Path, pairs: u64, runs: usize) -> Result<String> {
    let count = pairs.to_string();
    let out_dir = root().join("target/xtask");
    let mut table =
        String::from("| tool | ns per pair (median) | slowdown vs untraced |\n|---|---|---|\n");
    let mut untraced = Vec::new();
    for _ in 0..runs {
        untraced.push(measure(Command::new(bench_bin).args(["pairs", &count]))?);
    }
    let base = median(untraced);
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut traced = Vec::new();
    for _ in 0..runs {
        traced.push(measure(
            Command::new(leaktrace_bin())
                .args(["run", "--format", "json", "--output", "/dev/null", "--"])
                .arg(bench_bin)
                .args(["pairs", &count]),
        )?);
    }
    rows.push(("leaktrace run (eBPF, every call with its stack)", traced));
    if which::which("heaptrack").is_ok() {
        let mut times = Vec::new();
        for _ in 0..runs {
            times.push(measure(
                Command::new("heaptrack")
                    .arg(bench_bin)
                    .args(["pairs", &count])
                    .current_dir(&out_dir),
            )?);
        }
        rows.push(("heaptrack (LD_PRELOAD, every call with its stack)", times));
    }
    if which::which("valgrind").is_ok() {
        let mut times = Vec::new();
        for _ in 0..runs {
            times.push(measure(
                Command::new("valgrind")
                    .args(["--tool=memcheck", "--leak-check=full", "--quiet"])
                    .arg(bench_bin)
                    .args(["pairs", &count]),
            )?);
        }
        rows.push(("valgrind memcheck --leak-check=full", times));
    }
    for (tool, times) in rows {
        let value = median(times);
        let _ = writeln!(table, "| {tool} | {value:.0} | {:.0}× |", value / base);
    }
    let _ = writeln!(table, "| untraced | {base:.0} | 1× |");
    println!("{table}");
    Ok(table)
}

/// CPU time (user+system) of a process so far, in seconds, and its peak RSS in bytes.
fn cpu_and_peak_rss(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((ticks as f64 / hz, peak_kib * 1024))
}

/// leaktrace's CPU share and peak RSS while attached to a process holding a million live
/// allocations it saw being made (reports every 5 s, each walking the live map), and how long
/// an attach takes beyond the time traced.
fn agent_cost(bench_bin: &std::path::Path) -> Result<String> {
    use std::io::BufRead;

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
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting leaktrace for the agent-cost run")?;
    let mut line = String::new();
    let stdout = holder.stdout.take().context("piped stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("holding=") {
        bail!("the holding target did not start: {line}");
    }
    let pid = tracer.id();
    std::thread::sleep(std::time::Duration::from_secs(WARM_UP_SECONDS));
    let (cpu_start, _) = cpu_and_peak_rss(pid).context("reading leaktrace's /proc")?;
    let started = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(MEASURE_SECONDS));
    let (cpu_end, peak_rss) = cpu_and_peak_rss(pid).context("reading leaktrace's /proc")?;
    let wall = started.elapsed().as_secs_f64();
    let status = tracer.wait()?;
    let _ = holder.kill();
    let _ = holder.wait();
    // Exit 3: the holder exited first (it may, after HOLD_SECONDS); the report is written.
    if !status.success() && status.code() != Some(3) {
        bail!("the agent-cost run failed: {status}");
    }
    let cpu_share = 100.0 * (cpu_end - cpu_start) / wall;

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
        .status()?;
    let attach_s = attach_started.elapsed().as_secs_f64() - 1.0;
    let _ = idle.kill();
    let _ = idle.wait();
    if !attach.success() {
        bail!("the attach timing run failed: {attach}");
    }
    Ok(format!(
        "| measure | value | target |\n|---|---|---|\n\
         | CPU while attached to a process holding {HELD_ALLOCATIONS} traced live allocations, over {MEASURE_SECONDS} s after the first report (reports every 5 s, samples every 200 ms, the live map walked within a 0.5% budget) | {cpu_share:.2}% of a core | ≤ 1% |\n\
         | peak RSS of leaktrace meanwhile | {:.1} MiB | ≤ 64 MiB |\n\
         | `attach --duration 1s` to a live process: time beyond the 1 s traced (load, attach, final report) | {attach_s:.2} s | |\n",
        peak_rss as f64 / (1024.0 * 1024.0)
    ))
}
