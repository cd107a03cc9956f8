//! Project tasks: `cargo xtask setup | build | demo | test | fuzz | bench | soak`.
//!
//! Everything a fresh machine needs is installed here (never by hand), and every step is
//! idempotent and quick when nothing is missing.
//!
//! The tasks (`fuzz`, `bench` with one file per family of benchmarks, `soak`) use what is
//! below them, never one another: `measure` (how a benchmark measures), `soak_section`
//! (BENCHMARKS.md's soak section), `setup` (what is installed, and where) and `workspace`
//! (paths and commands), at the bottom.
mod bench;
mod fuzz;
mod measure;
mod setup;
mod soak;
mod soak_section;
mod workspace;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::workspace::{cargo, compile_c, leaktrace_bin, root, run_checked};

#[derive(Parser)]
#[command(name = "xtask", about = "leaktrace project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: nightly rust-src, bpf-linker, tracefs, compilers,
    /// protoc.
    Setup,
    /// Build the workspace (the eBPF object through aya-build).
    Build,
    /// Build, start the bundled leaking demo service, attach to it, print the report.
    Demo {
        /// How long to trace the demo.
        #[arg(long, default_value = "10s")]
        duration: String,
    },
    /// Run the whole test suite: unit tests, end-to-end tests (as root), and each fuzz
    /// target for 30 s (not when arguments filter the tests); fmt and clippy are run by
    /// .ci/run.
    Test {
        /// Extra arguments for `cargo test` (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz the parsers of outside input (cargo fuzz): replay fuzz/regressions, then fuzz
    /// each target for a while.
    Fuzz {
        /// Seconds of fuzzing per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Attach leaktrace for a long run to a service leaking slowly under heavy traffic;
    /// writes the soak section of BENCHMARKS.md.
    Soak {
        /// How long the service runs, in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
    },
    /// Measure the cost leaktrace adds to a target; writes BENCHMARKS.md.
    Bench {
        /// malloc+free pairs per run.
        #[arg(long, default_value_t = 5_000_000)]
        pairs: u64,
        /// Runs per configuration (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Only the stack-quality table, printed (BENCHMARKS.md is left as it is).
        #[arg(long)]
        stack_quality_only: bool,
        /// Only the redis-server table (precise, sampled, watch gear 1), printed
        /// (BENCHMARKS.md is left as it is).
        #[arg(long)]
        redis_only: bool,
        /// Only the reachability scan's pause on redis-server, printed (BENCHMARKS.md is
        /// left as it is).
        #[arg(long)]
        reachability_only: bool,
        /// Only the --scope cost table, printed (BENCHMARKS.md is left as it is).
        #[arg(long)]
        scope_only: bool,
        /// Only the Go and CPython table, printed (BENCHMARKS.md is left as it is).
        #[arg(long)]
        runtimes_only: bool,
        /// Only the nginx and PostgreSQL tables, the allocators' microbench, start and end
        /// times and the verifier's table, printed (BENCHMARKS.md is left as it is).
        #[arg(long)]
        services_only: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build()
        }
        Task::Demo { duration } => {
            setup::run()?;
            build()?;
            demo(&duration)
        }
        Task::Test { args } => {
            setup::run()?;
            build()?;
            test(&args)
        }
        Task::Fuzz { seconds, targets } => {
            setup::run()?;
            fuzz::run(seconds, &targets)
        }
        Task::Soak { minutes } => {
            setup::run()?;
            build()?;
            soak::run(std::time::Duration::from_secs(minutes * 60))
        }
        Task::Bench {
            pairs,
            runs,
            stack_quality_only,
            redis_only,
            reachability_only,
            scope_only,
            runtimes_only,
            services_only,
        } => {
            setup::run()?;
            if stack_quality_only {
                build()?;
                return bench::stack_quality().map(drop);
            }
            if redis_only {
                build()?;
                return bench::redis(runs).map(drop);
            }
            if reachability_only {
                build()?;
                return bench::reachability(runs).map(drop);
            }
            if scope_only {
                build()?;
                return bench::scope_cost_only(pairs, runs);
            }
            if runtimes_only {
                build()?;
                return bench::runtimes(runs).map(drop);
            }
            if services_only {
                setup::bench_peers();
                build()?;
                return bench::services(pairs, runs).map(drop);
            }
            setup::bench_peers();
            build()?;
            bench::run(pairs, runs)
        }
    }
}

fn build() -> Result<()> {
    run_checked(cargo().args(["build", "--workspace", "--release", "--bins"]))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn demo(duration: &str) -> Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs: run it as root (sudo -E cargo xtask demo)");
    }
    let out_dir = root().join("target/xtask");
    std::fs::create_dir_all(&out_dir)?;
    let demo_bin = out_dir.join("leaky_service");
    compile_c("leaky_service.c", &demo_bin)?;
    println!(
        "xtask: starting {} (leaks 4 KiB per 100 ms in cache_insert: 40 KiB/s; its job queue grows 7.5 KiB/s but frees old jobs; handle_request frees what it allocates)",
        demo_bin.display()
    );
    let mut demo = Command::new(&demo_bin)
        .spawn()
        .context("starting the demo service")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let result = run_checked(Command::new(leaktrace_bin()).args([
        "attach",
        "--pid",
        &demo.id().to_string(),
        "--duration",
        duration,
    ]));
    // The demo is ours; stop it whatever happened.
    let _ = demo.kill();
    let _ = demo.wait();
    result
}

fn test(extra: &[String]) -> Result<()> {
    let require_bpf = std::env::var("LEAKTRACE_REQUIRE_BPF").is_ok_and(|v| v == "1");
    if !is_root() {
        if require_bpf {
            bail!("LEAKTRACE_REQUIRE_BPF=1 but not root: the end-to-end tests need root");
        }
        eprintln!(
            "xtask: not root: end-to-end tests will report themselves SKIPPED (run with sudo to include them)"
        );
    }
    let mut command = cargo();
    command
        .args(["test", "--workspace"])
        .env("LEAKTRACE_BIN", leaktrace_bin());
    if !extra.is_empty() {
        command.arg("--").args(extra);
    }
    run_checked(&mut command)?;
    // The whole suite includes a short fuzzing run of every parser; a filtered run does not.
    if extra.is_empty() {
        fuzz::run(fuzz::TEST_SECONDS, &[])?;
    }
    Ok(())
}
