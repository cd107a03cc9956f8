#![no_std]
// The programs live in the binary target (src/main.rs); this library exists so leak-user can
// name leak-ebpf as a build dependency and be rebuilt when it changes.
