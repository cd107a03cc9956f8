//! Command-line flags and subcommands.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::probe::unwind_tables::Unwind;
use crate::{
    analyze::aggregate::SortKey,
    analyze::verdicts::{EscalationRule, Thresholds},
    export::otel::OtlpOptions,
    export::report::Format,
    modes::session::Options,
    modes::watch::{TargetSpec, WatchOptions},
};

#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    about = "Find the call stacks that leak memory in a running Linux process, with eBPF.",
    long_about = "leaktrace probes the malloc family and anonymous mmap of one process, records \
                  every allocation that is not freed with its call stack, and reports which \
                  stacks hold memory and which of them keep growing (leaking). The target needs \
                  no change and no restart. Needs root (or CAP_BPF + CAP_PERFMON)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Say more on stderr: -v the allocators found and probes placed, -vv each probe's
    /// place and timings. (RUST_LOG overrides.)
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Cli {
    /// The log filter for --verbose.
    pub fn log_filter(&self) -> &'static str {
        match self.verbose {
            0 => "warn",
            1 => "warn,leaktrace=info",
            _ => "warn,leaktrace=debug",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace a running process until --duration, Ctrl-C, or its exit.
    Attach {
        /// Process id to trace.
        #[arg(long, short)]
        pid: u32,
        /// Stop after this long (e.g. 30s, 5m, 1h). Default: until Ctrl-C.
        #[arg(long, short, value_parser = parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        common: Common,
    },
    /// Start a command with the probes in place and report what it never freed when it exits.
    /// leaktrace exits with the command's status.
    Run {
        #[command(flatten)]
        common: Common,
        /// Exit with N when the command leaked (blocks lost, indirectly or possibly lost),
        /// with the command's own status otherwise (valgrind's flag, for test suites).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
        error_exitcode: Option<u8>,
        /// Also follow children into the programs they execute (vfork and posix_spawn
        /// children too), and the children forked by any thread, each reported apart
        /// (valgrind's flag). Without it, children forked by each process's first thread
        /// are traced until they execute another program.
        #[arg(long)]
        trace_children: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Watch processes for as long as leaktrace runs (a sidecar or a service): their memory
    /// and sampled page faults all the time, the allocation probes only for a window when
    /// memory keeps rising (or on SIGUSR1). Each window's report goes to --report-dir.
    /// Settings also come from LEAKTRACE_* variables and a TOML file (--config); flags win
    /// over variables, variables over the file.
    #[command(args_override_self = true)]
    Watch {
        #[command(flatten)]
        watch: WatchFlags,
        #[command(flatten)]
        common: Common,
    },
    /// Convert a saved JSON report (from --format json) to another format.
    Report {
        /// The report written by `leaktrace … --format json`.
        file: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Load each of leaktrace's kernel programs as the most demanding target needs them,
    /// attach nothing, and show what the kernel's verifier took for each: instructions
    /// processed and load time, with stacks walked by frame pointers and by unwind tables.
    /// Fails if the kernel refuses one, or one needs more than a quarter of the verifier's
    /// 1,000,000-instruction limit: a check to run on a new kernel before relying on leaktrace.
    Programs {
        /// Only this way of walking stacks (default: both fp and dwarf).
        #[arg(long, value_enum)]
        unwind: Option<Unwind>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
    },
    /// Show what grew between two saved JSON reports of the same program (like jeprof --base).
    Diff {
        /// The earlier report.
        old: PathBuf,
        /// The later report.
        new: PathBuf,
        /// Output format: text, or json for the list of changes.
        #[arg(long, short, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
        /// Stacks to list, largest growth first (0: all).
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// What `leaktrace watch` watches and when it escalates.
#[derive(Debug, Args)]
#[command(next_help_heading = "Watch")]
pub struct WatchFlags {
    /// A TOML file of settings: each key a long flag of `watch` (report-dir = "/var/…",
    /// exe = ["redis-server"], escalate-for = "60s"). See deploy/leaktrace.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Process id to watch (repeatable, or comma-separated).
    #[arg(
        long = "pid",
        short = 'p',
        value_name = "PID",
        env = "LEAKTRACE_PID",
        value_delimiter = ','
    )]
    pub pids: Vec<u32>,
    /// Watch every process running this executable, by file name or path, including ones
    /// started later (repeatable).
    #[arg(
        long = "exe",
        value_name = "NAME|PATH",
        env = "LEAKTRACE_EXE",
        value_delimiter = ','
    )]
    pub exes: Vec<String>,
    /// Watch every process in this cgroup (v2) or below it: a container, a pod, a systemd
    /// unit ("/system.slice/redis.service" or a path under /sys/fs/cgroup) (repeatable).
    #[arg(
        long = "cgroup",
        value_name = "PATH",
        env = "LEAKTRACE_CGROUP",
        value_delimiter = ','
    )]
    pub cgroups: Vec<String>,
    /// Where each precise window writes its reports (JSON, text, and the page-fault growth
    /// as text, folded stacks and a flame graph).
    #[arg(
        long,
        value_name = "DIR",
        env = "LEAKTRACE_REPORT_DIR",
        default_value = "/var/lib/leaktrace/reports"
    )]
    pub report_dir: PathBuf,
    /// How long a precise window traces allocations.
    #[arg(long, env = "LEAKTRACE_ESCALATE_FOR", default_value = "60s", value_parser = parse_duration)]
    pub escalate_for: Duration,
    /// Least time from the end of one window to the next automatic one on the same target.
    #[arg(long, env = "LEAKTRACE_COOLDOWN", default_value = "5m", value_parser = parse_duration)]
    pub cooldown: Duration,
    /// Escalate when anonymous memory grows at least this much per second (e.g. 32K)…
    #[arg(long, env = "LEAKTRACE_ESCALATE_GROWTH", value_name = "BYTES", default_value = "32K", value_parser = parse_size)]
    pub escalate_growth: u64,
    /// …with its baseline rising in every fifth of this long…
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub escalate_lookback: Duration,
    /// …and a straight line fitting the baseline at least this well (r²).
    #[arg(long, default_value_t = EscalationRule::default().min_r_squared, value_parser = fraction)]
    pub escalate_min_r2: f64,
    /// Open a window on each target as soon as it is found.
    #[arg(long, env = "LEAKTRACE_ESCALATE_AT_START")]
    pub escalate_at_start: bool,
    /// Take one page-fault sample (with its stack) per this many minor faults.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub fault_period: u64,
    /// Between windows, also trace anonymous mmap, munmap, mremap and brk with their stacks
    /// (which code maps memory that stays mapped). Uses syscall tracepoints, which put every
    /// syscall of every process on the kernel's slower path: about 5% of redis-benchmark's
    /// throughput here, against under 1% for gear 1 without them.
    #[arg(long, env = "LEAKTRACE_WATCH_MMAP")]
    pub watch_mmap: bool,
    /// Most processes watched at once (each costs a small eBPF object; with dwarf
    /// unwinding 16 MiB of kernel memory for its tables).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_targets: u64,
    /// Stop after this long (default: until SIGTERM or SIGINT).
    #[arg(long, short, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

