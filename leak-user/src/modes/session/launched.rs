//! `run`: a launched command traced until it exits, what it executes, and the children it
//! forks, each traced in a session of its own.
use std::collections::BTreeMap;

use tokio::sync::mpsc::UnboundedReceiver;

use super::{Session, SessionError, start::ProgramProbes};
use crate::{
    model::{Exit, Report},
    probe::attach,
    probe::launch::ChildEvent,
    sys::procfs,
};

impl Session {
    /// Traces a launched command until it exits.
    pub(super) async fn trace_launched(
        &mut self,
        mut events: UnboundedReceiver<ChildEvent>,
    ) -> Result<Exit, SessionError> {
        let mut sample = tokio::time::interval(self.options.sample_interval);
        // Ctrl-C goes to the command (same process group); leaktrace waits for its exit.
        let mut ctrl_c = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|err| SessionError::Signals(format!("Ctrl-C: {err}")))?;
        // The report comes at exit; exporters still get an analysis every interval.
        let mut publish_every = tokio::time::interval(self.options.interval);
        publish_every.tick().await;
        // Forked children, each traced in a session of its own until it ends.
        let mut children: BTreeMap<u32, Session> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = sample.tick() => {
                    self.tick()?;
                    for (pid, child) in &mut children {
                        if let Err(err) = child.tick() {
                            log::warn!("forked child {pid}: {err}");
                        }
                    }
                }
                _ = publish_every.tick(), if self.exporting() => {
                    self.analyse(None, false)?;
                }
                _ = ctrl_c.recv() => {}
                event = events.recv() => {
                    if let Some(exit) = self.on_event(event, &mut children)? {
                        return Ok(exit);
                    }
                }
            }
        }
    }

    /// What the launcher tells of the command or of one of its `children`; the command's
    /// exit, once it exited (or the launcher is gone).
    fn on_event(
        &mut self,
        event: Option<ChildEvent>,
        children: &mut BTreeMap<u32, Session>,
    ) -> Result<Option<Exit>, SessionError> {
        match event {
            Some(ChildEvent::Started { pid, ack }) => {
                // Its libraries are mapped and nothing of the program has run:
                // their unwind tables go in before its first allocation.
                let session = if pid == self.pid {
                    Some(&mut *self)
                } else {
                    children.get_mut(&pid)
                };
                if let Some(session) = session
                    && let Some(tables) = &mut session.unwind
                {
                    tables.refresh(pid);
                }
                let _ = ack.send(());
            }
            Some(ChildEvent::Forked { pid, parent, ack }) => {
                match self.trace_forked_child(pid, parent) {
                    Ok(child) => {
                        children.insert(pid, child);
                    }
                    Err(err) => {
                        eprintln!(
                            "leaktrace: child {pid} (forked by {parent}) is not traced: {err}"
                        );
                    }
                }
                let _ = ack.send(());
            }
            Some(ChildEvent::Executed { pid, spawned, ack }) if pid != self.pid => {
                let follow = self.follow_executed_child(pid, spawned, children);
                let dropped = if follow { None } else { children.remove(&pid) };
                let _ = ack.send(follow);
                // Its probes come out in a process of their own (Probes::drop).
                drop(dropped);
            }
            Some(ChildEvent::Executed { ack, .. }) => {
                self.executed()?;
                let _ = ack.send(true);
            }
            Some(ChildEvent::Exiting {
                pid,
                ack,
                registers,
            }) => {
                if pid == self.pid {
                    self.exiting(registers)?;
                } else if let Some(child) = children.get_mut(&pid)
                    && let Err(err) = child.exiting(registers)
                {
                    log::warn!("forked child {pid}: {err}");
                }
                let _ = ack.send(());
            }
            Some(ChildEvent::Exited { pid, code, signal }) if pid != self.pid => {
                if let Some(mut child) = children.remove(&pid) {
                    match child.child_report(Some(Exit { code, signal })) {
                        Ok(report) => self.child_reports.push(report),
                        Err(err) => eprintln!("leaktrace: child {pid}: no report: {err}"),
                    }
                }
            }
            Some(ChildEvent::Exited { code, signal, .. }) => {
                self.tick()?;
                self.children_still_running(std::mem::take(children));
                return Ok(Some(Exit { code, signal }));
            }
            Some(ChildEvent::Failed(message)) => return Err(SessionError::Launch(message)),
            None => {
                self.children_still_running(std::mem::take(children));
                return Ok(Some(Exit {
                    code: None,
                    signal: None,
                }));
            }
        }
        Ok(None)
    }

    /// A child that executes a program: followed into it with --trace-children, let go
    /// otherwise (as valgrind does). Whether it is followed.
    fn follow_executed_child(
        &mut self,
        pid: u32,
        spawned: bool,
        children: &mut BTreeMap<u32, Session>,
    ) -> bool {
        self.options.trace_children && match children.get_mut(&pid) {
            Some(child) => child
                .executed()
                .map_err(|err| {
                    eprintln!(
                        "leaktrace: child {pid} is not followed into the program it executed: {err}"
                    );
                })
                .is_ok(),
            None => match self.trace_executed_child(pid, spawned) {
                Ok(child) => {
                    children.insert(pid, child);
                    true
                }
                Err(err) => {
                    eprintln!(
                        "leaktrace: child {pid} is not followed into the program it executed: {err}"
                    );
                    false
                }
            },
        }
    }

    /// A new program in the same process: what the last one left is read first and then
    /// forgotten (its memory went with it), then the new one's break, libraries and tables
    /// are taken.
    fn executed(&mut self) -> Result<(), SessionError> {
        self.tick()?;
        if let Err(err) = self.collector.forget_live_memory() {
            log::warn!("the last program's memory is still counted: {err}");
        }
        self.collector
            .set_program_break(procfs::program_break(self.pid));
        let _ = self.modules.refresh(self.pid);
        if let Some(tables) = &mut self.unwind {
            tables.refresh(self.pid);
        }
        let exe = procfs::exe_path(self.pid).ok();
        let shown = exe
            .as_ref()
            .map(|path| path.display().to_string())
            .unwrap_or_default();
        log::info!("pid {} executed {shown}", self.pid);
        if let Some(exe) = &exe {
            self.probe_new_program(exe);
        }
        // A new address space, seen from its start.
        self.traced_from_start = true;
        if self.forked_by.is_some() {
            // A child's report names what it runs now (the command's names what was asked).
            self.target.exe = shown;
            self.target.command_line = procfs::command_line(self.pid).unwrap_or_default();
            self.target.name = procfs::comm(self.pid).unwrap_or_default();
        }
        Ok(())
    }

    /// Probes the allocators of the program the process just executed that are not probed
    /// yet (the probes on a library it shares with the last program stay: they follow the
    /// process). Found from the program's files, so those its loader maps next are
    /// probed before they run.
    fn probe_new_program(&mut self, exe: &std::path::Path) {
        let env = procfs::environment(self.pid).unwrap_or_default();
        let modules = match attach::program_files(exe, &env)
            .and_then(|files| attach::allocators_in_files(&files, &self.options.alloc_fns))
        {
            Ok(modules) => modules,
            Err(err) => {
                log::info!(
                    "pid {}: no allocator probed in {}: {err}",
                    self.pid,
                    exe.display()
                );
                return;
            }
        };
        let modules = self.probes.unprobed(modules);
        self.probe_modules(modules, "in the program it executed");
    }

    /// A session for a child a traced process just forked, held before its first
    /// instruction: the probes go in on its copy of its parent's libraries. What it
    /// inherited was allocated before it existed and is not its own.
    fn trace_forked_child(&self, pid: u32, parent: u32) -> Result<Session, SessionError> {
        let started = std::time::Instant::now();
        let mut child = Session::attach(pid, "attach", self.options.clone())?;
        child.mode = "run";
        child.forked_by = Some(parent);
        log::info!(
            "child {pid} forked by {parent}: probes in place in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(child)
    }

    /// A session for a child that just executed a program with no session of its own yet
    /// (a vfork or posix_spawn child, which ran in its parent's memory until now), held
    /// before the program's first instruction: probed as the command is.
    fn trace_executed_child(&self, pid: u32, spawned: bool) -> Result<Session, SessionError> {
        let started = std::time::Instant::now();
        let exe = procfs::exe_path(pid).map_err(|_| SessionError::NoSuchProcess(pid))?;
        let env = procfs::environment(pid).unwrap_or_default();
        let plan =
            ProgramProbes::for_program(&exe, &env, &self.options, &exe.display().to_string())?;
        let mut child = plan.start(pid, self.options.clone())?;
        child.forked_by = procfs::parent_pid(pid);
        child.traced_from_start = true;
        child
            .collector
            .set_program_break(procfs::program_break(pid));
        log::info!(
            "child {pid} ({}) executed {}: probes in place in {:.0} ms",
            if spawned { "spawned" } else { "forked" },
            exe.display(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(child)
    }

    /// A forked child's report, at its end (or the command's); its probes come out.
    fn child_report(&mut self, exit: Option<Exit>) -> Result<Report, SessionError> {
        self.tick()?;
        self.analyse(exit, true)
    }

    /// The command ended before these children: what they hold so far is reported, with
    /// no exit and no scan (they go on running, untraced, once leaktrace ends).
    fn children_still_running(&mut self, children: BTreeMap<u32, Session>) {
        for (pid, mut child) in children {
            match child.child_report(None) {
                Ok(report) => self.child_reports.push(report),
                Err(err) => eprintln!("leaktrace: child {pid}: no report: {err}"),
            }
        }
    }
}
