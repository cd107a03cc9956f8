//! End-to-end: every failure mode in README.md's table gives one clear line on stderr and
//! its own exit status, and nothing is traced or started by a run that cannot go on.
use std::process::{Command, Output};

use leaktrace_tests::{Target, bpf_available, build_c, leaktrace_bin, scratch_dir};

/// Exit statuses (leak-user/src/exit.rs).
const USAGE: i32 = 2;
const NOT_IN_TARGET: i32 = 65;
const BAD_REPORT: i32 = 66;
const NO_TARGET: i32 = 67;
const CANNOT_WRITE: i32 = 73;
const NOT_PERMITTED: i32 = 77;
const NOT_RUNNABLE: i32 = 126;
const NOT_FOUND: i32 = 127;

fn leaktrace(args: &[&str]) -> Output {
    Command::new(leaktrace_bin())
        .args(args)
        .output()
        .expect("run leaktrace")
}

/// The run ended with `status` and one line on stderr containing `expected`.
fn assert_fails(out: &Output, status: i32, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(status), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with("For more information"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(expected), "{stderr}");
}

#[test]
fn processes_that_cannot_be_traced() {
    assert_fails(
        &leaktrace(&["attach", "--pid", "999999999"]),
        NO_TARGET,
        "no process with pid 999999999",
    );
    // kthreadd is always pid 2.
    assert_fails(
        &leaktrace(&["attach", "--pid", "2"]),
        NO_TARGET,
        "process 2 is a kernel thread",
    );
    // A child that has exited and that nobody has waited for yet.
    let mut child = Command::new("true").spawn().expect("start true");
    let pid = child.id().to_string();
    let zombie = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| stat.contains(") Z "))
    });
    assert!(zombie, "the child did not become a zombie");
    assert_fails(
        &leaktrace(&["attach", "--pid", &pid]),
        NO_TARGET,
        &format!("process {pid} is a zombie"),
    );
    let _ = child.wait();
}

#[test]
fn commands_that_cannot_run() {
    assert_fails(
        &leaktrace(&["run", "--", "leaktrace-no-such-command"]),
        NOT_FOUND,
        "command not found: leaktrace-no-such-command",
    );
    let text = scratch_dir().join("not-executable.sh");
    std::fs::write(&text, "echo hi\n").expect("write");
    assert_fails(
        &leaktrace(&["run", "--", text.to_str().expect("utf-8")]),
        NOT_RUNNABLE,
        "is not an executable file",
    );
    // A static program with no allocator at all.
    let bare = build_c(
        "no_allocator.c",
        &["-static", "-nostdlib", "-fno-stack-protector"],
    );
    assert_fails(
        &leaktrace(&["run", "--", bare.to_str().expect("utf-8")]),
        NOT_IN_TARGET,
        "no allocator found",
    );
    let service = build_c("leaky_service.c", &[]);
    let service = service.to_str().expect("utf-8");
    assert_fails(
        &leaktrace(&["run", "--alloc-fn", "no_pool_alloc:malloc", "--", service]),
        NOT_IN_TARGET,
        "--alloc-fn no_pool_alloc",
    );
    assert_fails(
        &leaktrace(&["run", "--scope", "no_handler", "--", service]),
        NOT_IN_TARGET,
        "--scope no_handler",
    );
}

#[test]
fn bad_flags_reports_and_outputs() {
    assert_fails(
        &leaktrace(&["attach", "--pid", "1", "--duration", "soon"]),
        USAGE,
        "not a duration",
    );
    let config = scratch_dir().join("bad-config.toml");
    std::fs::write(&config, "no_such_setting = 1\n").expect("write");
    assert_fails(
        &leaktrace(&["watch", "--config", config.to_str().expect("utf-8")]),
        USAGE,
        "no_such_setting",
    );
    assert_fails(
        &leaktrace(&["report", "/nonexistent/report.json"]),
        BAD_REPORT,
        "cannot read",
    );
    // The report cannot be written: said before anything is traced or started.
    let service = build_c("leaky_service.c", &[]);
    assert_fails(
        &leaktrace(&[
            "run",
            "-o",
            "/nonexistent/dir/report.json",
            "--",
            service.to_str().expect("utf-8"),
        ]),
        CANNOT_WRITE,
        "could not write the report to /nonexistent/dir/report.json",
    );
}

