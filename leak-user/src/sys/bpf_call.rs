//! The bpf(2) system call itself, for the commands aya 0.14 does not make: batched map
//! lookups (`map_batch`), program information (`attach`), and loading programs and links
//! for uprobe_multi (`multi_link`).
use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

/// Runs bpf command `cmd` with attribute `attr` (the command's part of `union bpf_attr`);
/// returns what the kernel returned, or its error.
///
/// # Safety
/// Every pointer inside `attr` must be valid for what the command reads and writes through it,
/// for the duration of the call.
pub unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable value of the size given; the caller vouches for the
    // pointers inside it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<A>(),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Like [`bpf`], for a command that returns a new file descriptor.
///
/// # Safety
/// As for [`bpf`].
pub unsafe fn bpf_fd<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<OwnedFd> {
    // SAFETY: as the caller vouches.
    let fd = unsafe { bpf(cmd, attr) }?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: a descriptor the kernel just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
