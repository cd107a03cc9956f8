//! `cargo xtask bench`: the cost leaktrace adds to a target, as ratios measured in one run.
//! Results go to BENCHMARKS.md.
mod peers;
mod services;
mod start_and_end;

use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result, bail};

use self::services::redis::{REACHABILITY_KEYS, REDIS_BUDGET_REQUESTS, REDIS_REQUESTS};
pub use self::services::redis::{reachability, redis};
use crate::{
    measure::{bcc_pairs, cpu_and_peak_rss, measure, median},
    soak_section,
    workspace::{compile_c, leaktrace_bin, root, run_checked},
};

/// What the numbers are made of (measured on these machines; ../shared/notes).
const WHERE_THE_TIME_GOES: &str = "\
## Where the time goes

Every traced call traps into the kernel once per probe it passes. An allocating call
(`malloc`, `calloc`, `realloc`, `operator new`, …) passes its entry probe and its return
probe, which run one program (a uprobe session): the entry saves the arguments, the return
copies the user stack (frame pointers, or the `.eh_frame` walk with `--unwind dwarf`),
hashes it, inserts the block into the live map and adds it to its stack's totals. A `free`
passes one probe: a live-map lookup and delete, and the stack's totals. A malloc+free pair
is therefore three traps plus the programs' work, and the two halves weigh about the same:
on these machines a trap on an instruction the kernel emulates costs 0.4 to 1 µs (each
report's `cost` gives the figure it measured at its start), a return probe about as much
again, and the programs 1 to 2 µs per pair (the kernel's BPF statistics, which leaktrace
reads for its cost meter). The floor of this design is the three traps.

With `--sample-rate N` the entry decides whether a call is recorded, and a call that is not
tells the kernel to skip its return probe: it costs one trap, and its `free` another (frees
are all probed, so that a recorded block is seen going). That is the difference between the
leaktrace columns. Further down, only fewer probes help: the default budget of `attach`
takes the allocation probes out for part of each cycle while the frees stay.

Per allocator, leaktrace's cost depends on where the probes sit, not on the allocator: every
known function of glibc, jemalloc, tcmalloc and mimalloc is probed on an instruction the
kernel emulates, found by following straight-line code from the entry to the first branch,
call or push (jemalloc's `free` begins with moves the kernel would single-step, 10 to 16 µs
a call; its probe sits on its first branch). The rest of the differences between rows are
the allocators' own speeds (the untraced column) and how deep their stacks are. bcc's
memleak probes each function's first instruction: glibc's `free` starts with a `test` that
the kernel single-steps, so every free costs it the single-step, and it walks and reports
stacks in ways that cost more per call. heaptrack and valgrind run inside the target
(LD_PRELOAD, a JIT) and take no trap, which is why they are cheaper per call; they must start
the target themselves, while leaktrace attaches to a running process without changing it.
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

/// The pairs benchmark's program, compiled into target/xtask.
fn bench_program() -> Result<std::path::PathBuf> {
    let out_dir = root().join("target/xtask");
    std::fs::create_dir_all(&out_dir)?;
    let bench_bin = out_dir.join("bench_pairs");
    compile_c("bench_pairs.c", &bench_bin)?;
    Ok(bench_bin)
}

/// The language-runtime workloads: program, workload, operations, what a row measures.
const RUNTIME_WORKLOADS: [(&str, &str, u64, &str); 4] = [
    (
        "go",
        "alloc",
        20_000_000,
        "Go: `make([]byte, 64)` kept in a global (one span probe per 128)",
    ),
    (
        "go",
        "goroutines",
        500_000,
        "Go: a goroutine started and ended (`go wg.Done()`)",
    ),
    (
        "python",
        "malloc",
        1_000_000,
        "CPython 3.11: `bytearray(1024)`, malloc'd and freed, stack with Python frames",
    ),
    (
        "python",
        "objects",
        5_000_000,
        "CPython 3.11: `[i]`, from CPython's own arenas (no probe)",
    ),
];

/// tests/targets/NAME.go built into target/xtask/NAME.
fn build_go(name: &str) -> Result<std::path::PathBuf> {
    let out_dir = root().join("target/xtask");
    std::fs::create_dir_all(&out_dir)?;
    let program = out_dir.join(name);
    let status = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&program)
        .arg(root().join(format!("tests/targets/{name}.go")))
        .env("GOCACHE", root().join("target/go-cache"))
        .env("GOFLAGS", "-buildvcs=false")
        .status()
        .context("running go build (cargo xtask setup installs golang-go)")?;
    if !status.success() {
        bail!("go build of tests/targets/{name}.go failed");
    }
    Ok(program)
}

