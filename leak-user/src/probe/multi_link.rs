//! One uprobe_multi link (Linux 6.6+) for all of a file's allocator probes of one program,
//! instead of one perf-event link per probe. Attaching is one call per file, and so is
//! detaching: the kernel waits for one RCU grace period per link, not per probe (about
//! 90 ms each here, which made `leaktrace run -- /bin/true` take 2 to 4 s).
//!
//! aya 0.14 cannot load a program for uprobe_multi (it needs the expected attach type
//! BPF_TRACE_UPROBE_MULTI at load) nor create such a link, and newer aya does not build with
//! this toolchain. So the entry and return programs are loaded a second time here with the
//! raw bpf(2) commands: the object is parsed and relocated by aya-obj against the maps aya
//! created (the same maps: both copies share every map), then BPF_PROG_LOAD and
//! BPF_LINK_CREATE. Where the kernel refuses, leaktrace falls back to aya's per-probe links.
//!
//! On Linux 6.13+ the allocating functions are linked as one uprobe session instead: a
//! single program runs at the entry and at the return, and the entry can tell the kernel to
//! skip the return. A call that will not be recorded (sampled out by --sample-rate, outside
//! --min-size/--max-size, nested in another allocator call) then costs one trap, not two.
use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
    time::Instant,
};

use aya::{Ebpf, maps::Map};

use crate::sys::bpf_call::bpf_fd;

/// BPF_PROG_TYPE_KPROBE, which uprobe programs are.
const PROG_TYPE_KPROBE: u32 = 2;
/// bpf_attach_type BPF_TRACE_UPROBE_MULTI.
const ATTACH_UPROBE_MULTI: u32 = 48;
/// bpf_attach_type BPF_TRACE_UPROBE_SESSION (Linux 6.13).
const ATTACH_UPROBE_SESSION: u32 = 57;
/// BPF_F_UPROBE_MULTI_RETURN: the link's probes are return probes.
const MULTI_RETURN: u32 = 1;
const CMD_PROG_LOAD: libc::c_long = 5;
const CMD_BTF_LOAD: libc::c_long = 18;
const CMD_LINK_CREATE: libc::c_long = 28;

/// Programs loaded for uprobe_multi links, and how long each load (verification) took.
pub struct MultiPrograms {
    pub entry: OwnedFd,
    pub entry_load_ms: f64,
    /// The return program and its load time: loaded up front where the kernel has no uprobe
    /// sessions, else only for a file whose session link it refuses.
    pub ret: Option<(OwnedFd, f64)>,
    /// The session program, where the kernel has uprobe sessions, and its load time.
    pub session: Option<(OwnedFd, f64)>,
    /// The object, ready to load the return program later.
    prepared: Option<Prepared>,
}

impl MultiPrograms {
    /// The return program, loaded now if it was not: `name` is its name in the object.
    pub fn ret(&mut self, name: &str) -> Result<&OwnedFd, String> {
        if self.ret.is_none() {
            let prepared = self
                .prepared
                .as_ref()
                .ok_or("the object was not kept to load the return program")?;
            self.ret = Some(prepared.load(name, ATTACH_UPROBE_MULTI)?);
            self.prepared = None;
        }
        Ok(&self.ret.as_ref().expect("loaded above").0)
    }
}

/// What a link's probes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Entry,
    Return,
    /// Entry and return, the entry deciding whether the return runs.
    Session,
}

/// The map's descriptor, for the map kinds leak-ebpf uses.
fn map_fd(map: &Map) -> Option<std::os::fd::BorrowedFd<'_>> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::RingBuf(data)
        | Map::LruHashMap(data)
        | Map::StackTraceMap(data)
        | Map::Unsupported(data) => data,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

/// Loads `entry` of `object` for uprobe_multi, sharing the maps `ebpf` created, and
/// `session` for uprobe sessions if given and the kernel has them; `ret` too where there is
/// no session program (else on demand: [`MultiPrograms::ret`]). Call before any map is
/// taken out of `ebpf`.
pub fn load(
    ebpf: &Ebpf,
    object: &[u8],
    entry: &str,
    ret: &str,
    session: Option<&str>,
) -> Result<MultiPrograms, String> {
    let prepared = Prepared::new(ebpf, object)?;
    let (entry, entry_load_ms) = prepared.load(entry, ATTACH_UPROBE_MULTI)?;
    let session = session.and_then(|name| {
        prepared
            .load(name, ATTACH_UPROBE_SESSION)
            .map_err(|err| log::info!("no uprobe sessions (Linux 6.13+): {err}"))
            .ok()
    });
    let (ret, prepared) = if session.is_none() {
        (Some(prepared.load(ret, ATTACH_UPROBE_MULTI)?), None)
    } else {
        (None, Some(prepared))
    };
    Ok(MultiPrograms {
        entry,
        entry_load_ms,
        ret,
        session,
        prepared,
    })
}

