//! The links that keep probes in, how allocator probes are linked, and taking them out
//! without making anyone wait: each link's removal waits for the kernel.
use std::fs;

use aya::programs::uprobe::UProbeLink;

use crate::probe::attach::Probes;

/// A link that keeps probes in: aya's, one per probe, or a uprobe_multi link for a set (or
/// a syscall tracepoint's). Dropping it detaches; the field is held for that alone.
#[allow(dead_code)]
pub(super) enum ProbeLink {
    PerProbe(UProbeLink),
    Multi(std::os::fd::OwnedFd),
    TracePoint(aya::programs::trace_point::TracePointLink),
}

/// How allocator probes are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LinkMode {
    /// uprobe_multi links, the allocating functions as a uprobe session (Linux 6.13+).
    Session,
    /// uprobe_multi links, an entry and a return link (Linux 6.6+).
    Multi,
    /// aya's links, one per probe (older kernels).
    PerProbe,
}

/// How links are made: the most the kernel has, unless LEAKTRACE_PROBE_LINKS says `multi`
/// (no sessions) or `per-probe` (the paths older kernels take), for tests and comparisons.
pub(super) fn link_mode() -> LinkMode {
    match std::env::var("LEAKTRACE_PROBE_LINKS").as_deref() {
        Ok("per-probe") => LinkMode::PerProbe,
        Ok("multi") => LinkMode::Multi,
        _ => LinkMode::Session,
    }
}

/// Detaches `links` without the caller waiting for the kernel: in a process of its own
/// (see `detach_in_helper`), else on a thread of its own (`name`), in parallel.
pub(super) fn detach_in_background(links: Vec<ProbeLink>, name: &str) {
    if links.is_empty() {
        return;
    }
    let Err(links) = detach_in_helper(links) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || detach_in_parallel(links));
}

