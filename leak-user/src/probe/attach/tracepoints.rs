//! The mmap-family and brk syscall tracepoints: the anonymous memory a process maps without
//! its allocator, filtered to the target in the kernel.
use aya::{Ebpf, programs::TracePoint};
use leak_common::SYSCALL_PROGRAMS;

use crate::{
    model::ProgramLoad, probe::attach::error::AttachError, probe::attach::kernel::ensure_tracefs,
    probe::attach::links::ProbeLink, probe::attach::programs::load_program,
};

/// Loads and attaches the mmap-family and brk syscall tracepoints; returns their names.
pub(super) fn attach_syscall_tracepoints(
    ebpf: &mut Ebpf,
    loads: &mut Vec<ProgramLoad>,
) -> Result<(Vec<String>, Vec<ProbeLink>), AttachError> {
    ensure_tracefs()?;
    let mut attached = Vec::new();
    let mut links = Vec::new();
    for (name, category, tracepoint) in SYSCALL_PROGRAMS {
        load_program(ebpf, name, loads)?;
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| AttachError::Load(format!("program {name} missing from the object")))?
            .try_into()
            .map_err(|err: aya::programs::ProgramError| AttachError::Load(err.to_string()))?;
        let link = program
            .attach(category, tracepoint)
            .and_then(|id| program.take_link(id))
            .map_err(|err| AttachError::Probe {
                function: tracepoint.to_string(),
                module: "the kernel".to_string(),
                reason: format!("{:#}", anyhow::Error::from(err)),
            })?;
        links.push(ProbeLink::TracePoint(link));
        attached.push(format!("{category}:{tracepoint}"));
    }
    Ok((attached, links))
}