/// The cost of the Go runtime probes and of reading CPython's frames: each workload of
/// tests/targets/go_bench.go and py_bench.py untraced and under `leaktrace run`.
pub fn runtimes(runs: usize) -> Result<String> {
    let go_bench = build_go("go_bench")?;
    let py_bench = root().join("tests/targets/py_bench.py");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| workload | untraced ns/op (median of {runs}) | leaktrace ns/op | added ns | slowdown |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|");
    for (program, workload, count, what) in RUNTIME_WORKLOADS {
        let mut target: Vec<std::ffi::OsString> = match program {
            "go" => vec![go_bench.clone().into()],
            _ => vec!["/usr/bin/python3".into(), py_bench.clone().into()],
        };
        target.extend([workload.into(), count.to_string().into()]);
        let command = |traced: bool| {
            let mut command = Command::new(if traced {
                leaktrace_bin().into_os_string()
            } else {
                target[0].clone()
            });
            if traced {
                command.args(["run", "--format", "json", "--output", "/dev/null", "--"]);
                command.args(&target);
            } else {
                command.args(&target[1..]);
            }
            command
        };
        let (mut untraced, mut traced) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            untraced.push(measure(&mut command(false))?);
            traced.push(measure(&mut command(true))?);
        }
        let (base, with) = (median(untraced), median(traced));
        let _ = writeln!(
            table,
            "| {what} | {base:.0} | {with:.0} | {:.0} | {:.2}× |",
            with - base,
            with / base
        );
        println!("{program} {workload}: untraced {base:.0} ns, traced {with:.0} ns");
    }
    let _ = writeln!(table, "\n{}", go_profile_read()?);
    println!("{table}");
    Ok(table)
}

/// What reading a Go program's heap profile costs leaktrace (see leak-user/src/go_profile.rs):
/// tests/targets/go_profile_bench.go holds a few thousand buckets; leaktrace attached for
/// 3 s logs each read. A sentence for BENCHMARKS.md.
fn go_profile_read() -> Result<String> {
    use std::io::BufRead;
    let program = build_go("go_profile_bench")?;
    let mut target = Command::new(&program)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting go_profile_bench")?;
    let mut ready = String::new();
    if let Some(stdout) = target.stdout.take() {
        std::io::BufReader::new(stdout).read_line(&mut ready)?;
    }
    let traced = Command::new(leaktrace_bin())
        .args(["attach", "--pid", &target.id().to_string(), "-d", "3s"])
        .args(["--format", "json", "--output", "/dev/null"])
        .env("RUST_LOG", "leaktrace=debug")
        .output();
    // Our own child, by pid.
    let _ = target.kill();
    let _ = target.wait();
    let traced = traced.context("running leaktrace attach")?;
    // "Go heap profile of pid P: B buckets read in X ms"
    let reads: Vec<(u64, f64)> = String::from_utf8_lossy(&traced.stderr)
        .lines()
        .filter_map(|line| {
            let rest = line.split("Go heap profile of pid ").nth(1)?;
            let (_, rest) = rest.split_once(": ")?;
            let (buckets, rest) = rest.split_once(" buckets read in ")?;
            Some((
                buckets.parse().ok()?,
                rest.trim_end_matches(" ms").parse().ok()?,
            ))
        })
        .collect();
    let Some(((buckets, first), rest)) = reads.split_first().map(|(f, r)| (*f, r)) else {
        bail!(
            "leaktrace logged no read of the Go heap profile:\n{}",
            String::from_utf8_lossy(&traced.stderr)
        );
    };
    let after = if rest.is_empty() {
        first
    } else {
        median(rest.iter().map(|(_, ms)| *ms).collect())
    };
    let line = format!(
        "Reading Go's heap profile (`go_profile_bench.go`: {buckets} buckets, every \
         allocation recorded) costs leaktrace {first:.1} ms at the first read (every bucket's \
         stack) and {after:.2} ms at each read after (the median of {} reads, one per \
         sample: the new buckets and every bucket's counts); the target is not stopped.",
        rest.len()
    );
    println!("{line}");
    Ok(line)
}

