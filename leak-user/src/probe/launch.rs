//! Starting a command for `leaktrace run` with the probes in place before its first
//! instruction, and holding it at exit until its memory has been read.
//!
//! A dedicated thread forks the child, which waits on a pipe before exec; the thread seizes
//! it with ptrace (exit, exec and fork events only: signals pass through untouched, group
//! stops are honoured), and the children it forks with it. Ptrace is per thread, so every
//! ptrace call stays on that thread.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

/// What the launcher thread reports. `pid` is the process an event is about: the command
/// leaktrace started, or a child it forked (followed from its first instruction).
#[derive(Debug)]
pub enum ChildEvent {
    /// A program is about to run its first instruction (its entry point, after the
    /// dynamic loader mapped its libraries), held there until the ack is sent: the
    /// command's first, or one a followed process executed later.
    Started { pid: u32, ack: mpsc::Sender<()> },
    /// A traced process forked: the child is held before its first instruction, and its
    /// parent at the fork, until the ack is sent.
    Forked {
        pid: u32,
        parent: u32,
        ack: mpsc::Sender<()>,
    },
    /// The process executed another program after its first (a script's interpreter, or
    /// what a wrapper execs), stopped before that program's first instruction until the
    /// ack is sent: true to go on tracing it, false to let it go (a child that executes a
    /// program not followed). `spawned`: a vfork or posix_spawn child, which ran in its
    /// parent's memory until now and had no event before this one.
    Executed {
        pid: u32,
        spawned: bool,
        ack: mpsc::Sender<bool>,
    },
    /// The process stopped at exit; its memory is intact until the ack is sent. The
    /// registers are those of its thread leaktrace traces (where it was when the process
    /// ended: in `exit`, or wherever another thread's exit found it), None if unreadable.
    Exiting {
        pid: u32,
        ack: mpsc::Sender<()>,
        registers: Option<crate::sys::freeze::ThreadRegisters>,
    },
    /// The process is gone. After the command's own exit no event follows: children still
    /// running are let go.
    Exited {
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Starting it failed after fork (exec failed).
    Failed(String),
}

/// A forked child waiting to exec.
pub struct Launched {
    pub pid: u32,
    /// The launcher thread, which drops its own capabilities once the command has started.
    pub launcher_tid: i32,
    go: mpsc::Sender<()>,
}

impl Launched {
    /// Lets the child exec; events arrive on the receiver given by [`launch`].
    pub fn release(self) {
        let _ = self.go.send(());
    }
}

/// Resolves a command name through PATH like execvp would.
pub fn resolve_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.exists().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// The program the kernel really runs for `program`: a `#!` script's interpreter (through
/// `/usr/bin/env NAME`, NAME found in PATH), followed as the kernel follows them (a script
/// whose interpreter is a script, up to 4 deep); `program` itself when it is no script. The
/// allocator, the unwind tables and the language runtime are those of that program.
pub fn program_image(program: &Path) -> PathBuf {
    let mut image = program.to_path_buf();
    for _ in 0..4 {
        match interpreter_of(&image) {
            Some(next) => image = next,
            None => break,
        }
    }
    image
}

/// The interpreter a `#!` line names, resolved as above.
fn interpreter_of(script: &Path) -> Option<PathBuf> {
    use std::io::Read as _;
    let mut head = [0u8; 256];
    let read = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let line = head[..read].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n')?];
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let interpreter = PathBuf::from(words.next()?);
    if interpreter.file_name().is_some_and(|name| name == "env") {
        // `#!/usr/bin/env [-S] NAME …`: NAME through PATH (options and VAR=value skipped).
        let name = words.find(|word| !word.starts_with('-') && !word.contains('='))?;
        return resolve_program(name);
    }
    Some(interpreter)
}

/// A regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Forks `program` (stopped before exec) on a launcher thread.
///
/// With `hold_at_entry`, the child also stops at its program's entry point (a breakpoint the
/// launcher places after exec and removes when it is hit) and reports `Started`.
///
/// With `every_thread`, every thread of the command and its children is traced, so that the
/// children any of them forks are followed; otherwise only each process's first thread is
/// (each thread's start and end is then no stop of leaktrace's: a stop costs tens of
/// microseconds, more on a virtual machine waking an idle CPU).
///
/// Once the command has been executed (its capabilities are set then), the launcher thread
/// keeps only the capabilities in `keep_after_exec`: capabilities belong to each thread, and
/// it cannot be dropped from the main thread.
pub fn launch(
    program: &Path,
    args: &[String],
    events: tokio::sync::mpsc::UnboundedSender<ChildEvent>,
    hold_at_entry: bool,
    every_thread: bool,
    keep_after_exec: u64,
) -> io::Result<Launched> {
    let launcher = Launcher {
        command: CommandLine::new(program, args)?,
        events,
        hold_at_entry,
        every_thread,
        keep_after_exec,
    };
    let (pid_tx, pid_rx) = mpsc::channel::<io::Result<(u32, i32)>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    thread::Builder::new()
        .name("leaktrace-launcher".into())
        // SAFETY: this thread seizes the command: every ptrace request about it comes from
        // there.
        .spawn(move || unsafe { launcher.run(pid_tx, go_rx) })?;
    let (pid, launcher_tid) = pid_rx
        .recv()
        .map_err(|_| io::Error::other("launcher thread ended early"))??;
    Ok(Launched {
        pid,
        launcher_tid,
        go: go_tx,
    })
}

/// The command as execve takes it: the program, its arguments, and leaktrace's environment.
struct CommandLine {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl CommandLine {
    fn new(program: &Path, args: &[String]) -> io::Result<CommandLine> {
        let to_c = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
        };
        let program = to_c(program.as_os_str().as_bytes())?;
        let mut argv = Vec::with_capacity(args.len());
        for arg in args {
            argv.push(to_c(arg.as_bytes())?);
        }
        let mut envp = Vec::new();
        for (key, value) in std::env::vars_os() {
            let mut entry = key.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            envp.push(to_c(&entry)?);
        }
        Ok(CommandLine {
            program,
            argv,
            envp,
        })
    }
}

/// A C array of `strings`, ended by a null pointer: valid while `strings` is.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|string| string.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// What the launcher thread starts, and how it traces it (see `launch`).
struct Launcher {
    command: CommandLine,
    events: tokio::sync::mpsc::UnboundedSender<ChildEvent>,
    hold_at_entry: bool,
    every_thread: bool,
    keep_after_exec: u64,
}

impl Launcher {
    /// The launcher thread: forks and seizes the command, sends its pid and this thread's
    /// id on `pid_tx`, lets it execute its program once `go` says so, then traces it until it
    /// ends.
    ///
    /// # Safety
    /// On the thread every ptrace request about the command comes from.
    unsafe fn run(self, pid_tx: mpsc::Sender<io::Result<(u32, i32)>>, go: mpsc::Receiver<()>) {
        let argv = null_terminated(&self.command.argv);
        let envp = null_terminated(&self.command.envp);
        // SAFETY: both arrays are null-terminated and outlive the call.
        let child = match unsafe { HeldChild::fork(&self.command.program, &argv, &envp) } {
            Ok(child) => child,
            Err(error) => {
                let _ = pid_tx.send(Err(error));
                return;
            }
        };
        let pid = child.pid;
        // SAFETY: our own child, from this thread.
        if let Err(error) = unsafe { seize(pid, self.every_thread) } {
            let _ = pid_tx.send(Err(error));
            return;
        }
        // SAFETY: gettid has no preconditions.
        let _ = pid_tx.send(Ok((pid as u32, unsafe { libc::gettid() })));
        if go.recv().is_err() {
            // Attaching failed: the child never execs.
            // SAFETY: our own child's pipe, and our own child.
            unsafe { child.abandon() };
            return;
        }
        // SAFETY: as above.
        if let Some(errno) = unsafe { child.exec() } {
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
            let _ = self.events.send(ChildEvent::Failed(format!(
                "could not execute {}: {}",
                self.command.program.to_string_lossy(),
                io::Error::from_raw_os_error(errno)
            )));
            return;
        }
        // The command runs with what it got at exec; the ptrace requests ahead need
        // only what the rest of the session keeps.
        match crate::probe::privileges::keep_only_this_thread(self.keep_after_exec) {
            Ok(dropped) => log::debug!(
                "launcher thread: dropped {} capabilities",
                dropped.count_ones()
            ),
            Err(reason) => {
                log::warn!("launcher thread: could not drop capabilities: {reason}")
            }
        }
        // SAFETY: our seized child, from the seizing thread.
        unsafe { wait_loop(pid, &self.events, self.hold_at_entry) };
    }
}

/// A forked child waiting before exec: it executes the command once a byte comes on its
/// pipe, and reports on another why that failed, if it did.
struct HeldChild {
    pid: libc::pid_t,
    /// The end of the pipe the child waits on.
    go_writer: libc::c_int,
    /// The end of the pipe an exec failure's errno comes back on (closed by a successful
    /// exec).
    error_reader: libc::c_int,
}

impl HeldChild {
    /// Forks the child that executes `program` with `argv` and `envp` when released.
    ///
    /// # Safety
    /// `argv` and `envp` are arrays of C strings ended by a null pointer, valid for the call.
    unsafe fn fork(
        program: &CString,
        argv: &[*const libc::c_char],
        envp: &[*const libc::c_char],
    ) -> io::Result<HeldChild> {
        // SAFETY: pipes and fork; the child only calls async-signal-safe functions
        // (read, execve, write, _exit) on memory prepared before fork.
        unsafe {
            let mut go_pipe = [0; 2];
            let mut err_pipe = [0; 2];
            if libc::pipe2(go_pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0
                || libc::pipe2(err_pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let pid = libc::fork();
            if pid < 0 {
                return Err(io::Error::last_os_error());
            }
            if pid == 0 {
                libc::close(go_pipe[1]);
                libc::close(err_pipe[0]);
                let mut byte = 0u8;
                if libc::read(go_pipe[0], (&raw mut byte).cast(), 1) == 1 {
                    libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    let errno = *libc::__errno_location();
                    libc::write(err_pipe[1], (&raw const errno).cast(), size_of::<i32>());
                }
                libc::_exit(127);
            }
            libc::close(go_pipe[0]);
            libc::close(err_pipe[1]);
            Ok(HeldChild {
                pid,
                go_writer: go_pipe[1],
                error_reader: err_pipe[0],
            })
        }
    }

    /// Lets the child execute the command; the errno of its failure, if it failed.
    ///
    /// # Safety
    /// The child is ours, its pipes open.
    unsafe fn exec(self) -> Option<i32> {
        // SAFETY: writes and reads on our own pipes, into local values.
        unsafe {
            let byte = 1u8;
            libc::write(self.go_writer, (&raw const byte).cast(), 1);
            libc::close(self.go_writer);
            let mut errno = 0i32;
            let got = libc::read(self.error_reader, (&raw mut errno).cast(), size_of::<i32>());
            libc::close(self.error_reader);
            (got == size_of::<i32>() as isize).then_some(errno)
        }
    }

    /// Never lets the child execute anything: it exits, and is reaped.
    ///
    /// # Safety
    /// As for `exec`.
    unsafe fn abandon(self) {
        // SAFETY: closing our own pipe; reaping our own child.
        unsafe {
            libc::close(self.go_writer);
            libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WALL);
        }
    }
}

/// Seizes the held child with ptrace: exit, exec and fork events only (and, with
/// `every_thread`, its threads' creation), signals passing through. The child is killed if
/// that fails.
///
/// # Safety
/// `pid` is our own child; every later ptrace request about it comes from this thread.
unsafe fn seize(pid: libc::pid_t, every_thread: bool) -> io::Result<()> {
    let mut options = libc::PTRACE_O_TRACEEXIT
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK;
    if every_thread {
        options |= libc::PTRACE_O_TRACECLONE;
    }
    // SAFETY: seizing, or killing and reaping, our own child.
    unsafe {
        let seized = libc::ptrace(
            libc::PTRACE_SEIZE,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            options as usize as *mut libc::c_void,
        );
        if seized != 0 {
            let error = io::Error::last_os_error();
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            return Err(error);
        }
    }
    Ok(())
}

/// Whether `tid` leads its own process (a thread attached with CLONE_PTRACE does not).
fn is_process(tid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Tgid:"))
            .and_then(|tgid| tgid.trim().parse::<libc::pid_t>().ok())
            == Some(tid)
    })
}

