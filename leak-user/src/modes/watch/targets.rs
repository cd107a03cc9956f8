//! Which processes `watch` follows: by pid, executable or cgroup.
use super::*;

/// Which processes to watch. A process matching any entry is a target.
#[derive(Clone, Debug, Default)]
pub struct TargetSpec {
    pub pids: Vec<u32>,
    /// Executable file names ("redis-server") or paths ("/usr/bin/redis-server").
    pub exes: Vec<String>,
    /// cgroup v2 paths, as in /proc/PID/cgroup ("/system.slice/redis.service") or under
    /// /sys/fs/cgroup; their descendants are included.
    pub cgroups: Vec<String>,
}

/// What is known about a running process, for matching.
#[derive(Clone, Debug, Default)]
pub struct ProcessFacts {
    pub pid: u32,
    pub exe: Option<PathBuf>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
}

impl ProcessFacts {
    pub(super) fn read(pid: u32) -> ProcessFacts {
        ProcessFacts {
            pid,
            exe: procfs::exe_path(pid).ok(),
            comm: procfs::comm(pid),
            cgroup: procfs::cgroup(pid),
        }
    }
}

impl TargetSpec {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.exes.is_empty() && self.cgroups.is_empty()
    }

    /// Whether the process is one to watch. Kernel threads (no executable) never are.
    pub fn matches(&self, process: &ProcessFacts) -> bool {
        let Some(exe) = &process.exe else {
            return false;
        };
        self.pids.contains(&process.pid)
            || self
                .exes
                .iter()
                .any(|wanted| exe_matches(wanted, exe, process.comm.as_deref()))
            || process.cgroup.as_deref().is_some_and(|cgroup| {
                self.cgroups
                    .iter()
                    .any(|wanted| cgroup_contains(wanted, cgroup))
            })
    }

    /// Needs only the pids (no scan of every process).
    pub(super) fn pids_only(&self) -> bool {
        self.exes.is_empty() && self.cgroups.is_empty()
    }
}

/// Whether an executable is the one asked for: by path when `wanted` has a slash (a deleted
/// and replaced binary, as after an upgrade, still matches), else by file name or by the
/// kernel's 15-byte command name.
pub fn exe_matches(wanted: &str, exe: &Path, comm: Option<&str>) -> bool {
    let exe = exe.to_string_lossy();
    let exe = exe.trim_end_matches(" (deleted)");
    if wanted.contains('/') {
        return exe == wanted;
    }
    let name = exe.rsplit('/').next().unwrap_or(exe);
    // The kernel keeps the first 15 bytes of a longer name.
    let comm_matches = comm.is_some_and(|comm| {
        comm == wanted || (comm.len() == 15 && wanted.len() > 15 && wanted.starts_with(comm))
    });
    name == wanted || comm_matches
}

/// Whether cgroup `path` (from /proc/PID/cgroup) is `wanted` or inside it.
pub fn cgroup_contains(wanted: &str, path: &str) -> bool {
    let wanted = wanted
        .strip_prefix("/sys/fs/cgroup")
        .unwrap_or(wanted)
        .trim_end_matches('/');
    let wanted = wanted.strip_prefix('/').unwrap_or(wanted);
    let path = path.strip_prefix('/').unwrap_or(path);
    wanted.is_empty()
        || path == wanted
        || path
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_executables_by_name_path_and_comm() {
        let exe = Path::new("/usr/bin/redis-server");
        assert!(exe_matches("redis-server", exe, Some("redis-server")));
        assert!(exe_matches("/usr/bin/redis-server", exe, None));
        assert!(!exe_matches("/opt/redis-server", exe, None));
        assert!(!exe_matches("redis", exe, Some("redis-server")));
        // An upgraded binary still matches by path.
        assert!(exe_matches(
            "/usr/bin/redis-server",
            Path::new("/usr/bin/redis-server (deleted)"),
            None
        ));
        // The kernel keeps 15 bytes of the command name; a script runs under its interpreter.
        assert!(exe_matches(
            "a-very-long-service-name",
            Path::new("/usr/bin/python3.11"),
            Some("a-very-long-ser")
        ));
        assert!(!exe_matches(
            "worker",
            Path::new("/usr/bin/python3.11"),
            Some("work")
        ));
    }

    #[test]
    fn matches_cgroups_and_their_children() {
        assert!(cgroup_contains(
            "/system.slice/redis.service",
            "/system.slice/redis.service"
        ));
        assert!(cgroup_contains(
            "/sys/fs/cgroup/kubepods/pod1",
            "/kubepods/pod1/cri-containerd-abc"
        ));
        assert!(!cgroup_contains("/kubepods/pod1", "/kubepods/pod12/x"));
        assert!(cgroup_contains("/", "/anything"));
    }

    #[test]
    fn spec_matches_by_any_entry_and_never_kernel_threads() {
        let spec = TargetSpec {
            pids: vec![7],
            exes: vec!["leaky".into()],
            cgroups: vec!["/app".into()],
        };
        let process = |pid, exe: Option<&str>, cgroup: &str| ProcessFacts {
            pid,
            exe: exe.map(PathBuf::from),
            comm: exe.map(|e| e.rsplit('/').next().unwrap_or(e).to_string()),
            cgroup: Some(cgroup.into()),
        };
        assert!(spec.matches(&process(7, Some("/bin/x"), "/")));
        assert!(spec.matches(&process(8, Some("/opt/leaky"), "/")));
        assert!(spec.matches(&process(9, Some("/bin/y"), "/app/worker")));
        assert!(!spec.matches(&process(10, Some("/bin/y"), "/other")));
        assert!(!spec.matches(&process(7, None, "/app")));
    }
}
