//! The eBPF object leaktrace carries (leak-ebpf): what the kernel must offer before it is
//! loaded, and loading it with a session's settings, its globals and the sizes of its maps.
use std::collections::HashSet;

use aya::{Ebpf, EbpfLoader};
use leak_common::{
    GO_LAYOUT_GLOBAL, GoLayout, MAX_SCOPE_TAGS, MAX_SIZE_GLOBAL, MAX_UNWIND_ROWS, MIN_SIZE_GLOBAL,
    SAMPLE_RATE_GLOBAL, SCOPE_COUNT_GLOBAL, SCOPE_EVENTS_BYTES, TARGET_TGID_GLOBAL, UNWIND_DWARF,
    UNWIND_FRAME_POINTERS, UNWIND_MODE_GLOBAL, map_names,
};

use crate::{
    probe::attach::error::{AttachError, os_error},
    probe::unwind_tables::Unwind,
};

/// Settings for loading the kernel programs.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub max_allocs: u32,
    /// Allocation sizes to track, inclusive.
    pub min_size: u64,
    pub max_size: u64,
    /// Track one allocation in this many.
    pub sample_rate: u32,
    /// How stacks are walked.
    pub unwind: Unwind,
    /// The CPython layout the kernel reads Python frames with (zero: not CPython).
    pub python: leak_common::PyLayout,
    /// The target has not executed its program yet (`run`): its mappings are still
    /// leaktrace's own, so its unwind tables are loaded at its entry point instead.
    pub before_exec: bool,
}

/// The compiled kernel programs (leak-ebpf), built by build.rs.
pub(super) static LEAK_EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leak-ebpf"));

/// The UNWIND_MODE global and the size of the row map for `unwind`: the row map is large
/// (16 MiB), so only with dwarf.
pub(super) fn unwind_settings(unwind: Unwind) -> (u32, u32) {
    match unwind {
        Unwind::Dwarf | Unwind::Hybrid => (UNWIND_DWARF, MAX_UNWIND_ROWS),
        Unwind::Fp | Unwind::Auto => (UNWIND_FRAME_POINTERS, 1),
    }
}

/// The compiled kernel programs, for tests that inspect the object.
#[cfg(test)]
pub(crate) fn ebpf_object() -> &'static [u8] {
    LEAK_EBPF_OBJECT
}

/// Why the object did not load, for the user.
pub(super) fn object_error(err: aya::EbpfError) -> AttachError {
    if LEAK_EBPF_OBJECT.is_empty() {
        AttachError::Load(
            "this leaktrace was built with AYA_BUILD_SKIP=1, without its eBPF programs: build it again without that variable".into(),
        )
    } else if os_error(&err) == Some(libc::EPERM) {
        AttachError::NotPermitted
    } else {
        AttachError::Load(format!("{:#}", anyhow::Error::from(err)))
    }
}

/// The loader of the allocation probes' object, kept for the life of leaktrace: making one
/// parses the kernel's BTF, about 20 ms of each forked child's wait.
static ALLOCATION_LOADER: std::sync::Mutex<Option<EbpfLoader<'static>>> =
    std::sync::Mutex::new(None);

/// The bytes of `value`, kept for the life of leaktrace, once per distinct value: the
/// settings the kept loader holds (a process id per traced process, a few bytes each).
fn interned<T: aya::Pod>(value: &T) -> &'static [u8] {
    static VALUES: std::sync::Mutex<Option<HashSet<&'static [u8]>>> = std::sync::Mutex::new(None);
    // SAFETY: a Pod value is plain bytes, read within its size.
    let bytes =
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
    let mut values = VALUES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let values = values.get_or_insert_with(HashSet::new);
    if let Some(kept) = values.get(bytes) {
        return kept;
    }
    let kept: &'static [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
    values.insert(kept);
    kept
}

/// Loads the object for tracing process `pid` with the kept loader: `scope_count` --scope
/// functions, a Go runtime of `go_layout` (zero: not Go), and `options`.
pub(super) fn load_object(
    pid: u32,
    scope_count: u32,
    go_layout: GoLayout,
    options: &LoadOptions,
) -> Result<Ebpf, AttachError> {
    let (unwind_mode, unwind_rows) = unwind_settings(options.unwind);
    let mut kept = ALLOCATION_LOADER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let loader = kept.get_or_insert_with(|| {
        let mut loader = EbpfLoader::new();
        // The kernel's BTF, parsed as the loader is made (about 20 ms), serves CO-RE
        // relocations alone.
        if !crate::probe::multi_link::has_core_relocations(LEAK_EBPF_OBJECT) {
            loader.btf(None);
        }
        loader
    });
    // Every setting is given on every load: the loader keeps the last ones.
    loader
        .override_global(GO_LAYOUT_GLOBAL, interned(&go_layout), true)
        .override_global(
            leak_common::PY_LAYOUT_GLOBAL,
            interned(&options.python),
            true,
        )
        .override_global(SCOPE_COUNT_GLOBAL, interned(&scope_count), true)
        // Without scopes, the scope maps that take memory up front take the least.
        .map_max_entries(
            map_names::SCOPE_TOTALS,
            if scope_count == 0 { 1 } else { MAX_SCOPE_TAGS },
        )
        .map_max_entries(
            map_names::SCOPE_EVENTS,
            if scope_count == 0 {
                4096
            } else {
                SCOPE_EVENTS_BYTES
            },
        )
        .override_global(TARGET_TGID_GLOBAL, interned(&pid), true)
        .override_global(MIN_SIZE_GLOBAL, interned(&options.min_size), true)
        .override_global(MAX_SIZE_GLOBAL, interned(&options.max_size), true)
        .override_global(SAMPLE_RATE_GLOBAL, interned(&options.sample_rate), true)
        .override_global(UNWIND_MODE_GLOBAL, interned(&unwind_mode), true)
        .map_max_entries(map_names::ALLOCS, options.max_allocs)
        .map_max_entries(map_names::UNWIND_ROWS, unwind_rows)
        // Watch's fault sampler alone uses it.
        .map_max_entries(map_names::FAULT_SAMPLES, 1)
        .load(LEAK_EBPF_OBJECT)
        .map_err(object_error)
}
