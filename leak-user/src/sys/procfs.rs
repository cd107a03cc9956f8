//! Reading /proc: a process's mappings, executable and liveness. Parsing is pure and tested;
//! the readers are thin wrappers.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    /// File offset of `start`.
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// The pathname column: a file path, `[heap]`, `[stack]`, `[vdso]`, or empty.
    pub path: String,
}

impl Mapping {
    /// Backed by a regular file (not anonymous, not a pseudo mapping like `[vdso]`).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }

    /// The path without the " (deleted)" suffix the kernel adds for unlinked files.
    pub fn file_path(&self) -> &str {
        self.path.strip_suffix(" (deleted)").unwrap_or(&self.path)
    }

    pub fn contains(&self, address: u64) -> bool {
        self.start <= address && address < self.end
    }
}

/// Parses the text of /proc/PID/maps. Malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    let (start, end) = (
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    );
    // Sizes are end − start everywhere: a range that ends before it starts is malformed.
    if end < start {
        return None;
    }
    let perms = perms.as_bytes();
    Some(Mapping {
        start,
        end,
        readable: perms.first() == Some(&b'r'),
        writable: perms.get(1) == Some(&b'w'),
        executable: perms.get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_string(),
        inode: inode.parse().ok()?,
        path,
    })
}

pub fn read_maps(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse_maps(&read_text(format!("/proc/{pid}/maps"))?))
}

/// A /proc file as text. Not `read_to_string`: a process's name and its mapped files' paths
/// are bytes, not always UTF-8, and such a process must still be traceable. Bytes that are
/// not UTF-8 become U+FFFD (a path with them is opened through map_files instead).
pub fn read_text(path: impl AsRef<Path>) -> io::Result<String> {
    let bytes = fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

/// A path under the target's root, so files of processes in other mount namespaces
/// (containers) are found.
pub fn path_in_root(pid: u32, path: &str) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'))
}

/// /proc/PID/map_files/START-END: opens the mapped file itself, even if deleted or in another
/// mount namespace.
pub fn map_file_path(pid: u32, mapping: &Mapping) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    ))
}

/// Whether the process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match read_text(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_stat_state(&stat).is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// What a pid is, for tracing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessKind {
    /// No such process (or it is gone entirely).
    Missing,
    /// Exited, not yet reaped.
    Zombie,
    /// A kernel thread: no user space.
    KernelThread,
    /// A user-space process.
    User,
}

/// PF_KTHREAD in the flags field of /proc/PID/stat (linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// What /proc/PID/stat says the process is.
pub fn parse_process_kind(stat: &str) -> ProcessKind {
    let Some(close) = stat.rfind(')') else {
        return ProcessKind::Missing;
    };
    match stat[close + 1..]
        .split_whitespace()
        .next()
        .and_then(|state| state.chars().next())
    {
        None | Some('X') => ProcessKind::Missing,
        Some('Z') => ProcessKind::Zombie,
        Some(_) => {
            if parse_stat_flags(stat).unwrap_or(0) & PF_KTHREAD != 0 {
                ProcessKind::KernelThread
            } else {
                ProcessKind::User
            }
        }
    }
}

pub fn process_kind(pid: u32) -> ProcessKind {
    match read_text(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_process_kind(&stat),
        Err(_) => ProcessKind::Missing,
    }
}

/// The flags of /proc/PID/stat (field 9: PF_KTHREAD, PF_EXITING…).
pub fn parse_stat_flags(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(9 - 3)?.parse().ok()
}

/// The state letter of /proc/PID/stat (after the parenthesised command, which may itself
/// contain spaces and parentheses).
pub fn parse_stat_state(stat: &str) -> Option<char> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// The parent's pid (field 4 of /proc/PID/stat).
pub fn parse_stat_parent(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(4 - 3)?.parse().ok()
}

