//! JIT-compiled code named through perf maps: `/tmp/perf-PID.map`, which `node
//! --perf-basic-prof` (and Python 3.12's `-X perf`, the JVM with perf-map-agent, …) append
//! one line to per compiled function: `START SIZE NAME` (hex, hex, the rest of the line).
//!
//! The file is read incrementally while the target runs (it only grows) and kept, so stacks
//! still resolve after the target exits. JIT code addresses are reused after code is
//! collected: the newest entry at an address wins. (blazesym reads perf maps too, but only
//! while symbolizing a live process, and keeps the oldest entry at an address.)
use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::PathBuf,
};

use crate::model::Frame;

/// One compiled function.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    end: u64,
    name: String,
}

/// A process's perf map, as read so far.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// By start address.
    entries: BTreeMap<u64, Entry>,
    /// Where the file was found, once it was.
    pub path: Option<PathBuf>,
    /// Bytes of the file read so far, and an unfinished last line.
    read: u64,
    partial: String,
}

impl PerfMap {
    /// Reads what was appended to the target's perf map since the last call. `pid` is the
    /// pid seen here; the file is named by the pid inside the target's namespace (`nspid`),
    /// under its root. `executable` says whether an address is in executable memory now:
    /// V8 also logs interpreted functions at their bytecode, on the data heap, and such
    /// entries would hide code that later takes the same addresses.
    pub fn refresh(&mut self, pid: u32, nspid: u32, executable: impl Fn(u64) -> bool) {
        let path = PathBuf::from(format!("/proc/{pid}/root/tmp/perf-{nspid}.map"));
        let Ok(mut file) = File::open(&path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        let Ok(count) = file.read_to_end(&mut bytes) else {
            return;
        };
        self.path = Some(PathBuf::from(format!("/tmp/perf-{nspid}.map")));
        self.read += count as u64;
        self.add_text(&String::from_utf8_lossy(&bytes), executable);
    }

    /// Adds lines of a perf map (the last one may be unfinished: it waits for the rest).
    pub fn add_text(&mut self, text: &str, executable: impl Fn(u64) -> bool) {
        let mut text = std::mem::take(&mut self.partial) + text;
        if !text.ends_with('\n') {
            let cut = text.rfind('\n').map_or(0, |at| at + 1);
            self.partial = text.split_off(cut);
        }
        for line in text.lines() {
            let Some((start, size, name)) = parse_line(line) else {
                continue;
            };
            if !executable(start) {
                continue;
            }
            let end = start.saturating_add(size);
            // Newer code over older: whatever was logged in this range before is gone.
            let stale: Vec<u64> = self
                .entries
                .range(..end)
                .rev()
                .take_while(|(_, entry)| entry.end > start)
                .map(|(at, _)| *at)
                .collect();
            for at in stale {
                self.entries.remove(&at);
            }
            self.entries.insert(
                start,
                Entry {
                    end,
                    name: name.to_string(),
                },
            );
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The frame for a return address in JIT code, if the map covers it.
    pub fn frame(&self, address: u64) -> Option<Frame> {
        // A return address points after the call: look up the call itself.
        let lookup = address.saturating_sub(1);
        let (start, entry) = self.entries.range(..=lookup).next_back()?;
        if lookup >= entry.end {
            return None;
        }
        let (function, file, line) = describe(&entry.name);
        Some(Frame {
            function: Some(function),
            file,
            line,
            module: Some("[jit]".to_string()),
            module_offset: Some(address - start),
            address,
            ..Frame::default()
        })
    }
}

/// `START SIZE NAME`: hex start and size (no 0x), the name is the rest of the line.
fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let mut fields = line.splitn(3, ' ');
    let start = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    let size = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    let name = fields.next()?.trim();
    (size > 0 && !name.is_empty()).then_some((start, size, name))
}

/// A perf map name as function, file and line:
/// - V8 (Node): `JS:*name /path/app.js:12:5` (`~` interpreted, `^` Sparkplug, `+` Maglev,
///   `*` TurboFan), older V8 `LazyCompile:~name /path/app.js:12`;
/// - CPython 3.12+: `py::name:/path/app.py`;
/// - anything else is the function name as it stands.
pub fn describe(name: &str) -> (String, Option<String>, Option<u32>) {
    if let Some(rest) = name.strip_prefix("py::") {
        return match rest.split_once(':') {
            Some((function, file)) if !file.is_empty() => {
                (function.to_string(), Some(file.to_string()), None)
            }
            _ => (rest.to_string(), None, None),
        };
    }
    let Some((tag, rest)) = name.split_once(':') else {
        return (name.to_string(), None, None);
    };
    if !matches!(tag, "JS" | "LazyCompile" | "Function" | "Script" | "Eval") {
        return (name.to_string(), None, None);
    }
    let rest = rest.trim_start_matches(['~', '^', '+', '*']);
    // "name /path/file.js:12:5"; the name may be empty (anonymous functions).
    let (function, location) = match rest.rsplit_once(' ') {
        Some((function, location)) => (function.trim(), location),
        None if rest.starts_with('/') || rest.contains(".js") => ("", rest),
        None => (rest, ""),
    };
    let function = if function.is_empty() {
        "(anonymous)".to_string()
    } else {
        function.to_string()
    };
    let mut parts = location.rsplitn(3, ':');
    let numbers: Vec<&str> = parts.by_ref().take(2).collect();
    let (file, line) = match (numbers.as_slice(), parts.next()) {
        ([_column, line], Some(file)) if line.parse::<u32>().is_ok() => {
            (file.to_string(), line.parse().ok())
        }
        ([line, file], None) if line.parse::<u32>().is_ok() => {
            ((*file).to_string(), line.parse().ok())
        }
        _ => (location.to_string(), None),
    };
    let file = (!file.is_empty()).then_some(file);
    (function, file, line)
}

/// The pid of `pid` inside its own pid namespace (the last NSpid field of its status).
pub fn namespaced_pid(pid: u32) -> u32 {
    crate::sys::procfs::read_text(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("NSpid:"))
                .and_then(|pids| pids.split_whitespace().last()?.parse().ok())
        })
        .unwrap_or(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_v8_and_python() {
        assert_eq!(
            describe("JS:*stashUpload /srv/app.js:9:22"),
            ("stashUpload".into(), Some("/srv/app.js".into()), Some(9))
        );
        assert_eq!(
            describe("JS:~ /srv/app.js:1:1"),
            ("(anonymous)".into(), Some("/srv/app.js".into()), Some(1))
        );
        assert_eq!(
            describe("LazyCompile:~handle /srv/old.js:40"),
            ("handle".into(), Some("/srv/old.js".into()), Some(40))
        );
        assert_eq!(
            describe("py::cache_request:/srv/app.py"),
            ("cache_request".into(), Some("/srv/app.py".into()), None)
        );
        assert_eq!(
            describe("Builtin:ArrayPrototypePush"),
            ("Builtin:ArrayPrototypePush".into(), None, None)
        );
        assert_eq!(describe("stub"), ("stub".into(), None, None));
    }

    #[test]
    fn lookups_take_the_newest_entry_and_wait_for_whole_lines() {
        let mut map = PerfMap::default();
        let all = |_: u64| true;
        map.add_text(
            "1000 100 JS:*old /a.js:1:1\n2000 10 JS:*other /a.js:2:1\n1000 8",
            all,
        );
        assert_eq!(
            map.frame(0x1010).and_then(|f| f.function),
            Some("old".into())
        );
        // The rest of the last line arrives: the code at 0x1000 was replaced.
        map.add_text("0 JS:*new /b.js:3:1\n", all);
        let frame = map.frame(0x1010).expect("covered");
        assert_eq!(frame.function.as_deref(), Some("new"));
        assert_eq!(frame.line, Some(3));
        assert_eq!(frame.module.as_deref(), Some("[jit]"));
        assert!(map.frame(0x2011).is_none());
        assert!(map.frame(0x0fff).is_none());
        assert!(map.frame(0x200a).is_some());
        // New code overlapping old code replaces it, whatever their starts.
        map.add_text("1ff0 20 JS:*moved /c.js:4:1\n", all);
        assert_eq!(
            map.frame(0x1ff8).and_then(|f| f.function),
            Some("moved".into())
        );
        assert!(map.frame(0x1010).is_some());
    }

    #[test]
    fn entries_outside_executable_memory_are_left_out() {
        let mut map = PerfMap::default();
        map.add_text(
            "1000 100 JS:*code /a.js:1:1\n1040 10 JS:~bytecode /a.js:2:1\n",
            |address| address < 0x1040,
        );
        assert_eq!(
            map.frame(0x1045).and_then(|f| f.function),
            Some("code".into())
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let mut map = PerfMap::default();
        map.add_text("zz 10 x\n10 zz x\n10 0 empty\n10 10\n20 10 fine\n", |_| {
            true
        });
        assert!(map.frame(0x15).is_none());
        assert_eq!(
            map.frame(0x25).and_then(|f| f.function),
            Some("fine".into())
        );
    }
}
