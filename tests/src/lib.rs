//! Helpers for the end-to-end tests: build target programs, isolate them from other tracers,
//! run the real `leaktrace` binary, and read its JSON report.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use serde_json::Value;

/// Whether eBPF tests can run. When they cannot: a failure if LEAKTRACE_REQUIRE_BPF=1 (CI),
/// otherwise a visible SKIPPED line (the test then asserts nothing and says so).
pub fn bpf_available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("LEAKTRACE_REQUIRE_BPF").is_ok_and(|value| value == "1") {
        panic!("{test}: LEAKTRACE_REQUIRE_BPF=1 but not running as root");
    }
    eprintln!("SKIPPED {test}: needs root to load eBPF (run `sudo cargo xtask test`)");
    false
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The leaktrace binary: $LEAKTRACE_BIN (set by `cargo xtask test`), else the debug build.
pub fn leaktrace_bin() -> PathBuf {
    let path = std::env::var_os("LEAKTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/leaktrace"));
    assert!(
        path.exists(),
        "leaktrace binary {} not found: run `cargo xtask test` (it builds it)",
        path.display()
    );
    path
}

/// Where built targets and reports go.
pub fn scratch_dir() -> PathBuf {
    let dir = workspace_root().join("target/e2e");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Sources of the test targets.
pub fn targets_dir() -> PathBuf {
    workspace_root().join("tests/targets")
}

/// Runs a command (a compiler) and fails the test with its stderr if it fails.
pub fn run_ok(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Frame pointers kept and no tail calls, so frame-pointer unwinding sees every function.
const C_FLAGS: [&str; 5] = [
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fno-optimize-sibling-calls",
    "-pthread",
];

/// Runs a compiler writing to a private temporary file, then renames it to `output`. Tests
/// run in parallel and several build the same target: writing `output` in place while
/// another test executes it fails with "Text file busy" (ETXTBSY); a rename never does.
fn compile_to(output: &Path, command: &mut Command) {
    let temporary = temporary_beside(output);
    run_ok(command.arg("-o").arg(&temporary));
    std::fs::rename(&temporary, output)
        .unwrap_or_else(|err| panic!("rename {} into place: {err}", temporary.display()));
}

/// A name beside `output` that no other build of this test process uses.
fn temporary_beside(output: &Path) -> PathBuf {
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    output.with_extension(format!("{}-{build}.tmp", std::process::id()))
}

/// Compiles tests/targets/SOURCE with gcc or g++ (by extension) into the scratch dir.
pub fn build_c(source: &str, extra: &[&str]) -> PathBuf {
    let stem = Path::new(source)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(source);
    let output = scratch_dir().join(stem);
    let compiler = if source.ends_with(".cpp") {
        "g++"
    } else {
        "gcc"
    };
    compile_to(
        &output,
        Command::new(compiler)
            .args(C_FLAGS)
            .args(extra)
            .arg(targets_dir().join(source)),
    );
    output
}

/// Compiles tests/targets/SOURCE into the scratch dir as NAME with COMPILER (gcc, g++,
/// musl-gcc…), `flags` before the source and `libs` after it (link order matters).
pub fn build_c_variant(
    source: &str,
    name: &str,
    compiler: &str,
    flags: &[&str],
    libs: &[&str],
) -> PathBuf {
    let output = scratch_dir().join(name);
    compile_to(
        &output,
        Command::new(compiler)
            .args(C_FLAGS)
            .args(flags)
            .arg(targets_dir().join(source))
            .args(libs),
    );
    output
}

/// Compiles a C shared library.
pub fn build_c_shared(source: &str, name: &str) -> PathBuf {
    let output = scratch_dir().join(name);
    compile_to(
        &output,
        Command::new("gcc")
            .args(C_FLAGS)
            .args(["-shared", "-fPIC"])
            .arg(targets_dir().join(source)),
    );
    output
}

/// Compiles a Rust target with frame pointers.
pub fn build_rust(source: &str) -> PathBuf {
    let stem = Path::new(source)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(source);
    build_rust_variant(source, stem, &["-O", "-C", "force-frame-pointers=yes"])
}

/// Compiles tests/targets/SOURCE with rustc (debug info, edition 2021) and `flags` into the
/// scratch dir as NAME.
pub fn build_rust_variant(source: &str, name: &str, flags: &[&str]) -> PathBuf {
    let output = scratch_dir().join(name);
    compile_to(
        &output,
        Command::new("rustc")
            .args(["-g", "--edition", "2021"])
            .args(flags)
            .arg(targets_dir().join(source)),
    );
    output
}

/// Builds tests/targets/SOURCE (one Go file) with the go tool into the scratch dir, with
/// DWARF and the symbol table (as `go build` leaves them by default).
pub fn build_go(source: &str) -> PathBuf {
    let stem = Path::new(source)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(source);
    build_go_with(Path::new("go"), source, stem, &[])
}

/// Builds tests/targets/SOURCE with the toolchain GO (`GO build FLAGS`) into the scratch
/// dir as NAME.
pub fn build_go_with(go: &Path, source: &str, name: &str, flags: &[&str]) -> PathBuf {
    let output = scratch_dir().join(name);
    // Built beside and renamed into place, like compile_to (whose `-o` would come after
    // the file, where go build takes it for a package).
    let temporary = temporary_beside(&output);
    run_ok(
        Command::new(go)
            .arg("build")
            .args(flags)
            .arg("-o")
            .arg(&temporary)
            .arg(targets_dir().join(source))
            .env("GOCACHE", workspace_root().join("target/go-cache"))
            .env("GOFLAGS", "-buildvcs=false"),
    );
    std::fs::rename(&temporary, &output)
        .unwrap_or_else(|err| panic!("rename {} into place: {err}", temporary.display()));
    output
}

/// A directory holding a private copy of libc.so.6: targets run with
/// LD_LIBRARY_PATH=this, so another tracer's uprobes on the system libc (with a different
/// ref_ctr_offset) cannot block ours, and ours touch no other process.
pub fn private_libc_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir().join("private-libc");
        std::fs::create_dir_all(&dir).expect("create private libc dir");
        let system = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/libc.so.6",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("a system libc.so.6");
        let copy = dir.join("libc.so.6");
        let temp = dir.join(format!("libc.so.6.{}", std::process::id()));
        std::fs::copy(&system, &temp).expect("copy libc");
        std::fs::rename(&temp, &copy).expect("place libc copy");
        dir
    })
}

