//! The launcher thread's ptrace loop: it follows the command and the children it forks,
//! holds each new program at its entry and each process at its exit while leaktrace needs
//! it, and lets signals and group stops through.
use std::{
    collections::{HashMap, HashSet},
    io,
    sync::mpsc,
};

use crate::probe::launch::ChildEvent;

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
pub(super) unsafe fn wait_loop(
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
