//! `leaktrace watch`'s always-on gear: a process's page faults sampled with their user
//! stacks, and optionally its mmap-family and brk calls; no allocator probed.
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use leak_common::{PAGE_FAULT_PROGRAM, TARGET_TGID_GLOBAL, UNWIND_MODE_GLOBAL, map_names};

use crate::{
    model::ProgramLoad,
    probe::attach::error::{AttachError, os_error},
    probe::attach::kernel::check_kernel,
    probe::attach::links::ProbeLink,
    probe::attach::object::{LEAK_EBPF_OBJECT, object_error, unwind_settings},
    probe::attach::programs::load_program,
    probe::attach::tracepoints::attach_syscall_tracepoints,
    probe::unwind_tables::Unwind,
};

/// `leaktrace watch`'s always-on gear for one process: its page faults, one in `period`,
/// credited to the user stacks that took them, and (with `syscalls`) its anonymous mmap,
/// munmap, mremap and brk calls with their stacks. No allocator is probed. Dropping it
/// stops everything.
pub struct FaultSampler {
    /// The syscall tracepoints' links, detached when dropped (before the programs).
    _links: Vec<ProbeLink>,
    pub ebpf: Ebpf,
    /// The sampling period: each sample stands for this many minor faults.
    pub period: u64,
    /// Each program loaded: what the verifier processed, how long it took.
    pub programs: Vec<ProgramLoad>,
}

/// Loads the page-fault sampler for `pid` and starts it on every CPU. `syscalls` adds the
/// mmap-family and brk tracepoints: while any syscall tracepoint is attached, every syscall
/// of every process takes the kernel's slower path (about 5% of redis-benchmark's
/// throughput here), so gear 1 leaves them off unless asked.
pub fn attach_fault_sampler(
    pid: u32,
    unwind: Unwind,
    period: u64,
    syscalls: bool,
) -> Result<FaultSampler, AttachError> {
    check_kernel(syscalls)?;
    let (unwind_mode, unwind_rows) = unwind_settings(unwind);
    // The allocation maps stay unused here: the smallest the kernel accepts. mmap and brk
    // events are few (no allocator call is probed, so these are every caller's, the
    // allocator's own included).
    let mut ebpf = EbpfLoader::new()
        .override_global(TARGET_TGID_GLOBAL, &pid, true)
        .override_global(UNWIND_MODE_GLOBAL, &unwind_mode, true)
        .map_max_entries(map_names::ALLOCS, 1)
        .map_max_entries(map_names::STACK_TOTALS, 1)
        .map_max_entries(map_names::PENDING_CALLS, 1)
        .map_max_entries(map_names::PENDING_SYSCALLS, 1024)
        .map_max_entries(map_names::MMAP_EVENTS, FAULT_SAMPLER_EVENTS_BYTES)
        .map_max_entries(map_names::UNWIND_ROWS, unwind_rows)
        .map_max_entries(map_names::SCOPE_TOTALS, 1)
        .map_max_entries(map_names::SCOPE_STACKS, 1)
        .map_max_entries(map_names::SCOPE_TAGS, 1)
        .map_max_entries(map_names::SCOPE_TAG_OWNERS, 1)
        .map_max_entries(map_names::SCOPE_CALLS, 1)
        .map_max_entries(map_names::SCOPE_EVENTS, 4096)
        .load(LEAK_EBPF_OBJECT)
        .map_err(object_error)?;
    let mut programs = Vec::new();
    load_program(&mut ebpf, PAGE_FAULT_PROGRAM, &mut programs)?;
    let program: &mut PerfEvent = ebpf
        .program_mut(PAGE_FAULT_PROGRAM)
        .ok_or_else(|| {
            AttachError::Load(format!(
                "program {PAGE_FAULT_PROGRAM} missing from the object"
            ))
        })?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| AttachError::Load(err.to_string()))?;
    let cpus = aya::util::online_cpus()
        .map_err(|(_, err)| AttachError::Load(format!("could not list the CPUs: {err}")))?;
    // Every process's faults are counted on each CPU; the program keeps the target's. A
    // per-thread event would miss threads that existed before it was opened.
    for cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::PageFaultsMin),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(period.max(1)),
                false,
            )
            .map_err(|err| match os_error(&err) {
                Some(libc::EPERM) | Some(libc::EACCES) => AttachError::NotPermitted,
                _ => AttachError::Probe {
                    function: "the page-fault event".to_string(),
                    module: format!("CPU {cpu}"),
                    reason: format!("{:#}", anyhow::Error::from(err)),
                },
            })?;
    }
    let links = if syscalls {
        attach_syscall_tracepoints(&mut ebpf, &mut programs)?.1
    } else {
        Vec::new()
    };
    Ok(FaultSampler {
        _links: links,
        ebpf,
        period: period.max(1),
        programs,
    })
}

/// Ring buffer for the fault sampler's mmap and brk events (read every second).
const FAULT_SAMPLER_EVENTS_BYTES: u32 = 256 << 10;
