//! Leaktrace's kernel programs one by one: loading each (the kernel verifies it then), and
//! what the kernel says of them afterwards: instructions verified, run time, runs missed.
use std::os::fd::AsFd;

use aya::{Ebpf, EbpfLoader, programs::UProbe};
use leak_common::{
    ALLOC_RETURN_PROGRAM, ENTRY_PROGRAM, GO_GOEXIT_PROGRAM, GO_LARGE_SPAN_PROGRAM,
    GO_LAYOUT_GLOBAL, GO_NEWPROC_PROGRAM, GO_SPAN_FREE_PROGRAM, GO_SPAN_FULL_PROGRAM, MAX_SCOPES,
    MAX_SIZE_GLOBAL, MIN_SIZE_GLOBAL, SAMPLE_RATE_GLOBAL, SCOPE_COUNT_GLOBAL, SCOPE_ENTRY_PROGRAM,
    SCOPE_RETURN_PROGRAM, SESSION_PROGRAM, SYSCALL_PROGRAMS, TARGET_TGID_GLOBAL,
    UNWIND_MODE_GLOBAL, map_names,
};

use crate::{
    model::ProgramLoad,
    probe::attach::Probes,
    probe::attach::error::{AttachError, load_error},
    probe::attach::kernel::check_kernel,
    probe::attach::object::{LEAK_EBPF_OBJECT, object_error, unwind_settings},
    probe::unwind_tables::Unwind,
};

/// The kernel's limit on instructions its verifier processes for one program.
pub const VERIFIER_LIMIT: u32 = 1_000_000;
/// The share of that limit each of leaktrace's programs must stay under, whatever the target:
/// a quarter, so that a kernel that explores more paths, or a target's constants that prune
/// fewer, still load.
pub const VERIFIER_BUDGET: u32 = VERIFIER_LIMIT / 4;

/// Loads program `name` (the kernel verifies it now) unless it is loaded, and notes in `loads`
/// how many instructions the verifier processed and how long the load took.
pub(super) fn load_program(
    ebpf: &mut Ebpf,
    name: &str,
    loads: &mut Vec<ProgramLoad>,
) -> Result<(), AttachError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| AttachError::Load(format!("program {name} missing from the object")))?;
    if program.fd().is_ok() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let loaded = match program {
        aya::programs::Program::UProbe(program) => program.load(),
        aya::programs::Program::TracePoint(program) => program.load(),
        aya::programs::Program::PerfEvent(program) => program.load(),
        _ => {
            return Err(AttachError::Load(format!(
                "program {name} is of a kind leaktrace does not load"
            )));
        }
    };
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Err(err) = loaded {
        log::error!("the kernel refused program {name} after {load_ms:.0} ms: {err}");
        return Err(load_error(name, err));
    }
    let verified_instructions = program
        .info()
        .ok()
        .and_then(|info| info.verified_instruction_count())
        .unwrap_or(0);
    log::debug!(
        "program {name}: {verified_instructions} instructions verified ({:.1}% of the kernel's limit) in {load_ms:.0} ms",
        f64::from(verified_instructions) * 100.0 / f64::from(VERIFIER_LIMIT)
    );
    if verified_instructions > VERIFIER_BUDGET {
        log::warn!(
            "program {name} needed {verified_instructions} verified instructions, over leaktrace's budget of {VERIFIER_BUDGET}: it may not load on another kernel"
        );
    }
    loads.push(ProgramLoad {
        program: name.to_string(),
        verified_instructions,
        load_ms,
    });
    Ok(())
}

pub(super) fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, AttachError> {
    ebpf.program_mut(name)
        .ok_or_else(|| AttachError::Load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| AttachError::Load(err.to_string()))
}

