//! The shared vocabulary of every stage: stacks, frames, totals, series, verdicts and the
//! report. Stages read and produce these; none depends on another stage.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a stack's memory was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The malloc family (malloc, calloc, realloc, …).
    Heap,
    /// Anonymous mmap/mremap made by the program itself (not by its allocator).
    Mmap,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Heap => "heap",
            Origin::Mmap => "mmap",
        }
    }
}

/// Identifies one allocating call stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub origin: Origin,
    /// The kernel's stack id (`leak_common::UNKNOWN_STACK_ID` when it could not be recorded).
    pub stack_id: u32,
    /// For mmap stacks: the caller of the syscall wrapper, which the frame-pointer walk skips.
    pub caller_hint: u64,
}

/// Running totals of one stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub outstanding_bytes: u64,
    pub outstanding_allocs: u64,
    pub total_allocs: u64,
    pub total_frees: u64,
    pub total_bytes: u64,
}

/// Outstanding memory of one stack at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since tracing began.
    pub at_s: f64,
    pub outstanding_bytes: u64,
}

/// What leaktrace knows about one stack over the session.
#[derive(Clone, Debug)]
pub struct StackHistory {
    pub key: StackKey,
    pub totals: Totals,
    pub series: Vec<Sample>,
    /// CLOCK_MONOTONIC ns of the oldest allocation still live, if known.
    pub oldest_live_ns: Option<u64>,
}

impl StackHistory {
    /// Seconds the oldest live allocation has been held at `now_ns`.
    pub fn oldest_age_s(&self, now_ns: u64) -> Option<f64> {
        self.oldest_live_ns
            .map(|oldest| now_ns.saturating_sub(oldest) as f64 / 1e9)
    }
}

/// The judgement on a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Outstanding bytes kept rising and old allocations stay unfreed.
    Leaking,
    /// Holds memory but does not grow.
    Stable,
    /// What it allocates is freed.
    Transient,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Leaking => "leaking",
            Verdict::Stable => "stable",
            Verdict::Transient => "transient",
        }
    }
}

/// One symbolized frame, innermost first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Demangled function name; None when the module has no symbol for the address.
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Path of the executable or library.
    pub module: Option<String>,
    /// The address in the target, as hex ("0x…").
    #[serde(with = "hex_address")]
    pub address: u64,
    /// Offset of the address in the module's file, when the module is known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module_offset: Option<u64>,
    /// True for a function inlined into the next frame.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub inlined: bool,
}

mod hex_address {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(address: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{address:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        u64::from_str_radix(text.trim_start_matches("0x"), 16).map_err(D::Error::custom)
    }
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
    /// Robust slope of outstanding bytes over the session.
    pub growth_bytes_per_s: f64,
    pub frames: Vec<Frame>,
}

/// The traced process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub pid: u32,
    pub exe: String,
    #[serde(default)]
    pub command_line: String,
}

/// How the target ended, if it did during tracing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
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
    /// Set when the target ended while traced.
    pub exited: Option<Exit>,
    /// Events lost, by reason (every reason is present, zero or not).
    pub dropped: BTreeMap<String, u64>,
    /// Informational event counts.
    pub events: BTreeMap<String, u64>,
    /// Stacks that were not listed (beyond --top), and their outstanding bytes.
    pub omitted_stacks: u64,
    pub omitted_outstanding_bytes: u64,
    /// All stacks sorted by outstanding bytes, largest first (at most --top of them).
    pub stacks: Vec<StackReport>,
}

/// The current version of [`Report`]'s layout.
pub const REPORT_VERSION: u32 = 1;
