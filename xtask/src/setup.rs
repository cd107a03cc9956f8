//! `cargo xtask setup`: installs what a fresh machine lacks. Each check is quick when the
//! thing is already there, so every other task calls this first.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::workspace::{root, run_checked};

/// bpf-linker release that builds against the LLVM of the installed Rust toolchains.
const BPF_LINKER_VERSION: &str = "0.10.3";

pub fn run() -> Result<()> {
    nightly_with_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    newer_go()?;
    otel_sink()?;
    tracefs();
    Ok(())
}

/// oteltest's version whose otelsink the OTLP end-to-end tests receive with.
const OTELTEST_VERSION: &str = "0.49.0";

/// Where the OTLP receiver's Python environment lives (tests/src/lib.rs looks there too).
pub fn otel_venv() -> std::path::PathBuf {
    root().join("target/tools/otel-venv")
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
    cargo_install(
        "bpf-linker",
        BPF_LINKER_VERSION,
        Command::new("bpf-linker").arg("--version"),
    )
}

/// `cargo install PACKAGE@VERSION` (stable toolchain, locked) unless `check` prints VERSION.
pub fn cargo_install(package: &str, version: &str, check: &mut Command) -> Result<()> {
    if output(check).unwrap_or_default().contains(version) {
        return Ok(());
    }
    eprintln!("xtask setup: installing {package} {version} (about 2 minutes)");
    run_checked(Command::new("cargo").args([
        "install",
        &format!("{package}@{version}"),
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
        // Allocators the end-to-end tests build targets against, and a real jemalloc service.
        ("libjemalloc-dev", ""),
        ("libgoogle-perftools-dev", ""),
        ("libmimalloc-dev", ""),
        ("musl-tools", "musl-gcc"),
        ("redis-server", "redis-server"),
        ("redis-tools", "redis-benchmark"),
        // The reachability test compares leaktrace's classes with memcheck's.
        ("valgrind", "valgrind"),
        // Language runtimes the end-to-end tests trace (tests/tests/runtimes.rs).
        ("nodejs", "node"),
        ("golang-go", "go"),
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

/// Go releases newer than Debian bookworm's 1.19, from bookworm-backports: the Go tests
/// build their targets with each, so probes found by name, layouts read from DWARF and the
/// layout table for binaries without DWARF are checked on every release installed here.
/// The end-to-end tests run with the oldest (Debian's golang-go) and the newest.
const NEWER_GO_PACKAGES: [&str; 3] = ["golang-1.21-go", "golang-1.22-go", "golang-1.23-go"];
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/leaktrace-bookworm-backports.sources";

fn newer_go() -> Result<()> {
    let missing: Vec<&str> = NEWER_GO_PACKAGES
        .into_iter()
        .filter(|package| {
            let release = package
                .trim_start_matches("golang-")
                .trim_end_matches("-go");
            !Path::new(&format!("/usr/lib/go-{release}/bin/go")).exists()
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    if !release
        .lines()
        .any(|line| line == "VERSION_CODENAME=bookworm")
    {
        // Elsewhere the tests use the Go toolchains they find, and say which.
        eprintln!("xtask setup: not Debian bookworm, so no Go from its backports");
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing {} from bookworm-backports",
        missing.join(", ")
    );
    // Backports packages are never chosen over the release's own unless asked for (-t),
    // so this source changes nothing else the machine installs.
    std::fs::write(
        BACKPORTS_SOURCES,
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
         Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .with_context(|| format!("writing {BACKPORTS_SOURCES}"))?;
    run_checked(Command::new("apt-get").arg("update"))?;
    run_checked(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "-t",
                "bookworm-backports",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {} from bookworm-backports", missing.join(", ")))
}

/// The peers `cargo xtask bench` compares with, and the real service it measures, when the
/// package manager can install them. What cannot be installed is left out of the tables, not
/// an error.
pub fn bench_peers() {
    let missing: Vec<&str> = [
        ("heaptrack", "heaptrack"),
        ("valgrind", "valgrind"),
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("nginx", "nginx-light"),
        ("wrk", "wrk"),
        ("pgbench", "postgresql"),
    ]
    .into_iter()
    .filter(|(binary, _)| which::which(binary).is_err())
    .map(|(_, package)| package)
    .collect();
    if let Err(err) = install_debian(&missing) {
        eprintln!("xtask bench: peers not installed ({err:#}); their rows are left out");
    }
}

/// Debian's bcc 0.26 memleak, made runnable on this kernel: it needs kernel headers (there
/// are none for 6.18; the 6.12 ones compile its program) and a fix for its Python binding,
/// which passes a garbage ref_ctr_offset to bpf_attach_uprobe (iovisor/bcc#5236), so its
/// probes would block every other tool's on the same functions. Returns the command that
/// runs memleak and the headers folder for BCC_KERNEL_SOURCE, or None when bcc cannot be
/// installed.
pub fn bcc_memleak() -> Option<(Vec<String>, std::path::PathBuf)> {
    const MEMLEAK: &str = "/usr/sbin/memleak-bpfcc";
    let headers_package = "linux-headers-6.12-amd64";
    let mut missing = Vec::new();
    if !Path::new(MEMLEAK).exists() {
        missing.push("bpfcc-tools");
    }
    if headers_dirs().is_none() {
        missing.push(headers_package);
    }
    if let Err(err) = install_debian(&missing) {
        eprintln!("xtask bench: bcc's memleak not installed ({err:#}); its row is left out");
        return None;
    }
    let (common, arch) = headers_dirs()?;
    // The two halves of Debian's headers merged into one tree, as bcc expects.
    let merged = root().join("target/tools/kernel-headers");
    if !merged.join("Makefile").exists() {
        let _ = std::fs::remove_dir_all(&merged);
        std::fs::create_dir_all(&merged).ok()?;
        for (from, extra) in [(&common, None), (&arch, Some("--remove-destination"))] {
            let mut copy = Command::new("cp");
            copy.arg("-as");
            if let Some(extra) = extra {
                copy.arg(extra);
            }
            copy.arg(format!("{}/.", from.display())).arg(&merged);
            if run_checked(&mut copy).is_err() {
                eprintln!("xtask bench: could not merge the kernel headers; bcc's row is left out");
                return None;
            }
        }
    }
    let wrapper = root().join("target/tools/bcc_ref_ctr_fix.py");
    std::fs::write(&wrapper, BCC_REF_CTR_FIX).ok()?;
    Some((
        vec![
            "/usr/bin/python3".into(),
            wrapper.display().to_string(),
            MEMLEAK.into(),
        ],
        merged,
    ))
}

/// Runs a bcc tool (argv[1]) with bpf_attach_uprobe given its 7th argument, ref_ctr_offset = 0.
const BCC_REF_CTR_FIX: &str = r#"import ctypes, runpy, sys
from bcc import libbcc

attach = libbcc.lib.bpf_attach_uprobe
attach.restype = ctypes.c_int
attach.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                   ctypes.c_uint64, ctypes.c_int, ctypes.c_uint32]

def attach_with_ref_ctr(fd, kind, name, path, offset, pid, ref_ctr_offset=0):
    return attach(fd, kind, name, path, offset, pid, ref_ctr_offset)

libbcc.lib.bpf_attach_uprobe = attach_with_ref_ctr
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"#;

/// The newest installed 6.12 kernel headers: (common, amd64) folders.
fn headers_dirs() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let mut arch: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/src")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| {
                    name.starts_with("linux-headers-6.12") && name.ends_with("-amd64")
                })
        })
        .collect();
    arch.sort();
    let arch = arch.pop()?;
    let common = std::path::PathBuf::from(arch.display().to_string().replace("-amd64", "-common"));
    common.is_dir().then_some((common, arch))
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