/// `--scope-only`: the scope cost table alone.
/// nginx and PostgreSQL attached, the pairs on each allocator with the peers, start and end
/// times, the verifier's table: sections of BENCHMARKS.md.
pub fn services(pairs: u64, runs: usize) -> Result<String> {
    let bench_bin = bench_program()?;
    let nginx = services::nginx::nginx(runs)?;
    let postgres = services::postgres::postgres(runs)?;
    let allocators = peers::allocators(&bench_bin, pairs / 10, runs)?;
    let start_and_end = start_and_end::start_and_end(runs)?;
    let programs = start_and_end::programs()?;
    let sections = format!(
        "\nnginx from Debian (glibc), one worker serving a 4 KiB file on loopback, `wrk -t1 -c20 \
         -d{wrk}s` ({budget} s for the default budget, which keeps its budget over cycles of \
         10 s or more), median of {runs}; leaktrace attached to the worker.\n\n{nginx}\n\
         PostgreSQL from Debian, `pgbench -c 1 -T {seconds}` ({budget} for the default \
         budget; TPC-B like, fsync off) on \
         loopback; leaktrace attached to the client's backend {attach} s into each run. Each \
         row is the rate while attached (from a second after leaktrace was in place to the \
         end) over the rate before the attach in the same run, times the untraced rate: \
         median of {runs}.\n\n{postgres}\n\
         ## Each allocator against the peers\n\nmalloc(64)+free pairs ({count} per run) with \
         the allocator preloaded into `bench_pairs` (LD_PRELOAD), ns per pair, median of \
         {runs}. bcc's memleak traces the preloaded library with `-O`; valgrind is told \
         its soname (`--soname-synonyms=somalloc=…`) so that it replaces it.\n\n\
         {allocators}\n\
         ## Starting and ending\n\nWall time, median of {runs}. leaktrace loads and verifies \
         its programs, measures a trap's cost and places its probes before the command \
         starts; at the end it writes the report and leaves removing the probes (which \
         waits for the kernel) to a child process that outlives it by a fraction of a \
         second. Each child a traced process forks gets probes of its own before its first \
         instruction (and so does each program a child executes, with --trace-children): \
         the shell loop shows what that adds per child.\n\n{start_and_end}\n\
         ## What the kernel's verifier takes\n\n`leaktrace programs`: each program loaded \
         as the most demanding target needs it (CPython's layout, a Go layout, 16 scopes, \
         sampling, a size range); nothing is attached.\n\n{programs}",
        seconds = services::postgres::PGBENCH_SECONDS,
        wrk = services::nginx::WRK_SECONDS,
        budget = services::BUDGET_SECONDS,
        attach = services::postgres::PGBENCH_ATTACH_AFTER.as_secs(),
        count = pairs / 10,
    );
    Ok(sections)
}

pub fn scope_cost_only(pairs: u64, runs: usize) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    scope_cost(&bench_program()?, pairs, runs).map(drop)
}

