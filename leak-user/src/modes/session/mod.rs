//! One tracing session: attach (or launch), sample the kernel maps on a short tick, report
//! every interval and at the end.
mod end;
mod launched;
mod overhead;
mod sample;
mod start;

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use leak_common::{Counter, DEFAULT_MAX_ALLOCS};

use crate::{
    analyze::c_runtime,
    analyze::scope::{self, NamedStack},
    analyze::suspects,
    analyze::verdicts::{self, Context, Thresholds},
    collect::drain::Collector,
    collect::goroutines::Goroutines,
    collect::scope::ScopeCollector,
    export::metrics,
    export::otel::{OtlpOptions, Telemetry},
    export::prometheus,
    export::report::Format,
    model::allocators::KnownFn,
    model::scope::ScopeSpec,
    model::{
        AllocatorInfo, Exit, Frame, GoroutineReport, GoroutineSiteReport, Held, InUse, LeakSummary,
        Origin, ProcessReport, ProcessSample, REPORT_VERSION, Reachability, ReachabilityScan,
        Report, RuntimeInfo, StackHistory, StackKey, StackReport, Target, Totals, Trend, Verdict,
    },
    probe::attach::{self, Probes},
    probe::golang::GoTarget,
    probe::launch,
    probe::python::PythonInterpreter,
    probe::unwind_tables::Unwind,
    probe::unwind_tables::UnwindTables,
    symbols::symbolize::{Modules, Symbolizer},
    sys::procfs,
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

/// What orders the stacks within a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Outstanding bytes.
    Bytes,
    /// Outstanding allocations.
    Count,
    /// Growth rate of the baseline.
    Growth,
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

/// Spans for the scope calls that kept at least --scope-span-threshold, with what their
/// scope (and label) keeps by stack, from `report`.
fn scope_call_spans(
    scopes: &mut ScopeCollector,
    specs: &[ScopeSpec],
    report: &Report,
) -> Vec<crate::export::otel::ScopeCallSpan> {
    let now_ns = procfs::monotonic_ns();
    let now = std::time::SystemTime::now();
    let at = |ns: u64| now - Duration::from_nanos(now_ns.saturating_sub(ns));
    let calls = scopes.take_retaining_calls();
    calls
        .into_iter()
        .filter_map(|call| {
            let (index, label) = scopes.records.describe_tag(call.tag)?;
            let function = specs.get(index as usize)?.function.clone();
            let scope = report.scopes.iter().find(|s| s.function == function);
            let figures = scope.map(|scope| {
                label
                    .and_then(|label| scope.labels.iter().find(|l| l.label == label))
                    .map_or(&scope.figures, |label| &label.figures)
            });
            Some(crate::export::otel::ScopeCallSpan {
                function,
                label: label.map(str::to_string),
                tid: call.tid,
                start: at(call.start_ns),
                end: at(call.end_ns),
                allocated_bytes: call.allocated_bytes,
                retained_bytes: call.held_at_return,
                retaining_stacks: figures
                    .map(|figures| {
                        figures
                            .top_stacks
                            .iter()
                            .map(|stack| (stack.retained_bytes, stack.frames.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Most points of a stack's series a report carries.
const REPORT_SERIES_POINTS: usize = 32;
/// Most process samples a report carries.
const REPORT_PROCESS_POINTS: usize = 256;

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

impl Session {
    /// Whether the Go heap's stacks come from the runtime's profile (else from its spans).
    fn go_heap_from_profile(&self) -> bool {
        self.go_profile
            .as_ref()
            .is_some_and(crate::collect::go_profile::HeapProfile::in_use)
    }

    fn exporting(&self) -> bool {
        self.telemetry.is_some() || self.endpoint.is_some()
    }

    /// Hands one analysis to the exporters.
    fn publish(&mut self, report: &Report) {
        let probes = self.probes.attached.len() as u64;
        if let Some(telemetry) = &mut self.telemetry {
            telemetry.publish(report, probes);
            if let Some(scopes) = &mut self.scopes {
                let calls = scope_call_spans(scopes, &self.options.scopes, report);
                telemetry.publish_scope_calls(&calls);
            }
        }
        if let Some(endpoint) = &self.endpoint {
            let failures = self.telemetry.as_ref().map_or(0, Telemetry::failures);
            endpoint.publish(metrics::points(
                report,
                self.options.export_top,
                probes,
                failures,
            ));
        }
    }

    /// The stacks the report lists and those the exporters see (more, when --export-top is
    /// above --top).
    fn analyse(
        &mut self,
        exited: Option<Exit>,
        final_report: bool,
    ) -> Result<Report, SessionError> {
        let listed = if self.exporting() {
            self.options.top.max(self.options.export_top)
        } else {
            self.options.top
        };
        if final_report && let Some(scopes) = &mut self.scopes {
            // Labels handed out since the last listing count in the final figures.
            scopes.sample(procfs::monotonic_ns(), true)?;
        }
        let mut report = self.build_report(exited, listed, final_report)?;
        if let Some(telemetry) = &self.telemetry {
            report
                .events
                .insert("otlp_export_failures".into(), telemetry.failures());
        }
        if self.exporting() {
            self.publish(&report);
        }
        Ok(truncated(report, self.options.top))
    }

    /// The report now. A `final_report` pays for an exact walk of the live allocations;
    /// interim ones walk them within a CPU budget (see `Collector::scan_live_allocations`).
    fn build_report(
        &mut self,
        exited: Option<Exit>,
        top: usize,
        final_report: bool,
    ) -> Result<Report, SessionError> {
        let now_ns = procfs::monotonic_ns();
        let min_age_ns = self
            .options
            .min_age
            .map_or(0, |age| u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
        let held_old_enough = self.collector.scan_live_allocations(
            now_ns.saturating_sub(min_age_ns),
            now_ns,
            final_report,
        )?;
        let span_s = now_ns.saturating_sub(self.started_ns) as f64 / 1e9;
        let context = Context {
            now_ns,
            span_s,
            exited: exited.is_some(),
        };
        // Stacks that symbolize to the same frames are one stack to the reader. The loader
        // mapping a library's zero-filled segments, or its own start-up allocator, is part of
        // the program image, not the program's memory.
        let active: Vec<StackHistory> = self
            .collector
            .histories()
            .filter(|history| {
                history.totals.total_allocs > 0 || history.totals.outstanding_allocs > 0
            })
            .cloned()
            .collect();
        // One symbolizer call per module for every address not seen before, not one per stack.
        let symbolizing = std::time::Instant::now();
        let addresses: Vec<u64> = active
            .iter()
            .flat_map(|history| self.collector.stack_ips(history.key.stack_id).to_vec())
            .collect();
        let new_addresses = self.symbolizer.prefetch(&self.modules, &addresses);
        if new_addresses > 0 {
            log::info!(
                "symbolized {new_addresses} new addresses of {} stacks in {:.0} ms",
                active.len(),
                symbolizing.elapsed().as_secs_f64() * 1e3
            );
        }
        let mut groups: Vec<(Vec<Frame>, Vec<StackHistory>)> = Vec::new();
        let mut group_of: HashMap<(Origin, Vec<FrameIdentity>), usize> = HashMap::new();
        let go_from_profile = self.go_heap_from_profile();
        let (profile_histories, mut at_last_gc) = if go_from_profile {
            self.go_profile_histories()
        } else {
            (Vec::new(), HashMap::new())
        };
        // Scope calls' stacks are named from these.
        let mut frames_by_key: HashMap<StackKey, Vec<Frame>> = HashMap::new();
        let mut active: Vec<NamedHistory> = active
            .into_iter()
            .map(|history| {
                let frames = self.frames_of(&history);
                (history, frames)
            })
            .collect();
        active.extend(profile_histories);
        for (history, frames) in active {
            if self.scopes.is_some() && history.key.origin == Origin::Heap {
                frames_by_key.insert(history.key, frames.clone());
            }
            if history.key.origin != Origin::Heap && mapped_by_loader(&frames) {
                continue;
            }
            // A Go runtime's own mappings hold its heap (followed by span, above), its
            // goroutine stacks and reservations: counting them too would count the heap
            // twice. With the runtime's heap profile read, its stacks stand for the small
            // objects' spans (each span's objects may be anyone's); a large object's span is
            // its own, charged to the stack that allocated it, and counted exactly.
            if self.go.is_some()
                && history.key.stack_id != crate::collect::go_profile::PROFILE_STACK_ID
                && mapped_by_go_runtime(&frames)
                && (history.key.origin != Origin::Heap
                    || (go_from_profile
                        && !crate::analyze::go_heap::is_large_object_stack(&frames)))
            {
                continue;
            }
            // The runtime's goroutine bookkeeping (each goroutine's `g`, the list of all of
            // them, blocked ones' waiting records) grows and shrinks with the goroutines,
            // which are counted per creation site.
            if self.go.is_some() && crate::analyze::go_heap::goroutine_bookkeeping(&frames) {
                continue;
            }
            if frames.is_empty() {
                groups.push((frames, vec![history]));
                continue;
            }
            let identity: Vec<FrameIdentity> = frames.iter().map(frame_identity).collect();
            match group_of.entry((history.key.origin, identity)) {
                Entry::Occupied(entry) => groups[*entry.get()].1.push(history),
                Entry::Vacant(entry) => {
                    entry.insert(groups.len());
                    groups.push((frames, vec![history]));
                }
            }
        }
        // Go spans of small objects by stack and size class, when they stand for the heap.
        let span_classes = if self.go.is_some() && !go_from_profile {
            self.collector.go_span_classes().clone()
        } else {
            HashMap::new()
        };
        let mut class_totals: HashMap<u32, u64> = HashMap::new();
        for classes in span_classes.values() {
            for (class, spans) in classes {
                *class_totals.entry(*class).or_default() += spans;
            }
        }
        let mut judged: Vec<Judged> = Vec::new();
        let mut omitted = (0u64, 0u64);
        for (frames, members) in groups {
            let refs: Vec<&StackHistory> = members.iter().collect();
            let Some(mut history) = verdicts::merge_histories(&refs) else {
                continue;
            };
            let in_profile: Vec<StackKey> = members
                .iter()
                .map(|member| member.key)
                .filter(|key| key.stack_id == crate::collect::go_profile::PROFILE_STACK_ID)
                .collect();
            // Go's heap is collected, not freed: what it holds when the program ends was not
            // lost, and only its trend tells a leak.
            let go_heap = self.go.is_some()
                && history.key.origin == Origin::Heap
                && (!in_profile.is_empty() || mapped_by_go_runtime(&frames));
            let context = Context {
                exited: context.exited && !go_heap,
                ..context
            };
            let trend = verdicts::judge(&history, context, &self.options.thresholds);
            if !in_profile.is_empty() {
                let mut sum = InUse::default();
                for key in &in_profile {
                    if let Some(found) = at_last_gc.remove(key) {
                        sum.bytes += found.bytes;
                        sum.objects += found.objects;
                    }
                }
                at_last_gc.insert(history.key, sum);
            }
            // The runtime's profile gives no ages: its stacks are never left out by age.
            if self.options.min_age.is_some() && in_profile.is_empty() {
                // Only what is at least --min-age old counts as held.
                let mut held = Held::default();
                for member in &members {
                    let member_held = held_old_enough
                        .get(&member.key)
                        .copied()
                        .unwrap_or_default();
                    held.allocs += member_held.allocs;
                    held.bytes += member_held.bytes;
                }
                if held.allocs == 0 {
                    omitted.0 += 1;
                    omitted.1 += history.totals.outstanding_bytes;
                    continue;
                }
                history.totals.outstanding_allocs = held.allocs;
                history.totals.outstanding_bytes = held.bytes;
            }
            let reachability = self.reachability.as_ref().map(|(by_stack, _)| {
                let mut sum = Reachability::default();
                for member in &members {
                    if let Some(found) = by_stack.get(&member.key) {
                        sum.add(found);
                    }
                }
                sum
            });
            let mut trend = trend;
            let judged_alone = trend.verdict;
            // Rising memory that the program can still reach is a growing cache or
            // queue, not a leak.
            if let Some(found) = &reachability {
                trend.verdict = verdict_with_reachability(trend.verdict, found, context.exited);
            }
            // While the program runs a leak is announced once its evidence holds (see
            // verdicts::confirm); a scan that found its blocks lost is evidence enough.
            let lost_found = reachability
                .as_ref()
                .map_or(0, |found| found.lost.blocks + found.indirectly_lost.blocks);
            let mut unconfirmed = None;
            if trend.verdict == Verdict::Leaking && !context.exited && lost_found == 0 {
                // Once confirmed, a stack stays so while it is judged leaking: an earlier
                // part of its history judged again may say otherwise at a window's edge.
                let id = crate::model::stack_id_of(history.key.origin, &frames);
                if !self.confirmed_leaks.contains(&id) {
                    match verdicts::confirm(&history, &trend, context, &self.options.thresholds) {
                        Ok(()) => {
                            self.confirmed_leaks.insert(id);
                        }
                        Err(why) => {
                            trend.verdict = Verdict::Suspect;
                            unconfirmed = Some(why);
                        }
                    }
                }
            } else if !context.exited && !self.confirmed_leaks.is_empty() {
                self.confirmed_leaks
                    .remove(&crate::model::stack_id_of(history.key.origin, &frames));
            }
            // The C runtime's own memory is never the program's leak, nor is what a
            // suppression accepts.
            let lost = reachability
                .as_ref()
                .map_or(trend.verdict == Verdict::Leaking, |found| {
                    found.lost.blocks + found.indirectly_lost.blocks + found.interior.blocks > 0
                });
            let excused = Excused {
                c_runtime: c_runtime::held_by(history.key.origin, &frames, context.exited),
                suppressed: crate::analyze::suppress::matching(
                    &self.options.suppressions,
                    &frames,
                    lost,
                )
                .map(str::to_string),
            };
            if (excused.c_runtime.is_some() || excused.suppressed.is_some())
                && matches!(
                    trend.verdict,
                    Verdict::Leaking | Verdict::Suspect | Verdict::Growing
                )
            {
                trend.verdict = Verdict::Stable;
            }
            let mut why = verdicts::why(
                &trend,
                judged_alone,
                reachability.as_ref(),
                context.exited,
                unconfirmed,
            );
            if let Some(others) = shared_span_class(&members, &span_classes, &class_totals)
                && matches!(
                    trend.verdict,
                    Verdict::Leaking | Verdict::Suspect | Verdict::Growing
                )
            {
                trend.verdict = Verdict::Stable;
                why = format!(
                    "rising, but {:.0}% of the live spans of its objects' size class are charged \
                     to other stacks: with Go's heap profile off a span is charged whole to the \
                     stack that filled it last, so which of them keeps the memory cannot be told \
                     (the goroutine counts may; a build that links runtime/pprof can)",
                    others * 100.0
                );
            }
            judged.push((history, trend, frames, reachability, excused, why));
        }
        let sort = self.options.sort;
        judged.sort_by(|(a, a_trend, ..), (b, b_trend, ..)| {
            let key = |history: &StackHistory, trend: &Trend| match sort {
                SortKey::Bytes => history.totals.outstanding_bytes as f64,
                SortKey::Count => history.totals.outstanding_allocs as f64,
                SortKey::Growth => trend.growth_bytes_per_s,
            };
            a_trend
                .verdict
                .cmp(&b_trend.verdict)
                .then(key(b, b_trend).total_cmp(&key(a, a_trend)))
                .then(b.totals.outstanding_bytes.cmp(&a.totals.outstanding_bytes))
                .then(b.totals.total_bytes.cmp(&a.totals.total_bytes))
                .then(a.key.cmp(&b.key))
        });
        // The traced heap as the stacks count it, listed or not (a Go heap read from the
        // runtime's profile: its stacks, not the spans the kernel's count).
        let heap_bytes: u64 = if go_from_profile {
            judged
                .iter()
                .filter(|(history, ..)| history.key.origin == Origin::Heap)
                .map(|(history, ..)| history.totals.outstanding_bytes)
                .sum()
        } else {
            self.collector.heap_outstanding_bytes()
        };
        let leak_summary = exited.is_some().then(|| {
            let mut summary = LeakSummary::default();
            for (history, trend, _, reachability, excused, _) in &judged {
                let outstanding = (
                    history.totals.outstanding_bytes,
                    history.totals.outstanding_allocs,
                );
                if excused.suppressed.is_some() {
                    summary.suppressed_bytes += outstanding.0;
                    continue;
                }
                summary.add(
                    trend.verdict,
                    outstanding,
                    reachability.as_ref(),
                    excused.c_runtime.is_some(),
                );
            }
            summary
        });
        let mut kept = judged;
        let top = if top == 0 { usize::MAX } else { top };
        for (history, ..) in kept.split_off(kept.len().min(top)) {
            omitted.0 += 1;
            omitted.1 += history.totals.outstanding_bytes;
        }
        let mut stacks = Vec::with_capacity(kept.len());
        for (history, trend, frames, reachability, excused, why) in kept {
            stacks.push(StackReport {
                verdict: trend.verdict,
                origin: history.key.origin,
                outstanding_bytes: history.totals.outstanding_bytes,
                outstanding_allocs: history.totals.outstanding_allocs,
                total_allocs: history.totals.total_allocs,
                total_frees: history.totals.total_frees,
                total_bytes: history.totals.total_bytes,
                oldest_age_s: history.oldest_age_s(now_ns),
                growth_bytes_per_s: trend.growth_bytes_per_s,
                confidence: trend.confidence,
                growth_onset: trend.growth_onset,
                r_squared: trend.r_squared,
                survival_fraction: trend.survival_fraction,
                frames,
                reachability,
                held_by_c_runtime: excused.c_runtime.map(str::to_string),
                suppressed_by: excused.suppressed,
                series: evenly_spread(&history.series, REPORT_SERIES_POINTS),
                why,
                at_last_gc: at_last_gc.get(&history.key).copied(),
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
        // Runs of our programs the kernel skipped (another BPF program was running on the
        // CPU): the events are gone before any of our counters could see them.
        dropped.insert("missed_program_runs".to_string(), self.probes.missed_runs());
        events.insert(
            "symbolization_failures".to_string(),
            self.symbolizer.failures,
        );
        if let Some(scopes) = &self.scopes {
            events.insert(
                "scope_call_spans_skipped".to_string(),
                scopes.retaining_skipped,
            );
        }
        let process = verdicts::process_trend(&self.process_samples, &self.options.thresholds);
        let process = (!self.process_samples.is_empty()).then(|| ProcessReport {
            rss_growth_bytes_per_s: process.rss.slope,
            rss_rising: process.rss.steady,
            rss_growth_onset: process.rss.onset,
            heap_growth_bytes_per_s: process.heap_growth_bytes_per_s,
            memory_limit_bytes: procfs::memory_limit(self.pid),
            samples: {
                let mut samples = evenly_spread(&self.process_samples, REPORT_PROCESS_POINTS);
                // The traced heap as the stacks count it now: one total across the report.
                if let Some(last) = samples.last_mut() {
                    last.heap_bytes = heap_bytes;
                }
                samples
            },
        });
        let (scopes, suspects) = match &self.scopes {
            Some(collector) => {
                let settings = scope::ReportSettings {
                    specs: &self.options.scopes,
                    started_ns: self.started_ns,
                    span_s,
                    retain_after_s: self.options.scope_retain_after.as_secs_f64(),
                    max_labels: self.options.scope_max_labels,
                    sample_rate: u64::from(self.options.sample_rate),
                    thresholds: &self.options.thresholds,
                };
                let mut name = |key: &StackKey| {
                    frames_by_key.get(key).map(|frames| NamedStack {
                        id: crate::model::stack_id_of(key.origin, frames),
                        frames: frames.iter().map(Frame::identity).collect(),
                    })
                };
                let found = scope::analyse(
                    &collector.records,
                    &settings,
                    self.collector.scope_held(),
                    &mut name,
                );
                let named = suspects::suspects(&stacks, process.as_ref(), &found.groups, span_s);
                (found.reports, named)
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(Report {
            version: REPORT_VERSION,
            target: self.target.clone(),
            mode: self.mode.to_string(),
            duration_s: span_s,
            sample_rate: self.options.sample_rate,
            unwind: self.options.unwind.report_name().to_string(),
            allocators: self.allocators.clone(),
            programs: self.probes.programs.clone(),
            cost: self.cost_report(procfs::monotonic_ns()),
            exited,
            dropped,
            events,
            omitted_stacks: omitted.0,
            omitted_outstanding_bytes: omitted.1,
            process,
            reachability_scan: self.reachability.as_ref().map(|(_, scan)| *scan),
            leak_summary,
            stacks,
            scopes,
            suspects,
            runtimes: self.runtimes(),
            goroutines: self.goroutine_report(top, &context),
            forked_by: self.forked_by,
            children: Vec::new(),
        })
    }

    fn runtimes(&self) -> Vec<RuntimeInfo> {
        let mut runtimes = self.modules.runtimes();
        if let Some((interpreter, _)) = &self.python {
            runtimes.push(RuntimeInfo {
                runtime: "python".into(),
                version: interpreter.version_text(),
                perf_map: None,
                hint: interpreter.hint(),
                heap: None,
            });
        }
        if let Some((go, _)) = &self.go {
            runtimes.push(RuntimeInfo {
                runtime: "go".into(),
                version: go.program.version.clone(),
                perf_map: None,
                hint: go.program.missing(),
                heap: self.go_heap_source(go),
            });
        }
        runtimes
    }

    /// Where the Go heap's stacks come from, in a sentence.
    fn go_heap_source(&self, go: &GoTarget) -> Option<String> {
        use crate::collect::go_profile::Unread;
        const SPANS: &str = "the Go heap is followed a span at a time instead: a span is \
                             charged to the stack that filled it last, so stacks allocating \
                             objects of one size share what any of them keeps";
        let profile = self.go_profile.as_ref();
        if let Some(profile) = profile.filter(|profile| profile.in_use()) {
            let gc = match profile.last_cycle_change_s {
                Some(at_s) => format!("the last seen at {at_s:.1}s"),
                None => "none seen while traced".to_string(),
            };
            let cut = if profile.cut {
                " (the bucket list was cut: older stacks are not read)"
            } else {
                ""
            };
            let sampling = if profile.rate == 1 {
                "every allocation recorded".to_string()
            } else {
                format!(
                    "one allocation sampled per {} bytes, scaled as pprof scales it",
                    profile.rate
                )
            };
            return Some(format!(
                "from the runtime's heap profile ({sampling}): {} GC cycles completed while \
                 traced, {gc}; outstanding counts what was allocated and not yet swept, \
                 \"at_last_gc\" what was in use at the last GC{cut}",
                profile.gc_cycles_seen()
            ));
        }
        if !go.program.can_follow_heap() {
            return None;
        }
        let why = match profile.and_then(|profile| profile.unread.clone()) {
            Some(Unread::Off) => "the runtime's heap profile is off (MemProfileRate 0: the \
                                  linker turns it off in a program that never calls \
                                  runtime.MemProfile, e.g. one that does not import \
                                  runtime/pprof or net/http/pprof)"
                .to_string(),
            Some(Unread::Unreadable(reason)) => {
                format!("the runtime's heap profile could not be read ({reason})")
            }
            Some(Unread::NotYet) | None => match &go.program.profile_unknown {
                Some(reason) => format!("the runtime's heap profile cannot be read: {reason}"),
                None => "the runtime's heap profile was not read yet".to_string(),
            },
        };
        Some(format!("{why}; {SPANS}"))
    }

    /// Goroutines per creation site, leaking sites first, then by goroutines alive.
    fn goroutine_report(&mut self, top: usize, context: &Context) -> Option<GoroutineReport> {
        let Some((_, Some(goroutines))) = &self.go else {
            return None;
        };
        let histories: Vec<crate::collect::goroutines::SiteHistory> =
            goroutines.sites().cloned().collect();
        let mut sites = Vec::with_capacity(histories.len());
        let mut report = GoroutineReport::default();
        for history in histories {
            report.alive += history.alive();
            report.created += history.created;
            report.exited += history.exited;
            let points: Vec<(f64, f64)> = history
                .series
                .iter()
                .map(|sample| (sample.at_s, sample.alive as f64))
                .collect();
            let (mut verdict, confidence, growth_per_s) =
                verdicts::judge_count(&points, &self.options.thresholds);
            if context.exited && verdict == Verdict::Transient && history.alive() > 0 {
                verdict = Verdict::Stable;
            }
            let stack = if history.stack_id == leak_common::UNKNOWN_STACK_ID {
                Vec::new()
            } else {
                let ips = self.collector.stack_ips(history.stack_id).to_vec();
                self.symbolizer.symbolize_stack(&self.modules, &ips)
            };
            // The site is the stack's first frame (inlined frames included, the innermost
            // one is where the `go` statement is).
            let site = self
                .symbolizer
                .symbolize_stack(&self.modules, &[history.gopc])
                .into_iter()
                .next()
                .unwrap_or_default();
            sites.push(GoroutineSiteReport {
                verdict,
                confidence,
                site,
                stack,
                alive: history.alive(),
                alive_at_start: history.alive_at_start,
                created: history.created,
                exited: history.exited,
                growth_per_s,
                series: evenly_spread(&history.series, REPORT_SERIES_POINTS),
            });
        }
        sites.sort_by(|a, b| {
            a.verdict
                .cmp(&b.verdict)
                .then(b.alive.cmp(&a.alive))
                .then(b.created.cmp(&a.created))
                .then(a.site.address.cmp(&b.site.address))
        });
        let top = if top == 0 { usize::MAX } else { top };
        for omitted in sites.split_off(sites.len().min(top)) {
            report.omitted_sites += 1;
            report.omitted_alive += omitted.alive;
        }
        report.sites = sites;
        Some(report)
    }

    /// The Go heap profile's buckets as stacks (keyed by bucket; large objects' only where
    /// their spans are not followed), and what each held as of the last GC.
    fn go_profile_histories(&mut self) -> (Vec<NamedHistory>, HashMap<StackKey, InUse>) {
        let (Some(profile), Some((go, _))) = (&self.go_profile, &self.go) else {
            return (Vec::new(), HashMap::new());
        };
        // Large objects are counted from their spans, every one of them, where those are
        // followed.
        let spans = go.program.can_follow_heap();
        let buckets: Vec<crate::collect::go_profile::Bucket> = profile
            .buckets()
            .iter()
            .filter(|bucket| {
                bucket.figures.allocs > 0
                    && !(spans && bucket.size > crate::collect::go_profile::MAX_SMALL_SIZE)
            })
            .cloned()
            .collect();
        let mut histories = Vec::with_capacity(buckets.len());
        let mut at_last_gc = HashMap::new();
        for bucket in buckets {
            let frames = self.profile_frames(&bucket.stack);
            let key = StackKey {
                origin: Origin::Heap,
                stack_id: crate::collect::go_profile::PROFILE_STACK_ID,
                caller_hint: bucket.address,
            };
            let figures = bucket.figures;
            at_last_gc.insert(
                key,
                InUse {
                    bytes: figures.at_gc_bytes,
                    objects: figures.at_gc_objects,
                },
            );
            histories.push((
                StackHistory {
                    key,
                    totals: Totals {
                        outstanding_bytes: figures.in_use_bytes,
                        outstanding_allocs: figures.in_use_objects,
                        total_allocs: figures.allocs,
                        total_frees: figures.frees,
                        total_bytes: figures.alloc_bytes,
                    },
                    series: bucket.series,
                    oldest_live_ns: None,
                },
                frames,
            ));
        }
        (histories, at_last_gc)
    }

    /// Frames of a Go profile stack. The runtime writes one return address per logical
    /// frame, an inlined call's caller at its inline mark; the symbolizer expands inlined
    /// calls itself, so an address that only repeats the callers the one before it was
    /// expanded into is left out.
    fn profile_frames(&mut self, stack: &[u64]) -> Vec<Frame> {
        let mut frames: Vec<Frame> = Vec::new();
        let mut last: Vec<Option<String>> = Vec::new();
        for &address in stack {
            let expanded = self.symbolizer.symbolize_stack(&self.modules, &[address]);
            let names: Vec<Option<String>> = expanded
                .iter()
                .map(|frame| frame.function.clone())
                .collect();
            let repeats = last.len() > names.len()
                && !names.is_empty()
                && names.iter().all(Option::is_some)
                && last.ends_with(&names);
            if !repeats {
                frames.extend(expanded);
            }
            last = names;
        }
        frames
    }

    /// Symbolized frames of a stack. For mmap stacks the walk starts inside the frameless
    /// syscall wrapper: with frame pointers it skips the wrapper's caller, which the caller
    /// read from the stack pointer replaces; with unwind tables the caller follows, and the
    /// wrapper is dropped.
    fn frames_of(&mut self, history: &StackHistory) -> Vec<Frame> {
        let mut ips = self.collector.stack_ips(history.key.stack_id).to_vec();
        if history.key.origin == Origin::Mmap && history.key.caller_hint != 0 && !ips.is_empty() {
            let first = self.symbolizer.symbolize_stack(&self.modules, &ips[..1]);
            let in_wrapper = first
                .last()
                .and_then(|frame| frame.function.as_deref())
                .is_some_and(is_syscall_wrapper);
            if in_wrapper {
                if ips.get(1) == Some(&history.key.caller_hint) {
                    // Walked with unwind tables: the caller is there already.
                    ips.remove(0);
                } else {
                    ips[0] = history.key.caller_hint;
                }
            }
        }
        self.symbolizer.symbolize_stack(&self.modules, &ips)
    }
}

/// A stack's history and its frames.
type NamedHistory = (StackHistory, Vec<Frame>);

/// What makes two frames the same place for the reader: the source location when known,
/// else the address's place in its module.
type FrameIdentity = (
    Option<String>,
    Option<String>,
    Option<u32>,
    Option<String>,
    bool,
    Option<u64>,
);

fn frame_identity(frame: &Frame) -> FrameIdentity {
    let unsymbolized = frame.function.is_none() || frame.line.is_none();
    (
        frame.function.clone(),
        frame.file.clone(),
        frame.line,
        frame.module.clone(),
        frame.inlined,
        if unsymbolized {
            frame.module_offset.or(Some(frame.address))
        } else {
            None
        },
    )
}

/// The report with at most `top` stacks (0: all); the rest count as omitted.
fn truncated(mut report: Report, top: usize) -> Report {
    if top == 0 || report.stacks.len() <= top {
        return report;
    }
    for stack in report.stacks.split_off(top) {
        report.omitted_stacks += 1;
        report.omitted_outstanding_bytes += stack.outstanding_bytes;
    }
    report
}

/// At most `points` items spread evenly over `series`, always keeping the last.
fn evenly_spread<T: Copy>(series: &[T], points: usize) -> Vec<T> {
    if series.len() <= points || points < 2 {
        return series.to_vec();
    }
    let step = (series.len() - 1) as f64 / (points - 1) as f64;
    (0..points)
        .map(|i| series[((i as f64 * step).round() as usize).min(series.len() - 1)])
        .collect()
}

/// A stack as judged for the report: its history, verdict, frames, classes and excuse.
type Judged = (
    StackHistory,
    Trend,
    Vec<Frame>,
    Option<Reachability>,
    Excused,
    String,
);

/// Why a stack's memory is not the program's leak, whatever its trend: the C runtime's
/// own, or accepted by a suppression (its name).
struct Excused {
    c_runtime: Option<&'static str>,
    suppressed: Option<String>,
}

/// A stack's verdict once the reachability scan has classified its blocks. After the
/// program exited, the scan decides, as valgrind's does: a block lost or only reached from
/// lost ones is a leak (a lost zero-byte block too), and memory all still pointed to is
/// `reachable`, held but not lost, whatever its trend said (a block allocated once and kept
/// in a global is not "growing"). While the program runs, rising memory it can still reach
/// is a growing cache or queue, not a leak.
fn verdict_with_reachability(verdict: Verdict, found: &Reachability, exited: bool) -> Verdict {
    let lost_blocks = found.lost.blocks + found.indirectly_lost.blocks;
    if exited {
        if lost_blocks > 0 {
            Verdict::Leaking
        } else if found.interior.blocks == 0 && found.reachable.blocks > 0 {
            Verdict::Reachable
        } else {
            verdict
        }
    } else if verdict == Verdict::Leaking && lost_blocks == 0 && found.reachable.bytes > 0 {
        Verdict::Growing
    } else {
        verdict
    }
}

/// Whether an mmap stack starts in the dynamic loader (ld-linux, ld-musl).
fn mapped_by_loader(frames: &[Frame]) -> bool {
    frames
        .first()
        .and_then(|frame| frame.module.as_deref())
        .and_then(|module| module.rsplit('/').next())
        .is_some_and(|name| {
            name.starts_with("ld-linux") || name.starts_with("ld-musl") || name == "ld.so"
        })
}

/// A mapping the Go runtime made for itself: the mmap syscall is in package runtime
/// (`runtime.sysMmap`, `runtime.mmap`…), or in cgo's C wrapper that `runtime.mmap` calls in
/// a program linked with cgo. A program's own `syscall.Mmap` is not.
fn mapped_by_go_runtime(frames: &[Frame]) -> bool {
    const CGO_MMAP: [&str; 2] = ["x_cgo_mmap", "_cgo_mmap"];
    frames
        .iter()
        .map(|frame| frame.function.as_deref())
        .find(|function| !function.is_some_and(|name| CGO_MMAP.contains(&name)))
        .flatten()
        .is_some_and(|function| function.starts_with("runtime."))
}

/// A stack charged with Go spans of small objects holds at most this share of the live
/// spans of its size classes for its rise to be its own.
const OWN_SPAN_SHARE: f64 = 0.75;

/// For a stack of Go spans of small objects (its `members`' stack ids in `span_classes`):
/// the share of the live spans of its size classes charged to other stacks, when that is
/// too much for its rise to be told from theirs (see OWN_SPAN_SHARE).
fn shared_span_class(
    members: &[StackHistory],
    span_classes: &HashMap<u32, HashMap<u32, u64>>,
    class_totals: &HashMap<u32, u64>,
) -> Option<f64> {
    let mut own: HashMap<u32, u64> = HashMap::new();
    for member in members {
        for (class, spans) in span_classes.get(&member.key.stack_id).into_iter().flatten() {
            *own.entry(*class).or_default() += spans;
        }
    }
    let held: u64 = own.values().sum();
    let in_classes: u64 = own
        .keys()
        .map(|class| class_totals.get(class).copied().unwrap_or(0))
        .sum();
    let others = 1.0 - held as f64 / in_classes.max(1) as f64;
    (held > 0 && others > 1.0 - OWN_SPAN_SHARE).then_some(others)
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
    use super::{evenly_spread, is_syscall_wrapper};

    #[test]
    fn spreads_evenly_keeping_both_ends() {
        let series: Vec<u32> = (0..100).collect();
        let spread = evenly_spread(&series, 10);
        assert_eq!(spread.len(), 10);
        assert_eq!((spread[0], spread[9]), (0, 99));
        assert_eq!(evenly_spread(&series[..5], 10), vec![0, 1, 2, 3, 4]);
    }

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
