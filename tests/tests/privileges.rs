//! End-to-end: least privilege. leaktrace works with exactly the capabilities
//! deploy/README.md documents, keeps only what it still uses once its probes are placed (in
//! every one of its threads), and a command started by `run` keeps its own capabilities.
use std::{
    io::BufRead,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use leaktrace_tests::{
    Target, bpf_available, build_c, leaktrace_bin, private_libc_dir, scratch_dir, u64_of,
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

struct Observed {
    status: Option<i32>,
    stderr: String,
    /// Every thread's (effective, permitted) sets once tracing is under way.
    threads: Vec<(u64, u64)>,
    report: serde_json::Value,
}

/// `[prefix…] leaktrace attach --pid PID -d 4s -i 1s --format json -o report`; reads its
/// threads' capabilities after its first interval report (its exporters and every other
/// thread have started by then).
fn attach(prefix: &[&str], pid: &str, report: &Path) -> Observed {
    let _ = std::fs::remove_file(report);
    let (program, before) = match prefix.split_first() {
        Some((program, rest)) => (program.to_string(), rest.to_vec()),
        None => (leaktrace_bin().display().to_string(), Vec::new()),
    };
    let mut command = Command::new(program);
    command.args(before);
    if !prefix.is_empty() {
        command.arg(leaktrace_bin());
    }
    let mut child = command
        .args([
            "attach", "--pid", pid, "-d", "4s", "-i", "1s", "--format", "json",
        ])
        .arg("-o")
        .arg(report)
        .env("LD_LIBRARY_PATH", private_libc_dir())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run leaktrace");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut signal = Some(tx);
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("stacks listed")
                && let Some(tx) = signal.take()
            {
                let _ = tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let threads = if rx.recv_timeout(Duration::from_secs(60)).is_ok() {
        thread_capabilities(child.id())
    } else {
        Vec::new()
    };
    let status = child.wait().expect("wait").code();
    let stderr = reader.join().unwrap_or_default();
    let report = std::fs::read_to_string(report)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null);
    Observed {
        status,
        stderr,
        threads,
        report,
    }
}

/// The leak of leaky_service (cache_insert, 4 KiB per 100 ms) is in the report.
fn assert_finds_the_leak(observed: &Observed) {
    assert_eq!(observed.status, Some(0), "{}", observed.stderr);
    let stacks = observed.report["stacks"].as_array().expect("stacks");
    let leak = stacks
        .iter()
        .find(|stack| stack["frames"][0]["function"] == "cache_insert")
        .unwrap_or_else(|| panic!("no cache_insert stack: {}", observed.report));
    assert_eq!(leak["verdict"], "leaking", "{leak}");
    assert!(u64_of(&leak["outstanding_bytes"]) >= 10 * 4096, "{leak}");
}

/// Every thread has exactly `expected`, effective and permitted.
fn assert_threads_hold(observed: &Observed, expected: u64) {
    assert!(!observed.threads.is_empty(), "{}", observed.stderr);
    for (effective, permitted) in &observed.threads {
        assert_eq!(
            (*effective, *permitted),
            (expected, expected),
            "a thread holds {effective:#x}/{permitted:#x}, not {expected:#x}: {}",
            observed.stderr
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
    assert_finds_the_leak(&observed);
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
    assert_finds_the_leak(&observed);
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
    assert_finds_the_leak(&observed);
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
