//! Least privilege. leaktrace runs with sudo or with a handful of capabilities; it keeps only
//! what it uses, in two steps:
//!
//! - at start, before any thread exists: everything but CAP_BPF, CAP_PERFMON,
//!   CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH (reading the target's files whatever
//!   their mode), plus CAP_DAC_OVERRIDE only when the report's file or directory is not
//!   writable by leaktrace's own ids, and CAP_NET_BIND_SERVICE only for a `--prometheus`
//!   port below 1024;
//! - in `attach` and `run`, once the probes are placed and before the exporters start their
//!   threads: CAP_BPF and CAP_PERFMON too. What stays is CAP_SYS_PTRACE (reading the target's
//!   memory and /proc files, the reachability scan) and CAP_SYS_ADMIN (uprobes on allocators
//!   the target loads later, /proc/PID/map_files).
//!
//! Capabilities belong to each thread; both steps happen while leaktrace has one thread, and
//! threads started later inherit the smaller sets. The permitted set shrinks with the
//! effective one, so nothing can take them back. `run` drops nothing at start unless it is
//! uid 0 (whose command gets its capabilities from the bounding set at exec, which is left
//! alone), so the command starts with what it would have had without leaktrace.
use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_BIND_SERVICE: u32 = 10;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// A capability's bit in a set.
pub const fn bit(capability: u32) -> u64 {
    1u64 << capability
}

