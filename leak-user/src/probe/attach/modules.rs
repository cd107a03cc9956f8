//! The allocator modules of a target: the files among those a process has mapped, or a
//! program will load, that define allocator functions, with the probes each gets.
use std::path::PathBuf;

use crate::{
    model::allocators::KnownFn,
    probe::attach::allocators::{
        AllocatorFn, CoveredFn, find_allocator_functions, is_allocator, probes_for_module,
    },
    probe::attach::error::AttachError,
    probe::attach::files::process_files,
    probe::attach::functions::closest_in_files,
};

/// A module with allocator functions to probe.
#[derive(Clone, Debug)]
pub struct AllocatorModule {
    /// Path to open and probe (through /proc/PID/root for attach mode).
    pub probe_path: PathBuf,
    /// The path as the target sees it.
    pub display_path: String,
    /// Which allocator it is ("glibc", "jemalloc", … see `allocators::identify`).
    pub allocator: &'static str,
    pub functions: Vec<AllocatorFn>,
    /// Known functions left to the probed function they call.
    pub covered: Vec<CoveredFn>,
}

/// Allocator modules among a running process's mappings.
pub fn allocators_in_process(
    pid: u32,
    extra: &[KnownFn],
) -> Result<Vec<AllocatorModule>, AttachError> {
    let mut modules: Vec<AllocatorModule> = Vec::new();
    let files = process_files(pid)?;
    for (probe_path, display_path) in &files {
        let Ok(data) = crate::sys::file_bytes::open(probe_path) else {
            continue;
        };
        modules.extend(module_probes(
            &data,
            probe_path.clone(),
            display_path.clone(),
            extra,
        ));
    }
    require_allocator(modules, pid, extra, &files)
}

/// Allocator modules among the files a program will load (from `program_files`).
pub fn allocators_in_files(
    files: &[(PathBuf, String)],
    extra: &[KnownFn],
) -> Result<Vec<AllocatorModule>, AttachError> {
    let mut modules = Vec::new();
    for (path, display_path) in files {
        let Ok(data) = crate::sys::file_bytes::open(path) else {
            continue;
        };
        modules.extend(module_probes(
            &data,
            path.clone(),
            display_path.clone(),
            extra,
        ));
    }
    require_allocator(modules, 0, extra, files)
}

/// Whether `symbol` is one of the functions named with --alloc-fn (as users write names:
/// see `names::matching`).
fn user_named(symbol: &str, extra: &[KnownFn]) -> bool {
    extra.iter().any(|known| {
        known.symbol == symbol || !crate::probe::names::matching(&known.symbol, [symbol]).is_empty()
    })
}

/// Whether everything probed in a module was named with --alloc-fn.
pub fn only_user_named(module: &AllocatorModule, extra: &[KnownFn]) -> bool {
    module
        .functions
        .iter()
        .all(|f| user_named(&f.symbol, extra))
}

/// The probes one ELF file gets, if any.
pub(super) fn module_probes(
    elf: &[u8],
    probe_path: PathBuf,
    display_path: String,
    extra: &[KnownFn],
) -> Option<AllocatorModule> {
    let (functions, covered, allocator) =
        find_allocator_functions(elf, &display_path, extra).ok()?;
    let functions = probes_for_module(functions, extra);
    (!functions.is_empty()).then_some(AllocatorModule {
        probe_path,
        display_path,
        allocator,
        functions,
        covered,
    })
}

/// Probing C++ operators alone is not enough: some module must allocate and free; and every
/// user-named function must exist somewhere.
fn require_allocator(
    modules: Vec<AllocatorModule>,
    pid: u32,
    extra: &[KnownFn],
    files: &[(PathBuf, String)],
) -> Result<Vec<AllocatorModule>, AttachError> {
    if let Some(missing) = extra.iter().find(|known| {
        !modules
            .iter()
            .flat_map(|module| &module.functions)
            .any(|f| user_named(&f.symbol, std::slice::from_ref(known)))
    }) {
        return Err(AttachError::NoSuchFunction {
            symbol: missing.symbol.clone(),
            closest: closest_in_files(&missing.symbol, files),
        });
    }
    if modules.iter().any(|module| is_allocator(&module.functions)) {
        Ok(modules)
    } else {
        Err(AttachError::NoAllocator { pid })
    }
}
