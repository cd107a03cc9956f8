//! The bytes of an executable or library, mapped rather than read: a Go service's binary can
//! be 50 MiB or more, and leaktrace looks at several files at attach and at symbolization.
//! A copy of each would be anonymous memory of the agent's own (it peaked at 97 MiB on
//! Debian's prometheus binary); mapped, only the pages parsed are resident, and they are the
//! page cache's, shared with the target's own mapping of the same file.
//!
//! A file truncated while mapped would fault on access; the files mapped are ones a running
//! process has mapped itself (an executable being run cannot be written, ETXTBSY), and
//! files replaced by rename keep their old inode, so this does not arise in practice.
use std::{fs::File, io, ops::Deref, path::Path};

/// A file's contents: a read-only private mapping, or a copy where a mapping cannot be
/// made (an empty file, a /proc file).
pub enum FileBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(map) => map,
            FileBytes::Read(bytes) => bytes,
        }
    }
}

/// The file a process has mapped: through /proc/PID/map_files (the very file, even deleted),
/// else by its path in the process's root.
pub fn open_mapped(pid: u32, mapping: &crate::sys::procfs::Mapping) -> io::Result<FileBytes> {
    open(crate::sys::procfs::map_file_path(pid, mapping))
        .or_else(|_| open(crate::sys::procfs::path_in_root(pid, mapping.file_path())))
}

/// Maps `path`, or reads it where it cannot be mapped.
pub fn open(path: impl AsRef<Path>) -> io::Result<FileBytes> {
    let path = path.as_ref();
    let file = File::open(path)?;
    let is_regular = file
        .metadata()
        .is_ok_and(|meta| meta.is_file() && meta.len() > 0);
    if is_regular {
        // SAFETY: a read-only private mapping; see the module comment for files changed
        // underneath it.
        if let Ok(map) = unsafe { memmap2::Mmap::map(&file) } {
            return Ok(FileBytes::Mapped(map));
        }
    }
    std::fs::read(path).map(FileBytes::Read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_file_and_reads_what_cannot_be_mapped() {
        let exe = open("/proc/self/exe").expect("own executable");
        assert!(matches!(exe, FileBytes::Mapped(_)));
        assert_eq!(&exe[..4], b"\x7fELF");
        assert_eq!(
            exe.len(),
            std::fs::read("/proc/self/exe").expect("read").len()
        );
        // /proc files report a size of 0: read, not mapped.
        let status = open("/proc/self/status").expect("status");
        assert!(matches!(status, FileBytes::Read(_)));
        assert!(status.starts_with(b"Name:"));
        assert!(open("/nonexistent/file").is_err());
    }
}
