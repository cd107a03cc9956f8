//! One tracing session: attach (or launch), sample the kernel maps on a short tick, report
//! every interval and at the end.
use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::PathBuf,
    time::Duration,
};

use leak_common::{Counter, DEFAULT_MAX_ALLOCS};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    analysis::{self, Context, Thresholds},
    attach::{self, AllocatorModule, LoadOptions, Probes},
    drain::{Collector, KernelMaps},
    launch::{self, ChildEvent},
    model::{Exit, Origin, REPORT_VERSION, Report, StackReport, Target},
    procfs,
    report::{self, Format},
    symbolize::{Modules, Symbolizer},
};

/// How a session runs and reports.
#[derive(Clone, Debug)]
pub struct Options {
    /// Attach mode: stop after this long (None: until Ctrl-C or the target exits).
    pub duration: Option<Duration>,
    /// Time between reports.
    pub interval: Duration,
    /// Time between samples of the kernel maps (the resolution of growth series).
    pub sample_interval: Duration,
    pub top: usize,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub max_allocs: u32,
    pub thresholds: Thresholds,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: None,
            interval: Duration::from_secs(5),
            sample_interval: Duration::from_millis(200),
            top: 10,
            format: Format::Text,
            output: None,
            max_allocs: DEFAULT_MAX_ALLOCS,
            thresholds: Thresholds::default(),
        }
    }
}

