//! End-to-end: every failure mode in docs/errors.md's table gives one clear line on stderr and
//! its own exit status, and nothing is traced or started by a run that cannot go on.
use std::process::{Command, Output};

use leaktrace_tests::{Target, bpf_available, build_c, leaktrace_bin, scratch_dir};

/// Exit statuses (leak-user/src/model/exit.rs).
const USAGE: i32 = 2;
const NOT_IN_TARGET: i32 = 65;
const BAD_REPORT: i32 = 66;
const NO_TARGET: i32 = 67;
const CANNOT_WRITE: i32 = 73;
const KERNEL_LACKS: i32 = 69;
const PROBE_CONFLICT: i32 = 76;
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
    // leaktrace itself: a shell that execs leaktrace with its own pid.
    let itself = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec {} attach --pid $$ --duration 1s",
            leaktrace_bin().display()
        ))
        .output()
        .expect("run leaktrace through sh");
    assert_fails(&itself, NO_TARGET, "is this leaktrace itself");
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
    assert_fails(
        &leaktrace(&["attach", "--pid", "1", "--top", "-1"]),
        USAGE,
        "--top takes a count of stacks to list (0 lists all)",
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

/// leaktrace run inside a private mount namespace where `setup` (shell) has changed what
/// /sys shows, the way a kernel without the feature or a locked-down container shows it.
/// The command would create `marker`; it must never run.
fn run_in_changed_sys(setup: &str, marker: &std::path::Path) -> Output {
    let _ = std::fs::remove_file(marker);
    let script = format!("set -e\n{setup}\nexec \"$@\"");
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(leaktrace_bin())
        .args(["run", "--", "touch"])
        .arg(marker)
        .output()
        .expect("run unshare (util-linux)");
    assert!(
        !marker.exists(),
        "the command ran although tracing could not start"
    );
    out
}

/// A kernel without BTF or uprobes, and tracefs neither mounted nor mountable: one line
/// each, status 69, and the command is not started.
#[test]
fn kernels_that_cannot_trace() {
    if !bpf_available("kernels_that_cannot_trace") {
        return;
    }
    let marker = scratch_dir().join("kernel-lacks-marker");
    let out = run_in_changed_sys("mount -t tmpfs none /sys/kernel/btf", &marker);
    assert_fails(&out, KERNEL_LACKS, "this kernel has no BTF");
    let out = run_in_changed_sys("mount -t tmpfs none /sys/bus/event_source/devices", &marker);
    assert_fails(&out, KERNEL_LACKS, "this kernel has no uprobes");
    // /sys/kernel replaced by a read-only directory holding only btf: no tracing or debug
    // directory to mount tracefs on.
    let keep = scratch_dir().join("btf-mountpoint");
    std::fs::create_dir_all(&keep).expect("mkdir");
    let setup = format!(
        "mount --bind /sys/kernel/btf {keep}\n\
         mount -t tmpfs -o mode=0755 none /sys/kernel\n\
         mkdir /sys/kernel/btf\n\
         mount --move {keep} /sys/kernel/btf\n\
         mount -o remount,ro /sys/kernel",
        keep = keep.display()
    );
    let out = run_in_changed_sys(&setup, &marker);
    assert_fails(
        &out,
        KERNEL_LACKS,
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed (No such file or directory",
    );
}

/// The file offset of a symbol in an ELF file (what uprobes and reference counters take).
fn file_offset(elf: &[u8], name: &str) -> u64 {
    use object::{Object, ObjectSection, ObjectSymbol};
    let file = object::File::parse(elf).expect("ELF");
    let symbol = file
        .symbols()
        .find(|symbol| symbol.name() == Ok(name))
        .unwrap_or_else(|| panic!("no symbol {name}"));
    let section = symbol
        .section_index()
        .and_then(|index| file.section_by_index(index).ok())
        .unwrap_or_else(|| panic!("{name} has no section"));
    let (section_offset, _) = section.file_range().expect("a section with file contents");
    symbol.address() - section.address() + section_offset
}

/// Another tracer's uprobe, held open: a perf event of the kernel's uprobe PMU on `offset`
/// in `path` for process `pid`, with a reference counter (USDT semaphore) at `ref_ctr`.
struct OtherTracer {
    fd: i32,
}

impl OtherTracer {
    fn open(path: &std::path::Path, offset: u64, ref_ctr: u64, pid: u32) -> OtherTracer {
        let pmu: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
            .expect("uprobe PMU")
            .trim()
            .parse()
            .expect("PMU type");
        let path = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("no NUL");
        // struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1, 72 bytes): type, size,
        // config (the reference counter's offset in bits 32-63), …, config1 (the path),
        // config2 (the probe's offset).
        let mut attr = [0u64; 16];
        attr[0] = u64::from(pmu) | (72u64 << 32);
        attr[1] = ref_ctr << 32;
        attr[7] = path.as_ptr() as u64;
        attr[8] = offset;
        const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
        // SAFETY: attr outlives the call and is as large as the size it declares; path is
        // NUL-terminated and outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                pid as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        assert!(
            fd >= 0,
            "perf_event_open: {}",
            std::io::Error::last_os_error()
        );
        OtherTracer { fd: fd as i32 }
    }
}

impl Drop for OtherTracer {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Another tracer holds a uprobe with a reference counter on a function leaktrace probes
/// (bcc's memleak does on libc, iovisor/bcc#5236): the kernel refuses a second uprobe there
/// with another counter. leaktrace says so in one line (76), the target keeps running, and
/// once the other tracer is gone the same command works.
#[test]
fn another_tracer_on_the_same_function() {
    if !bpf_available("another_tracer_on_the_same_function") {
        return;
    }
    let program = build_c("semaphore_alloc.c", &[]);
    let elf = std::fs::read(&program).expect("read the target");
    let entry = file_offset(&elf, "pool_alloc");
    let semaphore = file_offset(&elf, "pool_semaphore");
    let mut target = Target::start(&program, &[]);
    let pid = target.pid();
    let other = OtherTracer::open(&program, entry, semaphore, target.child.id());
    let args = [
        "attach",
        "--pid",
        &pid,
        "--alloc-fn",
        "pool_alloc:malloc",
        "-d",
        "2s",
    ];
    assert_fails(
        &leaktrace(&args),
        PROBE_CONFLICT,
        "could not probe pool_alloc",
    );
    assert!(
        target.child.try_wait().expect("wait").is_none(),
        "the target died"
    );
    drop(other);
    let mut args = args;
    args[6] = "4s";
    let traced = leaktrace_tests::leaktrace("after_the_other_tracer", &args);
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    // pool_alloc is the allocator here: its blocks are charged to its caller.
    let leak = traced.expect_stack_at("main");
    assert_eq!(leak["verdict"], "leaking", "{leak}");
    let bytes = leaktrace_tests::u64_of(&leak["outstanding_bytes"]);
    assert!(bytes >= 128 && bytes.is_multiple_of(128), "{leak}");
}

/// A process whose name and executable path are not UTF-8 (file names are bytes): its
/// /proc files are read all the same, and its leak is found and named.
#[test]
fn a_process_named_in_bytes_that_are_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    if !bpf_available("a_process_named_in_bytes_that_are_not_utf8") {
        return;
    }
    let service = build_c("leaky_service.c", &[]);
    let odd = scratch_dir().join(std::ffi::OsStr::from_bytes(b"leaky-\xff\xfe"));
    std::fs::copy(&service, &odd).expect("copy");
    let target = Target::start(&odd, &[]);
    let traced =
        leaktrace_tests::leaktrace("not_utf8", &["attach", "--pid", &target.pid(), "-d", "3s"]);
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let leak = traced.expect_stack_at("cache_insert");
    assert_eq!(leak["verdict"], "leaking", "{leak}");
    drop(target);
    let _ = std::fs::remove_file(&odd);
}