impl WatchFlags {
    /// The watch settings, with the precise windows traced as `common` says.
    pub fn options(&self, common: &Common) -> Result<WatchOptions, String> {
        if common.output.is_some() || common.format != Format::Text {
            return Err(
                "watch writes JSON and text reports to --report-dir; --output and --format do not apply"
                    .into(),
            );
        }
        let targets = TargetSpec {
            pids: self.pids.clone(),
            exes: self.exes.clone(),
            cgroups: self.cgroups.clone(),
        };
        if targets.is_empty() {
            return Err(
                "nothing to watch: give --pid, --exe or --cgroup (or set them in --config)".into(),
            );
        }
        let mut precise = common.options(Some(self.escalate_for));
        precise.max_overhead = common.max_overhead(Some(DEFAULT_MAX_OVERHEAD));
        precise.otlp = None;
        precise.prometheus = None;
        Ok(WatchOptions {
            targets,
            report_dir: self.report_dir.clone(),
            escalate_for: self.escalate_for,
            cooldown: self.cooldown,
            rule: EscalationRule {
                lookback_s: self.escalate_lookback.as_secs_f64(),
                min_growth_bytes_per_s: self.escalate_growth as f64,
                min_r_squared: self.escalate_min_r2,
                ..EscalationRule::default()
            },
            escalate_at_start: self.escalate_at_start,
            fault_period: self.fault_period,
            watch_mmap: self.watch_mmap,
            max_targets: self.max_targets as usize,
            duration: self.duration,
            interval: common.interval,
            precise,
            otlp: common.export.otlp(common.interval),
            prometheus: common.export.prometheus,
            export_top: common.export.export_top as usize,
        })
    }
}