/// The program's entry point, from the auxiliary vector the kernel gave it (AT_ENTRY).
fn entry_point(pid: libc::pid_t) -> Option<u64> {
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).ok()?;
    auxv.chunks_exact(16).find_map(|pair| {
        let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
        let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
        (key == libc::AT_ENTRY).then_some(value)
    })
}

/// A breakpoint at the program's entry: its address and the word it replaced.
struct EntryBreakpoint {
    address: u64,
    original: libc::c_long,
}

/// Places an int3 at the entry point of the program the child just exec'd.
///
/// # Safety
/// `pid` is our seized child, in its exec stop; called from the seizing thread.
unsafe fn break_at_entry(pid: libc::pid_t) -> Option<EntryBreakpoint> {
    let address = entry_point(pid)?;
    // SAFETY: peek and poke of the stopped child's text, from the seizing thread.
    unsafe {
        *libc::__errno_location() = 0;
        let original = libc::ptrace(libc::PTRACE_PEEKTEXT, pid, address as *mut libc::c_void, 0);
        if original == -1 && *libc::__errno_location() != 0 {
            return None;
        }
        let trapped = (original & !0xff) | 0xcc;
        let poked = libc::ptrace(
            libc::PTRACE_POKETEXT,
            pid,
            address as *mut libc::c_void,
            trapped as *mut libc::c_void,
        );
        (poked == 0).then_some(EntryBreakpoint { address, original })
    }
}

