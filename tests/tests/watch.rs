//! End-to-end tests of `leaktrace watch`, the sidecar mode: the real binary, as root, against
//! real processes found by executable name, pid or config file.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leaktrace_tests::{
    Background, Target, bpf_available, build_c_variant, free_port, http_get, leaktrace_bin,
    scratch_dir, u64_of,
};
use serde_json::Value;

/// The watch service built under its own name, so `--exe NAME` matches nothing else.
fn watch_service(name: &str) -> PathBuf {
    build_c_variant("watch_service.c", name, "gcc", &[], &[])
}

/// A fresh, empty folder for one test's reports and logs.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create dir");
    dir
}

/// A running `leaktrace watch` with its stderr (the event log) in a file.
struct Watcher {
    process: Background,
    log: PathBuf,
    started: Instant,
}

impl Watcher {
    fn start(args: &[&str], dir: &Path) -> Watcher {
        let log = dir.join("watch.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let process = Background::spawn(
            Command::new(leaktrace_bin())
                .arg("watch")
                .args(args)
                .stdout(Stdio::null())
                .stderr(stderr),
        );
        Watcher {
            process,
            log,
            started: Instant::now(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a log line has event `event` and every `field=value` given; returns the
    /// line and when it was seen.
    fn wait_for(&mut self, event: &str, fields: &[(&str, String)], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            let found = log.lines().find(|line| {
                line.contains(&format!(" event={event}"))
                    && fields
                        .iter()
                        .all(|(key, value)| line.contains(&format!(" {key}={value}")))
            });
            if let Some(line) = found {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.process.child.try_wait() {
                panic!("leaktrace watch exited ({status}) before {event}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "no {event} {fields:?} within {limit:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.process.child.id()).expect("pid");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The precise report a window wrote for `pid` (the newest one), with its stem.
fn window_report(dir: &Path, pid: u32) -> (Value, String) {
    let mut reports: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("report dir")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.contains(&format!("-{pid}-")) && name.ends_with("Z.json")
        })
        .collect();
    reports.sort();
    let path = reports
        .last()
        .unwrap_or_else(|| panic!("no report for pid {pid} in {}", dir.display()));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read report")).expect("json");
    let stem = path.with_extension("").display().to_string();
    (report, stem)
}

/// The leaking stack whose innermost frame is `function`.
fn leaking_stack_at<'a>(report: &'a Value, function: &str) -> Option<&'a Value> {
    report["stacks"]
        .as_array()?
        .iter()
        .find(|stack| stack["verdict"] == "leaking" && stack["frames"][0]["function"] == function)
}

/// Reports written for a pid (any kind).
fn files_for(dir: &Path, pid: u32) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.contains(&format!("-{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z ") && !stat.contains(") X "))
}

#[test]
fn a_leak_found_by_name_escalates_is_reported_and_followed_across_a_restart() {
    if !bpf_available("a_leak_found_by_name_escalates_is_reported_and_followed_across_a_restart") {
        return;
    }
    let leaker = watch_service("watch_leaker_e2e");
    let healthy = watch_service("watch_healthy_e2e");
    let dir = fresh_dir("watch-escalation");
    let reports = dir.join("reports");
    let first = Target::start(&leaker, &[]);
    let calm = Target::start(&healthy, &["healthy"]);
    let mut watcher = Watcher::start(
        &[
            "--exe",
            "watch_leaker_e2e",
            "--exe",
            "watch_healthy_e2e",
            "--report-dir",
            reports.to_str().expect("utf-8"),
            "--escalate-for",
            "8s",
            "--cooldown",
            "1h",
            "--watch-mmap",
        ],
        &dir,
    );
    let first_pid = first.child.id();
    let calm_pid = calm.child.id();
    watcher.wait_for(
        "watching",
        &[("pid", first_pid.to_string())],
        Duration::from_secs(10),
    );
    let watched_at = Instant::now();
    watcher.wait_for(
        "watching",
        &[("pid", calm_pid.to_string())],
        Duration::from_secs(10),
    );
    // 100 KiB/s must escalate on its own within 30 s.
    let opened = watcher.wait_for(
        "window_opened",
        &[("pid", first_pid.to_string())],
        Duration::from_secs(40),
    );
    let waited = watched_at.elapsed();
    assert!(
        waited <= Duration::from_secs(30),
        "escalated after {waited:?}: {opened}"
    );
    assert!(opened.contains("memory rising"), "{opened}");
    watcher.wait_for(
        "window_closed",
        &[("pid", first_pid.to_string())],
        Duration::from_secs(30),
    );
    let (report, stem) = window_report(&reports, first_pid);
    let stack = leaking_stack_at(&report, "remember_session").unwrap_or_else(|| {
        panic!(
            "no leaking remember_session stack:\n{}",
            std::fs::read_to_string(format!("{stem}.txt")).unwrap_or_default()
        )
    });
    // 2 KiB every 20 ms for the 8-second window, less scheduling slack.
    let leaked = u64_of(&stack["outstanding_bytes"]);
    assert!(
        (400 << 10..=1200 << 10).contains(&leaked),
        "leaked {leaked} bytes in the window"
    );
    assert_eq!(report["mode"], "watch");
    let text = std::fs::read_to_string(format!("{stem}.txt")).expect("text report");
    assert!(text.contains("LEAKING"), "{text}");
    // Gear 1 (page faults, walked with unwind tables through glibc) names the same place.
    let growth = std::fs::read_to_string(format!("{stem}.growth.txt")).expect("growth text");
    assert!(growth.contains("remember_session"), "{growth}");
    // With --watch-mmap gear 1 also sees malloc growing the heap with brk, on its behalf.
    let mapped = growth
        .split("Anonymous memory mapped now")
        .nth(1)
        .expect("a mapped-memory section");
    let mapped = mapped.split("\n\n").next().unwrap_or("");
    assert!(
        mapped.contains("__GI___sbrk") && mapped.contains("remember_session"),
        "{growth}"
    );
    let svg = std::fs::read_to_string(format!("{stem}.growth.svg")).expect("growth svg");
    assert!(
        svg.contains("remember_session"),
        "flame graph lacks the function"
    );

    // The service restarts: the old process is forgotten, the new one watched.
    drop(first);
    let second = Target::start(&leaker, &[]);
    let second_pid = second.child.id();
    watcher.wait_for(
        "target_exited",
        &[("pid", first_pid.to_string())],
        Duration::from_secs(10),
    );
    watcher.wait_for(
        "watching",
        &[("pid", second_pid.to_string())],
        Duration::from_secs(10),
    );
    // On request a window opens at once.
    watcher.signal(libc::SIGUSR1);
    let requested = watcher.wait_for(
        "window_opened",
        &[("pid", second_pid.to_string())],
        Duration::from_secs(10),
    );
    assert!(requested.contains("SIGUSR1"), "{requested}");
    watcher.wait_for(
        "window_closed",
        &[("pid", second_pid.to_string())],
        Duration::from_secs(30),
    );
    let (report, _) = window_report(&reports, second_pid);
    assert!(
        leaking_stack_at(&report, "remember_session").is_some(),
        "restarted target's report: {report}"
    );

    // The healthy sawtooth (8 MiB at start-up, then 7.5 MiB filled and freed every 4 s) is
    // watched for 40 s at least, long enough to escalate if the rule took it for a leak (the
    // leaker escalated within 30 s), and never escalates on its own; SIGUSR1 opened its only
    // window.
    if let Some(rest) = Duration::from_secs(41).checked_sub(watcher.started.elapsed()) {
        std::thread::sleep(rest);
    }
    let log = watcher.log();
    let automatic: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains("event=window_opened")
                && line.contains(&format!("pid={calm_pid} "))
                && !line.contains("SIGUSR1")
        })
        .collect();
    assert!(
        automatic.is_empty(),
        "healthy target escalated: {automatic:?}"
    );
    assert!(alive(calm_pid) && alive(second_pid), "a target died");
}

#[test]
fn sigterm_mid_window_writes_the_report_and_leaves_the_target_running() {
    if !bpf_available("sigterm_mid_window_writes_the_report_and_leaves_the_target_running") {
        return;
    }
    let leaker = watch_service("watch_sigterm_e2e");
    let dir = fresh_dir("watch-sigterm");
    let reports = dir.join("reports");
    let target = Target::start(&leaker, &[]);
    let pid = target.child.id();
    let port = free_port();
    // Settings from a config file, as a sidecar would have them.
    let config = dir.join("leaktrace.toml");
    std::fs::write(
        &config,
        format!(
            "pid = [{pid}]\nreport-dir = \"{}\"\nescalate-at-start = true\nescalate-for = \"5m\"\n\
             interval = \"1s\"\nprometheus = \"{port}\"\n",
            reports.display()
        ),
    )
    .expect("config");
    let mut watcher = Watcher::start(&["--config", config.to_str().expect("utf-8")], &dir);
    watcher.wait_for(
        "window_opened",
        &[("pid", pid.to_string())],
        Duration::from_secs(15),
    );
    std::thread::sleep(Duration::from_secs(3));
    // The memory of each watched process is exported all along, labelled by its pid.
    let metrics = http_get(port, "/metrics").expect("scrape /metrics");
    assert!(
        metrics.contains(&format!(
            "process_memory_usage_bytes{{process_pid=\"{pid}\"}}"
        )),
        "{metrics}"
    );
    watcher.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(status)) = watcher.process.child.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "watch did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = watcher.log();
    assert!(status.success(), "exit {status}: {log}");
    assert!(log.contains("event=stopping reason=SIGTERM"), "{log}");
    assert!(alive(pid), "the target did not survive leaktrace's exit");
    let (report, _) = window_report(&reports, pid);
    assert!(
        leaking_stack_at(&report, "remember_session").is_some(),
        "report written at SIGTERM: {report}"
    );
    let files = files_for(&reports, pid);
    for suffix in ["Z.json", "Z.txt", "Z.growth.txt", "Z.growth.svg"] {
        assert!(
            files.iter().any(|name| name.ends_with(suffix)),
            "no {suffix} in {files:?}"
        );
    }
    // No half-written file is left behind.
    assert!(
        !files.iter().any(|name| name.ends_with(".partial")),
        "{files:?}"
    );
}

