//! The report: what a session or a window found, as every format and export reads it (and
//! as `leaktrace report` and `diff` read it back). Its JSON layout is docs/report.schema.json.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// The process's memory over the session and the trend of its baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    /// Robust slope of the resident baseline (low points), bytes per second.
    pub rss_growth_bytes_per_s: f64,
    /// Whether the resident baseline rises steadily.
    pub rss_rising: bool,
    /// When the resident baseline began rising, seconds since tracing began.
    pub rss_growth_onset: Option<f64>,
    /// Robust slope of the traced heap's baseline, bytes per second.
    pub heap_growth_bytes_per_s: f64,
    /// The memory limit of the target's cgroup (memory.max), when it has one.
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    /// At most a few hundred samples, evenly spread over the session.
    pub samples: Vec<ProcessSample>,
}

/// Bytes and blocks of one reachability class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassTotals {
    pub bytes: u64,
    pub blocks: u64,
}

/// A stack's live blocks by what still points to them (see `reachability`), as valgrind
/// names them: lost (definitely), indirectly lost, interior (possibly lost), reachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    pub lost: ClassTotals,
    pub indirectly_lost: ClassTotals,
    pub interior: ClassTotals,
    pub reachable: ClassTotals,
}

impl Reachability {
    pub fn add(&mut self, other: &Reachability) {
        for (mine, theirs) in [
            (&mut self.lost, &other.lost),
            (&mut self.indirectly_lost, &other.indirectly_lost),
            (&mut self.interior, &other.interior),
            (&mut self.reachable, &other.reachable),
        ] {
            mine.bytes += theirs.bytes;
            mine.blocks += theirs.blocks;
        }
    }

    /// Each class as (name in JSON and metrics, name people read, totals), in the order
    /// reports list them.
    pub fn classes(&self) -> [(&'static str, &'static str, ClassTotals); 4] {
        [
            ("lost", "lost", self.lost),
            ("indirectly_lost", "indirectly lost", self.indirectly_lost),
            ("interior", "interior pointers only", self.interior),
            ("reachable", "still reachable", self.reachable),
        ]
    }

    /// Bytes and blocks classified, whatever the class.
    pub fn classified(&self) -> ClassTotals {
        self.classes()
            .iter()
            .fold(ClassTotals::default(), |sum, (_, _, totals)| ClassTotals {
                bytes: sum.bytes + totals.bytes,
                blocks: sum.blocks + totals.blocks,
            })
    }

    /// Bytes nothing outside lost memory points to.
    pub fn lost_bytes(&self) -> u64 {
        self.lost.bytes + self.indirectly_lost.bytes
    }
}

/// How the reachability scan went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReachabilityScan {
    /// How long the target was stopped for it (0 when it was already held at exit).
    pub paused_ms: f64,
    /// Bytes of the target's memory read.
    pub scanned_bytes: u64,
    /// Tracked blocks classified.
    pub blocks: u64,
    /// --scan-limit was reached: blocks not reached by then count as lost, and may not be.
    pub truncated: bool,
}

/// One stack as reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackReport {
    pub verdict: Verdict,
    pub origin: Origin,
    pub outstanding_bytes: u64,
    pub outstanding_allocs: u64,
    pub total_allocs: u64,
    pub total_frees: u64,
    pub total_bytes: u64,
    /// Age of the oldest allocation still live, seconds.
    pub oldest_age_s: Option<f64>,
    /// Robust slope of the baseline of outstanding bytes, bytes per second.
    pub growth_bytes_per_s: f64,
    /// How sure the verdict is, 0 to 1.
    #[serde(default)]
    pub confidence: f64,
    /// When the baseline began rising, seconds since tracing began (leaking and growing).
    #[serde(default)]
    pub growth_onset: Option<f64>,
    /// Fit of a straight line to the baseline, 0 to 1.
    #[serde(default)]
    pub r_squared: f64,
    /// Share of the allocations seen that are still live.
    #[serde(default)]
    pub survival_fraction: f64,
    pub frames: Vec<Frame>,
    /// What still points to its live blocks, when a reachability scan ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachability: Option<Reachability>,
    /// Memory the C runtime keeps for itself (its thread-stack cache, malloc's arenas, the
    /// loader's TLS blocks, stdio buffers), and which: not the program's, never leaking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by_c_runtime: Option<String>,
    /// The suppression (--suppressions, or the built-in set) that accepts this stack, by
    /// name: known, never leaking, counted apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_by: Option<String>,
    /// Outstanding memory over the session, at most a few dozen evenly spread points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<Sample>,
    /// Why it has its verdict, in a sentence (leaking, suspect, growing and reachable
    /// stacks).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
    /// A Go heap stack read from the runtime's heap profile: what it held as of the last
    /// completed GC, the figure `go tool pprof -inuse_space` gives (outstanding figures
    /// count what was allocated since and not yet swept too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_last_gc: Option<InUse>,
}