/// The command line with `watch --config FILE`'s settings put in as flags, right after
/// `watch`: flags given on the command line come later and win; a setting whose LEAKTRACE_*
/// variable is set is left out, so the variable wins over the file.
pub fn with_config_file(args: Vec<String>) -> Result<Vec<String>, String> {
    let Some(watch_at) = args.iter().position(|arg| arg == "watch") else {
        return Ok(args);
    };
    let mut path = None;
    for (i, arg) in args.iter().enumerate().skip(watch_at + 1) {
        if arg == "--config" {
            path = args.get(i + 1).cloned();
        } else if let Some(value) = arg.strip_prefix("--config=") {
            path = Some(value.to_string());
        }
    }
    let Some(path) = path else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|err| format!("cannot read the config file {path}: {err}"))?;
    let command = <Cli as clap::CommandFactory>::command();
    let watch = command
        .find_subcommand("watch")
        .ok_or("the watch command is missing")?;
    let settings = config_flags(&text, watch, |name| std::env::var_os(name).is_some())
        .map_err(|err| format!("config file {path}: {err}"))?;
    let mut merged = args[..=watch_at].to_vec();
    merged.extend(settings);
    merged.extend_from_slice(&args[watch_at + 1..]);
    Ok(merged)
}

/// A TOML file's settings as flags of `command`. `env_set` says whether an environment
/// variable is set (such settings are left out).
pub fn config_flags(
    text: &str,
    command: &clap::Command,
    env_set: impl Fn(&str) -> bool,
) -> Result<Vec<String>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| format!("not valid TOML: {}", err.message()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(name.as_str()) && name != "config")
            .ok_or_else(|| {
                format!(
                    "unknown setting '{key}': settings are the long flags of `leaktrace watch` (see `leaktrace watch --help`)"
                )
            })?;
        if arg
            .get_env()
            .and_then(|env| env.to_str())
            .is_some_and(&env_set)
        {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let scalar = |value: &toml::Value| -> Result<String, String> {
            match value {
                toml::Value::String(text) => Ok(text.clone()),
                toml::Value::Integer(number) => Ok(number.to_string()),
                toml::Value::Float(number) => Ok(number.to_string()),
                toml::Value::Boolean(flag) => Ok(flag.to_string()),
                _ => Err(format!("'{key}' must be a string, number or list of them")),
            }
        };
        match (&value, takes_value) {
            (toml::Value::Boolean(true), false) => flags.push(format!("--{name}")),
            (toml::Value::Boolean(false), false) => {}
            (_, false) => return Err(format!("'{key}' is a switch: use true or false")),
            (toml::Value::Array(items), true) => {
                for item in items {
                    flags.push(format!("--{name}={}", scalar(item)?));
                }
            }
            (value, true) => flags.push(format!("--{name}={}", scalar(value)?)),
        }
    }
    Ok(flags)
}

/// Formats of `leaktrace diff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    Text,
    Json,
}

/// A percentage above 0 and at most 100.
/// --max-overhead: a share of the target's CPU, or none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Percent(f64),
    Off,
}