/// The object parsed, its BTF in the kernel, and its code relocated against `ebpf`'s maps.
struct Prepared {
    obj: aya_obj::Object,
    btf: OwnedFd,
}

impl Prepared {
    fn new(ebpf: &Ebpf, object: &[u8]) -> Result<Prepared, String> {
        let mut obj = aya_obj::Object::parse(object).map_err(|err| err.to_string())?;
        // The kernel wants the object's BTF and each program's function records: the stack
        // walks pass callbacks to bpf_loop ("missing btf func_info" without them).
        let features =
            aya_obj::btf::BtfFeatures::new(true, true, true, true, true, true, true, true);
        let btf_bytes = obj
            .fixup_and_sanitize_btf(&features)
            .map_err(|err| err.to_string())?
            .map(|btf| btf.to_bytes())
            .ok_or("the object has no BTF")?;
        let btf = load_btf(&btf_bytes)?;
        // The kernel's own BTF (about 20 ms to parse) only matters to CO-RE relocations.
        if has_core_relocations(object)
            && let Ok(kernel) = aya::Btf::from_sys_fs()
        {
            obj.relocate_btf(&kernel).map_err(|err| err.to_string())?;
        }
        let mut fds = Vec::new();
        for (name, map) in ebpf.maps() {
            let Some(fd) = map_fd(map) else {
                return Err(format!("map {name} is of a kind not shared here"));
            };
            fds.push((name.to_string(), fd.as_raw_fd()));
        }
        let definitions = obj.maps.clone();
        let maps = fds
            .iter()
            .filter_map(|(name, fd)| Some((name.as_str(), *fd, definitions.get(name)?)));
        let text_sections: HashSet<usize> =
            obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(maps, &text_sections)
            .map_err(|err| err.to_string())?;
        obj.relocate_calls(&text_sections)
            .map_err(|err| err.to_string())?;
        Ok(Prepared { obj, btf })
    }