/// Errors that end a session, each one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no process with pid {0}: check the pid (`pgrep NAME`) and try again")]
    NoSuchProcess(u32),
    #[error(transparent)]
    Attach(#[from] attach::AttachError),
    #[error("{0}")]
    Launch(String),
    #[error("could not read the kernel maps: {0}")]
    Drain(#[from] crate::drain::DrainError),
    #[error("could not write the report to {path}: {reason}")]
    Output { path: String, reason: String },
}

/// What a finished session produced.
pub struct Outcome {
    pub report: Report,
    /// The launched command's exit status, for `run` to pass on.
    pub exit: Option<Exit>,
}

struct Session {
    pid: u32,
    mode: &'static str,
    target: Target,
    options: Options,
    probes: Probes,
    collector: Collector,
    modules: Modules,
    symbolizer: Symbolizer,
    started_ns: u64,
}

/// `leaktrace attach --pid PID`.
pub async fn attach(pid: u32, options: Options) -> Result<Outcome, SessionError> {
    if !procfs::is_alive(pid) {
        return Err(SessionError::NoSuchProcess(pid));
    }
    let allocators = attach::allocators_in_process(pid)?;
    let mut session = Session::start(pid, "attach", &allocators, options)?;
    log::info!("attached to {}", session.probes.attached.join(", "));
    let exited = session.trace_attached().await?;
    session.finish(exited)
}

/// `leaktrace run -- CMD ARGS…`.
pub async fn run(command: &[String], options: Options) -> Result<Outcome, SessionError> {
    let name = command
        .first()
        .ok_or_else(|| SessionError::Launch("no command given after --".into()))?;
    let program = launch::resolve_program(name).ok_or_else(|| {
        SessionError::Launch(format!(
            "command not found: {name} (give a path or put it on PATH)"
        ))
    })?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let allocators = attach::allocators_for_program(&program, &env).map_err(|err| match err {
        attach::AttachError::NoAllocator { .. } => SessionError::Launch(format!(
            "no allocator found for {}: neither it nor its libraries define malloc and free",
            program.display()
        )),
        other => SessionError::Attach(other),
    })?;
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let launched = launch::launch(&program, command, events_tx)
        .map_err(|err| SessionError::Launch(format!("could not start {name}: {err}")))?;
    let pid = launched.pid;
    // Dropping `launched` without release makes the child exit without running.
    let mut session = Session::start(pid, "run", &allocators, options)?;
    session.target.exe = program.display().to_string();
    session.target.command_line = command.join(" ");
    launched.release();
    let exit = session.trace_launched(events_rx).await?;
    let mut outcome = session.finish(Some(exit.clone()))?;
    outcome.exit = Some(exit);
    Ok(outcome)
}

impl Session {
    fn start(
        pid: u32,
        mode: &'static str,
        allocators: &[AllocatorModule],
        options: Options,
    ) -> Result<Session, SessionError> {
        let mut probes = attach::attach(
            pid,
            allocators,
            LoadOptions {
                max_allocs: options.max_allocs,
            },
        )?;
        let maps = KernelMaps::take(&mut probes.ebpf)?;
        let started_ns = procfs::monotonic_ns();
        let target = Target {
            pid,
            exe: procfs::exe_path(pid)
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            command_line: procfs::command_line(pid).unwrap_or_default(),
        };
        let mut modules = Modules::default();
        let _ = modules.refresh(pid);
        Ok(Session {
            pid,
            mode,
            target,
            collector: Collector::new(maps, started_ns, procfs::page_size()),
            probes,
            modules,
            symbolizer: Symbolizer::new(),
            options,
            started_ns,
        })
    }

    /// One sample; re-reads the module list when new stacks appeared (a dlopen'd library).
    fn tick(&mut self) -> Result<(), SessionError> {
        self.collector.sample(procfs::monotonic_ns())?;
        if self.collector.take_new_stacks() {
            let _ = self.modules.refresh(self.pid);
        }
        Ok(())
    }

    /// Traces an attached process until the duration, Ctrl-C, or its exit.
    async fn trace_attached(&mut self) -> Result<Option<Exit>, SessionError> {
        let mut sample = tokio::time::interval(self.options.sample_interval);
        let mut report_every = tokio::time::interval(self.options.interval);
        report_every.tick().await;
        let deadline = self
            .options
            .duration
            .map(|duration| tokio::time::Instant::now() + duration);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = sample.tick() => {
                    let alive = procfs::is_alive(self.pid);
                    self.tick()?;
                    if !alive {
                        return Ok(Some(Exit { code: None, signal: None }));
                    }
                    if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                        return Ok(None);
                    }
                }
                _ = report_every.tick() => self.interval_report()?,
                _ = &mut ctrl_c => {
                    self.tick()?;
                    return Ok(None);
                }
            }
        }
    }

    /// Traces a launched command until it exits.
    async fn trace_launched(
        &mut self,
        mut events: UnboundedReceiver<ChildEvent>,
    ) -> Result<Exit, SessionError> {
        let mut sample = tokio::time::interval(self.options.sample_interval);
        // Ctrl-C goes to the command (same process group); leaktrace waits for its exit.
        let mut ctrl_c = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|err| SessionError::Launch(format!("could not handle Ctrl-C: {err}")))?;
        loop {
            tokio::select! {
                _ = sample.tick() => self.tick()?,
                _ = ctrl_c.recv() => {}
                event = events.recv() => match event {
                    Some(ChildEvent::Exiting { ack }) => {
                        // Its memory is still mapped: read what it loaded before it goes.
                        let _ = self.modules.refresh(self.pid);
                        self.tick()?;
                        let _ = ack.send(());
                    }
                    Some(ChildEvent::Exited { code, signal }) => {
                        self.tick()?;
                        return Ok(Exit { code, signal });
                    }
                    Some(ChildEvent::Failed(message)) => return Err(SessionError::Launch(message)),
                    None => return Ok(Exit { code: None, signal: None }),
                }
            }
        }
    }

    fn interval_report(&mut self) -> Result<(), SessionError> {
        let report = self.build_report(None)?;
        let stdout = std::io::stdout();
        if self.options.output.is_none()
            && self.options.format == Format::Text
            && stdout.is_terminal()
        {
            // A live view: redraw in place.
            let mut out = stdout.lock();
            let _ = write!(out, "\x1b[H\x1b[2J{}", report::text::render(&report, true));
            let _ = out.flush();
        } else {
            let leaking = report
                .stacks
                .iter()
                .filter(|s| s.verdict == crate::model::Verdict::Leaking)
                .count();
            eprintln!(
                "leaktrace: {:.1}s, {} stacks listed, {} leaking, {} dropped events",
                report.duration_s,
                report.stacks.len(),
                leaking,
                report.dropped.values().sum::<u64>()
            );
        }
        Ok(())
    }

    fn finish(mut self, exited: Option<Exit>) -> Result<Outcome, SessionError> {
        let report = self.build_report(exited)?;
        let color = self.options.output.is_none() && std::io::stdout().is_terminal();
        let rendered = report::render(&report, self.options.format, color);
        match &self.options.output {
            Some(path) => std::fs::write(path, rendered).map_err(|err| SessionError::Output {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?,
            None => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&rendered);
                let _ = out.flush();
            }
        }
        drop(self.probes);
        Ok(Outcome { report, exit: None })
    }

    fn build_report(&mut self, exited: Option<Exit>) -> Result<Report, SessionError> {
        self.collector.scan_live_allocations()?;
        let now_ns = procfs::monotonic_ns();
        let span_s = now_ns.saturating_sub(self.started_ns) as f64 / 1e9;
        let context = Context {
            now_ns,
            span_s,
            exited: exited.is_some(),
        };
        let mut judged: Vec<(crate::model::StackHistory, crate::model::Verdict, f64)> = self
            .collector
            .histories()
            .filter(|history| {
                history.totals.total_allocs > 0 || history.totals.outstanding_allocs > 0
            })
            .map(|history| {
                let (verdict, growth) = analysis::judge(history, context, &self.options.thresholds);
                (history.clone(), verdict, growth)
            })
            .collect();
        judged.sort_by(|a, b| {
            b.0.totals
                .outstanding_bytes
                .cmp(&a.0.totals.outstanding_bytes)
                .then(b.0.totals.total_bytes.cmp(&a.0.totals.total_bytes))
                .then(a.0.key.cmp(&b.0.key))
        });
        // The dynamic loader mapping a library's zero-filled segments, or its own start-up
        // allocator, is part of the program image, not the program's memory. mmap stacks are
        // symbolized here to tell; their frames are kept for the report.
        let mut kept = Vec::with_capacity(judged.len());
        for (history, verdict, growth) in judged {
            let frames = (history.key.origin == Origin::Mmap).then(|| self.frames_of(&history));
            if frames.as_deref().is_some_and(mapped_by_loader) {
                continue;
            }
            kept.push((history, verdict, growth, frames));
        }
        let omitted = kept.split_off(kept.len().min(self.options.top));
        let mut stacks = Vec::with_capacity(kept.len());
        for (history, verdict, growth, frames) in kept {
            let frames = frames.unwrap_or_else(|| self.frames_of(&history));
            stacks.push(StackReport {
                verdict,
                origin: history.key.origin,
                outstanding_bytes: history.totals.outstanding_bytes,
                outstanding_allocs: history.totals.outstanding_allocs,
                total_allocs: history.totals.total_allocs,
                total_frees: history.totals.total_frees,
                total_bytes: history.totals.total_bytes,
                oldest_age_s: history.oldest_age_s(now_ns),
                growth_bytes_per_s: growth,
                frames,
            });
        }
        let mut dropped = BTreeMap::new();
        let mut events = BTreeMap::new();
        for counter in Counter::ALL {
            let value = self.collector.counter(counter);
            if counter.is_drop() {
                dropped.insert(counter.name().to_string(), value);
            } else {
                events.insert(counter.name().to_string(), value);
            }
        }
        events.insert(
            "symbolization_failures".to_string(),
            self.symbolizer.failures,
        );
        Ok(Report {
            version: REPORT_VERSION,
            target: self.target.clone(),
            mode: self.mode.to_string(),
            duration_s: span_s,
            exited,
            dropped,
            events,
            omitted_stacks: omitted.len() as u64,
            omitted_outstanding_bytes: omitted
                .iter()
                .map(|(h, _, _, _)| h.totals.outstanding_bytes)
                .sum(),
            stacks,
        })
    }

    /// Symbolized frames of a stack. For mmap stacks the frame-pointer walk starts inside the
    /// frameless syscall wrapper and skips its caller; the caller read from the stack pointer
    /// takes the wrapper's place.
    fn frames_of(&mut self, history: &crate::model::StackHistory) -> Vec<crate::model::Frame> {
        let mut ips = self.collector.stack_ips(history.key.stack_id).to_vec();
        if history.key.origin == Origin::Mmap && history.key.caller_hint != 0 && !ips.is_empty() {
            let first = self.symbolizer.symbolize_stack(&self.modules, &ips[..1]);
            let in_wrapper = first
                .last()
                .and_then(|frame| frame.function.as_deref())
                .is_some_and(is_syscall_wrapper);
            if in_wrapper {
                ips[0] = history.key.caller_hint;
            }
        }
        self.symbolizer.symbolize_stack(&self.modules, &ips)
    }
}

