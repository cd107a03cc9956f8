//! What every stage reads the machine with: /proc, ELF files and Go's symbol table, a
//! process's threads and memory (ptrace), and the bpf system call.
pub mod bpf_call;
pub mod eh_frame;
pub mod elf;
pub mod file_bytes;
pub mod freeze;
pub mod map_batch;
pub mod memory;
pub mod pclntab;
pub mod procfs;