pub fn run(pairs: u64, runs: usize) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bench_bin = bench_program()?;

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
    let walking = stack_walking(&bench_bin, pairs, runs)?;
    let scopes = scope_cost(&bench_bin, pairs, runs)?;
    let peers = peers(&bench_bin, pairs, runs)?;
    let redis = redis(runs)?;
    let services = services(pairs, runs)?;
    let runtimes = runtimes(runs)?;
    let reachability = reachability(runs)?;
    let agent = agent_cost(&bench_bin)?;
    let agent = agent + &symbolization()?;
    let quality = stack_quality()?;
    println!("{agent}");
    let document = format!(
        "# Benchmarks\n\n\
         Measured by `sudo cargo xtask bench --pairs {pairs} --runs {runs}`, all rows in one run \
         on the same machine (2 cores, kernel 6.18). The target (`tests/targets/bench_pairs.c`) \
         runs each workload {pairs} times and prints the wall time per pair from \
         CLOCK_MONOTONIC; the traced column runs it under `leaktrace run` (precise mode: every \
         call traced, with its stack).\n\n\
         ## Cost to the target\n\n{table}\nRuns:\n{raw}\n\
         ## Stack walking: frame pointers or .eh_frame (`--unwind`)\n\n{walking}\n\
         ## Request scopes (`--scope`)\n\nEach call of a scope function adds an entry and a \
         return uprobe; the allocations inside it also update the scope's counters. \
         `bench_pairs handled` calls handle_one(route, i), which does one malloc(64)+free, \
         {} times.\n\n{scopes}\n\
         ## Against the peers (malloc(64)+free, one thread, same run)\n\n{peers}\n\
         ## A real service\n\nredis-server 7.0 from Debian (jemalloc) on loopback, \
         `redis-benchmark -n {REDIS_REQUESTS} -c 50 -t set,get` ({REDIS_BUDGET_REQUESTS} for the \
         default budget), median of {runs}; leaktrace \
         attached with `attach --pid` or watching with `watch --pid` (gear 1 only: no \
         allocator probes), traced runs alternating with untraced ones. The default budget \
         is `attach`'s: 10% of the target's CPU.\n\n{redis}{services}\n\
         ## Language runtimes\n\nThe Go probes fire once per span filled (8 KiB or more \
         of small objects), once per large object, and twice per goroutine (`newproc`, \
         `goexit0`); a CPython target's stacks also get its Python frames, read in the kernel \
         on every traced call. Each program times its own loop (leaktrace's start is not in \
         it); median of {runs}. Go 1.19 (Debian's golang-go), Debian's python3.11.\n\n\
         {runtimes}\nA CPython malloc+free costs what a C one does (three traps, about \
         4.7 µs) plus the in-kernel walk of the Python frames and, since Debian's python3.11 \
         has no frame pointers, the .eh_frame walk of the native stack. The Go probes sit on \
         each function's stack-check branch, which the kernel emulates, rather than on its \
         first instruction, which it would single-step: with the probes on the entries, a \
         goroutine's start and end cost 6.1 µs (measured once, when the branch placement was \
         made).\n\n\
         ## The reachability scan's pause\n\n`attach --reachability` stops the target (every \
         thread, with ptrace) while it reads its memory. redis-server filled with \
         {REACHABILITY_KEYS} keys (`DEBUG POPULATE`, 200-byte values) before the attach, then \
         kept busy by `redis-benchmark -c 10 -t set,get -r 1000000` during a 3 s attach; the \
         pause and bytes read are the report's `reachability_scan`. The pause includes \
         reading the list of live blocks from the kernel (`BPF_MAP_LOOKUP_BATCH`): it is read \
         once the target is stopped, so no block freed meanwhile is listed.\n\n\
         {reachability}\n\
         ## The agent's own cost\n\n{agent}\n\
         ## Stack quality\n\n`tests/targets/stack_chain.{{c,cpp,rs}}` keep allocations made \
         three calls below main; each built with and without frame pointers and run under \
         `leaktrace run` with each way of walking stacks. With frame pointers alone the \
         allocating function is always there (the stack is captured on return into it), the \
         callers above it only while the frame-pointer chain holds; `hybrid` (what `auto` \
         picks for a program that keeps frame pointers) follows the chain through the modules \
         that keep it and the `.eh_frame` tables of the others; `dwarf` follows every \
         module's tables. `tests/targets/through_libraries.cpp` keeps frame pointers and \
         allocates inside glibc and libstdc++, which keep none.\n\n{quality}\n{WHERE_THE_TIME_GOES}",
        pairs / 5,
    );
    // The soak section comes from `cargo xtask soak`, which takes an hour: kept as it is.
    let previous = std::fs::read_to_string(root().join("BENCHMARKS.md")).unwrap_or_default();
    let document = match soak_section::section_of(&previous) {
        Some(section) => soak_section::with_section(&document, section),
        None => document,
    };
    std::fs::write(root().join("BENCHMARKS.md"), document)?;
    println!("xtask: wrote BENCHMARKS.md");
    Ok(())
}

