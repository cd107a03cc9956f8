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

use crate::{
    analyze::verdicts::{self, EscalationRule},
    collect::drain::{Collector, KernelMaps},
    collect::growth::{FaultCounts, FaultGrowth, TouchedStack},
    export::metrics,
    export::otel::{OtlpOptions, Telemetry},
    export::prometheus,
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

/// Which processes to watch. A process matching any entry is a target.
#[derive(Clone, Debug, Default)]
pub struct TargetSpec {
    pub pids: Vec<u32>,
    /// Executable file names ("redis-server") or paths ("/usr/bin/redis-server").
    pub exes: Vec<String>,
    /// cgroup v2 paths, as in /proc/PID/cgroup ("/system.slice/redis.service") or under
    /// /sys/fs/cgroup; their descendants are included.
    pub cgroups: Vec<String>,
}

/// What is known about a running process, for matching.
#[derive(Clone, Debug, Default)]
pub struct ProcessFacts {
    pub pid: u32,
    pub exe: Option<PathBuf>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
}

impl ProcessFacts {
    fn read(pid: u32) -> ProcessFacts {
        ProcessFacts {
            pid,
            exe: procfs::exe_path(pid).ok(),
            comm: procfs::comm(pid),
            cgroup: procfs::cgroup(pid),
        }
    }
}

impl TargetSpec {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.exes.is_empty() && self.cgroups.is_empty()
    }

    /// Whether the process is one to watch. Kernel threads (no executable) never are.
    pub fn matches(&self, process: &ProcessFacts) -> bool {
        let Some(exe) = &process.exe else {
            return false;
        };
        self.pids.contains(&process.pid)
            || self
                .exes
                .iter()
                .any(|wanted| exe_matches(wanted, exe, process.comm.as_deref()))
            || process.cgroup.as_deref().is_some_and(|cgroup| {
                self.cgroups
                    .iter()
                    .any(|wanted| cgroup_contains(wanted, cgroup))
            })
    }

    /// Needs only the pids (no scan of every process).
    fn pids_only(&self) -> bool {
        self.exes.is_empty() && self.cgroups.is_empty()
    }
}

/// Whether an executable is the one asked for: by path when `wanted` has a slash (a deleted
/// and replaced binary, as after an upgrade, still matches), else by file name or by the
/// kernel's 15-byte command name.
pub fn exe_matches(wanted: &str, exe: &Path, comm: Option<&str>) -> bool {
    let exe = exe.to_string_lossy();
    let exe = exe.trim_end_matches(" (deleted)");
    if wanted.contains('/') {
        return exe == wanted;
    }
    let name = exe.rsplit('/').next().unwrap_or(exe);
    // The kernel keeps the first 15 bytes of a longer name.
    let comm_matches = comm.is_some_and(|comm| {
        comm == wanted || (comm.len() == 15 && wanted.len() > 15 && wanted.starts_with(comm))
    });
    name == wanted || comm_matches
}

/// Whether cgroup `path` (from /proc/PID/cgroup) is `wanted` or inside it.
pub fn cgroup_contains(wanted: &str, path: &str) -> bool {
    let wanted = wanted
        .strip_prefix("/sys/fs/cgroup")
        .unwrap_or(wanted)
        .trim_end_matches('/');
    let wanted = wanted.strip_prefix('/').unwrap_or(wanted);
    let path = path.strip_prefix('/').unwrap_or(path);
    wanted.is_empty()
        || path == wanted
        || path
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('/'))
}

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

/// One structured log line on stderr, logfmt: `ts=… event=… key=value …`.
pub fn log_event(event: &str, fields: &[(&str, String)]) {
    eprintln!("{}", logfmt_line(SystemTime::now(), event, fields));
}

/// The text of a log line (values with spaces, quotes or `=` are quoted).
pub fn logfmt_line(at: SystemTime, event: &str, fields: &[(&str, String)]) -> String {
    let mut line = format!("ts={} event={event}", rfc3339(at));
    for (key, value) in fields {
        let plain = !value.is_empty()
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '=' || c == '\\');
        if plain {
            let _ = write!(line, " {key}={value}");
        } else {
            let _ = write!(line, " {key}={value:?}");
        }
    }
    line
}