    /// Loads program `name` with `attach_type`: its descriptor and the load's time in ms.
    fn load(&self, name: &str, attach_type: u32) -> Result<(OwnedFd, f64), String> {
        let program = self
            .obj
            .programs
            .get(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?;
        let function = self
            .obj
            .functions
            .get(&program.function_key())
            .ok_or_else(|| format!("program {name} has no code"))?;
        let started = Instant::now();
        let fd = load_program(name, function, &self.obj.license, &self.btf, attach_type)?;
        Ok((fd, started.elapsed().as_secs_f64() * 1e3))
    }
}

/// Whether the object's .BTF.ext has CO-RE relocations: its header's `core_relo_len` (bytes
/// 28 to 32, in headers of 32 bytes or more) is not zero. Unreadable: assume it has.
pub fn has_core_relocations(elf: &[u8]) -> bool {
    use object::{Object as _, ObjectSection as _};
    let Ok(file) = object::File::parse(elf) else {
        return true;
    };
    let Some(data) = file
        .section_by_name(".BTF.ext")
        .and_then(|section| section.data().ok())
    else {
        return false;
    };
    let word = |at: usize| {
        data.get(at..at + 4)
            .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    match (word(4), word(28)) {
        (Some(header_len), Some(core_relo_len)) if header_len >= 32 => core_relo_len != 0,
        (Some(_), _) => false,
        _ => true,
    }
}

/// Loads BTF into the kernel (BPF_BTF_LOAD).
fn load_btf(bytes: &[u8]) -> Result<OwnedFd, String> {
    #[repr(C)]
    #[derive(Default)]
    struct BtfLoadAttr {
        btf: u64,
        btf_log_buf: u64,
        btf_size: u32,
        btf_log_size: u32,
        btf_log_level: u32,
        rest: [u32; 9],
    }
    let mut attr = BtfLoadAttr {
        btf: bytes.as_ptr() as u64,
        btf_size: u32::try_from(bytes.len()).map_err(|_| "BTF too large")?,
        ..BtfLoadAttr::default()
    };
    // SAFETY: the bytes the attribute points to live for the call.
    unsafe { bpf_fd(CMD_BTF_LOAD, &mut attr) }.map_err(|err| format!("BPF_BTF_LOAD: {err}"))
}

/// The `prog_load` part of `union bpf_attr`, as far as used here.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    rest: [u32; 15],
}

fn load_program(
    name: &str,
    function: &aya_obj::Function,
    license: &CString,
    btf: &OwnedFd,
    attach_type: u32,
) -> Result<OwnedFd, String> {
    let instructions = &function.instructions;
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    let mut attr = ProgLoadAttr {
        prog_type: PROG_TYPE_KPROBE,
        insn_cnt: u32::try_from(instructions.len()).map_err(|_| "program too long")?,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: attach_type,
        prog_btf_fd: btf.as_raw_fd() as u32,
        func_info_rec_size: function.func_info_rec_size as u32,
        func_info: func_info.as_ptr() as u64,
        func_info_cnt: function.func_info.len() as u32,
        line_info_rec_size: function.line_info_rec_size as u32,
        line_info: line_info.as_ptr() as u64,
        line_info_cnt: function.line_info.len() as u32,
        ..ProgLoadAttr::default()
    };
    for (slot, byte) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    // SAFETY: everything the attribute points to (instructions, license, function records)
    // lives for the call; the kernel copies it.
    let error = match unsafe { bpf_fd(CMD_PROG_LOAD, &mut attr) } {
        Ok(fd) => {
            if let Some(dir) = std::env::var_os("LEAKTRACE_VERIFIER_LOG") {
                write_verifier_log(&mut attr, Path::new(&dir), name, attach_type);
            }
            return Ok(fd);
        }
        Err(error) => error,
    };
    {
        // Again with the verifier's log, for the message.
        let mut log = vec![0u8; 1 << 20];
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
        // SAFETY: as above; the log buffer lives for the call too.
        let _ = unsafe { bpf_fd(CMD_PROG_LOAD, &mut attr) };
        let text = String::from_utf8_lossy(&log);
        let last = text
            .trim_end_matches('\0')
            .lines()
            .rev()
            .filter(|line| !line.trim().is_empty())
            .take(6)
            .collect::<Vec<_>>()
            .join(" | ");
        let link = if attach_type == ATTACH_UPROBE_SESSION {
            "uprobe sessions"
        } else {
            "uprobe_multi"
        };
        Err(format!(
            "BPF_PROG_LOAD of {name} for {link}: {error}: {last}"
        ))
    }
}

/// For people working on the kernel programs (LEAKTRACE_VERIFIER_LOG=DIR): loads the program
/// once more with the verifier's full log and writes it to DIR/NAME-ATTACHTYPE.log. Every
/// instruction the verifier processed is a line there, so counting lines per instruction
/// shows which code the verifier walks again and again.
fn write_verifier_log(attr: &mut ProgLoadAttr, dir: &Path, name: &str, attach_type: u32) {
    let mut log = vec![0u8; 1 << 29];
    attr.log_level = 2;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    // SAFETY: as for the load itself; the log buffer lives for the call too.
    let loaded = unsafe { bpf_fd(CMD_PROG_LOAD, attr) };
    attr.log_level = 0;
    attr.log_size = 0;
    attr.log_buf = 0;
    drop(loaded);
    let end = log.iter().position(|byte| *byte == 0).unwrap_or(log.len());
    let path = dir.join(format!("{name}-{attach_type}.log"));
    if let Err(err) = std::fs::write(&path, &log[..end]) {
        log::warn!("could not write {}: {err}", path.display());
    }
}

/// The `link_create` part of `union bpf_attr` for uprobe_multi.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
    rest: [u64; 8],
}

/// Probes `offsets` of file `path` (file offsets, each with its cookie) in process `pid` with
/// `program`, as `kind` says: one link, detached when the descriptor is closed.
pub fn attach(
    program: &OwnedFd,
    path: &Path,
    offsets: &[u64],
    cookies: &[u64],
    kind: LinkKind,
    pid: u32,
) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        attach_type: if kind == LinkKind::Session {
            ATTACH_UPROBE_SESSION
        } else {
            ATTACH_UPROBE_MULTI
        },
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cookies: cookies.as_ptr() as u64,
        cnt: u32::try_from(offsets.len())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?,
        multi_flags: if kind == LinkKind::Return {
            MULTI_RETURN
        } else {
            0
        },
        pid,
        ..LinkCreateAttr::default()
    };
    // SAFETY: the path, offsets and cookies the attribute points to live for the call; the
    // kernel copies them.
    unsafe { bpf_fd(CMD_LINK_CREATE, &mut attr) }
}

#[cfg(test)]
mod tests {
    use super::has_core_relocations;

    #[test]
    fn leaktraces_programs_need_no_kernel_btf() {
        // leak-ebpf reads no kernel struct by CO-RE: its .BTF.ext has no relocations, so the
        // kernel's BTF is not parsed at each attach.
        assert!(!has_core_relocations(crate::probe::attach::ebpf_object()));
        assert!(has_core_relocations(b"not an ELF file"));
    }
}
