//! The shared vocabulary of every stage: stacks, frames, totals, series, verdicts and the
//! report. Stages read and produce these; none depends on another stage.
pub mod allocators;
pub mod cost;
pub mod exit;
pub mod go_runtime;
pub mod scope;
pub mod series;
pub mod units;

mod report;
pub use report::*;

use serde::{Deserialize, Serialize};

/// How a stack's memory was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The malloc family (malloc, calloc, realloc, …).
    Heap,
    /// Anonymous mmap/mremap made by the program itself (not by its allocator).
    Mmap,
    /// The program break moved by brk/sbrk called by the program itself (not by its
    /// allocator; in `watch`'s gear 1, where no allocator is probed, by anyone).
    Brk,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Heap => "heap",
            Origin::Mmap => "mmap",
            Origin::Brk => "brk",
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

impl Totals {
    /// What a sample taken at one allocation in `rate` stands for.
    pub fn scaled(self, rate: u64) -> Totals {
        Totals {
            outstanding_bytes: self.outstanding_bytes.saturating_mul(rate),
            outstanding_allocs: self.outstanding_allocs.saturating_mul(rate),
            total_allocs: self.total_allocs.saturating_mul(rate),
            total_frees: self.total_frees.saturating_mul(rate),
            total_bytes: self.total_bytes.saturating_mul(rate),
        }
    }
}

/// Live allocations of one stack and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub allocs: u64,
    pub bytes: u64,
}

impl Held {
    pub fn add(&mut self, bytes: u64) {
        self.allocs += 1;
        self.bytes += bytes;
    }

    /// What a sample taken at one allocation in `rate` stands for.
    pub fn scaled(self, rate: u64) -> Held {
        Held {
            allocs: self.allocs.saturating_mul(rate),
            bytes: self.bytes.saturating_mul(rate),
        }
    }
}

/// Outstanding memory of one stack at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since tracing began.
    pub at_s: f64,
    pub outstanding_bytes: u64,
    #[serde(default)]
    pub outstanding_allocs: u64,
    /// Allocations seen by then, cumulative: for the analysis (how much of what a stack
    /// allocates it keeps), not written to reports.
    #[serde(skip)]
    pub total_allocs: u64,
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

/// The judgement on a stack. The order is the order of urgency (reports list leaking first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The baseline (the low points between releases) rises steadily and the allocations made
    /// when it began rising are still unfreed, and that held across analyses (or the program
    /// exited, or a scan found blocks lost).
    Leaking,
    /// Rises as a leak does, not yet confirmed: the rise has not held across analyses yet,
    /// or the program freed as many blocks from before the attach meanwhile (it may be
    /// replacing them). Never exported as leaking.
    Suspect,
    /// Memory rises but old allocations are being released: a queue or cache that keeps
    /// growing while it turns over.
    Growing,
    /// Held when the program exited, and still pointed to then (valgrind's "still
    /// reachable"): memory the program never freed but did not lose.
    Reachable,
    /// Holds memory but does not grow.
    Stable,
    /// What it allocates is freed.
    Transient,
}

impl Verdict {
    pub const ALL: [Verdict; 6] = [
        Verdict::Leaking,
        Verdict::Suspect,
        Verdict::Growing,
        Verdict::Reachable,
        Verdict::Stable,
        Verdict::Transient,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Leaking => "leaking",
            Verdict::Suspect => "suspect",
            Verdict::Growing => "growing",
            Verdict::Reachable => "reachable",
            Verdict::Stable => "stable",
            Verdict::Transient => "transient",
        }
    }
}

/// A verdict with the numbers behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    pub verdict: Verdict,
    /// How sure the verdict is, 0 to 1.
    pub confidence: f64,
    /// Robust (Theil–Sen) slope of the baseline, bytes per second.
    pub growth_bytes_per_s: f64,
    /// How well a straight line fits the baseline (1: a perfectly steady rise).
    pub r_squared: f64,
    /// When the baseline started rising, seconds since tracing began (rising stacks only).
    pub growth_onset: Option<f64>,
    /// Share of the allocations seen that are still live.
    pub survival_fraction: f64,
}

/// The target's memory at one moment, from /proc/PID/status and smaps_rollup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSample {
    /// Seconds since tracing began.
    pub at_s: f64,
    /// Resident set size (VmRSS).
    pub rss_bytes: u64,
    /// Resident anonymous memory (RssAnon).
    pub anon_bytes: u64,
    /// Swapped-out memory (VmSwap).
    pub swap_bytes: u64,
    /// Virtual memory size (VmSize).
    #[serde(default)]
    pub virtual_bytes: u64,
    /// Proportional share of the resident memory (smaps_rollup Pss), when readable.
    #[serde(default)]
    pub pss_bytes: Option<u64>,
    /// Heap bytes the traced allocator calls hold (leaktrace's own count).
    pub heap_bytes: u64,
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

impl Frame {
    /// How the frame is recognised across runs and address layouts: its function name when
    /// symbolized, else its module's file name and offset, else its address.
    pub fn identity(&self) -> String {
        match (&self.function, &self.module, self.module_offset) {
            (Some(function), _, _) => function.clone(),
            (None, Some(module), Some(offset)) => {
                format!(
                    "{}+{offset:#x}",
                    module.rsplit('/').next().unwrap_or(module)
                )
            }
            _ => format!("{:#x}", self.address),
        }
    }
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

/// A short id for a stack that stays the same across runs and address layouts: a hash of
/// its origin and its frames' identities (function names, or module+offset).
pub fn stack_id(stack: &StackReport) -> String {
    stack_id_of(stack.origin, &stack.frames)
}

/// [`stack_id`] of a stack not (yet) in a report.
pub fn stack_id_of(origin: Origin, frames: &[Frame]) -> String {
    // FNV-1a, 64 bits: small, stable across Rust versions (unlike DefaultHasher).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(origin.as_str().as_bytes());
    for frame in frames {
        feed(b"\n");
        feed(frame.identity().as_bytes());
    }
    format!("{hash:016x}")
}

/// A tracked block: a live allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub start: u64,
    pub size: u64,
}
