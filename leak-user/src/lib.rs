//! leaktrace: find leaking call stacks in a live Linux process with eBPF.
//!
//! Data path, one module per stage:
//! `attach` (find the allocators, see `allocators`, and place probes: `probe_site` where in a
//! function, `plt` what a PLT stub calls, `multi_link` one uprobe_multi link per file) →
//! kernel maps → `drain` (read them, track
//! mmap `regions`) → `symbolize` → `analysis` (growth, verdicts) → `report` (text, JSON,
//! folded stacks, SVG flame graph, pprof).
//! `session` runs the stages; `launch` starts a command for `leaktrace run`; `cli` holds the
//! flags. `model` is the vocabulary they share; `procfs` reads /proc. Beside the main path:
//! `scope` (--scope: what each call of a function keeps) and `suspects` (which scope calls
//! go with the growth), `reachability` and `freeze` (--reachability), `watch` (the sidecar), `golang` (Go
//! programs: the runtime's probes, goroutines per creation site; `pclntab` Go's own symbol
//! table), `python` (CPython's
//! frames in stacks), `cost` (what the probes cost the target, the --max-overhead budget).
pub mod allocators;
pub mod analysis;
pub mod attach;
pub mod bpf_call;
pub mod c_runtime;
pub mod cli;
pub mod cost;
pub mod drain;
pub mod exit;
pub mod exit_stack;
pub mod file_bytes;
pub mod freeze;
pub mod go_profile;
pub mod golang;
pub mod growth;
pub mod launch;
pub mod map_batch;
pub mod metrics;
pub mod model;
pub mod multi_link;
pub mod names;
pub mod otel;
pub mod pclntab;
pub mod perf_map;
pub mod plt;
pub mod privileges;
pub mod probe_site;
pub mod procfs;
pub mod prometheus;
pub mod python;
pub mod reachability;
pub mod regions;
pub mod report;
pub mod scope;
pub mod session;
pub mod suppress;
pub mod suspects;
pub mod symbolize;
pub mod unwind_tables;
pub mod watch;
