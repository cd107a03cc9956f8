//! BENCHMARKS.md, laid out: each table of a full run under its heading, with the text that
//! says how it was measured, and the soak section (written by `cargo xtask soak`) kept as it
//! is.
use anyhow::Result;

use crate::{
    bench::services::{
        BUDGET_SECONDS,
        nginx::WRK_SECONDS,
        postgres::{PGBENCH_ATTACH_AFTER, PGBENCH_SECONDS},
        redis::{REACHABILITY_KEYS, REDIS_BUDGET_REQUESTS, REDIS_REQUESTS},
    },
    soak_section,
    workspace::root,
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

/// Every table of a full run, in the document's order.
pub struct Tables {
    /// The run's `--pairs` and `--runs`, which the text quotes.
    pub pairs: u64,
    pub runs: usize,
    /// The cost to the target, and each run's values under it.
    pub cost_to_target: String,
    pub raw_runs: String,
    pub stack_walking: String,
    pub scopes: String,
    pub peers: String,
    pub redis: String,
    pub services: ServiceTables,
    pub runtimes: String,
    pub reachability: String,
    /// The agent's own cost, its symbolization row included.
    pub agent: String,
    pub stack_quality: String,
}

/// The tables `--services-only` measures: nginx and PostgreSQL attached, the pairs on each
/// allocator with the peers, start and end times, the verifier's table.
pub struct ServiceTables {
    pub nginx: String,
    pub postgres: String,
    pub allocators: String,
    pub start_and_end: String,
    pub programs: String,
}

/// Writes BENCHMARKS.md from a full run's tables.
pub fn write(tables: &Tables) -> Result<()> {
    let document = text(tables);
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

/// The whole document but the soak section.
fn text(tables: &Tables) -> String {
    let Tables {
        pairs,
        runs,
        cost_to_target,
        raw_runs,
        stack_walking,
        scopes,
        peers,
        redis,
        services,
        runtimes,
        reachability,
        agent,
        stack_quality,
    } = tables;
    let services = services_sections(*pairs, *runs, services);
    format!(
        "# Benchmarks\n\n\
         Measured by `sudo cargo xtask bench --pairs {pairs} --runs {runs}`, all rows in one run \
         on the same machine (2 cores, kernel 6.18). The target (`tests/targets/bench_pairs.c`) \
         runs each workload {pairs} times and prints the wall time per pair from \
         CLOCK_MONOTONIC; the traced column runs it under `leaktrace run` (precise mode: every \
         call traced, with its stack).\n\n\
         ## Cost to the target\n\n{cost_to_target}\nRuns:\n{raw_runs}\n\
         ## Stack walking: frame pointers or .eh_frame (`--unwind`)\n\n{stack_walking}\n\
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
         allocates inside glibc and libstdc++, which keep none.\n\n{stack_quality}\n{WHERE_THE_TIME_GOES}",
        pairs / 5,
    )
}

/// The sections after redis's table: nginx, PostgreSQL, each allocator against the peers,
/// starting and ending, the verifier.
fn services_sections(pairs: u64, runs: usize, tables: &ServiceTables) -> String {
    let ServiceTables {
        nginx,
        postgres,
        allocators,
        start_and_end,
        programs,
    } = tables;
    format!(
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
        seconds = PGBENCH_SECONDS,
        wrk = WRK_SECONDS,
        budget = BUDGET_SECONDS,
        attach = PGBENCH_ATTACH_AFTER.as_secs(),
        count = pairs / 10,
    )
}
