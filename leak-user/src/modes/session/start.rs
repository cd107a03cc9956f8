//! Setting a session up: the checks before anything is traced, what to probe in a program
//! (its allocators, scopes, Go and Python runtimes), the probes placed and the collectors
//! over their maps, then privileges dropped and the exporters started.
use super::{ARM_ENTRIES_AFTER_NS, Options, Session, SessionError, overhead};
use crate::{
    collect::drain::{Collector, KernelMaps},
    collect::goroutines::Goroutines,
    collect::scope::ScopeCollector,
    export::otel::Telemetry,
    export::prometheus,
    model::allocators::KnownFn,
    model::series::MAX_SERIES_LEN,
    model::{AllocatorInfo, ProbeInfo, Target},
    probe::attach::{self, AllocatorModule, LoadOptions, Probes, ScopeProbe},
    probe::golang::GoTarget,
    probe::python::PythonInterpreter,
    symbols::python::PythonNames,
    symbols::symbolize::{Modules, Symbolizer},
    sys::procfs,
};

/// What the report says about a Go runtime's probes.
fn go_allocator_info(go: &GoTarget) -> Option<AllocatorInfo> {
    let program = &go.program;
    program.can_follow_heap().then(|| AllocatorInfo {
        allocator: "Go runtime".to_string(),
        module: go.display_path.clone(),
        functions: program
            .span_full
            .iter()
            .chain(program.large_spans.iter().take(1))
            .chain(program.span_free.iter())
            .map(|probe| probe.symbol.clone())
            .collect(),
        probes: program
            .newproc
            .iter()
            .chain(program.goexit.iter())
            .chain(program.span_full.iter())
            .chain(program.large_spans.iter())
            .chain(program.span_free.iter())
            .map(|probe| ProbeInfo {
                function: probe.symbol.clone(),
                offset: probe.offset_in_function,
                instruction: probe.instruction.clone(),
                emulated: probe.emulated,
                covered_by: None,
            })
            .collect(),
    })
}

/// The target's executable, when it is a Go program.
fn go_target_of_process(pid: u32) -> Option<GoTarget> {
    use std::os::unix::fs::MetadataExt;
    // By file identity, not path: the executable may have been replaced or removed since.
    let exe = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    let (probe_path, display_path) =
        attach::process_files(pid)
            .ok()?
            .into_iter()
            .find(|(probe_path, _)| {
                std::fs::metadata(probe_path)
                    .is_ok_and(|file| file.ino() == exe.ino() && file.dev() == exe.dev())
            })?;
    GoTarget::of_file(probe_path, display_path)
}

/// What the report says about one probed module.
pub(super) fn allocator_info(module: &AllocatorModule, alloc_fns: &[KnownFn]) -> AllocatorInfo {
    AllocatorInfo {
        allocator: if attach::only_user_named(module, alloc_fns) {
            "custom".to_string()
        } else {
            module.allocator.to_string()
        },
        module: module.display_path.clone(),
        functions: module.functions.iter().map(|f| f.symbol.clone()).collect(),
        probes: module
            .functions
            .iter()
            .map(|f| ProbeInfo {
                function: f.symbol.clone(),
                offset: f.probe_offset - f.file_offset,
                instruction: f.instruction.clone(),
                emulated: f.emulated,
                covered_by: None,
            })
            .chain(module.covered.iter().map(|c| ProbeInfo {
                function: c.symbol.clone(),
                offset: 0,
                instruction: String::new(),
                emulated: false,
                covered_by: Some(c.callee.clone()),
            }))
            .collect(),
    }
}