/// The disk fills up when the report is written: leaktrace says so, writes it elsewhere,
/// and says where.
#[test]
fn a_full_disk_keeps_the_report_elsewhere() {
    if !bpf_available("a_full_disk_keeps_the_report_elsewhere") {
        return;
    }
    let service = build_c("leaky_service.c", &[]);
    let target = Target::start(&service, &[]);
    let out = leaktrace(&[
        "attach",
        "--pid",
        &target.pid(),
        "-d",
        "2s",
        "--format",
        "json",
        "-o",
        "/dev/full",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(CANNOT_WRITE), "{stderr}");
    let line = stderr
        .lines()
        .find(|line| line.contains("could not write the report to /dev/full"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("No space left on device"), "{line}");
    let kept = line
        .split("the report was written to ")
        .nth(1)
        .and_then(|rest| rest.split(" instead").next())
        .unwrap_or_else(|| panic!("where the report went: {line}"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kept).expect("the kept report"))
            .expect("JSON");
    assert!(report["stacks"].as_array().is_some_and(|s| !s.is_empty()));
    let _ = std::fs::remove_file(kept);
}

/// Without the capabilities to load programs and place uprobes, the missing ones are named
/// before anything starts.
#[test]
fn missing_capabilities_are_named() {
    if !bpf_available("missing_capabilities_are_named") {
        return;
    }
    let service = build_c("leaky_service.c", &[]);
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-all", "--inh-caps", "-all"])
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(leaktrace_bin())
        .args(["run", "--", service.to_str().expect("utf-8")])
        .output()
        .expect("run setpriv (util-linux)");
    assert_fails(&out, NOT_PERMITTED, "missing capabilities: CAP_BPF");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for capability in ["CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"] {
        assert!(stderr.contains(capability), "{stderr}");
    }
}

/// A live-allocation map too small for the target: the allocations beyond it are counted
/// as dropped, the report is written, the exit is 0.
#[test]
fn full_maps_are_counted_not_fatal() {
    if !bpf_available("full_maps_are_counted_not_fatal") {
        return;
    }
    let service = build_c("leaky_service.c", &[]);
    let target = Target::start(&service, &[]);
    let traced = leaktrace_tests::leaktrace(
        "tiny_map",
        &[
            "attach",
            "--pid",
            &target.pid(),
            "-d",
            "3s",
            "--max-allocs",
            "8",
        ],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let full = traced.report["dropped"]["alloc_map_full"]
        .as_u64()
        .unwrap_or(0);
    assert!(full > 0, "{}", traced.report["dropped"]);
    let text = String::from_utf8_lossy(&traced.output.stderr);
    assert!(!text.contains("panicked"), "{text}");
}

/// A stripped executable and one deleted while it runs: leaktrace still attaches and finds
/// the leak; frames without a symbol read as module+offset, and a deleted file is read
/// through /proc/PID/map_files.
#[test]
fn stripped_and_deleted_executables() {
    if !bpf_available("stripped_and_deleted_executables") {
        return;
    }
    let service = build_c("leaky_service.c", &[]);
    // Stripped: no .symtab, so cache_insert (static) has no name.
    let stripped = scratch_dir().join("leaky_service_stripped");
    std::fs::copy(&service, &stripped).expect("copy");
    let status = Command::new("strip")
        .arg(&stripped)
        .status()
        .expect("run strip");
    assert!(status.success());
    let target = Target::start(&stripped, &[]);
    let traced = leaktrace_tests::leaktrace(
        "stripped",
        &["attach", "--pid", &target.pid(), "-d", "3s", "--top", "0"],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let leak = traced
        .stacks()
        .iter()
        .find(|stack| stack["verdict"] == "leaking")
        .unwrap_or_else(|| panic!("no leaking stack: {}", traced.describe()));
    let top = &leak["frames"][0];
    assert!(top["function"].is_null(), "{top}");
    assert!(
        top["module"]
            .as_str()
            .is_some_and(|module| module.ends_with("leaky_service_stripped")),
        "{top}"
    );
    drop(target);

    // Deleted while running.
    let doomed = scratch_dir().join("leaky_service_deleted");
    std::fs::copy(&service, &doomed).expect("copy");
    let target = Target::start(&doomed, &[]);
    std::fs::remove_file(&doomed).expect("delete the executable");
    let traced = leaktrace_tests::leaktrace(
        "deleted",
        &["attach", "--pid", &target.pid(), "-d", "3s", "--top", "0"],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let leak = traced.expect_stack_at("cache_insert");
    assert_eq!(leak["verdict"], "leaking", "{leak}");
}
