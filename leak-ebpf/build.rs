//! Rebuild the eBPF object when bpf-linker changes (cargo cannot see it otherwise), and tell
//! bpf-linker which functions to keep global.
fn main() {
    // The functions the verifier is to check once each, whatever their callers (global BPF
    // functions): bpf-linker keeps only exported symbols global.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!(
            "cargo:rustc-link-arg=--export=leaktrace_walk_stack,leaktrace_find_row,leaktrace_scratch_stack_id"
        );
    }
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