/// The process's parent (see `parse_stat_parent`).
pub fn parent_pid(pid: u32) -> Option<u32> {
    parse_stat_parent(&read_text(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time of a process (clock ticks after boot, field 22 of /proc/PID/stat): with
/// the pid, it names one process even after the pid is reused.
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields after the command start at the state, field 3.
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The process's start time (see `parse_stat_start_time`).
pub fn start_time(pid: u32) -> Option<u64> {
    parse_stat_start_time(&read_text(format!("/proc/{pid}/stat")).ok()?)
}

/// The CPU time a process has used, user and system (fields 14 and 15 of /proc/PID/stat),
/// in clock ticks.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The CPU time process `pid` has used, in nanoseconds.
pub fn cpu_time_ns(pid: u32) -> Option<u64> {
    let ticks = parse_stat_cpu_ticks(&read_text(format!("/proc/{pid}/stat")).ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|hz| *hz > 0)?;
    Some(ticks.saturating_mul(1_000_000_000) / per_second)
}

/// Every process id in /proc (threads are not listed there).
pub fn pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The program break from a process's maps and stat: the end of its "[heap]" mapping, or,
/// before it has one, its `start_brk` (field 47 of /proc/PID/stat).
pub fn parse_program_break(maps: &[Mapping], stat: &str) -> Option<u64> {
    if let Some(heap) = maps.iter().find(|mapping| mapping.path == "[heap]") {
        return Some(heap.end);
    }
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(47 - 3)?.parse().ok()
}

/// The process's program break now.
pub fn program_break(pid: u32) -> Option<u64> {
    let maps = read_maps(pid).ok()?;
    parse_program_break(&maps, &read_text(format!("/proc/{pid}/stat")).ok()?)
}

/// The process's command name (at most 15 bytes, as the kernel keeps it).
pub fn comm(pid: u32) -> Option<String> {
    Some(
        read_text(format!("/proc/{pid}/comm"))
            .ok()?
            .trim_end()
            .to_string(),
    )
}

/// The cgroup (v2) path of a process, e.g. "/kubepods/pod…/…".
pub fn cgroup(pid: u32) -> Option<String> {
    let text = read_text(format!("/proc/{pid}/cgroup")).ok()?;
    parse_cgroup_v2_path(&text).map(str::to_string)
}

/// A hexadecimal mask of the text of /proc/PID/status, by its field name ("CapEff").
fn parse_status_mask(status: &str, field: &str) -> Option<u64> {
    let hex = status.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The effective capability set from the text of /proc/PID/status (a bit per capability).
pub fn parse_effective_capabilities(status: &str) -> Option<u64> {
    parse_status_mask(status, "CapEff")
}

/// The signals pending for one thread (SigPnd of /proc/PID/task/TID/status: bit N-1 for
/// signal N).
pub fn parse_pending_signals(status: &str) -> Option<u64> {
    parse_status_mask(status, "SigPnd")
}

/// leaktrace's own effective capabilities.
pub fn own_capabilities() -> Option<u64> {
    parse_effective_capabilities(&read_text("/proc/self/status").ok()?)
}

/// The target's executable path, as the target sees it.
pub fn exe_path(pid: u32) -> io::Result<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe"))
}

/// The process's command line, arguments separated by spaces.
pub fn command_line(pid: u32) -> io::Result<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|byte| *byte == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect::<Vec<_>>()
        .join(" "))
}

/// The process's environment (as it was at its last exec), variable by variable.
pub fn environment(pid: u32) -> io::Result<Vec<(String, String)>> {
    Ok(parse_environment(&fs::read(format!(
        "/proc/{pid}/environ"
    ))?))
}

/// NUL-separated KEY=VALUE entries; one without `=` is skipped.
pub fn parse_environment(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|byte| *byte == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (key, value) = entry.split_once('=')?;
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

/// The process's memory as /proc reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    pub rss_bytes: u64,
    pub virtual_bytes: u64,
    pub anon_bytes: u64,
    pub swap_bytes: u64,
    pub pss_bytes: Option<u64>,
}

/// A "Key:   123 kB" field of /proc/PID/status or smaps_rollup, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib.saturating_mul(1024))
    })
}

/// Resident, anonymous and swapped memory from the text of /proc/PID/status (None for a
/// kernel thread or a zombie, which have no memory fields).
pub fn parse_status_memory(status: &str) -> Option<MemoryUsage> {
    Some(MemoryUsage {
        rss_bytes: kib_field(status, "VmRSS")?,
        virtual_bytes: kib_field(status, "VmSize").unwrap_or(0),
        anon_bytes: kib_field(status, "RssAnon").unwrap_or(0),
        swap_bytes: kib_field(status, "VmSwap").unwrap_or(0),
        pss_bytes: None,
    })
}

/// The proportional set size from the text of /proc/PID/smaps_rollup.
pub fn parse_smaps_rollup_pss(rollup: &str) -> Option<u64> {
    kib_field(rollup, "Pss")
}

