//! `leaktrace watch`: the long-running (sidecar) mode, in two gears per target.
//!
//! - Gear 1, always on: the process's memory from /proc once a second, its minor page
//!   faults sampled with their user stacks (`attach::FaultSampler`, read by `growth`), and
//!   with `--watch-mmap` its anonymous mmap/munmap/mremap and brk calls with their stacks
//!   (`drain::Collector`): no allocator is probed.
//! - Gear 2, a precise window (`session::Window`): the allocation probes for
//!   `--escalate-for`, opened when the anonymous-memory baseline keeps rising
//!   (`verdicts::escalation`), on SIGUSR1, or at start with `--escalate-at-start`. Its report
//!   goes to `--report-dir` as JSON and text, with the page-fault growth attribution as text,
//!   folded stacks and a flame graph. Then gear 1 again, and a cool-down before the next one.
//!
//! Targets are found by pid, executable or cgroup every second; a process that exits is
//! forgotten, one that starts (or restarts) is picked up.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

mod gear1;
mod logfmt;
mod reports;
mod targets;
mod windows;

use gear1::{Gear1, UPROBE_TRAMPOLINE};
pub use logfmt::{file_stamp, log_event, logfmt_line, rfc3339};
use reports::{gear1_report, growth_text, sanitized, touched_report, write_atomically};
pub use targets::{ProcessFacts, TargetSpec, cgroup_contains, exe_matches};

use crate::{
    analyze::verdicts::{self, EscalationRule},
    collect::drain::{Collector, KernelMaps},
    collect::growth::{FaultCounts, FaultGrowth, TouchedStack},
    export::otel::{OtlpOptions, Telemetry},
    export::prometheus,
    export::publish::{Publication, publish},
    export::report::{self, Format},
    model::series::{MAX_SERIES_LEN, push_thinned},
    model::{Origin, ProcessReport, ProcessSample, Report, StackReport, Target, Verdict},
    modes::session::{Options, Window},
    probe::attach::{self, FaultSampler},
    probe::privileges,
    probe::unwind_tables::Unwind,
    probe::unwind_tables::UnwindTables,
    symbols::symbolize::{Modules, Symbolizer},
    sys::procfs,
};

/// How `watch` runs.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub targets: TargetSpec,
    /// Where each window's reports are written.
    pub report_dir: PathBuf,
    /// Length of a precise window.
    pub escalate_for: Duration,
    /// Least time between the end of a window and the next automatic one.
    pub cooldown: Duration,
    pub rule: EscalationRule,
    /// Open a window on every target as soon as it is found.
    pub escalate_at_start: bool,
    /// Page faults per gear-1 sample.
    pub fault_period: u64,
    /// Gear 1 also traces mmap-family and brk calls (syscall tracepoints).
    pub watch_mmap: bool,
    /// Most processes watched at once; more are counted and logged, not watched.
    pub max_targets: usize,
    /// Stop after this long (None: until SIGTERM or SIGINT).
    pub duration: Option<Duration>,
    /// Time between exports.
    pub interval: Duration,
    /// How each precise window traces (its own exports are off; the watcher exports).
    pub precise: Options,
    pub otlp: Option<OtlpOptions>,
    pub prometheus: Option<SocketAddr>,
    pub export_top: usize,
}

/// Errors that stop `watch` before it starts, one line each.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Privileges(String),
    #[error("cannot write reports to {path}: {reason} (give a writable --report-dir)")]
    ReportDir { path: String, reason: String },
    #[error(transparent)]
    Prometheus(#[from] prometheus::PrometheusError),
    #[error("could not handle signals: {0}")]
    Signals(io::Error),
}

impl WatchError {
    /// The exit status this failure ends leaktrace with.
    pub fn status(&self) -> crate::model::exit::Status {
        use crate::model::exit::Status;
        match self {
            WatchError::Privileges(_) => Status::NotPermitted,
            WatchError::ReportDir { .. } => Status::CannotWrite,
            WatchError::Prometheus(_) => Status::Usage,
            WatchError::Signals(_) => Status::Internal,
        }
    }
}

/// What `watch` did, for its exit.
#[derive(Debug, Default)]
pub struct WatchSummary {
    pub targets_seen: u64,
    pub windows: u64,
    pub reports_written: u64,
}