/// Whether an mmap stack starts in the dynamic loader (ld-linux, ld-musl).
fn mapped_by_loader(frames: &[crate::model::Frame]) -> bool {
    frames
        .first()
        .and_then(|frame| frame.module.as_deref())
        .and_then(|module| module.rsplit('/').next())
        .is_some_and(|name| {
            name.starts_with("ld-linux") || name.starts_with("ld-musl") || name == "ld.so"
        })
}

/// libc's thin syscall wrappers, which keep no frame of their own.
fn is_syscall_wrapper(function: &str) -> bool {
    let name = function.trim_start_matches('_');
    ["mmap", "mmap64", "munmap", "mremap", "syscall"]
        .iter()
        .any(|wrapper| name == *wrapper || name.starts_with(&format!("{wrapper}@")))
        || function.starts_with("__GI___mmap")
        || function.starts_with("__GI___munmap")
        || function.starts_with("__GI___mremap")
}

#[cfg(test)]
mod tests {
    use super::is_syscall_wrapper;

    #[test]
    fn knows_the_wrappers() {
        for name in [
            "mmap", "mmap64", "__mmap", "__mmap64", "munmap", "__mremap", "syscall",
        ] {
            assert!(is_syscall_wrapper(name), "{name}");
        }
        for name in ["main", "mmap_region_for_cache", "malloc"] {
            assert!(!is_syscall_wrapper(name), "{name}");
        }
    }
}