/// The cost of each way to walk stacks, on a shallow stack (pairs: 4 frames) and a deep one
/// (deep: 37 frames), and what each frame adds (the difference over the 33 frames more).
/// bench_pairs keeps frame pointers and calls malloc from its own code: `hybrid` follows
/// the frame-pointer chain through every frame, after a lookup that finds no table there.
fn stack_walking(bench_bin: &std::path::Path, pairs: u64, runs: usize) -> Result<String> {
    const WAYS: [&str; 3] = ["fp", "hybrid", "dwarf"];
    let count = pairs.to_string();
    let mut table = String::from(
        "| workload | untraced ns | `--unwind fp` ns | `--unwind hybrid` ns | `--unwind dwarf` ns |\n|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    for (mode, what) in [
        ("pairs", "malloc(64)+free, 4 frames deep"),
        ("deep", "malloc(64)+free, 37 frames deep"),
    ] {
        let mut columns = Vec::new();
        for unwind in std::iter::once(None).chain(WAYS.map(Some)) {
            let mut times = Vec::new();
            for _ in 0..runs {
                times.push(match unwind {
                    None => measure(Command::new(bench_bin).args([mode, &count]))?,
                    Some(unwind) => measure(
                        Command::new(leaktrace_bin())
                            .args(["run", "--unwind", unwind, "--format", "json"])
                            .args(["--output", "/dev/null", "--"])
                            .arg(bench_bin)
                            .args([mode, &count]),
                    )?,
                });
            }
            columns.push(median(times));
        }
        let _ = writeln!(
            table,
            "| {what} | {:.0} | {:.0} | {:.0} | {:.0} |",
            columns[0], columns[1], columns[2], columns[3]
        );
        rows.push(columns);
    }
    let per_frame: Vec<String> = WAYS
        .iter()
        .enumerate()
        .map(|(way, name)| {
            let added = (rows[1][way + 1] - rows[1][0]) - (rows[0][way + 1] - rows[0][0]);
            format!("{name} {:.0} ns", added / 33.0)
        })
        .collect();
    let _ = writeln!(
        table,
        "\nWhat a frame adds to a walk (the 33 frames more of the deep stack): {}.",
        per_frame.join(", ")
    );
    println!("{table}");
    Ok(table)
}

/// The same pairs workload under leaktrace (precise and sampled) and the peers that are
/// installed (`cargo xtask bench` installs bcc, heaptrack and valgrind when it can).
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
    let mut sampled = Vec::new();
    for _ in 0..runs {
        sampled.push(measure(
            Command::new(leaktrace_bin())
                .args(["run", "--sample-rate", "100", "--format", "json"])
                .args(["--output", "/dev/null", "--"])
                .arg(bench_bin)
                .args(["pairs", &count]),
        )?);
    }
    rows.push((
        "leaktrace run --sample-rate 100 (one call in 100 recorded)",
        sampled,
    ));
    if let Some(times) = bcc_pairs(bench_bin, &count, runs, None)? {
        rows.push((
            "bcc memleak-bpfcc -p (eBPF, every call with its stack)",
            times,
        ));
    }
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
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting leaktrace for the agent-cost run")?;
    // What leaktrace said, for the error when it is gone before it is measured.
    let tracer_stderr = tracer.stderr.take().context("piped stderr")?;
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { tracer_stderr }, &mut text);
        text
    });
    let mut line = String::new();
    let stdout = holder.stdout.take().context("piped stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("holding=") {
        bail!("the holding target did not start: {line}");
    }
    let pid = tracer.id();
    std::thread::sleep(std::time::Duration::from_secs(WARM_UP_SECONDS));
    let gone = |tracer: &mut std::process::Child| -> anyhow::Error {
        let status = tracer.try_wait().ok().flatten();
        anyhow::anyhow!("leaktrace (pid {pid}) ended before it was measured: {status:?}")
    };
    let Some((cpu_start, _)) = cpu_and_peak_rss(pid) else {
        let error = gone(&mut tracer);
        let _ = holder.kill();
        let _ = tracer.wait();
        bail!("{error}; it said: {}", said.join().unwrap_or_default());
    };
    let started = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(MEASURE_SECONDS));
    let Some((cpu_end, peak_rss)) = cpu_and_peak_rss(pid) else {
        let error = gone(&mut tracer);
        let _ = holder.kill();
        let _ = tracer.wait();
        bail!("{error}; it said: {}", said.join().unwrap_or_default());
    };
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
        .env("RUST_LOG", "leaktrace=debug")
        .output()?;
    let attach_s = attach_started.elapsed().as_secs_f64() - 1.0;
    let _ = idle.kill();
    let _ = idle.wait();
    if !attach.status.success() {
        bail!("the attach timing run failed: {}", attach.status);
    }
    // "probes in place in N ms", "final report built in N ms", "probes detached in N ms"
    let log = String::from_utf8_lossy(&attach.stderr);
    let phase_ms = |phase: &str| -> String {
        log.lines()
            .find_map(|line| {
                let rest = &line[line.find(phase)? + phase.len()..];
                rest.trim().strip_suffix("ms")?.trim().parse::<f64>().ok()
            })
            .map_or_else(|| "?".to_string(), |ms| format!("{ms:.0} ms"))
    };
    let phases = format!(
        "probes in place {}, final report {}, detach {}",
        phase_ms("probes in place in"),
        phase_ms("final report built in"),
        phase_ms("probes detached in")
    );
    Ok(format!(
        "| measure | value | target |\n|---|---|---|\n\
         | CPU while attached to a process holding {HELD_ALLOCATIONS} traced live allocations, over {MEASURE_SECONDS} s after the first report (reports every 5 s, samples every 200 ms, the live map walked within a 0.5% budget) | {cpu_share:.2}% of a core | ≤ 1% |\n\
         | peak RSS of leaktrace meanwhile | {:.1} MiB | ≤ 64 MiB |\n\
         | `attach --duration 1s` to a live process: time beyond the 1 s traced ({phases}) | {attach_s:.2} s | |\n",
        peak_rss as f64 / (1024.0 * 1024.0)
    ))
}

