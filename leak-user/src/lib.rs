//! leaktrace: find leaking call stacks in a live Linux process with eBPF.
//!
//! The path of data, one folder per stage (docs/architecture.md draws it):
//!
//! `cli` (flags) → `modes` (run/attach session, watch: they drive the stages) →
//! `probe` (find the allocators, place the probes) → kernel maps → `collect` (drain the
//! maps) → `symbols` (addresses to frames) → `analyze` (aggregate by stack, trends and
//! verdicts, reachability, scopes) → `export` (reports, metrics, OTLP, Prometheus).
//!
//! Below every stage: `model` (the vocabulary the stages share) and `sys` (what they read
//! the machine with: /proc, ELF files, a process's memory, bpf system calls). Arrows point
//! down only: a stage never imports a sibling stage.
pub mod analyze;
pub mod cli;
pub mod collect;
pub mod export;
pub mod model;
pub mod modes;
pub mod probe;
pub mod symbols;
pub mod sys;
