//! leaktrace's kernel programs. The probe families, in data-path order:
//! - `alloc`: entry uprobes of the allocating functions, the shared return uprobe, and free.
//! - `mmap`: sys_enter/sys_exit tracepoints of mmap, munmap and mremap.
//! - `scope`: entry and return uprobes of --scope functions, which attribute the
//!   allocations made inside a call to it.
//! - `golang`: Go programs: goroutines per creation site, and the Go heap by span.
//! - `faults`: sampled page faults with stacks (`leaktrace watch` between precise windows).
//!
//! What they share, each module using only those below it:
//! - `stacks`: user stacks recorded under an id, and each stack's totals; walked by
//!   - `unwind`: with .eh_frame tables (--unwind dwarf), or frame pointers;
//!   - `python`: CPython's frames, appended to the stacks of a Python target.
//! - `counters`: the event counters, and atomic adds to counters in map values.
//! - `maps`: the maps several families share (maps only).
//! - `settings`: what user space sets before load (target, size range, sampling, unwinding).
//! - `target`: the traced thread's registers and memory.
//! - `names`: the build fails unless each map, global and program is named as leak-common
//!   names it (user space finds them by those names).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds to map values (`counters::atomic_add`): core's atomic types offer no
// read-modify-write on this target, the intrinsic compiles to the BPF atomic add.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

// First: the `named!` checks of the modules below.
#[cfg(target_arch = "bpf")]
#[macro_use]
mod names;

#[cfg(target_arch = "bpf")]
mod alloc;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod faults;
#[cfg(target_arch = "bpf")]
mod golang;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod mmap;
#[cfg(target_arch = "bpf")]
mod python;
#[cfg(target_arch = "bpf")]
mod scope;
#[cfg(target_arch = "bpf")]
mod settings;
#[cfg(target_arch = "bpf")]
mod stacks;
#[cfg(target_arch = "bpf")]
mod target;
#[cfg(target_arch = "bpf")]
mod unwind;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// On the host (`cargo build --workspace`, clippy) this crate is an empty program.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
