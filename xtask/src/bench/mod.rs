//! `cargo xtask bench`: the cost leaktrace adds to a target, as ratios measured in one run.
//! Results go to BENCHMARKS.md. One file per family of benchmarks, each measuring and
//! returning its tables:
//!
//! - `workloads`: the pairs workloads untraced and traced, stack walking, request scopes
//! - `peers`: leaktrace against bcc, heaptrack and valgrind, and on each allocator
//! - `services/`: redis-server, nginx and PostgreSQL under load with leaktrace attached
//! - `start_and_end`: starting and ending, and what the kernel's verifier takes
//! - `runtimes`: Go and CPython
//! - `agent`: leaktrace's own CPU, memory and symbolization time
//! - `stack_quality`: which callers the stacks name, by build and way of walking
//! - `document`: BENCHMARKS.md laid out from the tables
//!
//! Here: the full run, and the parts the `--…-only` flags run alone.
mod agent;
mod document;
mod peers;
mod runtimes;
mod services;
mod stack_quality;
mod start_and_end;
mod workloads;

use std::path::PathBuf;

use anyhow::{Result, bail};

use self::document::{ServiceTables, Tables};
pub use self::{
    runtimes::runtimes,
    services::redis::{reachability, redis},
    stack_quality::stack_quality,
};
use crate::workspace::{compile_c, root};

/// The pairs benchmark's program, compiled into target/xtask.
fn bench_program() -> Result<PathBuf> {
    let out_dir = root().join("target/xtask");
    std::fs::create_dir_all(&out_dir)?;
    let bench_bin = out_dir.join("bench_pairs");
    compile_c("bench_pairs.c", &bench_bin)?;
    Ok(bench_bin)
}

/// nginx and PostgreSQL attached, the pairs on each allocator with the peers, start and end
/// times, the verifier's table (`--services-only`).
pub fn services(pairs: u64, runs: usize) -> Result<ServiceTables> {
    let bench_bin = bench_program()?;
    Ok(ServiceTables {
        nginx: services::nginx::nginx(runs)?,
        postgres: services::postgres::postgres(runs)?,
        allocators: peers::allocators(&bench_bin, pairs / 10, runs)?,
        start_and_end: start_and_end::start_and_end(runs)?,
        programs: start_and_end::programs()?,
    })
}

/// `--scope-only`: the scope cost table alone.
pub fn scope_cost_only(pairs: u64, runs: usize) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    workloads::scope_cost(&bench_program()?, pairs, runs).map(drop)
}

/// Every table, measured in one run, and BENCHMARKS.md written from them.
pub fn run(pairs: u64, runs: usize) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bench_bin = bench_program()?;
    let (cost_to_target, raw_runs) = workloads::cost_to_target(&bench_bin, pairs, runs)?;
    let stack_walking = workloads::stack_walking(&bench_bin, pairs, runs)?;
    let scopes = workloads::scope_cost(&bench_bin, pairs, runs)?;
    let peers = peers::peers(&bench_bin, pairs, runs)?;
    let redis = redis(runs)?;
    let services = services(pairs, runs)?;
    let runtimes = runtimes(runs)?;
    let reachability = reachability(runs)?;
    let agent = agent::agent_cost(&bench_bin)?;
    let agent = agent + &agent::symbolization()?;
    let stack_quality = stack_quality()?;
    println!("{agent}");
    document::write(&Tables {
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
    })
}