/// The budget `attach` and watch's windows keep unless told otherwise, in percent.
pub const DEFAULT_MAX_OVERHEAD: f64 = 10.0;

fn parse_budget(text: &str) -> Result<Budget, String> {
    match text {
        "off" | "none" => Ok(Budget::Off),
        _ => parse_percent(text).map(Budget::Percent),
    }
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage (e.g. 5 or 2.5)"))?;
    if value > 0.0 && value <= 100.0 {
        Ok(value)
    } else {
        Err(format!("{text} is not between 0 and 100"))
    }
}

/// --top: a count of stacks, 0 for all.
fn parse_top(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .map_err(|_| format!("--top takes a count of stacks to list (0 lists all), not '{text}'"))
}

#[derive(Debug, Args)]
pub struct Common {
    /// Time between reports (attach mode), e.g. 5s.
    #[arg(long, short, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stacks to list (0: all). Leaking stacks come first, then growing, stable, transient.
    #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_parser = parse_top)]
    pub top: usize,
    /// Order within each verdict: outstanding bytes, outstanding allocation count, or growth
    /// rate.
    #[arg(long, value_enum, default_value_t = SortKey::Bytes)]
    pub sort: SortKey,
    /// Ignore allocations younger than this (e.g. 10s): they may still be in flight.
    #[arg(long, value_parser = parse_duration)]
    pub min_age: Option<Duration>,
    /// Track only allocations of at least this size (e.g. 64, 4K, 1M).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub min_size: u64,
    /// Track only allocations of at most this size (e.g. 1M).
    #[arg(long, value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Track one allocation in N, chosen at random, and scale counts and bytes by N: fewer
    /// map entries and less work per call (every call still costs its probe traps).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sample_rate: u32,
    /// Keep leaktrace's probes under this share of the target's CPU time, in percent, or
    /// `off`: the cost is measured each second (traps counted × a trap's cost, measured at
    /// start, plus the programs' run time), and over it the allocation probes are taken out
    /// for part of every cycle (frees stay probed), and where the frees alone cost more,
    /// tracing stops (attach reports then, a watch window closes); the report says when and
    /// for how long. A cost under PCT% of one core is never cut (a mostly idle target loses nothing to
    /// it). Default: 10 for attach and watch's windows, off for run.
    #[arg(long, value_name = "PCT|off", value_parser = parse_budget)]
    pub max_overhead: Option<Budget>,
    /// Also probe a custom allocator function: NAME:KIND[:ARGS], KIND malloc, calloc,
    /// realloc or free, ARGS the 1-based argument positions when they differ from the C
    /// function's (e.g. pool_alloc:malloc:size=2, pool_free:free:ptr=2). Repeatable.
    #[arg(long = "alloc-fn", value_name = "NAME:KIND[:ARGS]", value_parser = crate::model::allocators::parse_alloc_fn)]
    pub alloc_fns: Vec<crate::model::allocators::KnownFn>,
    /// How call stacks are walked: fp follows frame pointers (cheapest; callers of code
    /// built without them are lost), dwarf follows the modules' .eh_frame unwind tables
    /// (complete stacks in any build, about 0.1 µs more per frame), auto picks dwarf when
    /// the target's executable was built without frame pointers.
    #[arg(long, value_enum, default_value_t = Unwind::Auto)]
    pub unwind: Unwind,
    /// Report format.
    #[arg(long, short, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the final report to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Live allocations the kernel can track at once (each costs about 100 bytes of kernel
    /// memory); allocations beyond it are counted as dropped.
    #[arg(long, default_value_t = leak_common::DEFAULT_MAX_ALLOCS)]
    pub max_allocs: u32,
    /// For the final report, stop the target briefly and find which live blocks nothing
    /// points to any more (lost), only lost blocks point to (indirectly lost), only
    /// pointers into their middle reach (interior), or are still reachable, as valgrind
    /// does. On by default in `run` (at exit; --no-reachability turns it off).
    #[arg(long)]
    pub reachability: bool,
    /// Do not classify live blocks by reachability (`run` does by default).
    #[arg(long, conflicts_with = "reachability")]
    pub no_reachability: bool,
    /// Most bytes of the target's memory the reachability scan reads (e.g. 512M, 4G);
    /// beyond it, blocks not reached count as lost and the report says the scan was cut.
    #[arg(long, value_parser = parse_size, default_value = "4G")]
    pub scan_limit: u64,
    /// Stacks known and accepted, as LeakSanitizer (`leak:PATTERN` lines) or valgrind
    /// (`{ … Memcheck:Leak … fun:… }` blocks) keep them; may be given again. A matching
    /// stack is counted apart and never leaking. A default set for the C and C++ runtimes
    /// is always applied.
    #[arg(long = "suppressions", value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
    /// Time between samples of the per-stack totals (resolution of growth trends).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub sample_interval: Duration,
    #[command(flatten)]
    pub verdict: VerdictFlags,
    #[command(flatten)]
    pub export: ExportFlags,
    #[command(flatten)]
    pub scope: ScopeFlags,
}