/// Loads every one of leaktrace's kernel programs for process `pid` (nothing is attached), as
/// the most demanding target needs them: Python frames read (CPython 3.11's layout), a Go
/// runtime's layout, every scope slot, sampling, a size range, and stacks walked with
/// `unwind`. Returns what each took; the first program the kernel refuses is an error.
pub fn verify_programs(pid: u32, unwind: Unwind) -> Result<Vec<ProgramLoad>, AttachError> {
    check_kernel(true)?;
    let (unwind_mode, unwind_rows) = unwind_settings(unwind);
    let go_layout = crate::probe::golang::known_layout("go1.23")
        .map(|(layout, _)| layout)
        .unwrap_or_default();
    let python = crate::probe::python::PYTHON_3_11;
    let scopes = MAX_SCOPES;
    let (sample_rate, min_size, max_size) = (2u32, 1u64, u64::MAX - 1);
    let mut ebpf = EbpfLoader::new()
        .override_global(GO_LAYOUT_GLOBAL, &go_layout, true)
        .override_global(leak_common::PY_LAYOUT_GLOBAL, &python, true)
        .override_global(SCOPE_COUNT_GLOBAL, &scopes, true)
        .override_global(TARGET_TGID_GLOBAL, &pid, true)
        .override_global(MIN_SIZE_GLOBAL, &min_size, true)
        .override_global(MAX_SIZE_GLOBAL, &max_size, true)
        .override_global(SAMPLE_RATE_GLOBAL, &sample_rate, true)
        .override_global(UNWIND_MODE_GLOBAL, &unwind_mode, true)
        .map_max_entries(map_names::UNWIND_ROWS, unwind_rows)
        .load(LEAK_EBPF_OBJECT)
        .map_err(object_error)?;
    // The session program is loaded for uprobe sessions only (below).
    let names: Vec<String> = ebpf
        .programs()
        .map(|(name, _)| name.to_string())
        .filter(|name| name != SESSION_PROGRAM)
        .collect();
    let mut loads = Vec::new();
    let multi = crate::probe::multi_link::load(
        &ebpf,
        LEAK_EBPF_OBJECT,
        ENTRY_PROGRAM,
        ALLOC_RETURN_PROGRAM,
        Some(SESSION_PROGRAM),
    )
    .map_err(|err| log::warn!("the programs for uprobe_multi links did not load: {err}"))
    .ok();
    if let Some(multi) = &multi {
        loads.extend(multi_loads(multi));
    }
    for name in names {
        load_program(&mut ebpf, &name, &mut loads)?;
    }
    loads.sort_by(|a, b| a.program.cmp(&b.program));
    Ok(loads)
}

/// What the verifier processed for each program loaded for uprobe_multi links.
pub(super) fn multi_loads(multi: &crate::probe::multi_link::MultiPrograms) -> Vec<ProgramLoad> {
    let session = multi
        .session
        .as_ref()
        .map(|(fd, load_ms)| (SESSION_PROGRAM, "uprobe session", fd, *load_ms));
    [(
        ENTRY_PROGRAM,
        "uprobe_multi",
        &multi.entry,
        multi.entry_load_ms,
    )]
    .into_iter()
    .chain(
        multi
            .ret
            .as_ref()
            .map(|(fd, load_ms)| (ALLOC_RETURN_PROGRAM, "uprobe_multi", fd, *load_ms)),
    )
    .chain(session)
    .filter_map(|(name, kind, fd, load_ms)| {
        let info = prog_info(fd.as_fd())?;
        Some(ProgramLoad {
            program: format!("{name} ({kind})"),
            verified_instructions: info.verified_insns,
            load_ms,
        })
    })
    .collect()
}

impl Probes {
    /// Runs of leaktrace's programs the kernel skipped because another BPF program was
    /// running on the same CPU (`recursion_misses` in the kernel's program info): events
    /// lost before any of leaktrace's own counters could see them.
    pub fn missed_runs(&self) -> u64 {
        [
            ENTRY_PROGRAM,
            ALLOC_RETURN_PROGRAM,
            SCOPE_ENTRY_PROGRAM,
            SCOPE_RETURN_PROGRAM,
        ]
        .into_iter()
        .chain(SYSCALL_PROGRAMS.iter().map(|(name, _, _)| *name))
        .filter_map(|name| self.ebpf.program(name)?.fd().ok())
        .filter_map(|fd| prog_info(fd.as_fd()))
        .chain(self.multi_infos())
        .map(|info| info.recursion_misses)
        .sum()
    }

