//! `cargo xtask fuzz [--seconds N] [TARGET…]`: the cargo-fuzz targets in fuzz/ (the parsers
//! of what leaktrace reads from outside: /proc files, the config file, saved reports). Each
//! target first replays its committed regression inputs (fuzz/regressions/TARGET/), then
//! fuzzes for N seconds from a corpus seeded with real inputs of this machine. A crash fails
//! the task and names the input libFuzzer saved; once fixed, copy it into the target's
//! regressions directory. `cargo xtask test` runs every target for a short while.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::workspace::{root, run_checked};

/// Every fuzz target (fuzz/Cargo.toml's bins).
pub const TARGETS: &[&str] = &[
    "proc_maps",
    "proc_status",
    "proc_stat",
    "config_file",
    "saved_report",
];

/// cargo-fuzz release installed when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds per target when `cargo xtask test` runs them.
pub const TEST_SECONDS: u64 = 30;

pub fn run(seconds: u64, only: &[String]) -> Result<()> {
    for name in only {
        if !TARGETS.contains(&name.as_str()) {
            bail!(
                "no fuzz target {name}: the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    install_cargo_fuzz()?;
    let target_dir = root().join("target/fuzz");
    eprintln!("xtask fuzz: building the fuzz targets (nightly, no sanitizer, overflow checks on)");
    run_checked(
        nightly_cargo()
            .args(["fuzz", "build", "--sanitizer", "none", "--debug-assertions"])
            .arg("--target-dir")
            .arg(&target_dir),
    )?;
    let binaries = target_dir.join("x86_64-unknown-linux-gnu/release");
    for name in TARGETS
        .iter()
        .filter(|name| only.is_empty() || only.iter().any(|o| o == *name))
    {
        let binary = binaries.join(name);
        replay_regressions(name, &binary)?;
        let corpus = target_dir.join("corpus").join(name);
        std::fs::create_dir_all(&corpus)?;
        seed(name, &corpus)?;
        let artifacts = target_dir.join("artifacts").join(name);
        std::fs::create_dir_all(&artifacts)?;
        // libFuzzer reports every new input it finds: that goes to a log, and only its
        // final statistics (or, on a failure, its last lines) are shown.
        let log = target_dir.join(format!("{name}.log"));
        eprintln!(
            "xtask fuzz: {name} for {seconds} s (log: {})",
            log.display()
        );
        let status = Command::new(&binary)
            .arg(&corpus)
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-max_len=65536")
            .arg("-print_final_stats=1")
            .stderr(std::fs::File::create(&log)?)
            .status()
            .with_context(|| format!("could not run {}", binary.display()))?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if !status.success() {
            eprintln!("{}", lines[lines.len().saturating_sub(60)..].join("\n"));
            bail!(
                "fuzz target {name} found an input that fails ({status}); libFuzzer saved it in {}: fix the parser, then copy the input into fuzz/regressions/{name}/",
                artifacts.display()
            );
        }
        for line in lines.iter().filter(|line| {
            line.starts_with("stat::number_of_executed_units")
                || line.starts_with("stat::new_units_added")
                || line.contains("DONE")
        }) {
            eprintln!("  {line}");
        }
    }
    Ok(())
}

/// cargo-fuzz, installed with the stable toolchain when `cargo fuzz` is not there.
fn install_cargo_fuzz() -> Result<()> {
    crate::setup::cargo_install(
        "cargo-fuzz",
        CARGO_FUZZ_VERSION,
        Command::new("cargo").args(["fuzz", "--version"]),
    )
}

/// `cargo` of the nightly toolchain in the workspace root, without the variables `cargo
/// xtask` inherited from the stable one. AYA_BUILD_SKIP: the fuzz targets never load the
/// eBPF object, and its build would get the fuzzing flags.
fn nightly_cargo() -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo"])
        .current_dir(root())
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("AYA_BUILD_SKIP", "1");
    command
}

/// Runs the target once on each committed input that once failed.
fn replay_regressions(name: &str, binary: &Path) -> Result<()> {
    let dir = root().join("fuzz/regressions").join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let inputs: Vec<PathBuf> = entries
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.is_file())
        .collect();
    if inputs.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask fuzz: {name}: replaying {} regression inputs",
        inputs.len()
    );
    run_checked(Command::new(binary).args(&inputs))
}

/// Real inputs to start from: this machine's /proc files, the shipped config file, the JSON
/// report snapshot the unit tests keep.
fn seed(name: &str, corpus: &Path) -> Result<()> {
    let sources: Vec<(&str, Option<Vec<u8>>)> = match name {
        "proc_maps" => vec![
            ("self-maps", std::fs::read("/proc/self/maps").ok()),
            ("init-maps", std::fs::read("/proc/1/maps").ok()),
        ],
        "proc_status" => vec![
            ("self-status", std::fs::read("/proc/self/status").ok()),
            ("kthread-status", std::fs::read("/proc/2/status").ok()),
            (
                "smaps-rollup",
                std::fs::read("/proc/self/smaps_rollup").ok(),
            ),
            ("cgroup", std::fs::read("/proc/self/cgroup").ok()),
        ],
        "proc_stat" => vec![
            ("self-stat", std::fs::read("/proc/self/stat").ok()),
            ("kthread-stat", std::fs::read("/proc/2/stat").ok()),
        ],
        "config_file" => vec![(
            "leaktrace.toml",
            std::fs::read(root().join("deploy/leaktrace.toml")).ok(),
        )],
        "saved_report" => vec![(
            "report.json",
            std::fs::read_to_string(root().join(
                "leak-user/src/report/snapshots/leaktrace__report__json__tests__snapshot.snap",
            ))
            .ok()
            .and_then(|snapshot| {
                without_insta_header(&snapshot).map(|json| json.as_bytes().to_vec())
            }),
        )],
        _ => Vec::new(),
    };
    for (file, bytes) in sources {
        if let Some(bytes) = bytes {
            std::fs::write(corpus.join(file), bytes)?;
        }
    }
    Ok(())
}

/// An insta snapshot's content: what follows its `---` delimited header.
fn without_insta_header(snapshot: &str) -> Option<&str> {
    let rest = snapshot.strip_prefix("---\n")?;
    let end = rest.find("\n---\n")?;
    Some(&rest[end + "\n---\n".len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_header_is_stripped() {
        assert_eq!(
            without_insta_header("---\nsource: x\nexpression: y\n---\n{\"a\": 1}\n"),
            Some("{\"a\": 1}\n")
        );
        assert_eq!(without_insta_header("{}"), None);
    }

    #[test]
    fn every_target_is_a_bin_of_the_fuzz_crate() {
        let manifest =
            std::fs::read_to_string(root().join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        for name in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{name}\"")),
                "{name} missing from fuzz/Cargo.toml"
            );
        }
    }
}