/// What --scope adds per call of the scope function: `handled` runs malloc(64)+free inside
/// handle_one(route, i), traced by `leaktrace run` without a scope, with one, and with one
/// labelled by its string argument. Median of `runs`.
fn scope_cost(bench_bin: &std::path::Path, pairs: u64, runs: usize) -> Result<String> {
    let count = (pairs / 5).to_string();
    let configurations: [(&str, &[&str]); 4] = [
        ("untraced", &[]),
        ("leaktrace run (no scope)", &["run"]),
        (
            "leaktrace run --scope handle_one",
            &["run", "--scope", "handle_one"],
        ),
        (
            "leaktrace run --scope handle_one:arg0=str (4 labels)",
            &["run", "--scope", "handle_one:arg0=str"],
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); configurations.len()];
    for _ in 0..runs {
        for (index, (_, args)) in configurations.iter().enumerate() {
            let time = if args.is_empty() {
                measure(Command::new(bench_bin).args(["handled", &count]))?
            } else {
                measure(
                    Command::new(leaktrace_bin())
                        .args(*args)
                        .args(["--format", "json", "--output", "/dev/null", "--"])
                        .arg(bench_bin)
                        .args(["handled", &count]),
                )?
            };
            times[index].push(time);
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    let mut table = String::from(
        "| configuration | ns per handled call (one malloc+free) | added by the scope |\n|---|---|---|\n",
    );
    for ((name, args), ns) in configurations.iter().zip(&medians) {
        let added = if args.len() > 1 {
            format!("{:.0} ns", ns - medians[1])
        } else {
            String::new()
        };
        let _ = writeln!(table, "| {name} | {ns:.0} | {added} |");
    }
    println!("{table}");
    Ok(table)
}

/// The symbolization row's target: `FANOUT`² distinct stacks, leaf_J ← mid_I (one call site
/// per J) ← main (one per I): about as many distinct return addresses as stacks.
const FANOUT: usize = 100;

fn stacks_source() -> String {
    let mut c = String::from(
        "// Generated by `cargo xtask bench`: many distinct allocation stacks.\n\
         #include <stdlib.h>\n\
         static void *volatile kept[FANOUT_SQUARED];\nstatic int next;\n",
    )
    .replace("FANOUT_SQUARED", &(FANOUT * FANOUT).to_string());
    for j in 0..FANOUT {
        let _ = writeln!(
            c,
            "__attribute__((noinline)) void leaf_{j}(void) {{ kept[next++] = malloc({}); __asm__ volatile(\"\"); }}",
            16 + j
        );
    }
    for i in 0..FANOUT {
        let _ = writeln!(
            c,
            "__attribute__((noinline)) void mid_{i}(int j) {{\n  switch (j) {{"
        );
        for j in 0..FANOUT {
            let _ = writeln!(c, "  case {j}: leaf_{j}(); break;");
        }
        let _ = writeln!(c, "  }}\n  __asm__ volatile(\"\");\n}}");
    }
    c.push_str("int main(void) {\n  for (int j = 0; j < ");
    let _ = writeln!(c, "{FANOUT}; j++) {{");
    for i in 0..FANOUT {
        let _ = writeln!(c, "    mid_{i}(j);");
    }
    c.push_str("  }\n  return 0;\n}\n");
    c
}

/// Time leaktrace takes to symbolize 10k distinct stacks (from its own log line).
fn symbolization() -> Result<String> {
    let out_dir = root().join("target/xtask");
    let source = out_dir.join("bench_stacks.c");
    std::fs::write(&source, stacks_source())?;
    let bin = out_dir.join("bench_stacks");
    compile_c(source.to_str().context("UTF-8 path")?, &bin)?;
    let out = Command::new(leaktrace_bin())
        .args(["run", "--format", "json", "--output", "/dev/null", "--"])
        .arg(&bin)
        .env("RUST_LOG", "info")
        .output()
        .context("running leaktrace on bench_stacks")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "symbolized A new addresses of S stacks in T ms"
    let (addresses, stacks, ms) = stderr
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("symbolized ")? + "symbolized ".len()..];
            let words: Vec<&str> = rest.split_whitespace().collect();
            Some((
                words.first()?.parse::<u64>().ok()?,
                words.get(4)?.parse::<u64>().ok()?,
                words.get(7)?.parse::<f64>().ok()?,
            ))
        })
        .max_by_key(|(_, stacks, _)| *stacks)
        .with_context(|| format!("no symbolization line in leaktrace's log: {stderr}"))?;
    Ok(format!(
        "| symbolize {stacks} distinct stacks ({addresses} distinct return addresses, DWARF line info) in the final report | {ms:.0} ms | |\n"
    ))
}

