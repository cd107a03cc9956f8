//! Probing a target: finding its allocators and language runtimes, placing uprobes where
//! the kernel can take them, loading the eBPF object, and starting a command under `run`.
pub mod attach;
pub mod golang;
pub mod launch;
pub mod multi_link;
pub mod names;
#[cfg(test)]
mod object_names;
pub mod plt;
pub mod privileges;
pub mod probe_site;
pub mod python;
pub mod unwind_tables;