/// The result of one leaktrace run.
/// Whether a symbolized frame name is `function`: itself, with C++ parameters
/// (`leak(int)`), or with a Rust path (`crate::leak`).
fn names(name: &str, function: &str) -> bool {
    name == function
        || name.starts_with(&format!("{function}("))
        || name.ends_with(&format!("::{function}"))
}

pub struct Traced {
    pub output: Output,
    pub report: Value,
}

impl Traced {
    pub fn stacks(&self) -> &Vec<Value> {
        self.report["stacks"].as_array().expect("stacks array")
    }

    /// The stack whose innermost frame is `function` (C++ names match on the name before
    /// the parameter list).
    pub fn stack_at(&self, function: &str) -> Option<&Value> {
        self.stacks().iter().find(|stack| {
            stack["frames"][0]["function"]
                .as_str()
                .is_some_and(|name| names(name, function))
        })
    }

    /// Every stack with `function` anywhere in it.
    pub fn stacks_through(&self, function: &str) -> Vec<&Value> {
        self.stacks()
            .iter()
            .filter(|stack| {
                stack["frames"].as_array().is_some_and(|frames| {
                    frames.iter().any(|frame| {
                        frame["function"]
                            .as_str()
                            .is_some_and(|name| names(name, function))
                    })
                })
            })
            .collect()
    }

    pub fn expect_stack_at(&self, function: &str) -> &Value {
        self.stack_at(function).unwrap_or_else(|| {
            panic!(
                "no stack with {function} as innermost frame in:\n{}",
                self.describe()
            )
        })
    }

