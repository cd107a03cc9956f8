//! `cargo xtask setup`: installs what a fresh machine lacks. Each check is quick when the
//! thing is already there, so every other task calls this first.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::run_checked;

/// bpf-linker release that builds against the LLVM of the installed Rust toolchains.
const BPF_LINKER_VERSION: &str = "0.10.3";

pub fn run() -> Result<()> {
    nightly_with_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    otel_sink()?;
    tracefs();
    Ok(())
}

/// oteltest's version whose otelsink the OTLP end-to-end tests receive with.
const OTELTEST_VERSION: &str = "0.49.0";

/// Where the OTLP receiver's Python environment lives (tests/src/lib.rs looks there too).
pub fn otel_venv() -> std::path::PathBuf {
    crate::root().join("target/tools/otel-venv")
}

/// A Python environment with oteltest (its otelsink is the OTLP receiver of the tests).
fn otel_sink() -> Result<()> {
    let venv = otel_venv();
    let python = venv.join("bin/python");
    let has_oteltest = Command::new(&python)
        .args(["-c", "import oteltest.sink"])
        .output()
        .is_ok_and(|out| out.status.success());
    if has_oteltest {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing oteltest {OTELTEST_VERSION} into {}",
        venv.display()
    );
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|status| status.success());
    if !created {
        // Debian's python3 keeps venv in a package of its own.
        install_debian(&["python3", "python3-venv"])?;
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_checked(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("oteltest=={OTELTEST_VERSION}")),
    )
    .context("installing oteltest from PyPI")
}

fn output(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The eBPF crate builds with nightly and `-Z build-std=core`, which needs rust-src.
fn nightly_with_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        eprintln!("xtask setup: installing the nightly toolchain with rust-src");
        return run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        eprintln!("xtask setup: adding rust-src to nightly");
        run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} (about 2 minutes)");
    run_checked(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
}

/// Compilers for the test targets and the demo; glibc's debug symbols so libc frames show
/// file:line; protoc, which the pprof report test decodes the output with; Prometheus and
/// promtool, which scrape `--prometheus` and test the shipped alert rules.
fn debian_packages() -> Result<()> {
    let wanted = [
        ("gcc", "gcc"),
        ("g++", "g++"),
        ("libc6-dbg", ""),
        ("protobuf-compiler", "protoc"),
        ("prometheus", "promtool"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(package, binary)| {
            if binary.is_empty() {
                output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
                    .is_none_or(|status| !status.contains("install ok installed"))
            } else {
                which::which(binary).is_err()
            }
        })
        .map(|(package, _)| *package)
        .collect();
    install_debian(&missing)
}

/// The peers `cargo xtask bench` compares with, when the package manager can install them.
/// A peer that cannot be installed is left out of the table, not an error.
pub fn bench_peers() {
    let missing: Vec<&str> = ["heaptrack", "valgrind"]
        .into_iter()
        .filter(|binary| which::which(binary).is_err())
        .collect();
    if let Err(err) = install_debian(&missing) {
        eprintln!("xtask bench: peers not installed ({err:#}); their rows are left out");
    }
}

fn install_debian(missing: &[&str]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if which::which("apt-get").is_err() {
        bail!(
            "missing {}: install them with your package manager",
            missing.join(", ")
        );
    }
    eprintln!("xtask setup: installing {}", missing.join(", "));
    let update = Command::new("apt-get").arg("update").status();
    if update.is_err() {
        bail!(
            "apt-get update failed; install {} by hand",
            missing.join(", ")
        );
    }
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing test compilers and tools")
}

/// Syscall tracepoints attach through tracefs; leaktrace mounts it too, this makes the
/// machine ready for other tools as well.
fn tracefs() {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return;
    }
    let _ = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status();
}
