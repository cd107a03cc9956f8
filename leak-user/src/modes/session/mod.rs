//! One tracing session: attach (or launch), sample the kernel maps on a short tick, report
//! every interval and at the end.
//!
//! Here: the options, errors and entry points (`attach`, `run`, a watch's `Window`) and the
//! session's state. The session's life, a file each: `start` (checks, probes placed,
//! readers set up), `sample` (the tick and the attached trace), `overhead` (the probes'
//! cost and the --max-overhead budget), `launched` (a run's command and its children),
//! `stacks` (the drained stacks named by their frames), `report` (collect → aggregate →
//! analyse → report), `end` (the exit stop, the reachability scan, the final report).
mod end;
mod launched;
mod overhead;
mod report;
mod sample;
mod stacks;
mod start;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use leak_common::DEFAULT_MAX_ALLOCS;

use crate::{
    analyze::aggregate::SortKey,
    analyze::verdicts::Thresholds,
    collect::drain::Collector,
    collect::goroutines::Goroutines,
    collect::scope::ScopeCollector,
    export::otel::{OtlpOptions, Telemetry},
    export::prometheus,
    export::report::Format,
    model::allocators::KnownFn,
    model::scope::ScopeSpec,
    model::{
        AllocatorInfo, Exit, ProcessSample, Reachability, ReachabilityScan, Report, StackKey,
        Target,
    },
    probe::attach::{self, Probes},
    probe::golang::GoTarget,
    probe::launch,
    probe::python::PythonInterpreter,
    probe::unwind_tables::Unwind,
    probe::unwind_tables::UnwindTables,
    symbols::symbolize::{Modules, Symbolizer},
};
use start::{ProgramProbes, check_start};

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
    /// Order of the listed stacks within each verdict.
    pub sort: SortKey,
    /// Ignore allocations younger than this (they may be in flight).
    pub min_age: Option<Duration>,
    /// Track only allocations of at least / at most this many bytes.
    pub min_size: u64,
    pub max_size: u64,
    /// Track one allocation in this many; what is read is scaled by it.
    pub sample_rate: u32,
    /// --max-overhead: the share of the target's CPU leaktrace's probes may take, in percent.
    pub max_overhead: Option<f64>,
    /// How stacks are walked.
    pub unwind: Unwind,
    /// User-named allocator functions (--alloc-fn).
    pub alloc_fns: Vec<KnownFn>,
    /// OTLP export, when on.
    pub otlp: Option<OtlpOptions>,
    /// Serve Prometheus metrics here.
    pub prometheus: Option<SocketAddr>,
    /// Stacks exported with their own series.
    pub export_top: usize,
    /// Classify live blocks by what still points to them (see `reachability`) for the
    /// final report.
    pub reachability: bool,
    /// Most bytes of the target's memory the reachability scan reads.
    pub scan_limit: u64,
    /// Stacks known and accepted (--suppressions and the built-in set).
    pub suppressions: Vec<crate::analyze::suppress::Suppression>,
    /// --scope functions.
    pub scopes: Vec<ScopeSpec>,
    /// How long after a scope call returned to read what it still holds.
    pub scope_retain_after: Duration,
    /// Labels per scope listed with their own figures.
    pub scope_max_labels: usize,
    /// A scope call holding at least this much when it returns gets a span of its own.
    pub scope_span_threshold: u64,
    /// `run`: follow forked children into the programs they execute (valgrind's
    /// --trace-children); forked children are followed until then in any case.
    pub trace_children: bool,
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
            sort: SortKey::Bytes,
            min_age: None,
            min_size: 0,
            max_size: u64::MAX,
            sample_rate: 1,
            max_overhead: None,
            unwind: Unwind::Fp,
            alloc_fns: Vec::new(),
            otlp: None,
            prometheus: None,
            export_top: 20,
            reachability: false,
            scan_limit: DEFAULT_SCAN_LIMIT,
            suppressions: crate::analyze::suppress::parse(
                crate::analyze::suppress::DEFAULT,
                "built-in",
            )
            .unwrap_or_default(),
            scopes: Vec::new(),
            scope_retain_after: Duration::from_secs(5),
            scope_max_labels: 32,
            scope_span_threshold: 64 << 10,
            trace_children: false,
        }
    }
}

/// Default --scan-limit: 4 GiB.
pub const DEFAULT_SCAN_LIMIT: u64 = 4 << 30;