/// Request scopes: which calls of which function keep memory.
#[derive(Debug, Args)]
#[command(next_help_heading = "Request scopes")]
pub struct ScopeFlags {
    /// Attribute the allocations made during each call of FUNCTION (a request handler, say)
    /// to that call: per function, calls, bytes allocated and still held per call, and the
    /// stacks of what its calls keep. FUNCTION:argN=str (or =int) also groups the calls by
    /// their argument N, from arg0 (the first); e.g. handle_request:arg1=str. Repeatable,
    /// up to 16 functions.
    #[arg(long = "scope", value_name = "FUNCTION[:argN=str|int]", value_parser = crate::model::scope::parse_scope)]
    pub scopes: Vec<crate::model::scope::ScopeSpec>,
    /// How long after a scope call returned to look again at what it still holds.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub scope_retain_after: Duration,
    /// Labels per scope function listed with their own figures; the rest are summed as
    /// "(other)". The kernel tells at most 1008 labels apart in all.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub scope_max_labels: u64,
    /// With --otlp, a scope call still holding at least this much when it returns gets a
    /// span of its own (e.g. 64K).
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    pub scope_span_threshold: u64,
}

/// Where the findings go besides the report.
#[derive(Debug, Args)]
#[command(next_help_heading = "Export")]
pub struct ExportFlags {
    /// Export metrics and span events over OTLP. ENDPOINT (optional) overrides
    /// OTEL_EXPORTER_OTLP_ENDPOINT; setting that variable also turns export on. Protocol,
    /// headers, TLS, timeout and interval follow the standard OTEL_* variables.
    #[arg(long, value_name = "ENDPOINT", num_args = 0..=1, default_missing_value = "")]
    pub otlp: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics (a bare port listens on loopback).
    #[arg(long, value_name = "ADDR", value_parser = crate::export::prometheus::parse_listen_addr)]
    pub prometheus: Option<std::net::SocketAddr>,
    /// Stacks exported with their own series (leaking first); the rest are summed as
    /// "other", which bounds the metrics' cardinality.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub export_top: u64,
}

impl ExportFlags {
    /// The OTLP settings when export is on (--otlp, or an OTLP endpoint in the environment).
    pub fn otlp(&self, interval: Duration) -> Option<OtlpOptions> {
        let from_env = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty()));
        if self.otlp.is_none() && !from_env {
            return None;
        }
        Some(OtlpOptions {
            endpoint: self.otlp.clone().filter(|endpoint| !endpoint.is_empty()),
            default_interval: interval,
            max_stacks: self.export_top as usize,
        })
    }
}

