//! Finding the allocator and placing the probes.
//!
//! The allocator is whatever mapped module defines `malloc` and `free` (libc, a static
//! executable, a preloaded jemalloc…); every family function it defines gets an entry uprobe
//! and, except free, a return uprobe, scoped to the target process. The anonymous mmap
//! family is traced through syscall tracepoints, filtered to the target in the kernel.
//!
//! In the order a session goes through them: the target's ELF files (`files`), the
//! allocator modules among them (`modules`, each file's functions found by `allocators`
//! and `functions`) and the --scope functions (`scopes`); what the kernel must offer
//! (`kernel`); the eBPF object loaded with the session's settings (`object`) and its
//! programs (`programs`); what a trap costs here (`calibration`); the uprobes placed
//! (`placement`) and the syscall tracepoints (`tracepoints`); the links that hold them and
//! taking them out (`links`). `leaktrace watch`'s page-fault sampler is `fault_sampler`.
mod allocators;
mod calibration;
mod error;
mod fault_sampler;
mod files;
mod functions;
mod kernel;
mod links;
mod modules;
mod object;
mod placement;
mod programs;
mod scopes;
mod tracepoints;

pub use allocators::{AllocatorFn, CoveredFn};
pub use error::AttachError;
pub use fault_sampler::{FaultSampler, attach_fault_sampler};
pub use files::{mapped_load_bias, process_files, program_files, python_interpreter};
pub use kernel::check_kernel;
pub use modules::{AllocatorModule, allocators_in_files, allocators_in_process, only_user_named};
pub use object::LoadOptions;
#[cfg(test)]
pub(crate) use object::ebpf_object;
pub use programs::{VERIFIER_BUDGET, VERIFIER_LIMIT, verify_programs};
pub use scopes::{ScopePoint, ScopeProbe, find_scopes};

use std::collections::HashSet;

use aya::Ebpf;
use leak_common::{ALLOC_RETURN_PROGRAM, ENTRY_PROGRAM, SESSION_PROGRAM, map_names};

use crate::{
    model::ProgramLoad,
    model::cost::TrapCost,
    probe::attach::calibration::{calibrate_trap_cost, trap_cost_measured},
    probe::attach::error::probe_error,
    probe::attach::links::{LinkMode, ProbeLink, detach_in_background, link_mode},
    probe::attach::object::{LEAK_EBPF_OBJECT, load_object},
    probe::attach::placement::ProbeSet,
    probe::attach::programs::{load_program, multi_loads},
    probe::attach::tracepoints::attach_syscall_tracepoints,
    probe::golang::GoTarget,
    probe::multi_link::MultiPrograms,
    probe::unwind_tables::{Unwind, UnwindTables},
};

/// The loaded eBPF object with its probes in place. Dropping it detaches everything.
pub struct Probes {
    pub ebpf: Ebpf,
    /// The unwind tables the kernel walks stacks with (--unwind dwarf), loaded before the
    /// probes; the session takes them to keep them up to date.
    pub unwind: Option<UnwindTables>,
    /// The uprobe links, owned here so they can be detached in parallel.
    links: Vec<ProbeLink>,
    /// The allocating functions' probes (entry and return), which the cost budget may take
    /// out for part of the time while the free probes stay: where they go, and their links
    /// while they are in.
    allocation_points: Vec<ProbeSet>,
    allocation_links: Vec<ProbeLink>,
    /// The entry and return programs loaded for uprobe_multi links (see `multi_link`);
    /// None where the kernel has none: a link per probe.
    multi: Option<MultiPrograms>,
    /// The budget has the allocation probes out.
    allocations_paused: bool,
    pid: u32,
    /// Id of the next function probed (see CallShape::id).
    next_id: u16,
    /// Files already looked at for allocator functions, probed or not.
    probed_files: HashSet<(u64, u64)>,
    /// "malloc in /usr/lib/x86_64-linux-gnu/libc.so.6", … for the report.
    pub attached: Vec<String>,
    /// Each program loaded: what the verifier processed, how long it took.
    pub programs: Vec<ProgramLoad>,
    /// What a trap costs on this machine, measured at start (None: could not be measured).
    pub trap_cost: Option<TrapCost>,
    /// Keeps the kernel's BPF run-time statistics on (see `probe_run_ns`).
    _run_time_stats: Option<std::os::fd::OwnedFd>,
}

/// Loads the programs for `pid` and attaches them to `modules` and the mmap tracepoints.
pub fn attach(
    pid: u32,
    modules: &[AllocatorModule],
    scopes: &[ScopeProbe],
    go: Option<&GoTarget>,
    options: LoadOptions,
) -> Result<Probes, AttachError> {
    check_kernel(true)?;
    let phase = std::time::Instant::now();
    let go_layout = go.and_then(|go| go.program.layout).unwrap_or_default();
    let mut ebpf = load_object(pid, scopes.len() as u32, go_layout, &options)?;
    let object_ms = phase.elapsed().as_secs_f64() * 1e3;

    let mut programs = Vec::new();
    let multi = load_allocation_programs(&mut ebpf, &mut programs)?;
    let programs_ms = phase.elapsed().as_secs_f64() * 1e3 - object_ms;
    // The unwind tables go in before any probe: a stack walked without them would be cut
    // short, or followed through garbage, for as long as loading them takes.
    let unwind = load_unwind_tables(&mut ebpf, pid, &options)?;
    let mut probes = Probes::new(ebpf, pid, multi, programs, unwind);
    for module in modules {
        probes.attach_module(module)?;
    }
    probes.attach_scopes(scopes)?;
    if let Some(go) = go {
        probes.attach_go(go)?;
    }

    let (tracepoints, links) = attach_syscall_tracepoints(&mut probes.ebpf, &mut probes.programs)?;
    probes.attached.extend(tracepoints);
    // Detached with the uprobes, in parallel: each waits for the kernel too.
    probes.links.extend(links);
    log::debug!(
        "pid {pid}: object and maps in {object_ms:.0} ms, allocation programs in {programs_ms:.0} ms, all in place in {:.0} ms",
        phase.elapsed().as_secs_f64() * 1e3
    );
    Ok(probes)
}