    /// Events lost, all reasons together.
    pub fn dropped_total(&self) -> u64 {
        self.report["dropped"]
            .as_object()
            .expect("dropped")
            .values()
            .map(u64_of)
            .sum()
    }

    pub fn describe(&self) -> String {
        serde_json::to_string_pretty(&self.report).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// Runs `leaktrace ARGS --format json -o REPORT` with LD_LIBRARY_PATH set to the private
/// libc, and parses the report.
pub fn leaktrace(name: &str, args: &[&str]) -> Traced {
    leaktrace_then(name, args, || {})
}

/// Like [`leaktrace`], and calls `attached` once leaktrace has printed its first interval
/// line on stderr (its probes are in place by then).
pub fn leaktrace_then(name: &str, args: &[&str], attached: impl FnOnce()) -> Traced {
    leaktrace_with(name, args, &[], attached)
}

/// Like [`leaktrace_then`], with extra environment variables for leaktrace.
pub fn leaktrace_with(
    name: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    attached: impl FnOnce(),
) -> Traced {
    leaktrace_as(
        &[],
        &scratch_dir().join(format!("{name}.json")),
        args,
        envs,
        |_| attached(),
    )
}

/// The core of the `leaktrace*` helpers: `[PREFIX…] leaktrace ARGS --format json --output
/// REPORT` (PREFIX runs leaktrace, e.g. `setpriv …`), with LD_LIBRARY_PATH set to the
/// private libc; calls `attached` with leaktrace's pid once it has printed its first
/// interval line, and parses the report.
pub fn leaktrace_as(
    prefix: &[&str],
    report_path: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    attached: impl FnOnce(u32),
) -> Traced {
    use std::io::BufRead;

    let _ = std::fs::remove_file(report_path);
    let (before, after) = match args.iter().position(|arg| *arg == "--") {
        Some(split) => args.split_at(split),
        None => (args, &[][..]),
    };
    let mut command = match prefix.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(leaktrace_bin());
            command
        }
        None => Command::new(leaktrace_bin()),
    };
    let mut child = command
        .args(before)
        .args(["--format", "json", "--output"])
        .arg(report_path)
        .args(after)
        .env("LD_LIBRARY_PATH", private_libc_dir())
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run leaktrace");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (first_interval_tx, first_interval_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut signal = Some(first_interval_tx);
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("leaktrace: ")
                && line.contains("stacks listed")
                && let Some(tx) = signal.take()
            {
                let _ = tx.send(());
            }
            text.extend_from_slice(line.as_bytes());
            text.push(b'\n');
        }
        text
    });
    // An error means leaktrace ended first; the report (or its absence) tells why.
    if first_interval_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .is_ok()
    {
        attached(child.id());
    }
    let mut output = child.wait_with_output().expect("wait for leaktrace");
    output.stderr = reader.join().unwrap_or_default();
    let text = std::fs::read_to_string(report_path).unwrap_or_else(|err| {
        panic!(
            "leaktrace wrote no report ({err}); status {:?}, stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let report = serde_json::from_str(&text).expect("report is JSON");
    Traced { output, report }
}

/// `leaktrace run [OPTIONS] -- TARGET`: checks leaktrace passed on the target's exit
/// `status`, and returns the report.
pub fn run_to_exit(name: &str, target: &Path, options: &[&str], status: i32) -> Traced {
    run_to_exit_with(name, target, &[], options, status)
}

/// `leaktrace run [OPTIONS] -- TARGET ARGS`, as [`run_to_exit`].
pub fn run_to_exit_with(
    name: &str,
    target: &Path,
    target_args: &[&str],
    options: &[&str],
    status: i32,
) -> Traced {
    let target = target.to_str().expect("target path is UTF-8");
    let args: Vec<&str> = ["run"]
        .into_iter()
        .chain(options.iter().copied())
        .chain(["--", target])
        .chain(target_args.iter().copied())
        .collect();
    let traced = leaktrace(name, &args);
    assert_eq!(
        traced.output.status.code(),
        Some(status),
        "leaktrace passes on the exit status; stderr: {}",
        traced.stderr()
    );
    traced
}

/// A target process started by a test, killed when dropped (only ever our own child).
pub struct Target {
    pub child: std::process::Child,
}

impl Target {
    pub fn start(program: &Path, args: &[&str]) -> Target {
        // A file the test process just wrote can be busy for a moment: a child another test
        // forks meanwhile holds the write descriptor until it execs (ETXTBSY).
        let mut tries = 0;
        let child = loop {
            match Command::new(program)
                .args(args)
                .env("LD_LIBRARY_PATH", private_libc_dir())
                .spawn()
            {
                Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                started => break started.expect("start target"),
            }
        };
        // Let it reach its main loop.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Target { child }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The target still maps our private libc, not the system one.
    pub fn assert_uses_private_libc(&self) {
        let maps =
            std::fs::read_to_string(format!("/proc/{}/maps", self.child.id())).expect("maps");
        assert!(
            maps.contains(&private_libc_dir().join("libc.so.6").display().to_string()),
            "target does not use the private libc"
        );
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The verdict a stack held at a run's exit gets: leaking when the reachability scan found
/// a block of it lost (or found none of it reachable), reachable when every block is still
/// pointed to (valgrind's "still reachable").
pub fn held_at_exit_verdict(stack: &Value) -> &'static str {
    let reachability = &stack["reachability"];
    let blocks = |class: &str| reachability[class]["blocks"].as_u64().unwrap_or(0);
    if reachability.is_object()
        && blocks("lost") + blocks("indirectly_lost") == 0
        && blocks("interior") == 0
        && blocks("reachable") > 0
    {
        "reachable"
    } else {
        "leaking"
    }
}

pub fn u64_of(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not an integer: {value}"))
}

/// A tool the test needs (a receiver, promtool). Missing: a failure when
/// LEAKTRACE_REQUIRE_BPF=1 (CI, where `cargo xtask setup` installs it), else a visible SKIPPED.
pub fn tool_available(test: &str, path: &Path) -> bool {
    if path.exists() {
        return true;
    }
    if std::env::var("LEAKTRACE_REQUIRE_BPF").is_ok_and(|value| value == "1") {
        panic!(
            "{test}: {} is missing: run `cargo xtask setup`",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: {} is missing (`cargo xtask setup` installs it)",
        path.display()
    );
    false
}

/// The Python with oteltest that `cargo xtask setup` prepares (xtask/src/setup.rs).
pub fn otel_python() -> PathBuf {
    workspace_root().join("target/tools/otel-venv/bin/python")
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// GET http://127.0.0.1:PORT/PATH; the body, or None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};

    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    // Prometheus answers small bodies whole and large ones chunked.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            out.push_str(tail.get(..size)?);
            rest = tail.get(size + 2..)?;
        }
        return Some(out);
    }
    Some(body.to_string())
}

/// A helper process of a test (a receiver, Prometheus, a leaktrace running in the
/// background), interrupted and then killed when dropped. Only ever our own child.
pub struct Background {
    pub child: std::process::Child,
}

impl Background {
    pub fn spawn(command: &mut Command) -> Background {
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("start {command:?}: {err}"));
        Background { child }
    }

    /// Waits until the process has mapped a file whose path contains `library` (its
    /// allocator is in place to be found), for up to 20 s.
    pub fn wait_for_library(&self, library: &str) {
        let maps = format!("/proc/{}/maps", self.child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if std::fs::read_to_string(&maps).is_ok_and(|text| text.contains(library)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!(
            "process {} mapped no {library} within 20 s",
            self.child.id()
        );
    }

    /// Sends SIGINT and waits up to `grace` for it to exit.
    pub fn interrupt(&mut self, grace: std::time::Duration) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.interrupt(std::time::Duration::from_secs(5));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
