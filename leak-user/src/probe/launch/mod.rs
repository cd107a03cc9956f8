//! Starting a command for `leaktrace run` with the probes in place before its first
//! instruction, and holding it at exit until its memory has been read.
//!
//! A dedicated thread forks the child, which waits on a pipe before exec; the thread seizes
//! it with ptrace (exit, exec and fork events only: signals pass through untouched, group
//! stops are honoured), and the children it forks with it. Ptrace is per thread, so every
//! ptrace call stays on that thread.
//!
//! Which program a command runs is found in `program`; the child held before exec is
//! `child`; the launcher thread's ptrace loop, following the command and its children, is
//! `tracer`.
mod child;
mod program;
mod tracer;

pub use program::{is_executable, program_image, resolve_program};

use std::{io, path::Path, sync::mpsc, thread};

use crate::probe::launch::{
    child::{CommandLine, HeldChild, null_terminated, seize},
    tracer::wait_loop,
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