/// The thresholds of the verdicts (see `verdicts::Thresholds`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Verdict thresholds")]
pub struct VerdictFlags {
    /// Windows a stack's series is cut into; the low point of each is its baseline.
    #[arg(long, default_value_t = Thresholds::default().baseline_windows as u64, value_parser = clap::value_parser!(u64).range(2..=1024))]
    pub baseline_windows: u64,
    /// Least r² of a straight line through a rising baseline.
    #[arg(long, default_value_t = Thresholds::default().min_r_squared, value_parser = fraction)]
    pub min_r2: f64,
    /// Least share of the baseline's changes that must be rises.
    #[arg(long, default_value_t = Thresholds::default().min_rising_fraction, value_parser = fraction)]
    pub min_rising: f64,
    /// Least number of baseline rises (one step up is an event, not a trend).
    #[arg(long, default_value_t = Thresholds::default().min_rises as u64)]
    pub min_rises: u64,
    /// A rise is a leak (not growth) when its oldest live allocation is at least this share
    /// of the rise's duration old.
    #[arg(long, default_value_t = Thresholds::default().min_oldest_fraction, value_parser = fraction)]
    pub min_held: f64,
}

impl VerdictFlags {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            baseline_windows: self.baseline_windows as usize,
            min_r_squared: self.min_r2,
            min_rising_fraction: self.min_rising,
            min_rises: self.min_rises as usize,
            min_oldest_fraction: self.min_held,
            ..Thresholds::default()
        }
    }
}

/// A number from 0 to 1.
fn fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("'{text}' is not a number from 0 to 1")),
    }
}

impl Common {
    pub fn options(&self, duration: Option<Duration>) -> Options {
        Options {
            duration,
            interval: self.interval,
            sample_interval: self.sample_interval,
            top: self.top,
            format: self.format,
            output: self.output.clone(),
            max_allocs: self.max_allocs,
            thresholds: self.verdict.thresholds(),
            sort: self.sort,
            min_age: self.min_age,
            min_size: self.min_size,
            max_size: self.max_size.unwrap_or(u64::MAX),
            sample_rate: self.sample_rate,
            // Set per command: see `max_overhead`.
            max_overhead: self.max_overhead(None),
            unwind: self.unwind,
            alloc_fns: self.alloc_fns.clone(),
            otlp: self.export.otlp(self.interval),
            prometheus: self.export.prometheus,
            export_top: self.export.export_top as usize,
            // Set per command: see `with_reachability`.
            reachability: false,
            scan_limit: self.scan_limit,
            // Checked by `check` before: a file unreadable since then leaves the built-in set.
            suppressions: self.suppressions().unwrap_or_default(),
            scopes: self.scope.scopes.clone(),
            scope_retain_after: self.scope.scope_retain_after,
            scope_max_labels: self.scope.scope_max_labels as usize,
            scope_span_threshold: self.scope.scope_span_threshold,
            // Set by `run`.
            trace_children: false,
        }
    }

    /// The --max-overhead budget in percent: as given, else the command's default.
    pub fn max_overhead(&self, command_default: Option<f64>) -> Option<f64> {
        match self.max_overhead {
            Some(Budget::Percent(percent)) => Some(percent),
            Some(Budget::Off) => None,
            None => command_default,
        }
    }

    /// Whether the final report classifies blocks by reachability: asked for, or by
    /// default at the exit of a `run`; never with --sample-rate (untracked blocks would
    /// hide pointers).
    pub fn reachability(&self, run_mode: bool) -> bool {
        (self.reachability || (run_mode && !self.no_reachability)) && self.sample_rate == 1
    }

    /// Flags that contradict each other, as one line for the user.
    /// What `attach` and `run` need beyond tracing: the report file, the metrics port.
    pub fn privilege_needs(&self) -> crate::probe::privileges::Needs {
        crate::probe::privileges::Needs::new(self.output.clone(), self.export.prometheus)
    }