/// Bytes and objects in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InUse {
    pub bytes: u64,
    pub objects: u64,
}

/// An allocator found in the target and what of it was probed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocatorInfo {
    /// "glibc", "jemalloc", "tcmalloc", "mimalloc", "musl", "Rust global allocator",
    /// "malloc" (an unknown one), "C++ operators" (a module with only those), "custom"
    /// (only --alloc-fn functions).
    pub allocator: String,
    /// The module as the target sees it.
    pub module: String,
    /// The functions probed in it.
    pub functions: Vec<String>,
    /// Each probe: where it sits and whether the kernel emulates its instruction (absent in
    /// reports written before this field).
    #[serde(default)]
    pub probes: Vec<ProbeInfo>,
}

/// One of leaktrace's kernel programs as the kernel loaded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgramLoad {
    pub program: String,
    /// Instructions the kernel's verifier processed (its limit is 1,000,000; leaktrace keeps
    /// each program under a quarter of it).
    pub verified_instructions: u32,
    /// How long loading (verifying) it took.
    pub load_ms: f64,
}

/// One probe placed in a function (see leak-user's probe_site), or a known function left
/// to the probed one it calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeInfo {
    pub function: String,
    /// Bytes from the function's start to the probed instruction.
    pub offset: u64,
    /// That instruction (AT&T syntax).
    pub instruction: String,
    /// Whether the kernel emulates it (one trap a call) or single-steps it (a second trap,
    /// several microseconds a call).
    pub emulated: bool,
    /// Set when the function is not probed because every call of it goes on to this probed
    /// function, which records the allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_by: Option<String>,
}

impl AllocatorInfo {
    /// Probes the kernel must single-step.
    pub fn single_stepped(&self) -> impl Iterator<Item = &ProbeInfo> {
        self.probes
            .iter()
            .filter(|probe| probe.covered_by.is_none() && !probe.emulated)
    }
}

/// The traced process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub pid: u32,
    pub exe: String,
    #[serde(default)]
    pub command_line: String,
    /// The name it was started by (its `comm`: "redis-server" where the file it runs is
    /// redis-check-rdb, which Debian's redis-server links to).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Target {
    /// The name the process goes by: the one it was started by, else the executable's file
    /// name ("redis-server" for /usr/bin/redis-server).
    pub fn executable_name(&self) -> &str {
        if self.name.is_empty() {
            self.exe.rsplit('/').next().unwrap_or(&self.exe)
        } else {
            &self.name
        }
    }

    /// "/usr/bin/redis-server", or "redis-server, running /usr/bin/redis-check-rdb" when
    /// the file it runs goes by another name.
    pub fn describe(&self) -> String {
        let file = self.exe.rsplit('/').next().unwrap_or(&self.exe);
        // comm is cut to 15 bytes.
        if self.name.is_empty() || file.starts_with(self.name.as_str()) {
            self.exe.clone()
        } else {
            format!("{}, running {}", self.name, self.exe)
        }
    }
}

/// How the target ended, if it did during tracing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
}

/// What a program never freed by its exit, in valgrind's terms: leaked (lost and
/// indirectly lost; without a reachability scan, what the leaking stacks hold), possibly
/// lost (only interior pointers), still reachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeakSummary {
    pub leaked_bytes: u64,
    pub leaked_blocks: u64,
    /// Stacks with a `leaking` verdict.
    pub leaking_stacks: u64,
    pub possibly_lost_bytes: u64,
    pub possibly_lost_blocks: u64,
    pub reachable_bytes: u64,
    pub reachable_blocks: u64,
    /// What the C runtime keeps for itself (see `StackReport::held_by_c_runtime`), apart
    /// from the rest.
    #[serde(default)]
    pub c_runtime_bytes: u64,
    /// What suppressions accept (see `StackReport::suppressed_by`), apart from the rest.
    #[serde(default)]
    pub suppressed_bytes: u64,
}

impl LeakSummary {
    /// Adds one stack: its verdict, what it holds, its classes when a scan ran, and
    /// whether it is the C runtime's own memory (counted apart).
    pub fn add(
        &mut self,
        verdict: Verdict,
        outstanding: (u64, u64),
        reachability: Option<&Reachability>,
        c_runtime: bool,
    ) {
        if c_runtime {
            self.c_runtime_bytes += outstanding.0;
            return;
        }
        if verdict == Verdict::Leaking {
            self.leaking_stacks += 1;
        }
        match reachability {
            Some(found) => {
                self.leaked_bytes += found.lost_bytes();
                self.leaked_blocks += found.lost.blocks + found.indirectly_lost.blocks;
                self.possibly_lost_bytes += found.interior.bytes;
                self.possibly_lost_blocks += found.interior.blocks;
                self.reachable_bytes += found.reachable.bytes;
                self.reachable_blocks += found.reachable.blocks;
            }
            None if verdict == Verdict::Leaking => {
                self.leaked_bytes += outstanding.0;
                self.leaked_blocks += outstanding.1;
            }
            None => {}
        }
    }