/// If the child stopped on the entry breakpoint, puts the instruction back and rewinds to
/// it. Returns whether it was that breakpoint.
///
/// # Safety
/// As for `break_at_entry`, in a SIGTRAP signal-delivery stop.
unsafe fn leave_entry_breakpoint(pid: libc::pid_t, breakpoint: &EntryBreakpoint) -> bool {
    // SAFETY: register and text access on the stopped child, from the seizing thread.
    unsafe {
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        if libc::ptrace(
            libc::PTRACE_GETREGS,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            (&raw mut regs).cast::<libc::c_void>(),
        ) != 0
            || regs.rip != breakpoint.address + 1
        {
            return false;
        }
        libc::ptrace(
            libc::PTRACE_POKETEXT,
            pid,
            breakpoint.address as *mut libc::c_void,
            breakpoint.original as *mut libc::c_void,
        );
        regs.rip = breakpoint.address;
        libc::ptrace(
            libc::PTRACE_SETREGS,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            (&raw const regs).cast::<libc::c_void>().cast_mut(),
        );
        true
    }
}

/// How long a process's end may wait for its other threads to end (see
/// `wait_for_dying_threads`): each takes microseconds unless stuck in the kernel.
const DYING_THREADS_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether thread `tid` is on its way out: a SIGKILL pending (the end of its process takes
/// every other thread with one) or already exiting (PF_EXITING).
fn thread_dying(pid: libc::pid_t, tid: libc::pid_t) -> bool {
    const PF_EXITING: u64 = 0x4;
    let task = format!("/proc/{pid}/task/{tid}");
    let read = |file: &str| crate::sys::procfs::read_text(format!("{task}/{file}")).ok();
    let exiting = read("stat")
        .and_then(|stat| crate::sys::procfs::parse_stat_flags(&stat))
        .is_some_and(|flags| flags & PF_EXITING != 0);
    let killed = read("status")
        .and_then(|status| crate::sys::procfs::parse_pending_signals(&status))
        .is_some_and(|pending| pending & (1 << (libc::SIGKILL - 1)) != 0);
    exiting || killed
}

/// At a process's exit stop (its main thread's), waits until the other threads its end
/// takes are gone, a while at most: each one's registers are recorded as it ends (the
/// kernel side's thread_exit), and the scan of the process's memory takes them as
/// valgrind takes every thread's. Threads that are not ending (the main thread ended
/// alone, pthread_exit) are not waited for. Threads traced by this thread (with every
/// thread traced) that stop at their own exit are let go on.
fn wait_for_dying_threads(pid: libc::pid_t, threads: &mut HashSet<libc::pid_t>) {
    let started = std::time::Instant::now();
    loop {
        let dying: Vec<libc::pid_t> = crate::sys::freeze::thread_ids(pid as u32)
            .into_iter()
            .filter(|&tid| tid != pid && thread_dying(pid, tid))
            .collect();
        if dying.is_empty() || started.elapsed() > DYING_THREADS_WAIT {
            if !dying.is_empty() {
                log::debug!("process {pid}: {} threads still ending", dying.len());
            }
            return;
        }
        let traced: Vec<libc::pid_t> = dying
            .into_iter()
            .filter(|tid| threads.contains(tid))
            .collect();
        for tid in &traced {
            let mut status = 0;
            // SAFETY: our own tracee; no hang (WNOHANG).
            let waited = unsafe { libc::waitpid(*tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if waited == *tid && libc::WIFSTOPPED(status) {
                // SAFETY: resuming our own stopped tracee.
                unsafe {
                    libc::ptrace(
                        libc::PTRACE_CONT,
                        *tid,
                        std::ptr::null_mut::<libc::c_void>(),
                        std::ptr::null_mut::<libc::c_void>(),
                    )
                };
            } else if waited == *tid {
                threads.remove(tid);
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Whether two processes share one address space (a vfork or posix_spawn child and its
/// parent until the child executes a program, or a clone(CLONE_VM) child).
fn share_memory(a: libc::pid_t, b: libc::pid_t) -> bool {
    const KCMP_VM: libc::c_long = 1;
    // SAFETY: kcmp only compares kernel objects of the two processes.
    unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_VM, 0, 0) == 0 }
}

/// Passes signals through, honours group stops, holds the command at its exit (and, when
/// asked, at its program's entry). Children forked by a traced thread (each process's first,
/// or every one with PTRACE_O_TRACECLONE) are attached by the kernel (the options are
/// inherited) and held at their first stop until their probes are in place. A vfork or
/// posix_spawn child runs in its parent's memory until it executes a program: it is only
/// reported then, as a new program.
///
/// # Safety
/// `pid` is our seized child; called from the seizing thread.
unsafe fn wait_loop(
    pid: libc::pid_t,
    events: &tokio::sync::mpsc::UnboundedSender<ChildEvent>,
    hold_at_entry: bool,
) {
    let mut tracer = Tracer {
        pid,
        events,
        hold_at_entry,
        first_exec: true,
        entries: HashMap::new(),
        running: HashSet::new(),
        spawned: HashSet::new(),
        threads: HashSet::new(),
    };
    loop {
        let mut status = 0;
        // This thread's children and tracees only (__WNOTHREAD): the command and every
        // child it forked, not what other threads of leaktrace start or stop.
        // SAFETY: waiting on our own tracees.
        let waited = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::__WNOTHREAD) };
        if waited < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            let _ = events.send(ChildEvent::Exited {
                pid: pid as u32,
                code: None,
                signal: None,
            });
            return;
        }
        let ended = if libc::WIFEXITED(status) {
            Some((Some(libc::WEXITSTATUS(status)), None))
        } else if libc::WIFSIGNALED(status) {
            Some((None, Some(libc::WTERMSIG(status))))
        } else {
            None
        };
        if let Some((code, signal)) = ended {
            if tracer.ended(waited, code, signal) {
                return;
            }
            continue;
        }
        if libc::WIFSTOPPED(status) {
            // SAFETY: `waited` is our tracee, stopped; this is the tracing thread.
            unsafe { tracer.stopped(waited, status) };
        }
    }
}

/// What the tracing thread knows of the processes and threads it traces.
struct Tracer<'a> {
    /// The command leaktrace started.
    pid: libc::pid_t,
    events: &'a tokio::sync::mpsc::UnboundedSender<ChildEvent>,
    hold_at_entry: bool,
    /// The command has not executed its program yet.
    first_exec: bool,
    /// Entry breakpoints of followed programs not yet at their first instruction.
    entries: HashMap<libc::pid_t, EntryBreakpoint>,
    /// Forked children past their first stop.
    running: HashSet<libc::pid_t>,
    /// Children in their parent's memory (vfork, posix_spawn) until they execute a program.
    spawned: HashSet<libc::pid_t>,
    /// Threads past their first stop, other than each process's first (traced when every
    /// thread is, so that a fork from any of them is followed).
    threads: HashSet<libc::pid_t>,
}

impl Tracer<'_> {
    /// Process or thread `waited` is gone. Returns whether it was the command: tracing ends
    /// then.
    fn ended(&mut self, waited: libc::pid_t, code: Option<i32>, signal: Option<i32>) -> bool {
        if self.threads.remove(&waited) {
            return false;
        }
        self.running.remove(&waited);
        self.spawned.remove(&waited);
        self.entries.remove(&waited);
        let _ = self.events.send(ChildEvent::Exited {
            pid: waited as u32,
            code,
            signal,
        });
        // Children still running are let go as this thread ends.
        waited == self.pid
    }

    /// Tracee `waited` stopped with `status`: says why to the session where it matters, and
    /// lets it go on.
    ///
    /// # Safety
    /// `waited` is our tracee, stopped; called from the tracing thread.
    unsafe fn stopped(&mut self, waited: libc::pid_t, status: libc::c_int) {
        let null = std::ptr::null_mut::<libc::c_void>();
        let event = (status >> 16) & 0xff;
        // SAFETY: ptrace requests on our tracees, from the tracing thread.
        unsafe {
            if event == libc::PTRACE_EVENT_EXIT {
                self.exiting(waited);
            } else if event == libc::PTRACE_EVENT_FORK
                || event == libc::PTRACE_EVENT_VFORK
                || event == libc::PTRACE_EVENT_CLONE
            {
                // The child (or thread) reports its own first stop, where a child is held
                // (below).
                libc::ptrace(libc::PTRACE_CONT, waited, null, null);
            } else if event == libc::PTRACE_EVENT_EXEC {
                self.executed(waited);
            } else if event == libc::PTRACE_EVENT_STOP && libc::WSTOPSIG(status) == libc::SIGTRAP {
                self.trap_stop(waited);
            } else if event == libc::PTRACE_EVENT_STOP {
                // Group stop (SIGSTOP, SIGTSTP…): stay stopped until SIGCONT, as untraced.
                libc::ptrace(libc::PTRACE_LISTEN, waited, null, null);
            } else if libc::WSTOPSIG(status) == libc::SIGTRAP
                && self
                    .entries
                    .get(&waited)
                    .is_some_and(|breakpoint| leave_entry_breakpoint(waited, breakpoint))
            {
                self.at_entry(waited);
            } else {
                // Signal-delivery stop: deliver the signal unchanged.
                let signal = libc::WSTOPSIG(status) as usize;
                libc::ptrace(libc::PTRACE_CONT, waited, null, signal as *mut libc::c_void);
            }
        }
    }

    /// At a thread's exit stop: a process's end is held until the session has read its
    /// memory.
    ///
    /// # Safety
    /// As for `stopped`.
    unsafe fn exiting(&mut self, waited: libc::pid_t) {
        let (ack_tx, ack_rx) = mpsc::channel();
        let registers = crate::sys::freeze::thread_registers(waited);
        // A thread's end is not its process's (each process stops at its main
        // thread's).
        let process_end = !self.spawned.contains(&waited) && !self.threads.contains(&waited);
        if process_end {
            wait_for_dying_threads(waited, &mut self.threads);
        }
        if process_end
            && self
                .events
                .send(ChildEvent::Exiting {
                    pid: waited as u32,
                    ack: ack_tx,
                    registers,
                })
                .is_ok()
        {
            let _ = ack_rx.recv();
        }
        // SAFETY: resuming our own stopped tracee.
        unsafe { resume(waited) };
    }

    /// At an exec stop: the command's first program goes on (held at its entry when asked);
    /// any later one is the session's to follow or let go.
    ///
    /// # Safety
    /// As for `stopped`.
    unsafe fn executed(&mut self, waited: libc::pid_t) {
        // SAFETY: ptrace requests on our stopped tracee, from the tracing thread.
        unsafe {
            if waited == self.pid && std::mem::take(&mut self.first_exec) {
                if self.hold_at_entry
                    && let Some(breakpoint) = break_at_entry(self.pid)
                {
                    self.entries.insert(self.pid, breakpoint);
                }
                resume(waited);
                return;
            }
            let (ack_tx, ack_rx) = mpsc::channel();
            let follow = self
                .events
                .send(ChildEvent::Executed {
                    pid: waited as u32,
                    spawned: self.spawned.remove(&waited),
                    ack: ack_tx,
                })
                .is_ok()
                && ack_rx.recv().unwrap_or(false);
            if follow || waited == self.pid {
                if follow
                    && self.hold_at_entry
                    && let Some(breakpoint) = break_at_entry(waited)
                {
                    self.entries.insert(waited, breakpoint);
                }
                self.running.insert(waited);
                resume(waited);
            } else {
                // Not followed into the new program: no stop of it comes here
                // again, nor of its children.
                self.running.remove(&waited);
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    waited,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                );
            }
        }
    }

    /// At a PTRACE_EVENT_STOP with SIGTRAP.
    ///
    /// Not a group stop (those carry the stopping signal): for a tracee that runs already,
    /// the end of a group stop (SIGCONT); otherwise a forked child's first stop, before its
    /// first instruction: it starts once its probes are in place. (It does not wait for its
    /// parent's fork event, which a parent killed meanwhile never reports.)
    ///
    /// # Safety
    /// As for `stopped`.
    unsafe fn trap_stop(&mut self, waited: libc::pid_t) {
        let first_stop = waited != self.pid
            && !self.spawned.contains(&waited)
            && !self.threads.contains(&waited)
            && !self.running.contains(&waited);
        if first_stop && !is_process(waited) {
            // A new thread: nothing to hold it for.
            self.threads.insert(waited);
        } else if first_stop {
            self.first_stop(waited);
        }
        // SAFETY: resuming our own stopped tracee.
        unsafe { resume(waited) };
    }

    /// A forked child's first stop: held until the session has its probes in place, unless
    /// it runs in its parent's memory.
    fn first_stop(&mut self, waited: libc::pid_t) {
        let parent = crate::sys::procfs::parent_pid(waited as u32).unwrap_or(0);
        if parent != 0 && share_memory(parent as libc::pid_t, waited) {
            // Its parent's probes see nothing of it (another process), and
            // what it does happens in its parent's memory: nothing of its own
            // to trace before it executes a program.
            self.spawned.insert(waited);
        } else {
            self.running.insert(waited);
            let (ack_tx, ack_rx) = mpsc::channel();
            if self
                .events
                .send(ChildEvent::Forked {
                    pid: waited as u32,
                    parent,
                    ack: ack_tx,
                })
                .is_ok()
            {
                let _ = ack_rx.recv();
            }
        }
    }

    /// At the entry breakpoint of a followed program (put back already): held until the
    /// session has its probes in place.
    ///
    /// # Safety
    /// As for `stopped`.
    unsafe fn at_entry(&mut self, waited: libc::pid_t) {
        self.entries.remove(&waited);
        let (ack_tx, ack_rx) = mpsc::channel();
        if self
            .events
            .send(ChildEvent::Started {
                pid: waited as u32,
                ack: ack_tx,
            })
            .is_ok()
        {
            let _ = ack_rx.recv();
        }
        // SAFETY: resuming our own stopped tracee.
        unsafe { resume(waited) };
    }
}