/// What a target's kept allocations should show: the functions that made them (one of
/// `made_by`), and for the whole chain each of `callers` and one of `one_of`.
struct Chain {
    made_by: &'static [&'static str],
    callers: &'static [&'static str],
    one_of: &'static [&'static str],
}

/// The stack_chain targets: main → handle_request → parse_body or log_line (which store
/// through store_record).
const STACK_CHAIN: Chain = Chain {
    made_by: &["store_record", "parse_body", "log_line"],
    callers: &["main", "handle_request"],
    one_of: &["parse_body", "log_line"],
};

/// through_libraries.cpp: main → leak_everything → one leak_via_… function, whose library
/// call (strdup, asprintf, getline, fopen, std::string's reserve) allocates.
const THROUGH_LIBRARIES: Chain = Chain {
    made_by: &[
        "leak_via_strdup",
        "leak_via_asprintf",
        "leak_via_getline",
        "leak_via_fopen",
        "leak_via_string",
    ],
    callers: &["main", "leak_everything"],
    one_of: &["leak_everything"],
};

/// Whether a symbolized frame name is `function` (plain, C++ with parameters, Rust path).
fn frame_is(name: &str, function: &str) -> bool {
    name == function
        || name.starts_with(&format!("{function}("))
        || name.ends_with(&format!("::{function}"))
}