/// Detaches `links` in a process of its own, which nobody signals: a uprobe taken out by a
/// thread that a SIGKILL reaches midway keeps its breakpoint in the target (the kernel's
/// write of the original instruction gives up on a fatal signal) while the probe is gone,
/// and the target then dies of SIGTRAP at its next call. A grandchild (reparented at once:
/// no zombie) keeps a copy of every descriptor; this process drops its own copies of
/// `links`, which does not wait; the grandchild then closes everything, which for those
/// links is the last reference, and exits. If this process dies first, the grandchild
/// closes everything when its pipe ends, and every link comes out there. Err gives the
/// links back when no process can be started.
fn detach_in_helper(links: Vec<ProbeLink>) -> Result<(), Vec<ProbeLink>> {
    use std::os::fd::AsRawFd;
    let Ok((reader, writer)) = std::io::pipe() else {
        return Err(links);
    };
    let (reader_fd, writer_fd) = (reader.as_raw_fd(), writer.as_raw_fd());
    // SAFETY: the children run only async-signal-safe calls (fork, setsid, signal, close,
    // read, close_range, _exit) on values prepared before the fork, then exit.
    let middle = unsafe { libc::fork() };
    if middle < 0 {
        return Err(links);
    }
    if middle == 0 {
        // SAFETY: as above.
        unsafe {
            if libc::fork() == 0 {
                become_link_keeper();
                libc::close(writer_fd);
                wait_for_pipe_end(reader_fd);
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                libc::_exit(0);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: reaping our own child, which exits at once.
    unsafe { libc::waitpid(middle, std::ptr::null_mut(), 0) };
    drop(reader);
    drop(links);
    drop(writer);
    Ok(())
}

/// In a forked keeper of links (see `detach_in_helper`, `hand_off_links`): a session of its
/// own, out of leaktrace's process group, and the default action for the signals leaktrace
/// handles (its handlers only note them): a SIGTERM or SIGINT ends it, as any process.
///
/// # Safety
/// Async-signal-safe calls only: fine in a child forked from a threaded process.
unsafe fn become_link_keeper() {
    // SAFETY: setsid and signal are async-signal-safe.
    unsafe {
        libc::setsid();
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}

/// Blocks until every writing end of the pipe `reader` reads from is closed (or a byte
/// comes).
///
/// # Safety
/// As for `become_link_keeper`.
unsafe fn wait_for_pipe_end(reader: i32) {
    let mut byte = 0u8;
    // SAFETY: read into a local byte; errno of this thread.
    unsafe {
        while libc::read(reader, (&raw mut byte).cast(), 1) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
    }
}

/// Detaching a uprobe waits for RCU grace periods, about 90 ms each here, and the kernel
/// does most of it under one mutex (event_mutex). From parallel threads the parts outside
/// the mutex overlap: about 15% less.
fn detach_in_parallel(links: Vec<ProbeLink>) {
    std::thread::scope(|scope| {
        for link in links {
            if std::thread::Builder::new()
                .spawn_scoped(scope, move || drop(link))
                .is_err()
            {
                // No thread to spare: this one detaches the rest in turn.
                break;
            }
        }
    });
}

impl Probes {
    /// Removes the probes as leaktrace exits, without making it wait: each link's removal
    /// waits for the kernel (an RCU grace period, 50 to 100 ms, several in a row), which
    /// made every `attach` and `run` end with half a second or more of nothing. A child
    /// process keeps a copy of each link descriptor and closes them once this process has
    /// exited (it reads a pipe whose writing end this process holds until then); this
    /// process's own copies then close at once. The probes stay in for that fraction of a
    /// second after the report is written, recording nothing anyone reads. Where no child
    /// can be started, the probes are removed here as before.
    pub fn detach_after_exit(self) {
        if let Err(err) = hand_off_links() {
            log::debug!("probes removed before exit: {err}");
        }
        drop(self);
    }
}

/// Forks the child that closes this process's BPF links after it exits (see
/// `Probes::detach_after_exit`). The child keeps nothing else: not the standard streams (a
/// reader waiting for their end would wait for it), not sockets or files.
fn hand_off_links() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, IntoRawFd};
    // Which descriptors are links, found before the fork: the child may not allocate.
    let mut keep: Vec<i32> = fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            (target.as_os_str() == "anon_inode:bpf_link").then_some(fd)
        })
        .collect();
    if keep.is_empty() {
        return Ok(());
    }
    let (reader, writer) = std::io::pipe()?;
    let writer_fd = writer.as_raw_fd();
    keep.retain(|&fd| fd != writer_fd);
    keep.push(reader.as_raw_fd());
    keep.sort_unstable();
    // SAFETY: the child runs only async-signal-safe calls (setsid, signal, close_range,
    // close, read, _exit) on memory allocated before the fork, then exits.
    let child = unsafe { libc::fork() };
    match child {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // SAFETY: as above.
            unsafe {
                become_link_keeper();
                let mut from: u32 = 0;
                for &fd in &keep {
                    let fd = fd as u32;
                    if fd > from {
                        libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32);
                    }
                    from = fd + 1;
                }
                libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
                // The writing end's number may have been a link's when the list was read
                // (a link detached meanwhile): this process must not keep its own pipe open.
                libc::close(writer_fd);
                wait_for_pipe_end(reader.as_raw_fd());
                libc::_exit(0);
            }
        }
        _ => {
            // The writing end stays open until this process exits: the child's signal.
            let _ = writer.into_raw_fd();
            drop(reader);
            Ok(())
        }
    }
}

impl Drop for Probes {
    /// Detaches everything, in a process of its own (see `detach_in_helper`), else here
    /// (see `detach_in_parallel`: 17 probes take about 1.5 s here).
    fn drop(&mut self) {
        let mut links = std::mem::take(&mut self.links);
        links.append(&mut self.allocation_links);
        let started = std::time::Instant::now();
        let count = links.len();
        if let Err(links) = detach_in_helper(links) {
            detach_in_parallel(links);
        }
        log::debug!(
            "{count} uprobes detached in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}