    pub fn check(&self) -> Result<(), String> {
        if let Some(max) = self.max_size
            && max < self.min_size
        {
            return Err(format!(
                "--max-size {max} is smaller than --min-size {}: nothing would be tracked",
                self.min_size
            ));
        }
        if self.max_allocs == 0 {
            return Err("--max-allocs must be at least 1".into());
        }
        crate::model::scope::check_scopes(&self.scope.scopes)?;
        if self.reachability && self.sample_rate > 1 {
            return Err(
                "--reachability needs every allocation tracked: drop --sample-rate (or --reachability)"
                    .into(),
            );
        }
        self.suppressions()?;
        Ok(())
    }

    /// The built-in suppressions and those of every --suppressions file; Err says which file
    /// or line is wrong.
    pub fn suppressions(&self) -> Result<Vec<crate::analyze::suppress::Suppression>, String> {
        let mut rules =
            crate::analyze::suppress::parse(crate::analyze::suppress::DEFAULT, "built-in")?;
        for path in &self.suppressions {
            let text = std::fs::read_to_string(path).map_err(|err| {
                format!(
                    "cannot read the suppressions file {}: {err} (give a readable file to --suppressions)",
                    path.display()
                )
            })?;
            rules.extend(crate::analyze::suppress::parse(
                &text,
                &path.display().to_string(),
            )?);
        }
        Ok(rules)
    }
}

/// "1.5M" → ("1.5", "M"): the leading number and the unit after it.
fn number_and_unit(text: &str) -> (&str, &str) {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text.split_at(split)
}

/// "4096", "4K", "4KiB", "1.5M", "2G" (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size: use e.g. 64, 4K, 1M, 2G"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("'{text}' has an unknown unit: use K, M or G")),
    };
    Ok((value * scale as f64).round() as u64)
}