/// Civil date (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day, hour, minute, second) in UTC.
fn utc_parts(at: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let seconds = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let in_day = seconds % 86_400;
    (
        year,
        month,
        day,
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
    )
}

/// "2026-11-24T02:45:00Z".
pub fn rfc3339(at: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(at);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// "20261124T024500Z", for file names.
pub fn file_stamp(at: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(at);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// The always-on gear of one target.
struct Gear1 {
    /// The mmap and brk regions by stack, and the stacks of every sample.
    collector: Collector,
    /// Whether mmap and brk calls are traced (--watch-mmap).
    mmap_traced: bool,
    growth: FaultGrowth,
    tables: Option<UnwindTables>,
    modules: Modules,
    symbolizer: Symbolizer,
    /// The process's "[uprobes]" mappings, found once per report (see `frames`).
    trampolines: Vec<procfs::Mapping>,
    /// Kept last: dropping it detaches the sampler.
    sampler: FaultSampler,
}

impl Gear1 {
    fn start(pid: u32, unwind: Unwind, period: u64, syscalls: bool) -> Result<Gear1, String> {
        let mut sampler = attach::attach_fault_sampler(pid, unwind, period, syscalls)
            .map_err(|err| err.to_string())?;
        let page_size = procfs::page_size();
        let growth = FaultGrowth::take(&mut sampler.ebpf, sampler.period, page_size)
            .map_err(|err| err.to_string())?;
        let maps = KernelMaps::take(&mut sampler.ebpf).map_err(|err| err.to_string())?;
        let mut collector =
            Collector::new(maps, procfs::monotonic_ns(), page_size, 0..=u64::MAX, 1);
        collector.set_program_break(procfs::program_break(pid));
        let tables = match unwind {
            Unwind::Dwarf | Unwind::Hybrid => {
                let mut tables = UnwindTables::take(&mut sampler.ebpf, unwind == Unwind::Hybrid)?;
                tables.refresh(pid);
                Some(tables)
            }
            Unwind::Fp | Unwind::Auto => None,
        };
        let mut modules = Modules::default();
        let _ = modules.refresh(pid);
        Ok(Gear1 {
            collector,
            mmap_traced: syscalls,
            growth,
            tables,
            modules,
            symbolizer: Symbolizer::new(),
            trampolines: Vec::new(),
            sampler,
        })
    }

    /// Finds the "[uprobes]" mapping (see `frames`): once per report, not once per stack.
    fn find_trampolines(&mut self, pid: u32) {
        self.trampolines = procfs::read_maps(pid)
            .unwrap_or_default()
            .into_iter()
            .filter(|mapping| mapping.path == "[uprobes]")
            .collect();
    }

    /// Symbolized frames of a recorded stack. While a precise window's return probes are
    /// in place, the allocator's return address on the stack is the kernel's uretprobe
    /// trampoline (in the "[uprobes]" mapping, as `find_trampolines` last saw it); the walk
    /// goes on by frame pointers there.
    fn frames(&mut self, stack_id: u32) -> Vec<crate::model::Frame> {
        let ips = self.collector.stack_ips(stack_id).to_vec();
        let mut frames = self.symbolizer.symbolize_stack(&self.modules, &ips);
        for frame in &mut frames {
            if frame.function.is_none()
                && self
                    .trampolines
                    .iter()
                    .any(|mapping| mapping.contains(frame.address))
            {
                frame.function = Some(UPROBE_TRAMPOLINE.to_string());
            }
        }
        frames
    }

    /// Reads the samples and the mmap and brk events; new modules get unwind tables and
    /// symbols.
    fn refresh(&mut self, pid: u32) {
        if let Err(err) = self.collector.sample(procfs::monotonic_ns()) {
            log::warn!("pid {pid}: could not read gear 1's maps: {err}");
        }
        if let Err(err) = self.growth.read() {
            log::warn!("pid {pid}: could not read the page-fault samples: {err}");
        }
        if let Some(tables) = &mut self.tables {
            tables.refresh(pid);
        }
        if self.collector.take_new_stacks() {
            let _ = self.modules.refresh(pid);
        }
    }

    /// Anonymous memory mapped now (mmap and brk), by the stack that mapped it, most first.
    fn mapped(&self) -> Vec<(u32, u64)> {
        let mut mapped: Vec<(u32, u64)> = self
            .collector
            .histories()
            .filter(|history| history.key.origin != Origin::Heap)
            .filter(|history| history.totals.outstanding_bytes > 0)
            .map(|history| (history.key.stack_id, history.totals.outstanding_bytes))
            .collect();
        mapped.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        mapped
    }
}

/// Stands for the caller a uretprobe hid (see `Gear1::frames`).
const UPROBE_TRAMPOLINE: &str = "[uretprobe trampoline]";

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

    fn open_window(&mut self, pid: u32, reason: String) {
        let options = self.options.precise.clone();
        let cooldown = self.options.cooldown;
        let Some(watched) = self.targets.get_mut(&pid) else {
            return;
        };
        match Window::open(pid, options) {
            Ok(window) => {
                log_event(
                    "window_opened",
                    &[
                        ("pid", pid.to_string()),
                        ("exe", watched.target.exe.clone()),
                        ("reason", reason.clone()),
                        ("for", format!("{:?}", self.options.escalate_for)),
                    ],
                );
                watched.window = Some(OpenWindow {
                    window,
                    opened: Instant::now(),
                    opened_at: SystemTime::now(),
                    reason,
                    faults_at_open: watched
                        .gear1
                        .as_ref()
                        .map(|gear1| gear1.growth.counts())
                        .unwrap_or_default(),
                });
                self.summary.windows += 1;
            }
            Err(err) => {
                // Not retried before the cool-down: a process without a known allocator
                // would otherwise be retried every second.
                watched.cooldown_until = Some(Instant::now() + cooldown);
                log_event(
                    "window_failed",
                    &[
                        ("pid", pid.to_string()),
                        ("exe", watched.target.exe.clone()),
                        ("reason", err.to_string()),
                    ],
                );
            }
        }
    }

    /// Every sample interval: the open windows read their maps; those due are closed.
    fn tick_windows(&mut self) {
        let escalate_for = self.options.escalate_for;
        let mut due = Vec::new();
        for (pid, watched) in &mut self.targets {
            let Some(open) = &mut watched.window else {
                continue;
            };
            if let Err(err) = open.window.tick() {
                log::warn!("pid {pid}: {err}");
            }
            if open.opened.elapsed() >= escalate_for || open.window.stopped() {
                due.push(*pid);
            }
        }
        for pid in due {
            let exited = !procfs::is_alive(pid);
            self.close_window(pid, exited);
        }
    }

    /// Ends a window: its report and gear 1's growth attribution go to the report folder,
    /// the exporters get the report, and the cool-down starts.
    fn close_window(&mut self, pid: u32, exited: bool) {
        let cooldown = self.options.cooldown;
        let report_dir = self.options.report_dir.clone();
        let Some(watched) = self.targets.get_mut(&pid) else {
            return;
        };
        let Some(open) = watched.window.take() else {
            return;
        };
        watched.cooldown_until = Some(Instant::now() + cooldown);
        let stem = format!(
            "{}-{pid}-{}",
            sanitized(watched.target.executable_name()),
            file_stamp(open.opened_at)
        );
        let mut report = match open.window.close(exited) {
            Ok(report) => report,
            Err(err) => {
                log_event(
                    "window_failed",
                    &[("pid", pid.to_string()), ("reason", err.to_string())],
                );
                return;
            }
        };
        report
            .events
            .insert("watch_window".into(), self.summary.windows);
        let mut written = Vec::new();
        let mut failures = Vec::new();
        let mut write = |name: String, bytes: Vec<u8>| {
            let path = report_dir.join(name);
            match write_atomically(&path, &bytes) {
                Ok(()) => written.push(path.display().to_string()),
                Err(err) => failures.push(format!("{}: {err}", path.display())),
            }
        };
        write(
            format!("{stem}.json"),
            report::render(&report, Format::Json, false),
        );
        write(
            format!("{stem}.txt"),
            report::render(&report, Format::Text, false),
        );
        if let Some(gear1) = &mut watched.gear1 {
            gear1.refresh(pid);
            gear1.find_trampolines(pid);
            let since_start = gear1.growth.since(&FaultCounts::new());
            let in_window = gear1.growth.since(&open.faults_at_open);
            let growth_report = touched_report(
                &watched.target,
                watched.since.elapsed().as_secs_f64(),
                &since_start,
                gear1,
            );
            write(
                format!("{stem}.growth.txt"),
                growth_text(&growth_report, &in_window, gear1, &open.reason).into_bytes(),
            );
            write(
                format!("{stem}.growth.folded"),
                report::render(&growth_report, Format::Folded, false),
            );
            write(
                format!("{stem}.growth.svg"),
                report::render(&growth_report, Format::Svg, false),
            );
        }
        self.summary.reports_written += written.len() as u64;
        let leaking: Vec<String> = report
            .stacks
            .iter()
            .filter(|stack| stack.verdict == Verdict::Leaking)
            .take(3)
            .map(|stack| {
                stack
                    .frames
                    .first()
                    .map_or_else(|| crate::model::stack_id(stack), |frame| frame.identity())
            })
            .collect();
        log_event(
            "window_closed",
            &[
                ("pid", pid.to_string()),
                ("exe", watched.target.exe.clone()),
                ("leaking_stacks", report.count(Verdict::Leaking).to_string()),
                ("top", leaking.join(", ")),
                ("report", format!("{}/{stem}.txt", report_dir.display())),
                ("files", written.len().to_string()),
            ],
        );
        for failure in failures {
            log_event(
                "report_not_written",
                &[("pid", pid.to_string()), ("reason", failure)],
            );
        }
        watched.last_stacks = report.stacks.clone();
        if let Some(telemetry) = &mut watched.telemetry {
            telemetry.publish(&report, 0);
        }
        if let Some(endpoint) = &self.endpoint {
            endpoint.publish_target(
                &watched.target,
                metrics::points(&report, self.options.export_top, 0, 0),
            );
        }
    }

    /// Every interval: each target's memory (and its last window's stacks) to the exporters.
    fn export(&mut self) {
        let export_top = self.options.export_top;
        for watched in self.targets.values_mut() {
            if watched.telemetry.is_none() && self.endpoint.is_none() {
                continue;
            }
            let report = gear1_report(watched);
            let failures = watched.telemetry.as_ref().map_or(0, Telemetry::failures);
            if let Some(telemetry) = &mut watched.telemetry {
                telemetry.publish(&report, 0);
            }
            if let Some(endpoint) = &self.endpoint {
                endpoint.publish_target(
                    &watched.target,
                    metrics::points(&report, export_top, 0, failures),
                );
            }
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

/// A file-name-safe version of an executable name.
fn sanitized(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "process".into()
    } else {
        cleaned
    }
}

/// Writes to a temporary name, then renames: a reader never sees half a report.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

/// The exported view of a target between windows: its memory, and the last window's stacks.
fn gear1_report(watched: &Watched) -> Report {
    let trend = verdicts::process_trend(&watched.samples, &Default::default());
    let mut events = BTreeMap::new();
    if let Some(gear1) = &watched.gear1 {
        events.insert("page_fault_samples".into(), gear1.growth.total_samples());
    }
    events.insert(
        crate::export::metrics::PROGRAM_LOAD_FAILURES_EVENT.into(),
        // Gear 1 is None only when its programs could not be loaded or attached.
        u64::from(watched.gear1.is_none()),
    );
    Report {
        programs: watched
            .gear1
            .as_ref()
            .map(|gear1| gear1.sampler.programs.clone())
            .unwrap_or_default(),
        duration_s: watched.since.elapsed().as_secs_f64(),
        events,
        process: (!watched.samples.is_empty()).then(|| ProcessReport {
            rss_growth_bytes_per_s: trend.rss.slope,
            rss_rising: trend.rss.steady,
            rss_growth_onset: trend.rss.onset,
            heap_growth_bytes_per_s: 0.0,
            memory_limit_bytes: procfs::memory_limit(watched.target.pid),
            samples: watched.samples.iter().rev().take(1).copied().collect(),
        }),
        stacks: watched.last_stacks.clone(),
        ..Report::empty(watched.target.clone(), "watch")
    }
}

/// Gear 1's attribution as a report whose stacks hold the bytes they first touched, so the
/// folded and flame-graph renderers draw "memory growth flame graphs".
fn touched_report(
    target: &Target,
    span_s: f64,
    touched: &[TouchedStack],
    gear1: &mut Gear1,
) -> Report {
    let stacks = touched
        .iter()
        .map(|stack| StackReport {
            verdict: Verdict::Stable,
            origin: Origin::Mmap,
            outstanding_bytes: stack.bytes,
            outstanding_allocs: stack.samples,
            total_allocs: stack.samples,
            total_frees: 0,
            total_bytes: stack.bytes,
            oldest_age_s: None,
            growth_bytes_per_s: 0.0,
            confidence: 0.0,
            growth_onset: None,
            r_squared: 0.0,
            survival_fraction: 0.0,
            reachability: None,
            held_by_c_runtime: None,
            suppressed_by: None,
            frames: gear1.frames(stack.stack_id),
            series: Vec::new(),
            why: String::new(),
            at_last_gc: None,
        })
        .collect();
    Report {
        duration_s: span_s,
        stacks,
        ..Report::empty(target.clone(), "watch-growth")
    }
}

/// Stacks listed in the growth text.
const GROWTH_TEXT_STACKS: usize = 10;

/// The growth attribution for people: where new memory was first touched, since watching
/// began and during the window.
fn growth_text(
    since_start: &Report,
    in_window: &[TouchedStack],
    gear1: &mut Gear1,
    reason: &str,
) -> String {
    let mut out = String::new();
    let total: u64 = since_start.stacks.iter().map(|s| s.outstanding_bytes).sum();
    let _ = writeln!(
        out,
        "leaktrace watch: new memory by the stack that first touched it (sampled page faults, \
         one sample per {}), pid {} ({})",
        crate::model::units::human_bytes(gear1.growth.bytes_per_sample as f64),
        since_start.target.pid,
        since_start.target.exe
    );
    let _ = writeln!(out, "window opened because: {reason}");
    let _ = writeln!(
        out,
        "(during a window the allocator's caller may read {UPROBE_TRAMPOLINE}: the precise probes' return hook)"
    );
    let _ = writeln!(
        out,
        "\nSince watching began ({:.0}s): {} in {} stacks",
        since_start.duration_s,
        crate::model::units::human_bytes(total as f64),
        since_start.stacks.len()
    );
    for stack in since_start.stacks.iter().take(GROWTH_TEXT_STACKS) {
        stack_line(&mut out, stack.outstanding_bytes, &stack.frames);
    }
    if !gear1.mmap_traced {
        let _ = writeln!(
            out,
            "\nmmap and brk calls are not traced between windows (--watch-mmap traces them)."
        );
    }
    let mapped = gear1.mapped();
    if gear1.mmap_traced {
        let _ = writeln!(
            out,
            "\nAnonymous memory mapped now (mmap and brk since watching began, allocator's own \
         included), by the stack that mapped it: {} in {} stacks",
            crate::model::units::human_bytes(mapped.iter().map(|m| m.1).sum::<u64>() as f64),
            mapped.len()
        );
    }
    for (stack_id, bytes) in mapped.iter().take(GROWTH_TEXT_STACKS) {
        let frames = gear1.frames(*stack_id);
        stack_line(&mut out, *bytes, &frames);
    }
    let window_total: u64 = in_window.iter().map(|s| s.bytes).sum();
    let _ = writeln!(
        out,
        "\nDuring the window: {} in {} stacks",
        crate::model::units::human_bytes(window_total as f64),
        in_window.len()
    );
    for stack in in_window.iter().take(GROWTH_TEXT_STACKS) {
        let frames = gear1.frames(stack.stack_id);
        stack_line(&mut out, stack.bytes, &frames);
    }
    out
}

/// One line of the growth text: the bytes, then the frames.
fn stack_line(out: &mut String, bytes: u64, frames: &[crate::model::Frame]) {
    let _ = writeln!(
        out,
        "  {:>10}  {}",
        crate::model::units::human_bytes(bytes as f64),
        frame_summary(frames)
    );
}

/// "leak_slowly ← handle ← main", innermost first, at most 12 frames (allocator frames come
/// first in gear 1 stacks).
fn frame_summary(frames: &[crate::model::Frame]) -> String {
    if frames.is_empty() {
        return report::folded::UNKNOWN_STACK.to_string();
    }
    frames
        .iter()
        .take(12)
        .map(|frame| frame.identity())
        .collect::<Vec<_>>()
        .join(" ← ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_executables_by_name_path_and_comm() {
        let exe = Path::new("/usr/bin/redis-server");
        assert!(exe_matches("redis-server", exe, Some("redis-server")));
        assert!(exe_matches("/usr/bin/redis-server", exe, None));
        assert!(!exe_matches("/opt/redis-server", exe, None));
        assert!(!exe_matches("redis", exe, Some("redis-server")));
        // An upgraded binary still matches by path.
        assert!(exe_matches(
            "/usr/bin/redis-server",
            Path::new("/usr/bin/redis-server (deleted)"),
            None
        ));
        // The kernel keeps 15 bytes of the command name; a script runs under its interpreter.
        assert!(exe_matches(
            "a-very-long-service-name",
            Path::new("/usr/bin/python3.11"),
            Some("a-very-long-ser")
        ));
        assert!(!exe_matches(
            "worker",
            Path::new("/usr/bin/python3.11"),
            Some("work")
        ));
    }

    #[test]
    fn matches_cgroups_and_their_children() {
        assert!(cgroup_contains(
            "/system.slice/redis.service",
            "/system.slice/redis.service"
        ));
        assert!(cgroup_contains(
            "/sys/fs/cgroup/kubepods/pod1",
            "/kubepods/pod1/cri-containerd-abc"
        ));
        assert!(!cgroup_contains("/kubepods/pod1", "/kubepods/pod12/x"));
        assert!(cgroup_contains("/", "/anything"));
    }

    #[test]
    fn spec_matches_by_any_entry_and_never_kernel_threads() {
        let spec = TargetSpec {
            pids: vec![7],
            exes: vec!["leaky".into()],
            cgroups: vec!["/app".into()],
        };
        let process = |pid, exe: Option<&str>, cgroup: &str| ProcessFacts {
            pid,
            exe: exe.map(PathBuf::from),
            comm: exe.map(|e| e.rsplit('/').next().unwrap_or(e).to_string()),
            cgroup: Some(cgroup.into()),
        };
        assert!(spec.matches(&process(7, Some("/bin/x"), "/")));
        assert!(spec.matches(&process(8, Some("/opt/leaky"), "/")));
        assert!(spec.matches(&process(9, Some("/bin/y"), "/app/worker")));
        assert!(!spec.matches(&process(10, Some("/bin/y"), "/other")));
        assert!(!spec.matches(&process(7, None, "/app")));
    }

    #[test]
    fn formats_times_and_log_lines() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_919_100);
        assert_eq!(rfc3339(at), "2026-11-29T02:25:00Z");
        assert_eq!(file_stamp(at), "20261129T022500Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
        let line = logfmt_line(
            at,
            "window_opened",
            &[
                ("pid", "12".into()),
                ("reason", "memory rising 100 KiB/s".into()),
            ],
        );
        assert_eq!(
            line,
            "ts=2026-11-29T02:25:00Z event=window_opened pid=12 reason=\"memory rising 100 KiB/s\""
        );
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(sanitized("redis-server"), "redis-server");
        assert_eq!(sanitized("my app/x"), "my_app_x");
        assert_eq!(sanitized(""), "process");
    }
}
