//! End-to-end: least privilege. leaktrace works with exactly the capabilities
//! deploy/README.md documents, keeps only what it still uses once its probes are placed (in
//! every one of its threads), and a command started by `run` keeps its own capabilities.
use std::{path::Path, process::Command};

use leaktrace_tests::{
    Target, Traced, bpf_available, build_c, leaktrace_as, leaktrace_bin, scratch_dir, u64_of,
};

const CAP_DAC_OVERRIDE: u64 = 1 << 1;
const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// A capability set field ("CapPrm:\t000001ffffffffff") of a /proc status file.
fn cap_field(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// (effective, permitted) of every thread of `pid`.
fn thread_capabilities(pid: u32) -> Vec<(u64, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task list")
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("status")).ok())
        .map(|status| (cap_field(&status, "CapEff"), cap_field(&status, "CapPrm")))
        .collect()
}

/// `[prefix…] leaktrace attach --pid PID -d 4s -i 1s` with its report at `report`; and
/// every thread's (effective, permitted) sets, read after its first interval report (its
/// exporters and every other thread have started by then).
fn attach(prefix: &[&str], pid: &str, report: &Path) -> (Traced, Vec<(u64, u64)>) {
    let mut threads = Vec::new();
    let traced = leaktrace_as(
        prefix,
        report,
        &["attach", "--pid", pid, "-d", "4s", "-i", "1s"],
        &[],
        |leaktrace| threads = thread_capabilities(leaktrace),
    );
    (traced, threads)
}

/// The leak of leaky_service (cache_insert, 4 KiB per 100 ms) is in the report.
fn assert_finds_the_leak(traced: &Traced) {
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let leak = traced.expect_stack_at("cache_insert");
    assert_eq!(leak["verdict"], "leaking", "{leak}");
    assert!(u64_of(&leak["outstanding_bytes"]) >= 10 * 4096, "{leak}");
}

/// Every thread has exactly `expected`, effective and permitted.
fn assert_threads_hold((traced, threads): &(Traced, Vec<(u64, u64)>), expected: u64) {
    assert!(!threads.is_empty(), "{}", traced.stderr());
    for (effective, permitted) in threads {
        assert_eq!(
            (*effective, *permitted),
            (expected, expected),
            "a thread holds {effective:#x}/{permitted:#x}, not {expected:#x}: {}",
            traced.stderr()
        );
    }
}

/// uid 0 with only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_SYS_ADMIN (the systemd
/// unit's set): the leak is found, and once the probes are placed only CAP_SYS_PTRACE and
/// CAP_SYS_ADMIN remain, in every thread.
#[test]
fn the_documented_capabilities_are_enough() {
    if !bpf_available("the_documented_capabilities_are_enough") {
        return;
    }
    let service = build_c("leaky_service.c", &[]);
    let target = Target::start(&service, &[]);
    let observed = attach(
        &[
            "setpriv",
            "--bounding-set",
            "-all,+bpf,+perfmon,+sys_ptrace,+sys_admin",
            "--inh-caps",
            "-all",
        ],
        &target.pid(),
        &scratch_dir().join("documented_capabilities.json"),
    );
    assert_finds_the_leak(&observed.0);
    assert_threads_hold(&observed, CAP_SYS_PTRACE | CAP_SYS_ADMIN);
}

/// Full root: after the probes are placed, leaktrace holds CAP_SYS_PTRACE, CAP_SYS_ADMIN
/// and CAP_DAC_READ_SEARCH, plus CAP_DAC_OVERRIDE only when its report goes where root's
/// ids alone may not write; the report is written there all the same.
#[test]
fn root_keeps_only_what_it_uses() {
    if !bpf_available("root_keeps_only_what_it_uses") {
        return;
    }
    let service = build_c("leaky_service.c", &[]);
    let target = Target::start(&service, &[]);
    let kept = CAP_SYS_PTRACE | CAP_SYS_ADMIN | CAP_DAC_READ_SEARCH;

    let observed = attach(&[], &target.pid(), &scratch_dir().join("root_kept.json"));
    assert_finds_the_leak(&observed.0);
    assert_threads_hold(&observed, kept);

    // A directory of another user (nobody), mode 0755: root writes there only through
    // CAP_DAC_OVERRIDE.
    let theirs = scratch_dir().join("nobodys-dir");
    let _ = std::fs::remove_dir_all(&theirs);
    std::fs::create_dir(&theirs).expect("mkdir");
    let status = Command::new("chown")
        .args(["65534:65534"])
        .arg(&theirs)
        .status()
        .expect("chown");
    assert!(status.success());
    let observed = attach(&[], &target.pid(), &theirs.join("report.json"));
    assert_finds_the_leak(&observed.0);
    assert_threads_hold(&observed, kept | CAP_DAC_OVERRIDE);
    let _ = std::fs::remove_dir_all(&theirs);
}

/// `run` as root: the command gets the capabilities it would have had without leaktrace.
#[test]
fn a_commands_capabilities_are_its_own() {
    if !bpf_available("a_commands_capabilities_are_its_own") {
        return;
    }
    let seen = scratch_dir().join("command-capabilities.txt");
    let _ = std::fs::remove_file(&seen);
    let script = format!(
        "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status > {}",
        seen.display()
    );
    let untraced = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("sh");
    assert!(untraced.success());
    let expected = std::fs::read_to_string(&seen).expect("untraced capabilities");
    std::fs::remove_file(&seen).expect("rm");
    let out = Command::new(leaktrace_bin())
        .args(["run", "--no-reachability", "--", "sh", "-c", &script])
        .output()
        .expect("run leaktrace");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let traced = std::fs::read_to_string(&seen).expect("traced capabilities");
    assert_eq!(traced, expected);
}

/// `run` as root: once the command has started, every thread of leaktrace (the launcher
/// thread that ptraces the command too) keeps only CAP_SYS_PTRACE, CAP_SYS_ADMIN and
/// CAP_DAC_READ_SEARCH, and nothing says a drop was refused.
#[test]
fn run_keeps_only_what_it_uses_in_every_thread() {
    if !bpf_available("run_keeps_only_what_it_uses_in_every_thread") {
        return;
    }
    let kept = CAP_SYS_PTRACE | CAP_SYS_ADMIN | CAP_DAC_READ_SEARCH;
    let report = scratch_dir().join("run_kept.json");
    let leaktrace = Command::new(leaktrace_bin())
        .args(["run", "--no-reachability", "--format", "json", "--output"])
        .arg(&report)
        .args(["--", "sleep", "4"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run leaktrace");
    let pid = leaktrace.id();
    // The command is released (exec'd as `sleep`) only after the main thread dropped; the
    // launcher drops right after the exec.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let started = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("children")).ok())
            .flat_map(|children| {
                children
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .any(|child| {
                std::fs::read_to_string(format!("/proc/{child}/comm"))
                    .is_ok_and(|comm| comm.trim() == "sleep")
            })
    };
    while !started() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut threads = thread_capabilities(pid);
    while threads.iter().any(|&sets| sets != (kept, kept)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        threads = thread_capabilities(pid);
    }
    let out = leaktrace.wait_with_output().expect("wait for leaktrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        threads.len() >= 2,
        "the launcher thread was not seen: {threads:x?} {stderr}"
    );
    for (effective, permitted) in &threads {
        assert_eq!(
            (*effective, *permitted),
            (kept, kept),
            "a thread holds {effective:#x}/{permitted:#x}, not {kept:#x}: {stderr}"
        );
    }
    assert!(!stderr.contains("could not drop"), "{stderr}");
}