/// "500ms", "30s", "5m", "1h", or plain seconds ("10").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: use e.g. 500ms, 30s, 5m, 1h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("'{text}' has an unknown unit: use ms, s, m or h")),
    };
    if seconds <= 0.0 {
        return Err(format!("'{text}' must be longer than zero"));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("'{text}' is too long: give at most a few years"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("0s").is_err());
        // A number too large for a Duration is an error, not a panic.
        assert!(parse_duration(&format!("1{}h", "0".repeat(400))).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("big").is_err());
        assert!(parse_size("4T").is_err());
    }

    #[test]
    fn contradicting_sizes_are_refused() {
        let cli = Cli::try_parse_from([
            "leaktrace",
            "attach",
            "--pid",
            "1",
            "--min-size",
            "1M",
            "--max-size",
            "4K",
        ])
        .expect("parse");
        let Command::Attach { common, .. } = cli.command else {
            panic!("attach expected")
        };
        assert!(common.check().is_err());
    }

    #[test]
    fn verdict_thresholds_have_flags() {
        let cli = Cli::try_parse_from([
            "leaktrace",
            "attach",
            "--pid",
            "1",
            "--min-r2",
            "0.8",
            "--min-rises",
            "5",
        ])
        .expect("parse");
        let Command::Attach { common, .. } = cli.command else {
            panic!("attach expected")
        };
        let thresholds = common.options(None).thresholds;
        assert_eq!(thresholds.min_r_squared, 0.8);
        assert_eq!(thresholds.min_rises, 5);
        assert_eq!(
            thresholds.baseline_windows,
            Thresholds::default().baseline_windows
        );
        assert!(
            Cli::try_parse_from(["leaktrace", "attach", "--pid", "1", "--min-r2", "2"]).is_err()
        );
    }

    #[test]
    fn parses_report_and_diff() {
        let cli = Cli::try_parse_from(["leaktrace", "report", "r.json", "--format", "json"])
            .expect("parse");
        assert!(matches!(cli.command, Command::Report { .. }));
        let cli = Cli::try_parse_from(["leaktrace", "diff", "a.json", "b.json"]).expect("parse");
        assert!(matches!(cli.command, Command::Diff { .. }));
    }

    fn watch_command() -> clap::Command {
        <Cli as clap::CommandFactory>::command()
            .find_subcommand("watch")
            .expect("watch")
            .clone()
    }

    #[test]
    fn config_file_settings_become_flags() {
        let text = r#"
            exe = ["redis-server", "/usr/bin/memcached"]
            report_dir = "/var/tmp/reports"
            escalate-for = "30s"
            escalate-at-start = true
            fault-period = 8
            escalate-min-r2 = 0.9
        "#;
        let flags = config_flags(text, &watch_command(), |_| false).expect("valid");
        for expected in [
            "--exe=redis-server",
            "--exe=/usr/bin/memcached",
            "--report-dir=/var/tmp/reports",
            "--escalate-for=30s",
            "--escalate-at-start",
            "--fault-period=8",
            "--escalate-min-r2=0.9",
        ] {
            assert!(
                flags.contains(&expected.to_string()),
                "{expected} in {flags:?}"
            );
        }
        // A setting whose variable is set is left to the variable.
        let flags = config_flags(text, &watch_command(), |name| {
            name == "LEAKTRACE_REPORT_DIR"
        })
        .expect("valid");
        assert!(!flags.iter().any(|flag| flag.starts_with("--report-dir")));
    }

    #[test]
    fn bad_config_files_say_what_is_wrong() {
        let command = watch_command();
        let err = config_flags("reportdir = 1", &command, |_| false).expect_err("unknown");
        assert!(err.contains("unknown setting 'reportdir'"), "{err}");
        let err = config_flags("escalate-at-start = 1", &command, |_| false).expect_err("switch");
        assert!(err.contains("switch"), "{err}");
        let err = config_flags("exe = ", &command, |_| false).expect_err("toml");
        assert!(err.contains("not valid TOML"), "{err}");
        let err = config_flags("config = \"x\"", &command, |_| false).expect_err("nested");
        assert!(err.contains("unknown setting"), "{err}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/leaktrace.toml");
        let text = std::fs::read_to_string(path).expect("deploy/leaktrace.toml");
        let flags = config_flags(&text, &watch_command(), |_| false).expect("valid settings");
        let cli = Cli::try_parse_from(
            ["leaktrace", "watch"]
                .iter()
                .map(|arg| arg.to_string())
                .chain(flags),
        )
        .expect("parses");
        let Command::Watch { watch, common } = cli.command else {
            panic!("watch expected")
        };
        let options = watch.options(&common).expect("consistent");
        assert_eq!(options.targets.exes, vec!["redis-server".to_string()]);
        assert_eq!(options.escalate_for, Duration::from_secs(60));
        assert_eq!(options.rule, EscalationRule::default());
    }

    #[test]
    fn command_line_flags_win_over_the_config_file() {
        let dir = std::env::temp_dir().join(format!("leaktrace-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("watch.toml");
        std::fs::write(
            &file,
            "exe = \"a\"\nescalate-for = \"30s\"\ncooldown = \"1m\"\n",
        )
        .expect("write");
        let args: Vec<String> = [
            "leaktrace",
            "watch",
            "--config",
            file.to_str().expect("utf-8"),
            "--escalate-for",
            "10s",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let merged = with_config_file(args).expect("merged");
        let cli = Cli::try_parse_from(merged).expect("parse");
        let Command::Watch { watch, .. } = cli.command else {
            panic!("watch expected")
        };
        assert_eq!(watch.escalate_for, Duration::from_secs(10));
        assert_eq!(watch.cooldown, Duration::from_secs(60));
        assert_eq!(watch.exes, vec!["a".to_string()]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn parses_run_and_attach() {
        let cli = Cli::try_parse_from(["leaktrace", "run", "--top", "3", "--", "./prog", "-x"])
            .expect("parse");
        match cli.command {
            Command::Run {
                common, command, ..
            } => {
                assert_eq!(common.top, 3);
                assert_eq!(command, vec!["./prog", "-x"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::try_parse_from(["leaktrace", "attach", "--pid", "12", "-d", "10s"])
            .expect("parse");
        assert!(matches!(cli.command, Command::Attach { pid: 12, .. }));
        assert!(Cli::try_parse_from(["leaktrace", "attach", "--pid", "x"]).is_err());
    }
}