/// Of the allocations a target keeps, how many have a stack with the program function that
/// made them, and how many also every caller up to main.
fn chain_shares(
    binary: &std::path::Path,
    name: &str,
    unwind: &str,
    chain: &Chain,
) -> Result<(u64, u64)> {
    let report_path = root().join(format!("target/xtask/{name}_{unwind}.json"));
    run_checked(
        Command::new(leaktrace_bin())
            .args([
                "run", "--unwind", unwind, "--top", "0", "--format", "json", "--output",
            ])
            .arg(&report_path)
            .arg("--")
            .arg(binary),
    )?;
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    let (mut with_caller, mut complete) = (0u64, 0u64);
    for stack in report["stacks"].as_array().into_iter().flatten() {
        let allocs = stack["outstanding_allocs"].as_u64().unwrap_or(0);
        let names: Vec<&str> = stack["frames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|frame| frame["function"].as_str())
            .collect();
        let has = |function: &str| names.iter().any(|name| frame_is(name, function));
        if chain.made_by.iter().any(|function| has(function)) {
            with_caller += allocs;
            if chain.callers.iter().all(|function| has(function))
                && chain.one_of.iter().any(|function| has(function))
            {
                complete += allocs;
            }
        }
    }
    Ok((with_caller, complete))
}

/// Stack quality with and without frame pointers, walked both ways: see `chain_shares`.
pub fn stack_quality() -> Result<String> {
    let out_dir = root().join("target/xtask");
    let targets = root().join("tests/targets");
    let builds: [(&str, &str, u64, Vec<String>); 6] = [
        (
            "C, gcc -O2",
            "with frame pointers",
            100,
            vec!["gcc".into(), "-fno-omit-frame-pointer".into()],
        ),
        (
            "C, gcc -O2",
            "without (gcc's default)",
            100,
            vec!["gcc".into(), "-fomit-frame-pointer".into()],
        ),
        (
            "C++, g++ -O2",
            "with frame pointers",
            200,
            vec!["g++".into(), "-fno-omit-frame-pointer".into()],
        ),
        (
            "C++, g++ -O2",
            "without (g++'s default)",
            200,
            vec!["g++".into(), "-fomit-frame-pointer".into()],
        ),
        (
            "Rust, rustc -C opt-level=3",
            "with frame pointers",
            100,
            vec!["rustc".into(), "-Cforce-frame-pointers=yes".into()],
        ),
        (
            "Rust, rustc -C opt-level=3",
            "without (rustc's default)",
            100,
            vec!["rustc".into()],
        ),
    ];
    let mut table = String::from(
        "| target | build | allocations kept | `--unwind fp`: stack has the allocating function / every caller up to main | `--unwind hybrid`: the same | `--unwind dwarf`: the same |\n|---|---|---|---|---|---|\n",
    );
    let mut row = |what: &str,
                   build: &str,
                   binary: &std::path::Path,
                   name: &str,
                   expected: u64,
                   chain: &Chain|
     -> Result<()> {
        let mut cells = Vec::new();
        for unwind in ["fp", "hybrid", "dwarf"] {
            let (with_caller, complete) = chain_shares(binary, name, unwind, chain)?;
            let share = |n: u64| format!("{:.0}%", 100.0 * n as f64 / expected as f64);
            cells.push(format!("{} / {}", share(with_caller), share(complete)));
        }
        let _ = writeln!(
            table,
            "| {what} | {build} | {expected} | {} | {} | {} |",
            cells[0], cells[1], cells[2]
        );
        Ok(())
    };
    for (index, (what, build, expected, command)) in builds.iter().enumerate() {
        let binary = out_dir.join(format!("stack_chain_{index}"));
        let mut compile = Command::new(&command[0]);
        match command[0].as_str() {
            "rustc" => {
                compile
                    .args(["-C", "opt-level=3", "-g", "--edition", "2021"])
                    .args(&command[1..])
                    .arg(targets.join("stack_chain.rs"));
            }
            compiler => {
                compile
                    .args(["-O2", "-g"])
                    .args(&command[1..])
                    .arg(targets.join(if compiler == "g++" {
                        "stack_chain.cpp"
                    } else {
                        "stack_chain.c"
                    }));
            }
        }
        run_checked(compile.arg("-o").arg(&binary))?;
        row(
            what,
            build,
            &binary,
            &format!("stack_chain_{index}"),
            *expected,
            &STACK_CHAIN,
        )?;
    }
    // A program with frame pointers whose allocations happen inside glibc and libstdc++,
    // built without them (Debian's).
    let binary = out_dir.join("through_libraries");
    run_checked(
        Command::new("g++")
            .args(["-O2", "-g", "-fno-omit-frame-pointer"])
            .arg(targets.join("through_libraries.cpp"))
            .arg("-o")
            .arg(&binary),
    )?;
    row(
        "C++, g++ -O2, allocating in glibc and libstdc++ (strdup, asprintf, getline, fopen, std::string)",
        "with frame pointers; the libraries without",
        &binary,
        "through_libraries",
        250,
        &THROUGH_LIBRARIES,
    )?;
    println!("{table}");
    Ok(table)
}
