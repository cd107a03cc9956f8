//! What the kernel must offer before anything is loaded, and tracefs mounted where it is not.
use std::{io, path::Path};

use crate::probe::attach::error::AttachError;

/// What the kernel must offer before anything is loaded: BTF, the uprobe event source, and
/// (`tracepoints`) tracefs, mounted here when it is not.
pub fn check_kernel(tracepoints: bool) -> Result<(), AttachError> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(AttachError::KernelLacks("BTF (/sys/kernel/btf/vmlinux)"));
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Err(AttachError::KernelLacks(
            "uprobes (/sys/bus/event_source/devices/uprobe)",
        ));
    }
    if tracepoints {
        ensure_tracefs()?;
    }
    Ok(())
}

/// Syscall tracepoints are attached through tracefs, which is not always mounted: mounts it
/// at /sys/kernel/tracing, or says why that cannot be done.
pub(super) fn ensure_tracefs() -> Result<(), AttachError> {
    if Path::new("/sys/kernel/tracing/events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    // SAFETY: constant NUL-terminated strings; mounting tracefs has no other effect.
    let result = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(AttachError::NoTracefs(
            io::Error::last_os_error().to_string(),
        ));
    }
    log::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(())
}