    /// Whether anything was leaked or possibly lost (valgrind's default
    /// `--errors-for-leak-kinds=definite,possible`).
    pub fn any_leak(&self) -> bool {
        self.leaked_blocks > 0 || self.possibly_lost_blocks > 0
    }

    /// One line, as LeakSanitizer and valgrind end with one.
    pub fn line(&self) -> String {
        let blocks = |n: u64| if n == 1 { "block" } else { "blocks" };
        format!(
            "SUMMARY: {} bytes leaked in {} {} ({} leaking stacks), {} bytes possibly lost in {} {}, {} bytes still reachable in {} {}; {} bytes held by the C runtime, {} bytes suppressed",
            self.leaked_bytes,
            self.leaked_blocks,
            blocks(self.leaked_blocks),
            self.leaking_stacks,
            self.possibly_lost_bytes,
            self.possibly_lost_blocks,
            blocks(self.possibly_lost_blocks),
            self.reachable_bytes,
            self.reachable_blocks,
            blocks(self.reachable_blocks),
            self.c_runtime_bytes,
            self.suppressed_bytes,
        )
    }
}

/// A complete report: what `--format json` writes (schema: docs/report.schema.json).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Version of this JSON layout.
    pub version: u32,
    pub target: Target,
    /// "attach" or "run".
    pub mode: String,
    pub duration_s: f64,
    /// One heap allocation in this many was tracked; heap counts and bytes are scaled by it
    /// (absent before this field existed: every allocation).
    #[serde(default = "every_allocation")]
    pub sample_rate: u32,
    /// How stacks were walked: "fp" (frame pointers) or "dwarf" (.eh_frame tables).
    #[serde(default = "frame_pointers")]
    pub unwind: String,
    /// The allocators probed (absent in reports written before this field).
    #[serde(default)]
    pub allocators: Vec<AllocatorInfo>,
    /// leaktrace's kernel programs as loaded: instructions verified and load time (absent in
    /// reports written before this field).
    #[serde(default)]
    pub programs: Vec<ProgramLoad>,
    /// What the probes cost the target, and what was done to keep --max-overhead (absent
    /// when not measured).
    #[serde(default)]
    pub cost: Option<crate::model::cost::CostReport>,
    /// Set when the target ended while traced.
    pub exited: Option<Exit>,
    /// Events lost, by reason (every reason is present, zero or not).
    pub dropped: BTreeMap<String, u64>,
    /// Informational event counts.
    pub events: BTreeMap<String, u64>,
    /// Stacks that were not listed (beyond --top or filtered out), and their outstanding bytes.
    pub omitted_stacks: u64,
    pub omitted_outstanding_bytes: u64,
    /// The process's memory trend (absent in version 1 reports).
    #[serde(default)]
    pub process: Option<ProcessReport>,
    /// The reachability scan, when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachability_scan: Option<ReachabilityScan>,
    /// At the end of a `run`: what the program never freed, over every stack (listed or
    /// not), as LeakSanitizer's and valgrind's summaries give it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak_summary: Option<LeakSummary>,
    /// Leaking stacks first, then growing, stable, transient; within each, by the sort key
    /// (at most --top of them).
    pub stacks: Vec<StackReport>,
    /// The --scope functions: what their calls allocated and kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<ScopeReport>,
    /// Scopes whose calls may explain a leaking stack or the process's growth, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspects: Vec<Suspect>,
    /// Language runtimes found in the target, and whether their code could be named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<RuntimeInfo>,
    /// A Go program's goroutines per creation site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goroutines: Option<GoroutineReport>,
    /// A forked child's report: the pid of the process that forked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_by: Option<u32>,
    /// `run`: each child the command (or a child of it) forked, traced from its first
    /// instruction, in the order they ended (`exited` absent: still running when the
    /// command ended).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Report>,
}

/// A Go program's goroutines, per creation site (the `go` statement that started them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GoroutineReport {
    /// Goroutines alive at the end, of every site.
    pub alive: u64,
    /// Goroutines started and ended while traced.
    pub created: u64,
    pub exited: u64,
    /// Sites not listed (beyond --top), and their goroutines alive.
    pub omitted_sites: u64,
    pub omitted_alive: u64,
    /// Leaking sites first, then by goroutines alive.
    pub sites: Vec<GoroutineSiteReport>,
}