/// Errors that end a session, each one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no process with pid {0}: check the pid (`pgrep NAME`) and try again")]
    NoSuchProcess(u32),
    #[error(
        "process {0} is a zombie: it has exited and only waits for its parent to reap it; there is nothing left to trace"
    )]
    Zombie(u32),
    #[error(
        "process {0} is a kernel thread: it has no user-space memory or allocator; give the pid of a user-space process"
    )]
    KernelThread(u32),
    #[error(
        "process {0} is this leaktrace itself: it cannot trace its own allocations; give the pid of the process to trace"
    )]
    Itself(u32),
    #[error("command not found: {0} (give a path or put it on PATH)")]
    CommandNotFound(String),
    #[error("no allocator found for {0}: neither it nor its libraries define malloc and free")]
    ProgramWithoutAllocator(String),
    #[error("could not handle signals: {0}")]
    Signals(String),
    #[error("{0}")]
    Privileges(String),
    #[error(transparent)]
    Attach(#[from] attach::AttachError),
    #[error("could not set up --unwind dwarf: {0}")]
    Unwind(String),
    #[error("{0}")]
    Launch(String),
    #[error("could not read the kernel maps: {0}")]
    Drain(#[from] crate::collect::drain::DrainError),
    #[error(transparent)]
    Otel(#[from] crate::export::otel::OtelError),
    #[error(transparent)]
    Prometheus(#[from] crate::export::prometheus::PrometheusError),
    #[error("could not write the report to {path}: {reason}")]
    Output { path: String, reason: String },
}

impl SessionError {
    /// The exit status this failure ends leaktrace with.
    pub fn status(&self) -> crate::model::exit::Status {
        use crate::model::exit::Status;
        match self {
            SessionError::NoSuchProcess(_)
            | SessionError::Zombie(_)
            | SessionError::KernelThread(_)
            | SessionError::Itself(_) => Status::NoTarget,
            SessionError::CommandNotFound(_) => Status::CommandNotFound,
            SessionError::Launch(_) => Status::CommandNotRunnable,
            SessionError::ProgramWithoutAllocator(_) => Status::NotInTarget,
            SessionError::Attach(err) => err.status(),
            SessionError::Otel(_) | SessionError::Prometheus(_) => Status::Usage,
            SessionError::Output { .. } => Status::CannotWrite,
            SessionError::Privileges(_) => Status::NotPermitted,
            SessionError::Unwind(_) | SessionError::Drain(_) | SessionError::Signals(_) => {
                Status::Internal
            }
        }
    }
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
    /// What was probed, for the report.
    allocators: Vec<AllocatorInfo>,
    options: Options,
    probes: Probes,
    collector: Collector,
    modules: Modules,
    symbolizer: Symbolizer,
    started_ns: u64,
    process_samples: Vec<ProcessSample>,
    /// Stacks (by crate::model::stack_id) whose leak was confirmed and that have been judged
    /// leaking at every analysis since.
    confirmed_leaks: std::collections::HashSet<String>,
    last_process_sample_ns: Option<u64>,
    /// `run` mode until the command has exec'd: leaktrace's own executable, which the
    /// forked child runs until then (whatever it execs next: a script's interpreter, the
    /// program a wrapper execs in turn).
    launched_program: Option<PathBuf>,
    telemetry: Option<Telemetry>,
    endpoint: Option<prometheus::Endpoint>,
    /// The kernel's unwind tables (--unwind dwarf).
    unwind: Option<UnwindTables>,
    /// The reachability scan's classes by stack, once it ran.
    reachability: Option<(HashMap<StackKey, Reachability>, ReachabilityScan)>,
    /// The --scope maps and figures, when there are scopes.
    scopes: Option<ScopeCollector>,
    /// A Go program: what was found in it, and its goroutines when they are counted.
    go: Option<(GoTarget, Option<Goroutines>)>,
    /// Go's own heap profile, once the executable is mapped (see go_profile).
    go_profile: Option<crate::collect::go_profile::HeapProfile>,
    /// A CPython target: its interpreter, and the kernel's pointer to `_PyRuntime` until it
    /// is written (the interpreter is mapped).
    python: Option<(
        PythonInterpreter,
        Option<aya::maps::Array<aya::maps::MapData, u64>>,
    )>,
    /// Stacks whose Python code objects have been read.
    python_stacks_read: std::collections::HashSet<u32>,
    /// What the probes cost the target, and the budget kept.
    cost: overhead::CostMeter,
    /// When to arm the entry probes (see `Probes::arm_entries`): a moment after they went
    /// in, so that no call begun before them is still running.
    arm_entries_at: Option<u64>,
    /// A forked child of a `run`: the process that forked it.
    forked_by: Option<u32>,
    /// Every allocation of the program was seen (`run`, or a forked child since it executed
    /// a program): memory around the tracked blocks is the allocator's own.
    traced_from_start: bool,
    /// `run`: the reports of the forked children that ended.
    child_reports: Vec<Report>,
}

/// How long after the entry probes go in a return without its entry counts as lost.
pub(super) const ARM_ENTRIES_AFTER_NS: u64 = 200_000_000;

/// `leaktrace attach --pid PID`.
pub async fn attach(pid: u32, options: Options) -> Result<Outcome, SessionError> {
    check_start(&options)?;
    let attaching = std::time::Instant::now();
    let mut session = Session::attach(pid, "attach", options)?;
    session.drop_privileges(&[]);
    session.start_exports()?;
    log::debug!(
        "probes in place in {:.0} ms",
        attaching.elapsed().as_secs_f64() * 1e3
    );
    session.log_probes();
    let exited = session.trace_attached().await?;
    session.finish(exited)
}

/// `leaktrace run -- CMD ARGS…`.
pub async fn run(command: &[String], options: Options) -> Result<Outcome, SessionError> {
    check_start(&options)?;
    let name = command
        .first()
        .ok_or_else(|| SessionError::Launch("no command given after --".into()))?;
    let program =
        launch::resolve_program(name).ok_or_else(|| SessionError::CommandNotFound(name.clone()))?;
    if !launch::is_executable(&program) {
        return Err(SessionError::Launch(format!(
            "{} is not an executable file (check its path and mode)",
            program.display()
        )));
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    // What the kernel will run: a script's interpreter.
    let image = launch::program_image(&program);
    if image != program {
        log::info!("{} runs {}", program.display(), image.display());
    }
    let plan = ProgramProbes::for_program(&image, &env, &options, &program.display().to_string())?;
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut options = options;
    options.unwind = options
        .unwind
        .resolve(crate::sys::file_bytes::open(&image).ok().as_deref());
    let hold_at_entry = options.unwind.uses_tables();
    let keep = crate::probe::privileges::Needs::new(options.output.clone(), options.prometheus)
        .after_attach();
    let launched = launch::launch(
        &program,
        command,
        events_tx,
        hold_at_entry,
        options.trace_children,
        keep,
    )
    .map_err(|err| SessionError::Launch(format!("could not start {name}: {err}")))?;
    let pid = launched.pid;
    // Dropping `launched` without release makes the child exit without running.
    // The command has not run yet: it has no goroutine before the probes, and its
    // interpreter is pointed at once it is mapped.
    let mut session = plan.start(pid, options)?;
    session.target.exe = program.display().to_string();
    session.target.name = program
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    session.launched_program = std::fs::canonicalize("/proc/self/exe").ok();
    session.traced_from_start = true;
    session.drop_privileges(&[launched.launcher_tid]);
    session.start_exports()?;
    session.target.command_line = command.join(" ");
    session.log_probes();
    launched.release();
    let exit = session.trace_launched(events_rx).await?;
    let mut outcome = session.finish(Some(exit.clone()))?;
    outcome.exit = Some(exit);
    Ok(outcome)
}

/// A precise window of `leaktrace watch`: the allocation probes on one running process for
/// a while. The watcher drives it (`tick` every sample interval) and exports what it ends
/// with; the window itself writes and exports nothing.
pub struct Window {
    session: Session,
}

impl Window {
    /// Places the probes; `options.unwind` should already be resolved.
    pub fn open(pid: u32, options: Options) -> Result<Window, SessionError> {
        let session = Session::attach(pid, "watch", options)?;
        session.log_probes();
        Ok(Window { session })
    }

    /// One sample of the kernel maps (and, once a second, of /proc).
    pub fn tick(&mut self) -> Result<(), SessionError> {
        self.session.tick()
    }

    /// Whether the window stopped tracing to keep the budget: it should close.
    pub fn stopped(&self) -> bool {
        self.session.stopped()
    }

    /// The window's report, after which the probes are removed. `exited`: the process
    /// ended during the window.
    pub fn close(mut self, exited: bool) -> Result<Report, SessionError> {
        if !exited {
            self.session.tick()?;
        }
        let report = self.session.analyse(
            exited.then_some(Exit {
                code: None,
                signal: None,
            }),
            true,
        )?;
        drop(self.session);
        Ok(report)
    }
}