/// The names of the capabilities this module keeps or talks about.
const NAMES: &[(u32, &str)] = &[
    (CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE"),
    (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    (CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    (CAP_PERFMON, "CAP_PERFMON"),
    (CAP_BPF, "CAP_BPF"),
];

/// A set as names ("CAP_SYS_PTRACE, CAP_SYS_ADMIN"; others as "cap N").
pub fn names(set: u64) -> String {
    let names: Vec<String> = (0..64)
        .filter(|cap| set & bit(*cap) != 0)
        .map(|cap| {
            NAMES
                .iter()
                .find(|(known, _)| *known == cap)
                .map_or_else(|| format!("cap {cap}"), |(_, name)| (*name).to_string())
        })
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// What a command will do that needs a capability beyond tracing.
#[derive(Clone, Debug, Default)]
pub struct Needs {
    /// Files or directories it will write (the report, watch's report directory).
    pub writes: Vec<PathBuf>,
    /// The port `--prometheus` listens on.
    pub listen_port: Option<u16>,
}

impl Needs {
    /// A command writing `writes` and listening on `listen`.
    pub fn new(
        writes: impl IntoIterator<Item = PathBuf>,
        listen: Option<std::net::SocketAddr>,
    ) -> Needs {
        Needs {
            writes: writes.into_iter().collect(),
            listen_port: listen.map(|addr| addr.port()),
        }
    }

    /// What to keep at start.
    pub fn at_start(&self) -> u64 {
        bit(CAP_BPF) | bit(CAP_PERFMON) | self.after_attach()
    }

    /// What to keep once the probes are placed.
    pub fn after_attach(&self) -> u64 {
        let mut keep = bit(CAP_SYS_PTRACE) | bit(CAP_SYS_ADMIN) | bit(CAP_DAC_READ_SEARCH);
        if !self.writes.iter().all(|path| writable_by_own_ids(path)) {
            keep |= bit(CAP_DAC_OVERRIDE);
        }
        if self
            .listen_port
            .is_some_and(|port| port != 0 && port < 1024)
        {
            keep |= bit(CAP_NET_BIND_SERVICE);
        }
        keep
    }
}

/// One thread's capability sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

impl Sets {
    /// These sets with everything outside `keep` removed.
    pub fn only(self, keep: u64) -> Sets {
        Sets {
            effective: self.effective & keep,
            permitted: self.permitted & keep,
            inheritable: self.inheritable & keep,
        }
    }
}

/// linux/capability.h: _LINUX_CAPABILITY_VERSION_3 (two 32-bit words per set).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's sets.
pub fn current() -> io::Result<Sets> {
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two Data structs for version 3, and data holds two.
    let result = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |low: u32, high: u32| u64::from(low) | (u64::from(high) << 32);
    Ok(Sets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

fn set(sets: Sets) -> io::Result<()> {
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |set: u64| (set as u32, (set >> 32) as u32);
    let (effective, effective_high) = split(sets.effective);
    let (permitted, permitted_high) = split(sets.permitted);
    let (inheritable, inheritable_high) = split(sets.inheritable);
    let data = [
        Data {
            effective,
            permitted,
            inheritable,
        },
        Data {
            effective: effective_high,
            permitted: permitted_high,
            inheritable: inheritable_high,
        },
    ];
    // SAFETY: capset reads two Data structs for version 3, and data holds two.
    let result =
        unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes every capability outside `keep` from this process's effective, permitted and
/// inheritable sets (ambient ones go with them); returns what was dropped from the permitted
/// set. Capabilities belong to each thread, so this refuses while another thread runs,
/// unless it is one of `dropping_themselves` (threads that drop to `keep` on their own, like
/// `run`'s launcher once its command has started).
pub fn keep_only(keep: u64, dropping_themselves: &[i32]) -> Result<u64, String> {
    // SAFETY: gettid has no arguments and cannot fail.
    let own = unsafe { libc::gettid() };
    let others = std::fs::read_dir("/proc/self/task")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
                .filter(|tid| *tid != own && !dropping_themselves.contains(tid))
                .count()
        })
        .unwrap_or(0);
    if others > 0 {
        return Err(format!(
            "{} threads are running, and capabilities belong to each thread: none dropped",
            others + 1
        ));
    }
    keep_only_this_thread(keep)
}

/// [`keep_only`] for the calling thread alone, whatever other threads hold.
pub fn keep_only_this_thread(keep: u64) -> Result<u64, String> {
    let sets = current().map_err(|err| format!("capget: {err}"))?;
    let kept = sets.only(keep);
    if kept == sets {
        return Ok(0);
    }
    set(kept).map_err(|err| format!("capset: {err}"))?;
    Ok(sets.permitted & !kept.permitted)
}

/// Drops to `keep` (see [`keep_only`]), saying what happened at info level (a failure is a
/// warning: tracing goes on with the capabilities it has).
pub fn drop_to(keep: u64, when: &str, dropping_themselves: &[i32]) {
    match keep_only(keep, dropping_themselves) {
        Ok(0) => log::debug!("{when}: no capabilities to drop"),
        Ok(dropped) => log::info!(
            "{when}: dropped {} capabilities; kept {}",
            dropped.count_ones(),
            names(current().map_or(0, |sets| sets.permitted))
        ),
        Err(reason) => log::warn!("{when}: could not drop capabilities: {reason}"),
    }
}

/// Whether the process's own uid and gids may write `path` (the file, or when it does not
/// exist the nearest directory above it that does), by its mode bits: without
/// CAP_DAC_OVERRIDE, this is what the kernel checks.
pub fn writable_by_own_ids(path: &Path) -> bool {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let Some(metadata) = absolute
        .ancestors()
        .find_map(|candidate| std::fs::metadata(candidate).ok())
    else {
        return false;
    };
    // SAFETY: these calls have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    mode_allows_write(
        metadata.mode(),
        metadata.uid(),
        metadata.gid(),
        uid,
        gid,
        &groups(),
    )
}

/// The write bit that applies to (uid, gid, groups) in a file's mode.
pub fn mode_allows_write(
    mode: u32,
    owner: u32,
    group: u32,
    uid: u32,
    gid: u32,
    groups: &[u32],
) -> bool {
    if uid == owner {
        mode & 0o200 != 0
    } else if gid == group || groups.contains(&group) {
        mode & 0o020 != 0
    } else {
        mode & 0o002 != 0
    }
}

/// The supplementary groups.
fn groups() -> Vec<u32> {
    // SAFETY: with size 0, getgroups only returns the count.
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if count <= 0 {
        return Vec::new();
    }
    let mut groups = vec![0 as libc::gid_t; count as usize];
    // SAFETY: the buffer holds `count` entries.
    let filled = unsafe { libc::getgroups(count, groups.as_mut_ptr()) };
    groups.truncate(filled.max(0) as usize);
    groups
}

/// Capabilities leaktrace needs and what fails without each.
const NEEDED_CAPABILITIES: [(u32, &str, &str); 3] = [
    (
        CAP_BPF,
        "CAP_BPF",
        "the eBPF programs and maps cannot be loaded",
    ),
    (
        CAP_PERFMON,
        "CAP_PERFMON",
        "the page-fault sampler and the tracing programs cannot be attached",
    ),
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "other processes' /proc/PID/maps, exe and memory cannot be read, so allocators and symbols are not found",
    ),
];

/// The capabilities missing from `effective`, with what fails without each. CAP_SYS_ADMIN
/// stands in for CAP_BPF and CAP_PERFMON (kernels before 5.8 know only it).
pub fn missing_capabilities(effective: u64) -> Vec<(&'static str, &'static str)> {
    let has = |capability: u32| effective & bit(capability) != 0;
    NEEDED_CAPABILITIES
        .iter()
        .filter(|(capability, _, _)| {
            let covered_by_admin = *capability != CAP_SYS_PTRACE && has(CAP_SYS_ADMIN);
            !(has(*capability) || covered_by_admin)
        })
        .map(|(_, name, effect)| (*name, *effect))
        .collect()
}

/// The capabilities `attach` and `run` need and do not have (they place uprobes, so
/// CAP_SYS_ADMIN too), as one line for the user; None when nothing is missing (or the
/// capabilities cannot be read: the kernel will say).
pub fn missing_for_probes() -> Option<String> {
    let effective = crate::sys::procfs::own_capabilities()?;
    let mut missing: Vec<String> = missing_capabilities(effective)
        .iter()
        .map(|(name, effect)| format!("{name} ({effect})"))
        .collect();
    if !can_place_uprobes(effective) {
        missing.push("CAP_SYS_ADMIN (the kernel requires it for uprobes)".into());
    }
    (!missing.is_empty()).then(|| {
        format!(
            "missing capabilities: {}; run leaktrace with sudo, or grant them (see deploy/README.md)",
            missing.join("; ")
        )
    })
}

/// Whether precise windows can place uprobes: the kernel's uprobe perf events ask for
/// CAP_SYS_ADMIN itself (CAP_PERFMON is not enough), so without it only gear 1 runs.
pub fn can_place_uprobes(effective: u64) -> bool {
    effective & bit(CAP_SYS_ADMIN) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_missing_capabilities() {
        let all = u64::MAX >> 23;
        assert!(missing_capabilities(all).is_empty());
        let without_bpf = all & !(1 << 39) & !(1 << CAP_SYS_ADMIN);
        assert_eq!(
            missing_capabilities(without_bpf)
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>(),
            vec!["CAP_BPF"]
        );
        // CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON, not CAP_SYS_PTRACE.
        let admin_only = 1u64 << 21;
        assert_eq!(
            missing_capabilities(admin_only)
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>(),
            vec!["CAP_SYS_PTRACE"]
        );
        assert_eq!(missing_capabilities(0).len(), 3);
        assert!(can_place_uprobes(all));
        assert!(!can_place_uprobes(all & !(1 << CAP_SYS_ADMIN)));
    }

    #[test]
    fn the_write_bit_that_applies() {
        // Owner, group and others, each with only its own bit.
        assert!(mode_allows_write(0o200, 5, 6, 5, 9, &[]));
        assert!(!mode_allows_write(0o022, 5, 6, 5, 6, &[]));
        assert!(mode_allows_write(0o020, 5, 6, 7, 6, &[]));
        assert!(mode_allows_write(0o020, 5, 6, 7, 9, &[6]));
        assert!(!mode_allows_write(0o002 | 0o200, 5, 6, 7, 6, &[]));
        assert!(mode_allows_write(0o002, 5, 6, 7, 8, &[]));
        // Root is not special here: that is CAP_DAC_OVERRIDE's job.
        assert!(!mode_allows_write(0o555, 0, 0, 0, 0, &[]));
    }

    #[test]
    fn what_is_kept_when() {
        let plain = Needs::default();
        assert_eq!(
            plain.at_start(),
            bit(CAP_BPF)
                | bit(CAP_PERFMON)
                | bit(CAP_SYS_PTRACE)
                | bit(CAP_SYS_ADMIN)
                | bit(CAP_DAC_READ_SEARCH)
        );
        assert_eq!(plain.after_attach() & (bit(CAP_BPF) | bit(CAP_PERFMON)), 0);
        let low_port = Needs {
            listen_port: Some(443),
            ..Needs::default()
        };
        assert_ne!(low_port.after_attach() & bit(CAP_NET_BIND_SERVICE), 0);
        let high_port = Needs {
            listen_port: Some(9464),
            ..Needs::default()
        };
        assert_eq!(high_port.after_attach() & bit(CAP_NET_BIND_SERVICE), 0);
    }

    #[test]
    fn sets_are_only_ever_narrowed() {
        let sets = Sets {
            effective: 0b1011,
            permitted: 0b1111,
            inheritable: 0b0001,
        };
        assert_eq!(
            sets.only(0b0110),
            Sets {
                effective: 0b0010,
                permitted: 0b0110,
                inheritable: 0,
            }
        );
    }

    #[test]
    fn own_sets_read_back() {
        let sets = current().expect("capget");
        assert_eq!(sets.effective & !sets.permitted, 0);
        assert_eq!(
            names(bit(CAP_SYS_PTRACE) | bit(CAP_BPF)),
            "CAP_SYS_PTRACE, CAP_BPF"
        );
        assert_eq!(names(0), "none");
        assert_eq!(names(bit(12)), "cap 12");
    }
}
