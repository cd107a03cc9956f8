//! Collecting: reading the kernel maps the probes fill (and the Go runtime's own records)
//! into the model's per-stack figures, every sample.
pub mod drain;
pub mod go_profile;
pub mod goroutines;
pub mod growth;
pub mod regions;
pub mod scope;
