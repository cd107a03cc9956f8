//! Exporting: reports people read (text, JSON, folded stacks, SVG flame graph, pprof, diff)
//! and live exports (metrics, OTLP, Prometheus).
pub mod metrics;
pub mod otel;
pub mod prometheus;
pub mod publish;
pub mod report;
