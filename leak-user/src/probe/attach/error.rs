//! What goes wrong while attaching, phrased for the user, and the kernel's refusals turned
//! into it.
use std::{error::Error as StdError, io};

/// What went wrong while attaching, phrased for the user.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "leaktrace needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, and CAP_SYS_ADMIN for uprobes) to load eBPF programs and place probes: run it with sudo"
    )]
    NotPermitted,
    #[error(
        "this kernel has no {0}; leaktrace needs a kernel with uprobes, BTF and BPF (5.8 or later)"
    )]
    KernelLacks(&'static str),
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}); the mmap and brk tracepoints need it: mount it (mount -t tracefs nodev /sys/kernel/tracing), or in a container mount the host's"
    )]
    NoTracefs(String),
    #[error(
        "no allocator found in process {pid}: none of its mapped files defines malloc and free (is it a Go or statically linked program with a custom allocator?)"
    )]
    NoAllocator { pid: u32 },
    #[error(
        "could not probe {function} in {module}: the kernel refused (EINVAL); another tracer (bcc's memleak, bpftrace with USDT…) probably holds a uprobe on the same function with a different ref_ctr_offset (dmesg says \"ref_ctr_offset mismatch\"): stop that tool, or run the target against a private copy of the library"
    )]
    ProbeConflict { function: String, module: String },
    #[error(
        "--alloc-fn {symbol}: no module of the target defines a function of that name (a plain or C++ name with or without its parameters, a Rust path, or a symbol as `nm` lists it){closest}"
    )]
    NoSuchFunction { symbol: String, closest: String },
    #[error(
        "--scope {function}: no module of the target defines a function of that name (a plain or C++ name with or without its parameters, a Rust path, or a symbol as `nm` lists it){closest}"
    )]
    NoSuchScope { function: String, closest: String },
    #[error("could not load the eBPF programs: {0}")]
    Load(String),
    #[error("could not probe {function} in {module}: {reason}")]
    Probe {
        function: String,
        module: String,
        reason: String,
    },
    #[error("could not read {path}: {reason}")]
    Read { path: String, reason: String },
}

impl AttachError {
    /// The exit status this failure ends leaktrace with.
    pub fn status(&self) -> crate::model::exit::Status {
        use crate::model::exit::Status;
        match self {
            AttachError::NotPermitted => Status::NotPermitted,
            AttachError::KernelLacks(_) | AttachError::NoTracefs(_) => Status::KernelLacks,
            AttachError::NoAllocator { .. }
            | AttachError::NoSuchFunction { .. }
            | AttachError::NoSuchScope { .. } => Status::NotInTarget,
            AttachError::ProbeConflict { .. } => Status::ProbeConflict,
            AttachError::Load(_) | AttachError::Probe { .. } | AttachError::Read { .. } => {
                Status::Internal
            }
        }
    }
}

pub(super) fn load_error(name: &str, err: aya::programs::ProgramError) -> AttachError {
    if os_error(&err) == Some(libc::EPERM) {
        return AttachError::NotPermitted;
    }
    AttachError::Load(format!("{name}: {:#}", anyhow::Error::from(err)))
}

pub(super) fn probe_error(
    symbol: &str,
    module: &str,
    err: aya::programs::ProgramError,
) -> AttachError {
    match os_error(&err) {
        Some(libc::EINVAL) => AttachError::ProbeConflict {
            function: symbol.to_string(),
            module: module.to_string(),
        },
        Some(libc::EPERM) | Some(libc::EACCES) => AttachError::NotPermitted,
        _ => AttachError::Probe {
            function: symbol.to_string(),
            module: module.to_string(),
            reason: format!("{:#}", anyhow::Error::from(err)),
        },
    }
}

/// The OS error code somewhere in an error's chain.
pub(super) fn os_error(err: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(error) = current {
        if let Some(code) = error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = error.source();
    }
    None
}
