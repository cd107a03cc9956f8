//! The ELF files of a target: those a running process has mapped, or those a program will
//! load (found before it runs), and where a file was loaded in a process.
use std::{
    fs,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSegment};

use crate::{
    probe::attach::error::AttachError,
    sys::procfs::{self, Mapping},
};

/// The ELF files a running process has mapped executable, once each: (where to read and
/// probe it, the path to show).
pub fn process_files(pid: u32) -> Result<Vec<(PathBuf, String)>, AttachError> {
    let maps = procfs::read_maps(pid).map_err(|err| AttachError::Read {
        path: format!("/proc/{pid}/maps"),
        reason: err.to_string(),
    })?;
    let mut files = Vec::new();
    let mut seen: Vec<(String, u64)> = Vec::new();
    for mapping in maps.iter().filter(|m| m.executable && m.is_file()) {
        let id = (mapping.dev.clone(), mapping.inode);
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        files.push((
            probe_path_for(pid, mapping),
            mapping.file_path().to_string(),
        ));
    }
    Ok(files)
}

/// The CPython interpreter among `files` (the executable or a libpython), if any.
pub fn python_interpreter(
    files: &[(PathBuf, String)],
) -> Option<crate::probe::python::PythonInterpreter> {
    files.iter().find_map(|(probe_path, display_path)| {
        let name = display_path.rsplit('/').next().unwrap_or(display_path);
        if !(name.starts_with("python") || name.starts_with("libpython")) {
            return None;
        }
        let elf = crate::sys::file_bytes::open(probe_path).ok()?;
        crate::probe::python::PythonInterpreter::in_file(
            &elf,
            probe_path.clone(),
            display_path.clone(),
        )
    })
}

pub(super) fn probe_path_for(pid: u32, mapping: &Mapping) -> PathBuf {
    let in_root = procfs::path_in_root(pid, mapping.file_path());
    if mapping.path.ends_with(" (deleted)") || !in_root.exists() {
        procfs::map_file_path(pid, mapping)
    } else {
        in_root
    }
}

/// The ELF files a program will load, found before it runs: the executable itself, then
/// the libraries its dynamic loader resolves (`ld.so --list`, with the environment the
/// program will get, so LD_LIBRARY_PATH and LD_PRELOAD count).
pub fn program_files(
    program: &Path,
    env: &[(String, String)],
) -> Result<Vec<(PathBuf, String)>, AttachError> {
    let data = crate::sys::file_bytes::open(program).map_err(|err| AttachError::Read {
        path: program.display().to_string(),
        reason: err.to_string(),
    })?;
    let mut files = vec![(program.to_path_buf(), program.display().to_string())];
    if let Some(interpreter) = elf_interpreter(&data) {
        let output = std::process::Command::new(&interpreter)
            .arg("--list")
            .arg(program)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .map_err(|err| AttachError::Read {
                path: interpreter.clone(),
                reason: err.to_string(),
            })?;
        for library in parse_ld_list(&String::from_utf8_lossy(&output.stdout)) {
            let display_path = library.display().to_string();
            files.push((library, display_path));
        }
    }
    Ok(files)
}

/// The PT_INTERP of an ELF executable, if it is dynamically linked.
fn elf_interpreter(elf: &[u8]) -> Option<String> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let file = ElfFile64::<object::Endianness>::parse(elf).ok()?;
    let endian = file.endian();
    let header = file
        .elf_program_headers()
        .iter()
        .find(|header| header.p_type(endian) == object::elf::PT_INTERP)?;
    let bytes = header.data(endian, elf).ok()?;
    let bytes = bytes.split(|byte| *byte == 0).next()?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Resolved library paths from `ld.so --list` output.
fn parse_ld_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.trim(),
                None => line,
            };
            let path = path.split(" (0x").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// How far an ELF file was moved when loaded, given where its first byte is mapped: 0 for a
/// fixed-address executable, that address less its first segment's for a PIE or library.
fn load_bias(elf: &[u8], first_mapping_start: u64) -> Option<u64> {
    let file = object::File::parse(elf).ok()?;
    if file.kind() != object::ObjectKind::Dynamic {
        return Some(0);
    }
    let lowest = file.segments().map(|segment| segment.address()).min()?;
    Some(first_mapping_start.wrapping_sub(lowest & !0xFFF))
}

/// The load bias of file `path` in process `pid`, from where its first byte is mapped; None
/// while it is not mapped. The file is found by inode: the path may be a symbolic link
/// (python3) or seen through /proc/PID/root.
pub fn mapped_load_bias(pid: u32, path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let inode = fs::metadata(path).ok()?.ino();
    let first = procfs::read_maps(pid)
        .ok()?
        .iter()
        .filter(|mapping| mapping.is_file() && mapping.inode == inode)
        .map(|mapping| mapping.start)
        .min()?;
    load_bias(&crate::sys::file_bytes::open(path).ok()?, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ld_list_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc8a5f6000)\n\
            \tlibdemo.so => /opt/demo/libdemo.so (0x00007f0a1c000000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a1be00000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f0a1c200000)\n\
            \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ld_list(text),
            vec![
                PathBuf::from("/opt/demo/libdemo.so"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