/// Refuses to start without the capabilities, naming each one missing; says at start when
/// windows will not be possible.
fn check_privileges() -> Result<(), WatchError> {
    let Some(effective) = procfs::own_capabilities() else {
        return Ok(());
    };
    let missing = privileges::missing_capabilities(effective);
    if missing.is_empty() {
        if !privileges::can_place_uprobes(effective) {
            log_event(
                "windows_unavailable",
                &[(
                    "reason",
                    "no CAP_SYS_ADMIN: the kernel requires it for uprobes, so precise windows will fail; gear 1 (memory, page faults, mmap/brk) works".into(),
                )],
            );
        }
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|(name, effect)| format!("{name} ({effect})"))
        .collect();
    Err(WatchError::Privileges(format!(
        "missing capabilities: {}; run as root or grant them (see deploy/README.md)",
        list.join("; ")
    )))
}

/// An open precise window.
struct OpenWindow {
    window: Window,
    opened: Instant,
    opened_at: SystemTime,
    reason: String,
    /// Gear 1's counts when the window opened.
    faults_at_open: FaultCounts,
}

/// One watched process.
struct Watched {
    target: Target,
    start_time: u64,
    /// When watching began.
    since: Instant,
    /// (seconds since watching began, anonymous + swapped bytes), for the escalation rule.
    memory: Vec<(f64, f64)>,
    /// The process's figures for the exported report, thinned as they grow.
    samples: Vec<ProcessSample>,
    /// None when the kernel refused gear 1: memory is watched from /proc only.
    gear1: Option<Gear1>,
    window: Option<OpenWindow>,
    cooldown_until: Option<Instant>,
    /// The last window's stacks, exported until the next window.
    last_stacks: Vec<StackReport>,
    telemetry: Option<Telemetry>,
}

impl Watched {
    /// Drops memory samples the rule will not look at again.
    fn trim_memory(&mut self, lookback_s: f64) {
        if let Some(&(last, _)) = self.memory.last() {
            let keep_from = self
                .memory
                .partition_point(|(at, _)| *at < last - 2.0 * lookback_s);
            self.memory.drain(..keep_from);
        }
    }
}

struct Watcher {
    options: WatchOptions,
    targets: BTreeMap<u32, Watched>,
    /// Processes that matched but were not watched (over --max-targets), by (pid, start).
    refused: std::collections::HashSet<(u32, u64)>,
    /// `--pid`s watched or said to be missing: a missing one is logged once, one that was
    /// watched and exited is not "missing".
    pids_accounted: std::collections::HashSet<u32>,
    endpoint: Option<prometheus::Endpoint>,
    summary: WatchSummary,
}