    /// The kernel's information on the programs loaded for uprobe_multi links.
    fn multi_infos(&self) -> Vec<aya_obj::generated::bpf_prog_info> {
        self.multi
            .iter()
            .flat_map(|multi| {
                std::iter::once(&multi.entry)
                    .chain(multi.ret.as_ref().map(|(fd, _)| fd))
                    .chain(multi.session.as_ref().map(|(fd, _)| fd))
            })
            .filter_map(|fd| prog_info(fd.as_fd()))
            .collect()
    }

    /// How the allocator probes are linked, for the report: "uprobe session",
    /// "uprobe_multi" or "per probe".
    pub fn link_kind(&self) -> &'static str {
        match &self.multi {
            Some(multi) if multi.session.is_some() => "uprobe session",
            Some(_) => "uprobe_multi",
            None => "per probe",
        }
    }

    /// Time the kernel has spent running leaktrace's uprobe programs (on the target's
    /// threads), when its run-time statistics are on.
    pub fn probe_run_ns(&self) -> Option<u64> {
        self._run_time_stats.as_ref()?;
        let programs = [
            ENTRY_PROGRAM,
            ALLOC_RETURN_PROGRAM,
            SCOPE_ENTRY_PROGRAM,
            SCOPE_RETURN_PROGRAM,
            GO_NEWPROC_PROGRAM,
            GO_GOEXIT_PROGRAM,
            GO_SPAN_FULL_PROGRAM,
            GO_SPAN_FREE_PROGRAM,
            GO_LARGE_SPAN_PROGRAM,
        ];
        let multi: u64 = self.multi_infos().iter().map(|info| info.run_time_ns).sum();
        Some(
            programs
                .into_iter()
                .filter_map(|name| self.ebpf.program(name)?.info().ok())
                .map(|info| info.run_time().as_nanos() as u64)
                .sum::<u64>()
                + multi,
        )
    }

    /// The entry program's run time and runs so far, its copies for uprobe_multi links
    /// included (it runs for the frees, and for allocation entries where the kernel has no
    /// uprobe sessions). None without run-time statistics.
    pub fn entry_program_runs(&self) -> Option<(u64, u64)> {
        self._run_time_stats.as_ref()?;
        let own = self
            .ebpf
            .program(ENTRY_PROGRAM)
            .and_then(|program| program.info().ok())
            .map_or((0, 0), |info| {
                (info.run_time().as_nanos() as u64, info.run_count())
            });
        let multi = self
            .multi
            .iter()
            .filter_map(|multi| prog_info(multi.entry.as_fd()))
            .fold((0, 0), |(ns, runs), info| {
                (ns + info.run_time_ns, runs + info.run_cnt)
            });
        Some((own.0 + multi.0, own.1 + multi.1))
    }
}

/// A program's information (BPF_OBJ_GET_INFO_BY_FD): aya 0.14 exposes neither
/// `recursion_misses` nor the programs it did not load.
fn prog_info(fd: std::os::fd::BorrowedFd<'_>) -> Option<aya_obj::generated::bpf_prog_info> {
    use std::os::fd::AsRawFd;
    /// The `info` member of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: a plain C struct of integers; all zeros is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd()).ok()?,
        info_len: u32::try_from(std::mem::size_of_val(&info)).ok()?,
        info: (&raw mut info) as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`, alive for the call.
    let cmd = aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long;
    unsafe { crate::sys::bpf_call::bpf(cmd, &mut attr) }.ok()?;
    Some(info)
}