#[test]
fn missing_capabilities_are_named_before_anything_starts() {
    if !bpf_available("missing_capabilities_are_named_before_anything_starts") {
        return;
    }
    let dir = fresh_dir("watch-capabilities");
    let out = Command::new("setpriv")
        .args([
            "--bounding-set",
            "-bpf,-perfmon,-sys_admin",
            "--inh-caps",
            "-bpf",
        ])
        .arg(leaktrace_bin())
        .args(["watch", "--exe", "nothing-at-all", "--report-dir"])
        .arg(dir.join("reports"))
        .output()
        .expect("run setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
    assert!(!stderr.contains("CAP_SYS_PTRACE"), "{stderr}");

    // With the three but not CAP_SYS_ADMIN, gear 1 runs and leaktrace says windows cannot.
    let out = Command::new("setpriv")
        .args([
            "--bounding-set",
            "-all,+bpf,+perfmon,+sys_ptrace",
            "--inh-caps",
            "-all,+bpf,+perfmon,+sys_ptrace",
        ])
        .arg(leaktrace_bin())
        .args([
            "watch",
            "--exe",
            "nothing-at-all",
            "-d",
            "2s",
            "--report-dir",
        ])
        .arg(dir.join("reports"))
        .output()
        .expect("run setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("event=windows_unavailable") && stderr.contains("CAP_SYS_ADMIN"),
        "{stderr}"
    );
    assert!(stderr.contains("event=stopped"), "{stderr}");
}

#[test]
fn bad_watch_settings_get_one_line_and_exit_2() {
    let dir = fresh_dir("watch-settings");
    let config = dir.join("bad.toml");
    std::fs::write(&config, "exe = [\"x\"]\nescalate_every = \"1m\"\n").expect("config");
    for (args, expected) in [
        (
            vec!["watch", "--report-dir", "/tmp/unused"],
            "nothing to watch",
        ),
        (
            vec!["watch", "--config", config.to_str().expect("utf-8")],
            "unknown setting 'escalate_every'",
        ),
        (
            vec!["watch", "--exe", "x", "--output", "r.json"],
            "--output and --format do not apply",
        ),
        (
            vec!["watch", "--config", "/nonexistent/leaktrace.toml"],
            "cannot read the config file",
        ),
    ] {
        let out = Command::new(leaktrace_bin())
            .args(&args)
            .output()
            .expect("run leaktrace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}
