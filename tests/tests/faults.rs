//! End-to-end fault injection: leaktrace killed with SIGKILL at random moments (placing
//! probes, tracing, scanning for reachability with the target stopped, reporting, detaching)
//! while the target allocates at full speed. The target must finish with the output and exit
//! status of an untraced run, with no probe left in malloc or free (once leaktrace's link
//! keeper, which closes the links after a report, has done so: steady_worker waits for it).
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use leaktrace_tests::{bpf_available, build_c, leaktrace_bin, private_libc_dir};

/// Rounds of 10,000 allocations: about 4 s untraced, so every kill lands while the target still
/// runs (the kill moment is chosen inside the untraced run's time; tracing only slows it).
const ROUNDS: &str = "3000";

fn start_worker(program: &std::path::Path) -> std::process::Child {
    Command::new(program)
        .arg(ROUNDS)
        .env("LD_LIBRARY_PATH", private_libc_dir())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start steady_worker")
}

#[test]
fn sigkill_at_random_moments_leaves_the_target_unharmed() {
    if !bpf_available("sigkill_at_random_moments_leaves_the_target_unharmed") {
        return;
    }
    let program = build_c("steady_worker.c", &["-ldl"]);
    let untraced_start = Instant::now();
    let untraced = start_worker(&program)
        .wait_with_output()
        .expect("untraced run");
    // Kills land in the first 60% of the untraced run's time (at most 2.5 s): the traced
    // target, started before leaktrace and never faster than untraced, is still running then.
    // A kill after the target had finished would test nothing (and the target would rightly
    // have seen the probes of a live leaktrace).
    let window_ms = (untraced_start.elapsed().as_millis() as u64 * 6 / 10).clamp(100, 2500);
    assert_eq!(untraced.status.code(), Some(7));
    let expected = String::from_utf8_lossy(&untraced.stdout).to_string();
    assert!(
        expected.contains("malloc_breakpoints=0 free_breakpoints=0"),
        "{expected}"
    );

    // A different set of moments each run, printed so a failure can be replayed.
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let modes: [&[&str]; 3] = [
        &["-i", "1s"],
        // The scan stops the target: a kill then must still let it go.
        &["--reachability", "-d", "1500ms"],
        &["--unwind", "dwarf", "-i", "500ms"],
    ];
    for trial in 0..6 {
        let mode = modes[trial % modes.len()];
        let delay = Duration::from_millis(50 + next() % (window_ms - 50));
        eprintln!("trial {trial}: {mode:?}, SIGKILL after {delay:?}");
        let mut worker = start_worker(&program);
        let pid = worker.id().to_string();
        let mut tracer = Command::new(leaktrace_bin())
            .args(["attach", "--pid", &pid])
            .args(mode)
            .args(["--format", "json", "--output", "/dev/null"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start leaktrace");
        std::thread::sleep(delay);
        assert!(
            matches!(worker.try_wait(), Ok(None)),
            "trial {trial}: the target finished before the kill at {delay:?} (untraced run \
             window {window_ms} ms): the trial would test nothing"
        );
        // SIGKILL: no chance to clean up.
        let _ = tracer.kill();
        let _ = tracer.wait();
        let started = Instant::now();
        let out = loop {
            if let Ok(Some(_)) = worker.try_wait() {
                break worker.wait_with_output().expect("worker output");
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "trial {trial}: the target did not finish after leaktrace was killed"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            out.status.code(),
            Some(7),
            "trial {trial}: {mode:?} after {delay:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "trial {trial}: {mode:?} after {delay:?}"
        );
    }
}

/// The state letter of a process (/proc/PID/stat), None once it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ").next()?.chars().next()
}

/// A command that `run` traces, stopped with SIGSTOP and continued with SIGCONT, goes on
/// and ends as it would untraced (it once stayed in its tracing stop for good).
#[test]
fn a_command_stopped_and_continued_goes_on() {
    if !bpf_available("a_command_stopped_and_continued_goes_on") {
        return;
    }
    let mut tracer = Command::new(leaktrace_bin())
        .args(["run", "--format", "json", "--output", "/dev/null", "--"])
        .args(["/bin/sleep", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start leaktrace");
    let deadline = Instant::now() + Duration::from_secs(60);
    let wait = |what: &str| {
        assert!(Instant::now() < deadline, "{what} within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The command is leaktrace's child, once it runs sleep.
    let command = loop {
        let children = std::fs::read_dir(format!("/proc/{}/task", tracer.id()))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
            .flat_map(|pids| {
                pids.split_whitespace()
                    .filter_map(|pid| pid.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.ends_with("sleep"))
            });
        if let Some(pid) = children {
            break pid;
        }
        wait("sleep started");
    };
    // SAFETY: signals to the command this test started (through leaktrace).
    unsafe { libc::kill(command as i32, libc::SIGSTOP) };
    while !matches!(process_state(command), Some('t' | 'T') | None) {
        wait("the stop");
    }
    // SAFETY: as above.
    unsafe { libc::kill(command as i32, libc::SIGCONT) };
    let status = loop {
        if let Some(status) = tracer.try_wait().expect("wait for leaktrace") {
            break status;
        }
        wait("the command's end after SIGCONT");
    };
    assert_eq!(status.code(), Some(0), "sleep's own status");
}