/// Loads the allocator probes' programs: those for uprobe_multi links (and uprobe
/// sessions) where the kernel has them (see `link_mode`), else those for a link per probe.
/// None: a link per probe.
fn load_allocation_programs(
    ebpf: &mut Ebpf,
    programs: &mut Vec<ProgramLoad>,
) -> Result<Option<MultiPrograms>, AttachError> {
    let mode = link_mode();
    let multi = match mode {
        LinkMode::PerProbe => None,
        LinkMode::Session | LinkMode::Multi => crate::probe::multi_link::load(
            ebpf,
            LEAK_EBPF_OBJECT,
            ENTRY_PROGRAM,
            ALLOC_RETURN_PROGRAM,
            (mode == LinkMode::Session).then_some(SESSION_PROGRAM),
        )
        .map_err(|err| log::info!("a uprobe link per probe: {err}"))
        .ok(),
    };
    if let Some(multi) = &multi {
        programs.extend(multi_loads(multi));
    }
    // The programs for a link per probe: where uprobe_multi links serve, only to measure
    // what a trap costs (once per leaktrace process), or for a file whose multi link the
    // kernel refuses (loaded then).
    if multi.is_none() || !trap_cost_measured() {
        for name in [ENTRY_PROGRAM, ALLOC_RETURN_PROGRAM] {
            load_program(ebpf, name, programs)?;
        }
    }
    Ok(multi)
}

/// The unwind tables the kernel walks stacks with, with --unwind dwarf or hybrid: filled
/// from the target's mappings now, or (`before_exec`) at its program's entry.
fn load_unwind_tables(
    ebpf: &mut Ebpf,
    pid: u32,
    options: &LoadOptions,
) -> Result<Option<UnwindTables>, AttachError> {
    match options.unwind {
        Unwind::Dwarf | Unwind::Hybrid => {
            let hybrid = options.unwind == Unwind::Hybrid;
            let mut tables = UnwindTables::take(ebpf, hybrid).map_err(AttachError::Load)?;
            if !options.before_exec {
                tables.refresh(pid);
            }
            Ok(Some(tables))
        }
        Unwind::Fp | Unwind::Auto => Ok(None),
    }
}

impl Probes {
    /// The loaded object with no probe in yet, but those that measured what a trap costs.
    fn new(
        mut ebpf: Ebpf,
        pid: u32,
        multi: Option<MultiPrograms>,
        programs: Vec<ProgramLoad>,
        unwind: Option<UnwindTables>,
    ) -> Probes {
        let (trap_cost, calibration_links) = calibrate_trap_cost(&mut ebpf);
        // Program run times, for the cost meter, while leaktrace runs (two clock reads more
        // per BPF program run, system-wide, until this descriptor is closed).
        let run_time_stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|err| log::debug!("no BPF run-time statistics: {err}"))
            .ok();
        Probes {
            unwind,
            trap_cost,
            _run_time_stats: run_time_stats,
            ebpf,
            links: calibration_links
                .into_iter()
                .map(ProbeLink::PerProbe)
                .collect(),
            allocation_points: Vec::new(),
            allocation_links: Vec::new(),
            allocations_paused: false,
            multi,
            attached: Vec::new(),
            pid,
            next_id: 0,
            probed_files: HashSet::new(),
            programs,
        }
    }
}

impl Probes {
    /// Says whether every entry probe has been in long enough that a return without its
    /// entry means a lost event (see leak-ebpf's ENTRIES_ARMED).
    pub fn arm_entries(&mut self, armed: bool) {
        let Some(map) = self.ebpf.map_mut(map_names::ENTRIES_ARMED) else {
            return;
        };
        match aya::maps::Array::<_, u32>::try_from(map) {
            Ok(mut array) => {
                if let Err(err) = array.set(0, u32::from(armed), 0) {
                    log::debug!("could not arm the entry probes: {err}");
                }
            }
            Err(err) => log::debug!("could not arm the entry probes: {err}"),
        }
    }

    /// Whether the allocating functions' probes are in.
    pub fn allocations_probed(&self) -> bool {
        !self.allocations_paused
    }

    /// Takes the allocating functions' probes out (the free probes stay). Detaching waits
    /// for the kernel, so it happens on a thread of its own.
    pub fn pause_allocations(&mut self) {
        self.allocations_paused = true;
        detach_in_background(
            std::mem::take(&mut self.allocation_links),
            "detach-allocation-probes",
        );
    }

    /// Takes every probe out, on a thread of its own: the maps keep what was recorded.
    pub fn detach_all(&mut self) {
        self.pause_allocations();
        detach_in_background(std::mem::take(&mut self.links), "detach-probes");
    }

    /// Puts the allocating functions' probes back (each return probe before its entry).
    pub fn resume_allocations(&mut self) -> Result<(), AttachError> {
        if !self.allocations_paused {
            return Ok(());
        }
        self.allocations_paused = false;
        let scope = self.target_process()?;
        let sets = self.allocation_points.clone();
        for set in &sets {
            match self.attach_set(set, scope) {
                Ok(links) => self.allocation_links.extend(links),
                Err((offset, err)) => {
                    // Half in is worse than out: entries without their returns.
                    self.pause_allocations();
                    return Err(probe_error(
                        &format!("+{offset:#x}"),
                        &set.path.display().to_string(),
                        err,
                    ));
                }
            }
        }
        Ok(())
    }
}