/// Lets a stopped tracee go on.
///
/// # Safety
/// `tid` is our tracee, stopped; called from the tracing thread.
unsafe fn resume(tid: libc::pid_t) {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: as the caller promises.
    unsafe { libc::ptrace(libc::PTRACE_CONT, tid, null, null) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_run_their_interpreter() {
        let dir = std::env::temp_dir().join(format!("leaktrace-shebang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let shell = write("plain.sh", "#!/bin/sh\necho hi\n");
        assert_eq!(program_image(&shell), PathBuf::from("/bin/sh"));
        let env = write("env.sh", "#!/usr/bin/env -S sh -e\necho hi\n");
        assert_eq!(Some(program_image(&env)), resolve_program("sh"));
        // A script whose interpreter is a script.
        let inner = write("inner", "#!/bin/sh\n");
        let outer = write("outer", &format!("#! {} -x\n", inner.display()));
        assert_eq!(program_image(&outer), PathBuf::from("/bin/sh"));
        // Not a script: itself.
        assert_eq!(
            program_image(Path::new("/bin/true")),
            PathBuf::from("/bin/true")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn resolves_through_path() {
        let sh = resolve_program("sh").expect("sh is on PATH");
        assert!(sh.is_absolute());
        assert!(resolve_program("/definitely/not/here").is_none());
        assert!(resolve_program("leaktrace-no-such-command").is_none());
    }
}