/// Runs `leaktrace watch` until SIGTERM, SIGINT or `--duration`.
pub async fn watch(options: WatchOptions) -> Result<WatchSummary, WatchError> {
    use tokio::signal::unix::{SignalKind, signal};
    check_privileges()?;
    prepare_report_dir(&options.report_dir)?;
    let endpoint = match options.prometheus {
        Some(addr) => {
            let endpoint = prometheus::Endpoint::start_for_many(addr)?;
            log_event(
                "prometheus",
                &[("url", format!("http://{}/metrics", endpoint.local_addr))],
            );
            Some(endpoint)
        }
        None => None,
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(WatchError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(WatchError::Signals)?;
    let mut escalate = signal(SignalKind::user_defined1()).map_err(WatchError::Signals)?;
    let mut watcher = Watcher {
        targets: BTreeMap::new(),
        refused: Default::default(),
        pids_accounted: Default::default(),
        endpoint,
        summary: WatchSummary::default(),
        options,
    };
    log_event(
        "started",
        &[
            (
                "report_dir",
                watcher.options.report_dir.display().to_string(),
            ),
            (
                "escalate_for",
                format!("{:?}", watcher.options.escalate_for),
            ),
            ("cooldown", format!("{:?}", watcher.options.cooldown)),
        ],
    );
    let mut scan = tokio::time::interval(Duration::from_secs(1));
    let mut sample = tokio::time::interval(watcher.options.precise.sample_interval);
    let mut export = tokio::time::interval(watcher.options.interval);
    export.tick().await;
    let deadline = watcher
        .options
        .duration
        .map(|duration| tokio::time::Instant::now() + duration);
    let stop_reason = loop {
        tokio::select! {
            _ = scan.tick() => {
                watcher.scan();
                if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                    break "duration";
                }
            }
            _ = sample.tick() => watcher.tick_windows(),
            _ = export.tick() => watcher.export(),
            _ = escalate.recv() => watcher.escalate_all("requested (SIGUSR1)"),
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
        }
    };
    log_event("stopping", &[("reason", stop_reason.to_string())]);
    Ok(watcher.shutdown())
}

/// Creates the report folder and checks it takes files.
fn prepare_report_dir(dir: &Path) -> Result<(), WatchError> {
    let error = |err: io::Error| WatchError::ReportDir {
        path: dir.display().to_string(),
        reason: err.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(error)?;
    let probe = dir.join(format!(".leaktrace-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(error)?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

impl Watcher {
    /// Finds targets that started or ended, samples each one's memory, and opens windows
    /// the rule asks for.
    fn scan(&mut self) {
        let own = std::process::id();
        let candidates: Vec<u32> = if self.options.targets.pids_only() {
            self.options.targets.pids.clone()
        } else {
            procfs::pids()
        };
        let mut alive = std::collections::HashSet::new();
        for pid in candidates {
            if pid == own || !procfs::is_alive(pid) {
                if self.options.targets.pids.contains(&pid)
                    && !self.targets.contains_key(&pid)
                    && self.pids_accounted.insert(pid)
                {
                    log_event(
                        "target_missing",
                        &[
                            ("pid", pid.to_string()),
                            (
                                "reason",
                                "no such process (or a zombie); not watched".into(),
                            ),
                        ],
                    );
                }
                continue;
            }
            let Some(start_time) = procfs::start_time(pid) else {
                continue;
            };
            if let Some(watched) = self.targets.get(&pid)
                && watched.start_time == start_time
            {
                alive.insert(pid);
                continue;
            }
            if self.refused.contains(&(pid, start_time)) {
                continue;
            }
            let facts = ProcessFacts::read(pid);
            if !self.options.targets.matches(&facts) {
                continue;
            }
            if self.targets.len() >= self.options.max_targets {
                self.refused.insert((pid, start_time));
                log_event(
                    "target_not_watched",
                    &[
                        ("pid", pid.to_string()),
                        (
                            "reason",
                            format!("--max-targets {} reached", self.options.max_targets),
                        ),
                    ],
                );
                continue;
            }
            if self.targets.contains_key(&pid) {
                // The pid was reused: the old process is gone.
                self.forget(pid, "exited");
            }
            self.add(pid, start_time, facts);
            alive.insert(pid);
        }
        let gone: Vec<u32> = self
            .targets
            .keys()
            .copied()
            .filter(|pid| !alive.contains(pid))
            .collect();
        for pid in gone {
            self.forget(pid, "exited");
        }
        self.refused
            .retain(|(pid, start)| procfs::start_time(*pid) == Some(*start));
        let pids: Vec<u32> = self.targets.keys().copied().collect();
        for pid in pids {
            self.sample(pid);
        }
    }

    fn add(&mut self, pid: u32, start_time: u64, facts: ProcessFacts) {
        self.pids_accounted.insert(pid);
        let target = Target {
            pid,
            exe: facts
                .exe
                .map(|exe| exe.display().to_string())
                .unwrap_or_default(),
            command_line: procfs::command_line(pid).unwrap_or_default(),
            name: procfs::comm(pid).unwrap_or_default(),
        };
        // Page faults land inside the allocator (glibc's _int_malloc, memset), which is
        // built without frame pointers whatever the program is: only the unwind tables
        // reach the program's own frames from there.
        let unwind = match self.options.precise.unwind {
            Unwind::Fp => Unwind::Fp,
            Unwind::Hybrid => Unwind::Hybrid,
            Unwind::Auto | Unwind::Dwarf => Unwind::Dwarf,
        };
        let gear1 = match Gear1::start(
            pid,
            unwind,
            self.options.fault_period,
            self.options.watch_mmap,
        ) {
            Ok(gear1) => Some(gear1),
            Err(err) => {
                log_event(
                    "gear1_unavailable",
                    &[
                        ("pid", pid.to_string()),
                        ("reason", err),
                        (
                            "effect",
                            "memory is watched from /proc only, without growth stacks".into(),
                        ),
                    ],
                );
                None
            }
        };
        let telemetry = self.options.otlp.clone().and_then(|otlp| {
            Telemetry::start(otlp, &target)
                .map_err(|err| {
                    log_event(
                        "export_unavailable",
                        &[("pid", pid.to_string()), ("reason", err.to_string())],
                    )
                })
                .ok()
        });
        log_event(
            "watching",
            &[
                ("pid", pid.to_string()),
                ("exe", target.exe.clone()),
                ("gear1_unwind", unwind.name().to_string()),
                (
                    "gear1",
                    if gear1.is_some() {
                        "page faults"
                    } else {
                        "/proc only"
                    }
                    .into(),
                ),
            ],
        );
        self.summary.targets_seen += 1;
        let escalate_now = self.options.escalate_at_start;
        self.targets.insert(
            pid,
            Watched {
                target,
                start_time,
                since: Instant::now(),
                memory: Vec::new(),
                samples: Vec::new(),
                gear1,
                window: None,
                cooldown_until: None,
                last_stacks: Vec::new(),
                telemetry,
            },
        );
        if escalate_now {
            self.open_window(pid, "requested (--escalate-at-start)".into());
        }
    }

    /// Stops watching a process (it exited, or leaktrace stops), closing its window first.
    fn forget(&mut self, pid: u32, why: &str) {
        let exited = why == "exited";
        if self.targets.get(&pid).is_some_and(|w| w.window.is_some()) {
            self.close_window(pid, exited);
        }
        let Some(watched) = self.targets.remove(&pid) else {
            return;
        };
        if let Some(endpoint) = &self.endpoint {
            endpoint.forget(pid);
        }
        if let Some(telemetry) = watched.telemetry {
            telemetry.shutdown();
        }
        log_event(
            if exited {
                "target_exited"
            } else {
                "target_released"
            },
            &[("pid", pid.to_string()), ("exe", watched.target.exe)],
        );
    }

    /// Once a second: the target's memory, gear 1's samples, and the escalation rule.
    fn sample(&mut self, pid: u32) {
        let rule = self.options.rule;
        let Some(watched) = self.targets.get_mut(&pid) else {
            return;
        };
        let Some(usage) = procfs::memory_usage(pid, false) else {
            return;
        };
        let at_s = watched.since.elapsed().as_secs_f64();
        watched
            .memory
            .push((at_s, (usage.anon_bytes + usage.swap_bytes) as f64));
        watched.trim_memory(rule.lookback_s);
        push_thinned(
            &mut watched.samples,
            ProcessSample {
                at_s,
                rss_bytes: usage.rss_bytes,
                anon_bytes: usage.anon_bytes,
                swap_bytes: usage.swap_bytes,
                virtual_bytes: usage.virtual_bytes,
                pss_bytes: None,
                heap_bytes: 0,
            },
            MAX_SERIES_LEN,
        );
        if let Some(gear1) = &mut watched.gear1 {
            gear1.refresh(pid);
        }
        let cooling = watched
            .cooldown_until
            .is_some_and(|until| Instant::now() < until);
        if watched.window.is_some() || cooling {
            return;
        }
        if let Some(fired) = verdicts::escalation(&watched.memory, &rule) {
            let reason = format!(
                "memory rising {}/s (r² {:.2}) over the last {:.0}s",
                crate::model::units::human_bytes(fired.growth_bytes_per_s),
                fired.r_squared,
                rule.lookback_s
            );
            self.open_window(pid, reason);
        }
    }

    /// SIGUSR1: a window on every target that has none (cool-downs do not apply).
    fn escalate_all(&mut self, reason: &str) {
        let pids: Vec<u32> = self
            .targets
            .iter()
            .filter(|(_, watched)| watched.window.is_none())
            .map(|(pid, _)| *pid)
            .collect();
        if pids.is_empty() {
            log_event(
                "escalation_ignored",
                &[("reason", "no target without an open window".into())],
            );
        }
        for pid in pids {
            self.open_window(pid, reason.to_string());
        }
    }

    /// Closes every window (writing its reports), detaches everything, flushes exporters.
    fn shutdown(mut self) -> WatchSummary {
        let pids: Vec<u32> = self.targets.keys().copied().collect();
        for pid in pids {
            let exited = !procfs::is_alive(pid);
            self.forget(pid, if exited { "exited" } else { "released" });
        }
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.shutdown();
        }
        log_event(
            "stopped",
            &[
                ("targets_seen", self.summary.targets_seen.to_string()),
                ("windows", self.summary.windows.to_string()),
                ("reports_written", self.summary.reports_written.to_string()),
            ],
        );
        self.summary
    }
}
