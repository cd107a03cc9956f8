//! Naming addresses: ELF and DWARF symbols (blazesym), perf maps of JIT code, Go's own
//! table, CPython's code objects.
pub mod perf_map;
pub mod python;
pub mod symbolize;