/// Reads the process's memory. smaps_rollup walks every mapping, so the caller reads it
/// only when asked (`with_pss`).
pub fn memory_usage(pid: u32, with_pss: bool) -> Option<MemoryUsage> {
    let mut usage = parse_status_memory(&read_text(format!("/proc/{pid}/status")).ok()?)?;
    if with_pss {
        usage.pss_bytes = read_text(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|text| parse_smaps_rollup_pss(&text));
    }
    Some(usage)
}

/// The cgroup (v2) path from the text of /proc/PID/cgroup.
pub fn parse_cgroup_v2_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|line| line.strip_prefix("0::"))
}

/// The value of a cgroup's memory.max: None for "max" (no limit).
pub fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The memory limit of the process's cgroup (v2), read through its own view of
/// /sys/fs/cgroup; None when it has none or it cannot be read.
pub fn memory_limit(pid: u32) -> Option<u64> {
    let cgroup = read_text(format!("/proc/{pid}/cgroup")).ok()?;
    let path = parse_cgroup_v2_path(&cgroup)?;
    let file = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("memory.max");
    parse_memory_max(&read_text(file).ok()?)
}

/// Bytes in a page; mmap lengths are rounded up to it.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock bpf_ktime_get_ns reads.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The CPU time the calling thread has used, in nanoseconds, in user space and in the kernel
/// on its behalf (a probe's trap included): unlike wall time, not inflated while the thread
/// waits for a CPU.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_entries_split_at_the_first_equals() {
        let raw = b"PATH=/usr/bin:/bin\0LD_PRELOAD=/x/lib.so\0EQ=a=b\0junk\0\0";
        assert_eq!(
            parse_environment(raw),
            vec![
                ("PATH".to_string(), "/usr/bin:/bin".to_string()),
                ("LD_PRELOAD".to_string(), "/x/lib.so".to_string()),
                ("EQ".to_string(), "a=b".to_string()),
            ]
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_read_lossily() {
        let path = std::env::temp_dir().join(format!("leaktrace-read-text-{}", std::process::id()));
        fs::write(&path, b"Name:\tcaf\xe9\nVmRSS:\t12 kB\n").expect("write");
        let text = read_text(&path).expect("read");
        let _ = fs::remove_file(&path);
        assert_eq!(text, "Name:\tcaf\u{fffd}\nVmRSS:\t12 kB\n");
        assert_eq!(
            parse_status_memory(&text).map(|m| m.rss_bytes),
            Some(12 * 1024)
        );
    }

    #[test]
    fn ranges_that_end_before_they_start_are_skipped() {
        let maps = "7f0000002000-7f0000001000 r-xp 00000000 08:01 42 /lib/a.so\n\
                    7f0000001000-7f0000002000 r-xp 00000000 08:01 42 /lib/b.so\n";
        let parsed = parse_maps(maps);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].path, "/lib/b.so");
    }

    #[test]
    fn huge_figures_saturate() {
        let status = "VmRSS:\t18014398509481984 kB\n";
        assert_eq!(
            parse_status_memory(status).map(|m| m.rss_bytes),
            Some(u64::MAX)
        );
    }

    #[test]
    fn reads_start_time_and_capabilities() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 106 0 0 0 0 0 0 0 20 0 1 0 987654 9658368 256 18446744073709551615";
        assert_eq!(parse_stat_start_time(stat), Some(987654));
        assert_eq!(parse_stat_start_time("garbage"), None);
        let full = "13933 (cat) R 13931 13931 10969 0 -1 4194304 101 0 0 0 0 0 0 0 20 0 1 0 2355772 3133440 364 18446744073709551615 94605402243072 94605402262953 140720633008816 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94605402278960 94605402280576 94606472126464 140720633010905";
        assert_eq!(parse_program_break(&[], full), Some(94606472126464));
        let maps = parse_maps("5600aa000000-5600aa021000 rw-p 00000000 00:00 0 [heap]\n");
        assert_eq!(parse_program_break(&maps, full), Some(0x5600aa021000));
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_effective_capabilities(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_effective_capabilities("Name: x"), None);
        // A thread with SIGKILL (9) pending, as the end of its process leaves it.
        let thread =
            "Name:\tworker\nSigQ:\t0/63\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000000000\n";
        assert_eq!(parse_pending_signals(thread), Some(1 << 8));
        // Flags: PF_EXITING (0x4) of a thread on its way out, after an odd command name.
        assert_eq!(
            parse_stat_flags("42 (a) b (c)) S 1 42 42 0 -1 4194564 101"),
            Some(4194564)
        );
        assert_eq!(parse_stat_flags(stat), Some(4194560));
    }

    const MAPS: &str = "\
55d0c2a00000-55d0c2a01000 r--p 00000000 fe:01 1312 /usr/bin/demo
55d0c2a01000-55d0c2a02000 r-xp 00001000 fe:01 1312 /usr/bin/demo
55d0c3000000-55d0c3021000 rw-p 00000000 00:00 0                          [heap]
7f1c2a000000-7f1c2a026000 r--p 00000000 fe:01 2222                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a026000-7f1c2a17c000 r-xp 00026000 fe:01 2222                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2b000000-7f1c2b001000 r-xp 00000000 fe:01 3333                       /tmp/my lib (deleted)
7ffd1e1f0000-7ffd1e1f2000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_every_kind_of_line() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 7);
        let libc_text = &maps[4];
        assert_eq!(libc_text.start, 0x7f1c2a026000);
        assert_eq!(libc_text.end, 0x7f1c2a17c000);
        assert_eq!(libc_text.offset, 0x26000);
        assert!(libc_text.executable && libc_text.readable && libc_text.is_file());
        assert_eq!(libc_text.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert!(!maps[2].is_file(), "[heap] is not a file");
        assert!(!maps[6].is_file(), "[vdso] is not a file");
        assert_eq!(maps[5].file_path(), "/tmp/my lib");
        assert!(libc_text.contains(0x7f1c2a026000) && !libc_text.contains(0x7f1c2a17c000));
    }

    #[test]
    fn skips_malformed_lines() {
        assert!(parse_maps("garbage\n\nzz-yy r-xp 0 0 0\n").is_empty());
    }

    #[test]
    fn tells_zombies_and_kernel_threads_apart() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 4 0 0 20 0 1 0 10 0";
        assert_eq!(parse_process_kind(kthreadd), ProcessKind::KernelThread);
        let zombie = "4242 (sh (old)) Z 1 4242 4242 0 -1 4228164 99 0 0 0 0 0 0 0 20 0 1 0 5 0";
        assert_eq!(parse_process_kind(zombie), ProcessKind::Zombie);
        let user = "77 (redis-server) S 1 77 77 0 -1 4194560 512 0 0 0 3 1 0 0 20 0 4 0 99 0";
        assert_eq!(parse_process_kind(user), ProcessKind::User);
        assert_eq!(parse_process_kind(""), ProcessKind::Missing);
        assert_eq!(process_kind(std::process::id()), ProcessKind::User);
    }

    #[test]
    fn stat_state_survives_odd_command_names() {
        assert_eq!(parse_stat_state("42 (a) b (c)) S 1 2"), Some('S'));
        assert_eq!(parse_stat_state("42 (demo) Z 1"), Some('Z'));
        assert_eq!(parse_stat_parent("42 (a) b (c)) S 17 2"), Some(17));
        assert_eq!(
            parent_pid(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }

    #[test]
    fn reads_memory_fields() {
        let status = "Name:\tdemo\nVmSize:\t  20000 kB\nVmRSS:\t    5120 kB\nRssAnon:\t    2048 kB\nRssFile:\t 3072 kB\nVmSwap:\t       4 kB\n";
        assert_eq!(
            parse_status_memory(status),
            Some(MemoryUsage {
                rss_bytes: 5120 * 1024,
                virtual_bytes: 20000 * 1024,
                anon_bytes: 2048 * 1024,
                swap_bytes: 4096,
                pss_bytes: None,
            })
        );
        // Kernel threads have no Vm fields.
        assert_eq!(parse_status_memory("Name:\tkthreadd\nState:\tS\n"), None);
        let rollup = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  5120 kB\nPss:  4000 kB\nPss_Anon:  2048 kB\n";
        assert_eq!(parse_smaps_rollup_pss(rollup), Some(4000 * 1024));
    }

    #[test]
    fn reads_the_cgroup_memory_limit() {
        assert_eq!(
            parse_cgroup_v2_path("0::/system.slice/demo.service\n"),
            Some("/system.slice/demo.service")
        );
        assert_eq!(parse_cgroup_v2_path("12:memory:/old\n"), None);
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(512 << 20));
    }

    #[test]
    fn path_in_root_goes_through_the_target_root() {
        assert_eq!(
            path_in_root(7, "/usr/lib/libc.so.6"),
            PathBuf::from("/proc/7/root/usr/lib/libc.so.6")
        );
    }
}