/// The goroutines started at one `go` statement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoroutineSiteReport {
    pub verdict: Verdict,
    pub confidence: f64,
    /// The `go` statement: the function that runs it, its file and line.
    pub site: Frame,
    /// The call stack of the latest `go` statement seen there, the site first (empty when
    /// none ran while traced).
    pub stack: Vec<Frame>,
    pub alive: u64,
    /// Alive when tracing began.
    pub alive_at_start: u64,
    pub created: u64,
    pub exited: u64,
    /// Robust slope of the alive count's baseline, goroutines per second.
    pub growth_per_s: f64,
    /// Alive goroutines over the session, evenly thinned.
    pub series: Vec<GoroutineSample>,
}

/// Goroutines alive at one site at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoroutineSample {
    pub at_s: f64,
    pub alive: u64,
}

/// A language runtime in the target (Node.js…) and how its JIT-compiled functions are named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// "node", "go".
    pub runtime: String,
    /// The runtime's version, when known ("go1.19.8").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The perf map its JIT code was named from (in the target's mount namespace), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf_map: Option<String>,
    /// What to do to see its functions in stacks, when they cannot be named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Go: where the heap's stacks come from, the runtime's own heap profile or its spans,
    /// and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap: Option<String>,
}

/// What the calls of one --scope function allocated and kept; with a label argument, also
/// per label.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeReport {
    pub function: String,
    /// The functions probed for it ("symbol in module"): a function and its compiler
    /// clones, every overload of a C++ name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probed: Vec<String>,
    /// The argument that labels its calls ("arg1=str"), when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_argument: Option<String>,
    #[serde(flatten)]
    pub figures: ScopeFigures,
    /// Per label, most retained first (at most --scope-max-labels; the rest as "(other)").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<LabelReport>,
}

/// One label's share of a scope function's calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelReport {
    pub label: String,
    #[serde(flatten)]
    pub figures: ScopeFigures,
}

/// What a set of scope calls allocated and kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeFigures {
    pub calls: u64,
    /// Bytes allocated inside a call, on average.
    pub allocated_bytes_per_call: f64,
    /// Of those, still held when the call returned, on average over returned calls.
    pub retained_bytes_per_call: f64,
    /// Still held `retained_later_after_s` after the call returned, on average over the
    /// calls that old (absent until a call is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_later_bytes_per_call: Option<f64>,
    pub retained_later_after_s: f64,
    /// Bytes allocated inside its calls and not freed, now.
    pub retained_bytes: u64,
    pub retained_blocks: u64,
    /// Slope of the baseline of `retained_bytes`.
    pub retained_growth_bytes_per_s: f64,
    /// When its retained bytes began a steady rise, seconds since tracing began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_growth_onset: Option<f64>,
    /// When its first call was seen, seconds since tracing began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_call_s: Option<f64>,
    /// The stacks that allocated what its calls still hold, most first.
    pub top_stacks: Vec<ScopeStackReport>,
}

/// One stack of what scope calls still hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeStackReport {
    /// The stack's id, as in the metrics (`leaktrace.stack.id`).
    pub stack_id: String,
    pub retained_bytes: u64,
    pub retained_blocks: u64,
    /// Function names, innermost first.
    pub frames: Vec<String>,
}

/// A scope (and label) whose calls may explain growth.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Suspect {
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The leaking stack it is suspected for (its id and innermost function), or absent for
    /// the process's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_function: Option<String>,
    /// Share of the growth its calls account for, 0–1.
    pub share: f64,
    /// Why, in words.
    pub reasons: Vec<String>,
}

fn every_allocation() -> u32 {
    1
}

fn frame_pointers() -> String {
    "fp".to_string()
}

impl Report {
    /// A report of `target` in `mode` with nothing in it yet.
    pub fn empty(target: Target, mode: &str) -> Report {
        Report {
            version: REPORT_VERSION,
            target,
            mode: mode.to_string(),
            duration_s: 0.0,
            sample_rate: 1,
            unwind: String::new(),
            allocators: Vec::new(),
            programs: Vec::new(),
            cost: None,
            exited: None,
            dropped: BTreeMap::new(),
            events: BTreeMap::new(),
            omitted_stacks: 0,
            omitted_outstanding_bytes: 0,
            process: None,
            reachability_scan: None,
            leak_summary: None,
            stacks: Vec::new(),
            scopes: Vec::new(),
            suspects: Vec::new(),
            runtimes: Vec::new(),
            goroutines: None,
            forked_by: None,
            children: Vec::new(),
        }
    }

    /// Listed stacks with this verdict.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.stacks
            .iter()
            .filter(|stack| stack.verdict == verdict)
            .count()
    }

    /// Bytes held by every stack, listed or omitted.
    pub fn outstanding_bytes(&self) -> u64 {
        self.stacks
            .iter()
            .map(|stack| stack.outstanding_bytes)
            .sum::<u64>()
            + self.omitted_outstanding_bytes
    }
}

/// The current version of [`Report`]'s layout.
pub const REPORT_VERSION: u32 = 2;