/// Fails early, before anything is traced, without the capabilities to trace, on a kernel
/// that cannot do it, or if the report could not be written: the file must be writable (it
/// is opened without being changed, or created and removed again).
pub(super) fn check_start(options: &Options) -> Result<(), SessionError> {
    if let Some(missing) = crate::probe::privileges::missing_for_probes() {
        return Err(SessionError::Privileges(missing));
    }
    attach::check_kernel(true).map_err(SessionError::Attach)?;
    if let Some(path) = &options.output {
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|err| SessionError::Output {
                path: path.display().to_string(),
                reason: format!("{err} (give a writable file with --output)"),
            })?;
        if !existed {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// What to probe in a program about to run, found from its files before its first
/// instruction (the command, or a program a followed child executes).
pub(super) struct ProgramProbes {
    allocators: Vec<AllocatorModule>,
    scopes: Vec<ScopeProbe>,
    go: Option<GoTarget>,
    python: Option<PythonInterpreter>,
}

impl ProgramProbes {
    /// `image`: the file the kernel runs (a script's interpreter); `env`: the environment
    /// the program gets; `shown`: the name errors give.
    pub(super) fn for_program(
        image: &std::path::Path,
        env: &[(String, String)],
        options: &Options,
        shown: &str,
    ) -> Result<ProgramProbes, SessionError> {
        let go = GoTarget::of_file(image.to_path_buf(), image.display().to_string());
        let go_heap = go.as_ref().is_some_and(|go| go.program.can_follow_heap());
        let files = attach::program_files(image, env)?;
        let allocators = match attach::allocators_in_files(&files, &options.alloc_fns) {
            Ok(found) => found,
            // A Go program without cgo: the Go heap is its only allocator.
            Err(attach::AttachError::NoAllocator { .. }) if go_heap => Vec::new(),
            Err(attach::AttachError::NoAllocator { .. }) => {
                return Err(SessionError::ProgramWithoutAllocator(shown.to_string()));
            }
            Err(other) => return Err(SessionError::Attach(other)),
        };
        let scopes = if options.scopes.is_empty() {
            Vec::new()
        } else {
            attach::find_scopes(&options.scopes, &files)?
        };
        Ok(ProgramProbes {
            allocators,
            scopes,
            go,
            python: attach::python_interpreter(&files),
        })
    }

    /// The probes in place for process `pid`, which has not run this program yet.
    pub(super) fn start(self, pid: u32, options: Options) -> Result<Session, SessionError> {
        Session::start(
            pid,
            "run",
            &self.allocators,
            &self.scopes,
            self.go,
            self.python,
            options,
        )
    }
}

impl Session {
    /// Attaches to a running process: finds its allocators and places the probes.
    pub(super) fn attach(
        pid: u32,
        mode: &'static str,
        options: Options,
    ) -> Result<Session, SessionError> {
        match procfs::process_kind(pid) {
            procfs::ProcessKind::Missing => return Err(SessionError::NoSuchProcess(pid)),
            procfs::ProcessKind::Zombie => return Err(SessionError::Zombie(pid)),
            procfs::ProcessKind::KernelThread => return Err(SessionError::KernelThread(pid)),
            procfs::ProcessKind::User => {}
        }
        if pid == std::process::id() {
            return Err(SessionError::Itself(pid));
        }
        let mut options = options;
        options.unwind = options.unwind.resolve(
            crate::sys::file_bytes::open(format!("/proc/{pid}/exe"))
                .ok()
                .as_deref(),
        );
        let go = go_target_of_process(pid);
        let allocators = match attach::allocators_in_process(pid, &options.alloc_fns) {
            // A Go program without cgo: the Go heap is its only allocator.
            Err(attach::AttachError::NoAllocator { .. })
                if go.as_ref().is_some_and(|go| go.program.can_follow_heap()) =>
            {
                Vec::new()
            }
            other => other?,
        };
        let scopes = if options.scopes.is_empty() {
            Vec::new()
        } else {
            attach::find_scopes(&options.scopes, &attach::process_files(pid)?)?
        };
        let python = attach::process_files(pid)
            .ok()
            .and_then(|files| attach::python_interpreter(&files));
        let mut session = Session::start(pid, mode, &allocators, &scopes, go, python, options)?;
        session.read_goroutine_baseline();
        session.point_python_runtime();
        // A launched command's first brk (the loader's) sets the break it starts from.
        session
            .collector
            .set_program_break(procfs::program_break(pid));
        Ok(session)
    }

    /// Places the probes on process `pid` (its `allocators` and `scopes`, and the Go and
    /// Python runtimes found in it) and sets up the readers of their maps.
    fn start(
        pid: u32,
        mode: &'static str,
        allocators: &[AllocatorModule],
        scopes: &[ScopeProbe],
        go: Option<GoTarget>,
        python: Option<PythonInterpreter>,
        options: Options,
    ) -> Result<Session, SessionError> {
        let options = for_go_heap(options, go.as_ref());
        let mut probes = attach::attach(
            pid,
            allocators,
            scopes,
            go.as_ref(),
            LoadOptions {
                max_allocs: options.max_allocs,
                min_size: options.min_size,
                max_size: options.max_size,
                sample_rate: options.sample_rate,
                unwind: options.unwind,
                python: python
                    .as_ref()
                    .and_then(PythonInterpreter::layout)
                    .unwrap_or_default(),
                before_exec: mode == "run",
            },
        )?;
        let maps = KernelMaps::take(&mut probes.ebpf)?;
        let scope_collector = scope_collector(&mut probes, scopes, &options)?;
        let unwind = probes.unwind.take();
        let started_ns = procfs::monotonic_ns();
        let target = target_of(pid);
        let mut modules = Modules::default();
        let _ = modules.refresh(pid);
        let go = match go {
            Some(go) => Some(with_goroutines(go, &mut probes)?),
            None => None,
        };
        let python = python.map(|interpreter| with_runtime_slot(interpreter, &mut probes));
        let mut symbolizer = Symbolizer::new();
        let (probes_trap_cost, options_max_overhead) =
            (probes.trap_cost.unwrap_or_default(), options.max_overhead);
        if python.as_ref().is_some_and(|(_, map)| map.is_some()) {
            symbolizer.python = Some(PythonNames::new(pid));
        }
        let mut allocators: Vec<AllocatorInfo> = allocators
            .iter()
            .map(|module| allocator_info(module, &options.alloc_fns))
            .collect();
        allocators.extend(go.as_ref().and_then(|(go, _)| go_allocator_info(go)));
        Ok(Session {
            pid,
            mode,
            target,
            allocators,
            collector: Collector::new(
                maps,
                started_ns,
                procfs::page_size(),
                options.min_size..=options.max_size,
                options.sample_rate,
            ),
            probes,
            modules,
            symbolizer,
            options,
            started_ns,
            process_samples: Vec::new(),
            confirmed_leaks: std::collections::HashSet::new(),
            last_process_sample_ns: None,
            launched_program: None,
            forked_by: None,
            traced_from_start: false,
            child_reports: Vec::new(),
            telemetry: None,
            endpoint: None,
            unwind,
            reachability: None,
            scopes: scope_collector,
            go,
            go_profile: None,
            python,
            python_stacks_read: std::collections::HashSet::new(),
            cost: overhead::CostMeter::new(probes_trap_cost, options_max_overhead, started_ns),
            arm_entries_at: Some(started_ns + ARM_ENTRIES_AFTER_NS),
        })
    }

    /// Once the probes are placed, before the exporters start threads: keeps only what the
    /// rest of the session uses (see privileges.rs). `dropping_themselves`: threads that
    /// drop to the same set on their own.
    pub(super) fn drop_privileges(&self, dropping_themselves: &[i32]) {
        let needs = crate::probe::privileges::Needs::new(
            self.options.output.clone(),
            self.options.prometheus,
        );
        crate::probe::privileges::drop_to(
            needs.after_attach(),
            "probes placed",
            dropping_themselves,
        );
    }

    /// Starts the OTLP exporters and the Prometheus endpoint the options ask for.
    pub(super) fn start_exports(&mut self) -> Result<(), SessionError> {
        if let Some(otlp) = self.options.otlp.clone() {
            self.telemetry = Some(Telemetry::start(otlp, &self.target)?);
        }
        if let Some(addr) = self.options.prometheus {
            let endpoint = prometheus::Endpoint::start(addr)?;
            eprintln!(
                "leaktrace: Prometheus metrics on http://{}/metrics",
                endpoint.local_addr
            );
            self.endpoint = Some(endpoint);
        }
        Ok(())
    }

    /// For --verbose: each allocator and what was probed in it.
    pub(super) fn log_probes(&self) {
        for found in &self.allocators {
            log::info!(
                "{} in {}: {}",
                found.allocator,
                found.module,
                found.functions.join(", ")
            );
        }
        log::info!(
            "attached to pid {}: {} probe points; stacks walked with {}",
            self.pid,
            self.probes.attached.len(),
            self.options.unwind.name()
        );
    }
}

/// The options for a target whose heap may be Go's: no reachability scan, no sampling.
fn for_go_heap(options: Options, go: Option<&GoTarget>) -> Options {
    let mut options = options;
    if options.reachability && go.is_some_and(|go| go.program.can_follow_heap()) {
        // Go memory is reachable or garbage the collector has yet to take back; the scan
        // tells leaks from caches only in manually freed memory.
        log::info!(
            "no reachability scan: the target is a Go program (its heap is garbage collected)"
        );
        options.reachability = false;
    }
    if options.sample_rate > 1 && go.is_some_and(|go| go.program.can_follow_heap()) {
        // The Go heap is recorded a span at a time already; scaling its spans by the rate
        // would multiply them.
        log::warn!(
            "--sample-rate {} ignored: the target is a Go program, whose heap is already sampled a span at a time",
            options.sample_rate
        );
        options.sample_rate = 1;
    }
    options
}

/// The reader of the --scope maps, naming each scope's probe points, when there are scopes.
fn scope_collector(
    probes: &mut Probes,
    scopes: &[ScopeProbe],
    options: &Options,
) -> Result<Option<ScopeCollector>, SessionError> {
    if scopes.is_empty() {
        return Ok(None);
    }
    let mut collector = ScopeCollector::take(
        &mut probes.ebpf,
        scopes.len() as u32,
        options.scope_retain_after,
        options.scope_span_threshold,
        MAX_SERIES_LEN,
    )?;
    collector.records.probed = scopes
        .iter()
        .map(|scope| {
            scope
                .points
                .iter()
                .map(|point| format!("{} in {}", point.symbol, point.display_path))
                .collect()
        })
        .collect();
    Ok(Some(collector))
}

/// What the report says the target is, as /proc has it now.
fn target_of(pid: u32) -> Target {
    Target {
        pid,
        exe: procfs::exe_path(pid)
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
        command_line: procfs::command_line(pid).unwrap_or_default(),
        name: procfs::comm(pid).unwrap_or_default(),
    }
}

/// A Go target with the reader of its goroutines per creation site, when they can be
/// counted.
fn with_goroutines(
    go: GoTarget,
    probes: &mut Probes,
) -> Result<(GoTarget, Option<Goroutines>), SessionError> {
    let goroutines = if go.program.can_count_goroutines() {
        Some(
            Goroutines::take(&mut probes.ebpf, MAX_SERIES_LEN).map_err(|reason| {
                SessionError::Drain(crate::collect::drain::DrainError::new(
                    leak_common::map_names::GOROUTINE_SITES,
                    reason,
                ))
            })?,
        )
    } else {
        None
    };
    Ok((go, goroutines))
}

/// A CPython interpreter with the kernel's slot for its `_PyRuntime`, when its layout is
/// known (its frames are read then).
fn with_runtime_slot(
    interpreter: PythonInterpreter,
    probes: &mut Probes,
) -> (
    PythonInterpreter,
    Option<aya::maps::Array<aya::maps::MapData, u64>>,
) {
    if interpreter.layout().is_none() {
        return (interpreter, None);
    }
    let map = probes
        .ebpf
        .take_map(leak_common::map_names::PY_RUNTIME)
        .and_then(|map| aya::maps::Array::try_from(map).ok());
    (interpreter, map)
}
