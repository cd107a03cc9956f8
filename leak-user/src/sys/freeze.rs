//! Stopping a running process briefly, to read its registers and memory as one consistent
//! picture: every thread is seized with ptrace and interrupted (no signal is sent, nothing
//! the program can observe but the pause), and released when [`Frozen`] is dropped, on any
//! error or early return. If leaktrace itself dies meanwhile, the kernel detaches the
//! threads and they run on.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

/// A process whose threads are all stopped.
pub struct Frozen {
    pid: u32,
    /// Seized threads, released on drop.
    threads: BTreeSet<i32>,
    since: Instant,
}

/// Rounds of "list the threads, seize the new ones": a thread can start another between
/// the listing and its seizure.
const SEIZE_ROUNDS: usize = 16;

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// The ids of process `pid`'s threads, as /proc lists them now.
pub fn thread_ids(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// One stopped thread's registers as the reachability scan takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadRegisters {
    /// Every general-purpose register and the TLS bases: values that may hold pointers.
    pub values: Vec<u64>,
    /// Where its live stack begins.
    pub stack_pointer: u64,
    /// rip and rbp, where a walk of its stack starts.
    pub instruction_pointer: u64,
    pub frame_pointer: u64,
}

/// The registers of thread `tid`, stopped under this thread's ptrace; None where they
/// cannot be read.
pub fn thread_registers(tid: i32) -> Option<ThreadRegisters> {
    // SAFETY: zeroed is a valid user_regs_struct (plain integers).
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: the caller's ptrace stop; regs is a valid out buffer.
    let got = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGS,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            (&raw mut regs).cast::<libc::c_void>(),
        )
    };
    if got != 0 {
        return None;
    }
    Some(ThreadRegisters {
        values: vec![
            regs.rax,
            regs.rbx,
            regs.rcx,
            regs.rdx,
            regs.rsi,
            regs.rdi,
            regs.rbp,
            regs.rsp,
            regs.r8,
            regs.r9,
            regs.r10,
            regs.r11,
            regs.r12,
            regs.r13,
            regs.r14,
            regs.r15,
            regs.fs_base,
            regs.gs_base,
        ],
        stack_pointer: regs.rsp,
        instruction_pointer: regs.rip,
        frame_pointer: regs.rbp,
    })
}

impl Frozen {
    /// Stops every thread of `pid`.
    pub fn freeze(pid: u32) -> Result<Frozen, String> {
        let mut frozen = Frozen {
            pid,
            threads: BTreeSet::new(),
            since: Instant::now(),
        };
        for _ in 0..SEIZE_ROUNDS {
            let new: Vec<i32> = thread_ids(pid)
                .into_iter()
                .filter(|tid| !frozen.threads.contains(tid))
                .collect();
            if new.is_empty() {
                if frozen.threads.is_empty() {
                    return Err(format!("process {pid} has no threads to stop (it exited)"));
                }
                return Ok(frozen);
            }
            for tid in new {
                // SAFETY: ptrace with integer arguments; the kernel checks the thread.
                let seized = unsafe {
                    libc::ptrace(
                        libc::PTRACE_SEIZE,
                        tid,
                        std::ptr::null_mut::<libc::c_void>(),
                        std::ptr::null_mut::<libc::c_void>(),
                    )
                };
                if seized != 0 {
                    let err = last_error();
                    if err.raw_os_error() == Some(libc::ESRCH) {
                        // The thread ended meanwhile.
                        continue;
                    }
                    return Err(format!(
                        "could not stop thread {tid} of process {pid}: {err} (is another debugger or tracer attached?)"
                    ));
                }
                frozen.threads.insert(tid);
                // SAFETY: as above, on a thread we seized.
                unsafe {
                    libc::ptrace(
                        libc::PTRACE_INTERRUPT,
                        tid,
                        std::ptr::null_mut::<libc::c_void>(),
                        std::ptr::null_mut::<libc::c_void>(),
                    )
                };
                frozen.wait_stopped(tid)?;
            }
        }
        Err(format!(
            "process {pid} starts threads faster than they can be stopped"
        ))
    }

    /// Waits for a seized thread to report its stop. Signals that arrive first are put
    /// back (re-injected when the thread resumes), so the program sees them all.
    fn wait_stopped(&mut self, tid: i32) -> Result<(), String> {
        loop {
            let mut status = 0;
            // SAFETY: waits for one of our tracees; status is a valid out pointer.
            let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
            if waited < 0 {
                let err = last_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // ECHILD: the thread is gone.
                self.threads.remove(&tid);
                return Ok(());
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.threads.remove(&tid);
                return Ok(());
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            // The interrupt shows as a group-stop-like event stop (SIGTRAP with
            // PTRACE_EVENT_STOP). Any other signal-delivery stop is a real signal: note it
            // and let it be delivered when the thread runs again.
            let event = (status >> 16) & 0xff;
            if event == libc::PTRACE_EVENT_STOP {
                return Ok(());
            }
            let signal = libc::WSTOPSIG(status);
            // SAFETY: resume with the signal it was about to receive, then interrupt again.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_CONT,
                    tid,
                    std::ptr::null_mut::<libc::c_void>(),
                    signal as usize as *mut libc::c_void,
                );
                libc::ptrace(
                    libc::PTRACE_INTERRUPT,
                    tid,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                );
            }
        }
    }

    /// Every general-purpose register and the TLS bases of every thread (values that may
    /// hold pointers), and each thread's stack pointer.
    pub fn registers(&self) -> (Vec<u64>, Vec<u64>) {
        let mut values = Vec::new();
        let mut stack_pointers = Vec::new();
        for &tid in &self.threads {
            if let Some(thread) = thread_registers(tid) {
                values.extend(thread.values);
                stack_pointers.push(thread.stack_pointer);
            }
        }
        (values, stack_pointers)
    }

    /// How long the process has been stopped.
    pub fn stopped_for(&self) -> Duration {
        self.since.elapsed()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &tid in &self.threads {
            // SAFETY: detaching one of our tracees resumes it.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    tid,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
        }
    }
}
