//! Finding the allocator and placing the probes.
//!
//! The allocator is whatever mapped module defines `malloc` and `free` (libc, a static
//! executable, a preloaded jemalloc…); every family function it defines gets an entry uprobe
//! and, except free, a return uprobe, scoped to the target process. The anonymous mmap
//! family is traced through syscall tracepoints, filtered to the target in the kernel.
use crate::probe::unwind_tables::{Unwind, UnwindTables};
use crate::sys::elf::virtual_to_file_offset;
use std::{
    collections::{BTreeMap, HashSet},
    error::Error as StdError,
    fs, io,
    num::NonZeroU32,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        PerfEvent, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
    },
};
use leak_common::{
    ALLOC_RETURN_PROGRAM, AllocFn, CallShape, ENTRY_PROGRAM, GO_GOEXIT_PROGRAM,
    GO_LARGE_SPAN_PROGRAM, GO_LAYOUT_GLOBAL, GO_NEWPROC_PROGRAM, GO_ON_STACK_CHECK,
    GO_SPAN_FREE_PROGRAM, GO_SPAN_FULL_PROGRAM, MAX_SCOPE_TAGS, MAX_SCOPES, MAX_SIZE_GLOBAL,
    MAX_UNWIND_ROWS, MIN_SIZE_GLOBAL, NO_ARG, PAGE_FAULT_PROGRAM, SAMPLE_RATE_GLOBAL,
    SCOPE_COUNT_GLOBAL, SCOPE_ENTRY_PROGRAM, SCOPE_EVENTS_BYTES, SCOPE_RETURN_PROGRAM,
    SESSION_PROGRAM, SYSCALL_PROGRAMS, ScopeShape, TARGET_TGID_GLOBAL, UNWIND_DWARF,
    UNWIND_FRAME_POINTERS, UNWIND_MODE_GLOBAL, map_names,
};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::{
    model::ProgramLoad,
    model::allocators::{self, KnownFn},
    model::cost::TrapCost,
    model::scope::ScopeSpec,
    probe::golang::{GoProbe, GoTarget},
    probe::probe_site,
    sys::procfs::{self, Mapping},
};

impl AttachError {
    /// The exit status this failure ends leaktrace with.
    pub fn status(&self) -> crate::model::exit::Status {
        use crate::model::exit::Status;
        match self {
            AttachError::NotPermitted => Status::NotPermitted,
            AttachError::KernelLacks(_) | AttachError::NoTracefs(_) => Status::KernelLacks,
            AttachError::NoAllocator { .. }
            | AttachError::NoSuchFunction { .. }
            | AttachError::NoSuchScope { .. } => Status::NotInTarget,
            AttachError::ProbeConflict { .. } => Status::ProbeConflict,
            AttachError::Load(_) | AttachError::Probe { .. } | AttachError::Read { .. } => {
                Status::Internal
            }
        }
    }
}

/// What went wrong while attaching, phrased for the user.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "leaktrace needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, and CAP_SYS_ADMIN for uprobes) to load eBPF programs and place probes: run it with sudo"
    )]
    NotPermitted,
    #[error(
        "this kernel has no {0}; leaktrace needs a kernel with uprobes, BTF and BPF (5.8 or later)"
    )]
    KernelLacks(&'static str),
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}); the mmap and brk tracepoints need it: mount it (mount -t tracefs nodev /sys/kernel/tracing), or in a container mount the host's"
    )]
    NoTracefs(String),
    #[error(
        "no allocator found in process {pid}: none of its mapped files defines malloc and free (is it a Go or statically linked program with a custom allocator?)"
    )]
    NoAllocator { pid: u32 },
    #[error(
        "could not probe {function} in {module}: the kernel refused (EINVAL); another tracer (bcc's memleak, bpftrace with USDT…) probably holds a uprobe on the same function with a different ref_ctr_offset (dmesg says \"ref_ctr_offset mismatch\"): stop that tool, or run the target against a private copy of the library"
    )]
    ProbeConflict { function: String, module: String },
    #[error(
        "--alloc-fn {symbol}: no module of the target defines a function of that name (a plain or C++ name with or without its parameters, a Rust path, or a symbol as `nm` lists it){closest}"
    )]
    NoSuchFunction { symbol: String, closest: String },
    #[error(
        "--scope {function}: no module of the target defines a function of that name (a plain or C++ name with or without its parameters, a Rust path, or a symbol as `nm` lists it){closest}"
    )]
    NoSuchScope { function: String, closest: String },
    #[error("could not load the eBPF programs: {0}")]
    Load(String),
    #[error("could not probe {function} in {module}: {reason}")]
    Probe {
        function: String,
        module: String,
        reason: String,
    },
    #[error("could not read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// One allocator function found in a module: where to put the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatorFn {
    /// What the function does and where its arguments are.
    pub shape: CallShape,
    /// The symbol probed.
    pub symbol: String,
    /// Offset of the function in the module's file.
    pub file_offset: u64,
    /// Offset in the file where its probes go: the entry, or the first instruction the
    /// kernel emulates that every call reaches with its arguments readable (see `probe_site`).
    pub probe_offset: u64,
    /// The instruction probed, and whether the kernel emulates it (one trap) or single-steps
    /// it (a second trap, several microseconds a call).
    pub instruction: String,
    pub emulated: bool,
}

/// A known allocator function left unprobed because every call of it goes on to another
/// probed function (`operator new(size, nothrow)` calling `operator new(size)`): that probe
/// records the allocation, with this function in its stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoveredFn {
    pub symbol: String,
    /// The probed function it calls.
    pub callee: String,
}

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

/// Finds the allocator functions leaktrace knows, and the user-named `extra` ones, in an
/// ELF image; returns them with the allocator the module is. Aliases at the same address
/// (memalign and aligned_alloc in glibc, malloc and tc_malloc) are listed once.
pub fn find_allocator_functions(
    elf: &[u8],
    path: &str,
    extra: &[KnownFn],
) -> Result<(Vec<AllocatorFn>, Vec<CoveredFn>, &'static str), object::Error> {
    let file = object::File::parse(elf)?;
    let symbols = function_symbols(&file);
    let addresses: BTreeMap<String, u64> = symbols
        .iter()
        .map(|(name, symbol)| (name.clone(), symbol.address))
        .collect();
    let names: Vec<&str> = addresses.keys().map(String::as_str).collect();
    let allocator = allocators::identify(&names, path);
    let mut wanted: Vec<KnownFn> = allocators::known_functions();
    // The Rust shims matter when a #[global_allocator] replaces malloc; with the default
    // one they only add a probe layer above malloc.
    if custom_rust_allocator(&file, elf, &addresses) {
        wanted.extend(names.iter().filter_map(|name| {
            allocators::rust_shim(name).map(|shape| KnownFn {
                symbol: name.to_string(),
                shape,
            })
        }));
    }
    // User-named functions as users write them: a clone's plain name, a C++ name without
    // its mangling (every overload), a Rust path.
    for known in extra {
        for name in crate::probe::names::matching(&known.symbol, names.iter().copied()) {
            wanted.push(KnownFn {
                symbol: name.to_string(),
                shape: known.shape,
            });
        }
    }
    let mut found: Vec<AllocatorFn> = Vec::new();
    // Single-stepped ones: (what it is, its address, its file offset).
    let mut unplaced: Vec<(&KnownFn, u64, u64)> = Vec::new();
    for known in &wanted {
        let Some(symbol) = symbols.get(&known.symbol) else {
            continue;
        };
        let Some(point) = probe_point(elf, &file, *symbol, &reads_of(known.shape)) else {
            continue;
        };
        if found
            .iter()
            .any(|existing| existing.file_offset == point.file_offset)
        {
            continue;
        }
        if !point.emulated {
            unplaced.push((known, symbol.address, point.file_offset));
        }
        found.push(AllocatorFn {
            shape: placed_shape(known.shape, &point.placement),
            symbol: known.symbol.clone(),
            file_offset: point.file_offset,
            probe_offset: point.file_offset + point.placement.offset,
            instruction: point.instruction,
            emulated: point.emulated,
        });
    }
    // A function whose probe would be single-stepped, and whose every call goes on to a
    // probed one, is left to that one. The PLT is read only then.
    let plt = if unplaced.is_empty() {
        Default::default()
    } else {
        crate::probe::plt::stub_names(&file)
    };
    let mut covered = Vec::new();
    for (known, address, offset) in unplaced {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let code = elf.get(start..start.saturating_add(128).min(elf.len()));
        let Some(target) = code.and_then(|code| probe_site::first_call(code, address)) else {
            continue;
        };
        let callee = plt.get(&target).cloned().or_else(|| {
            addresses
                .iter()
                .find(|(_, a)| **a == target)
                .map(|(name, _)| name.clone())
        });
        let Some(callee) = callee else { continue };
        let callee_probed = wanted
            .iter()
            .any(|k| k.symbol == callee && k.shape.func == known.shape.func)
            && callee != known.symbol;
        if callee_probed {
            found.retain(|f| f.symbol != known.symbol);
            covered.push(CoveredFn {
                symbol: known.symbol.clone(),
                callee,
            });
        }
    }
    Ok((found, covered, allocator))
}

/// What an allocator function's entry probe reads (see `probe_site`): its size, count,
/// pointer and out-pointer arguments, and the stack pointer when it has a return probe.
pub fn reads_of(shape: CallShape) -> probe_site::Reads {
    probe_site::Reads {
        arguments: [shape.size, shape.count, shape.ptr, shape.out].map(argument_or_none),
        product: (shape.count != NO_ARG).then_some((shape.count, shape.size)),
        stack_pointer: shape.func.has_return_probe(),
    }
}

fn argument_or_none(argument: u8) -> u8 {
    if argument < 6 { argument } else { NO_ARG }
}

/// The shape as the entry program reads it at the placed probe: argument slots there.
fn placed_shape(shape: CallShape, placement: &probe_site::Placement) -> CallShape {
    let [size, count, ptr, out] = placement.slots;
    CallShape {
        size,
        count: if placement.product_in_size {
            NO_ARG
        } else {
            count
        },
        ptr,
        out,
        ..shape
    }
}

/// Whether a Rust program has its own #[global_allocator]: its shims then call `__rg_alloc`
/// (or inline it), where the default System allocator's `__rust_alloc` is a thin wrapper
/// jumping to `__rdl_alloc`, which is malloc.
fn custom_rust_allocator(
    file: &object::File<'_>,
    elf: &[u8],
    addresses: &BTreeMap<String, u64>,
) -> bool {
    let find = |wanted: &dyn Fn(&str) -> bool| {
        addresses
            .iter()
            .find(|(name, _)| wanted(name))
            .map(|(_, address)| *address)
    };
    let Some(shim) = find(&|name| {
        allocators::rust_shim(name) == Some(CallShape::malloc(0)) && !name.contains("zeroed")
    }) else {
        return false;
    };
    if addresses
        .keys()
        .any(|name| allocators::is_rust_global_allocator(name))
    {
        return true;
    }
    let Some(default) = find(&|name| name == "__rdl_alloc" || name.ends_with("11___rdl_alloc"))
    else {
        return true;
    };
    let Some(offset) = virtual_to_file_offset(file, shim) else {
        return false;
    };
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let code = elf
        .get(start..start.saturating_add(64).min(elf.len()))
        .unwrap_or(&[]);
    !probe_site::branches_to(code, shim, default, 8)
}

/// A function symbol: where it starts and how long it is (0: unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FnSymbol {
    pub address: u64,
    pub size: u64,
}

/// Every function an ELF file defines, by name (versioned names in .symtab, like
/// "malloc@@GLIBC_2.2.5", without their version).
fn function_symbols(file: &object::File<'_>) -> BTreeMap<String, FnSymbol> {
    let mut symbols: BTreeMap<String, FnSymbol> = BTreeMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if symbol.kind() != SymbolKind::Text || !symbol.is_definition() || symbol.address() == 0 {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        let name = name.split('@').next().unwrap_or(name);
        symbols.entry(name.to_string()).or_insert(FnSymbol {
            address: symbol.address(),
            size: symbol.size(),
        });
    }
    symbols
}

/// Where a function's probe goes, in its file.
struct ProbePoint {
    file_offset: u64,
    placement: probe_site::Placement,
    instruction: String,
    emulated: bool,
}

/// Functions longer than this are placed from their first bytes only (no internal jumps
/// are looked for beyond them; the path followed is far shorter).
const MAX_FUNCTION_SCANNED: u64 = 64 << 10;

/// The file offset of `function` and where its probe goes (see `probe_site`).
fn probe_point(
    elf: &[u8],
    file: &object::File<'_>,
    function: FnSymbol,
    reads: &probe_site::Reads,
) -> Option<ProbePoint> {
    let file_offset = virtual_to_file_offset(file, function.address)?;
    let start = usize::try_from(file_offset).unwrap_or(usize::MAX);
    let sized = function.size > 0;
    let length = if sized {
        function.size.min(MAX_FUNCTION_SCANNED)
    } else {
        64
    };
    let code = elf
        .get(start..start.saturating_add(length as usize).min(elf.len()))
        .unwrap_or(&[]);
    let placement = probe_site::place(code, reads, sized);
    let (instruction, emulated) = probe_site::describe(code, function.address, placement.offset)
        .unwrap_or_else(|| ("?".into(), false));
    Some(ProbePoint {
        file_offset,
        placement,
        instruction,
        emulated,
    })
}

/// How far an ELF file was moved when loaded, given where its first byte is mapped: 0 for a
/// fixed-address executable, that address less its first segment's for a PIE or library.
pub fn load_bias(elf: &[u8], first_mapping_start: u64) -> Option<u64> {
    let file = object::File::parse(elf).ok()?;
    if file.kind() != object::ObjectKind::Dynamic {
        return Some(0);
    }
    let lowest = file.segments().map(|segment| segment.address()).min()?;
    Some(first_mapping_start.wrapping_sub(lowest & !0xFFF))
}

/// The load bias of file `path` in process `pid`, from where its first byte is mapped; None
/// while it is not mapped. The file is found by inode: the path may be a symbolic link
/// (python3) or seen through /proc/PID/root.
pub fn mapped_load_bias(pid: u32, path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let inode = fs::metadata(path).ok()?.ino();
    let first = procfs::read_maps(pid)
        .ok()?
        .iter()
        .filter(|mapping| mapping.is_file() && mapping.inode == inode)
        .map(|mapping| mapping.start)
        .min()?;
    load_bias(&crate::sys::file_bytes::open(path).ok()?, first)
}

fn is_cxx_operator(symbol: &str) -> bool {
    allocators::CXX_NEW_SYMBOLS.contains(&symbol)
        || allocators::CXX_DELETE_SYMBOLS.contains(&symbol)
}

/// A module is an allocator if, besides C++ operators, it both allocates and frees.
fn is_allocator(functions: &[AllocatorFn]) -> bool {
    let own = || functions.iter().filter(|f| !is_cxx_operator(&f.symbol));
    own().any(|f| f.shape.func == AllocFn::Free) && own().any(|f| f.shape.func != AllocFn::Free)
}

/// The probes a module gets: all it has if it is an allocator; otherwise its C++ operators
/// (libstdc++, or a program that defines its own) and the user-named functions.
fn probes_for_module(functions: Vec<AllocatorFn>, extra: &[KnownFn]) -> Vec<AllocatorFn> {
    if is_allocator(&functions) {
        functions
    } else {
        functions
            .into_iter()
            .filter(|f| {
                is_cxx_operator(&f.symbol) || extra.iter().any(|known| known.symbol == f.symbol)
            })
            .collect()
    }
}

/// The ELF files a running process has mapped executable, once each: (where to read and
/// probe it, the path to show).
pub fn process_files(pid: u32) -> Result<Vec<(PathBuf, String)>, AttachError> {
    let maps = procfs::read_maps(pid).map_err(|err| AttachError::Read {
        path: format!("/proc/{pid}/maps"),
        reason: err.to_string(),
    })?;
    let mut files = Vec::new();
    let mut seen: Vec<(String, u64)> = Vec::new();
    for mapping in maps.iter().filter(|m| m.executable && m.is_file()) {
        let id = (mapping.dev.clone(), mapping.inode);
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        files.push((
            probe_path_for(pid, mapping),
            mapping.file_path().to_string(),
        ));
    }
    Ok(files)
}

/// The CPython interpreter among `files` (the executable or a libpython), if any.
pub fn python_interpreter(
    files: &[(PathBuf, String)],
) -> Option<crate::probe::python::PythonInterpreter> {
    files.iter().find_map(|(probe_path, display_path)| {
        let name = display_path.rsplit('/').next().unwrap_or(display_path);
        if !(name.starts_with("python") || name.starts_with("libpython")) {
            return None;
        }
        let elf = crate::sys::file_bytes::open(probe_path).ok()?;
        crate::probe::python::PythonInterpreter::in_file(
            &elf,
            probe_path.clone(),
            display_path.clone(),
        )
    })
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

/// A --scope function found in one of the target's files.
#[derive(Clone, Debug)]
pub struct ScopeProbe {
    pub spec: ScopeSpec,
    /// Every function the name matched: a function and its compiler clones, every overload
    /// of a C++ name (see `names::matching`).
    pub points: Vec<ScopePoint>,
}

/// One function probed for a --scope.
#[derive(Clone, Debug)]
pub struct ScopePoint {
    /// The symbol, as the file names it.
    pub symbol: String,
    pub probe_path: PathBuf,
    pub display_path: String,
    /// File offset of the probe (see `probe_site`), and the function's own.
    pub probe_offset: u64,
    pub file_offset: u64,
    /// The argument slot the label is read from at the probe (SCOPE_NO_LABEL: none).
    pub label_slot: u8,
    /// The instruction probed, and whether the kernel emulates it.
    pub instruction: String,
    pub emulated: bool,
}

/// Finds each --scope function in `files` (the first file that defines it wins: the
/// executable comes first): every function the name matches there, as users write names
/// (`names::matching`). When a name matches nothing anywhere, the error names the closest
/// functions the files define.
pub fn find_scopes(
    specs: &[ScopeSpec],
    files: &[(PathBuf, String)],
) -> Result<Vec<ScopeProbe>, AttachError> {
    let mut found: Vec<ScopeProbe> = specs
        .iter()
        .map(|spec| ScopeProbe {
            spec: spec.clone(),
            points: Vec::new(),
        })
        .collect();
    for (probe_path, display_path) in files {
        if found.iter().all(|probe| !probe.points.is_empty()) {
            break;
        }
        let Ok(data) = crate::sys::file_bytes::open(probe_path) else {
            continue;
        };
        let Ok(file) = object::File::parse(&*data) else {
            continue;
        };
        let symbols = function_symbols(&file);
        for probe in found.iter_mut() {
            if !probe.points.is_empty() {
                continue;
            }
            let spec = &probe.spec;
            let matched =
                crate::probe::names::matching(&spec.function, symbols.keys().map(String::as_str));
            if matched.is_empty() {
                continue;
            }
            let label = argument_or_none(spec.shape(0).label_arg);
            let reads = probe_site::Reads {
                arguments: [label, NO_ARG, NO_ARG, NO_ARG],
                product: None,
                stack_pointer: true,
            };
            for name in matched {
                let symbol = symbols[name];
                let Some(point) = probe_point(&data, &file, symbol, &reads) else {
                    continue;
                };
                if probe
                    .points
                    .iter()
                    .any(|known| known.file_offset == point.file_offset)
                {
                    // An alias of one already probed.
                    continue;
                }
                probe.points.push(ScopePoint {
                    symbol: name.to_string(),
                    probe_path: probe_path.clone(),
                    display_path: display_path.clone(),
                    probe_offset: point.file_offset + point.placement.offset,
                    file_offset: point.file_offset,
                    label_slot: if label == NO_ARG {
                        leak_common::SCOPE_NO_LABEL
                    } else {
                        point.placement.slots[0]
                    },
                    instruction: point.instruction,
                    emulated: point.emulated,
                });
            }
        }
    }
    if let Some(missing) = found.iter().find(|probe| probe.points.is_empty()) {
        return Err(AttachError::NoSuchScope {
            function: missing.spec.function.clone(),
            closest: closest_in_files(&missing.spec.function, files),
        });
    }
    // In the order given: scope numbers follow the flags.
    Ok(found)
}

/// "; closest: a, b" for an error about `wanted`, a name that matched nothing in `files`:
/// the names they define closest to it, or "". Worked out only then: it takes every
/// symbol of every file demangled.
fn closest_in_files(wanted: &str, files: &[(PathBuf, String)]) -> String {
    let mut nearby: Vec<String> = files
        .iter()
        .filter_map(|(path, _)| crate::sys::file_bytes::open(path).ok())
        .flat_map(|data| {
            object::File::parse(&*data)
                .map(|file| {
                    let symbols = function_symbols(&file);
                    crate::probe::names::closest(wanted, symbols.keys().map(String::as_str))
                })
                .unwrap_or_default()
        })
        .collect();
    nearby.sort();
    nearby.dedup();
    if nearby.is_empty() {
        String::new()
    } else {
        format!("; closest: {}", nearby.join(", "))
    }
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
fn module_probes(
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

fn probe_path_for(pid: u32, mapping: &Mapping) -> PathBuf {
    let in_root = procfs::path_in_root(pid, mapping.file_path());
    if mapping.path.ends_with(" (deleted)") || !in_root.exists() {
        procfs::map_file_path(pid, mapping)
    } else {
        in_root
    }
}

/// The ELF files a program will load, found before it runs: the executable itself, then
/// the libraries its dynamic loader resolves (`ld.so --list`, with the environment the
/// program will get, so LD_LIBRARY_PATH and LD_PRELOAD count).
pub fn program_files(
    program: &Path,
    env: &[(String, String)],
) -> Result<Vec<(PathBuf, String)>, AttachError> {
    let data = crate::sys::file_bytes::open(program).map_err(|err| AttachError::Read {
        path: program.display().to_string(),
        reason: err.to_string(),
    })?;
    let mut files = vec![(program.to_path_buf(), program.display().to_string())];
    if let Some(interpreter) = elf_interpreter(&data) {
        let output = std::process::Command::new(&interpreter)
            .arg("--list")
            .arg(program)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .map_err(|err| AttachError::Read {
                path: interpreter.clone(),
                reason: err.to_string(),
            })?;
        for library in parse_ld_list(&String::from_utf8_lossy(&output.stdout)) {
            let display_path = library.display().to_string();
            files.push((library, display_path));
        }
    }
    Ok(files)
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

/// The PT_INTERP of an ELF executable, if it is dynamically linked.
pub fn elf_interpreter(elf: &[u8]) -> Option<String> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let file = ElfFile64::<object::Endianness>::parse(elf).ok()?;
    let endian = file.endian();
    let header = file
        .elf_program_headers()
        .iter()
        .find(|header| header.p_type(endian) == object::elf::PT_INTERP)?;
    let bytes = header.data(endian, elf).ok()?;
    let bytes = bytes.split(|byte| *byte == 0).next()?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Resolved library paths from `ld.so --list` output.
pub fn parse_ld_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.trim(),
                None => line,
            };
            let path = path.split(" (0x").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The loaded eBPF object with its probes in place. Dropping it detaches everything.
pub struct Probes {
    pub ebpf: Ebpf,
    /// The unwind tables the kernel walks stacks with (--unwind dwarf), loaded before the
    /// probes; the session takes them to keep them up to date.
    pub unwind: Option<UnwindTables>,
    /// The uprobe links, owned here so they can be detached in parallel.
    links: Vec<ProbeLink>,
    /// The allocating functions' probes (entry and return), which the cost budget may take
    /// out for part of the time while the free probes stay: where they go, and their links
    /// while they are in.
    allocation_points: Vec<ProbeSet>,
    allocation_links: Vec<ProbeLink>,
    /// The entry and return programs loaded for uprobe_multi links (see `multi_link`);
    /// None where the kernel has none: a link per probe.
    multi: Option<crate::probe::multi_link::MultiPrograms>,
    /// The budget has the allocation probes out.
    allocations_paused: bool,
    pid: u32,
    /// Id of the next function probed (see CallShape::id).
    next_id: u16,
    /// Files already looked at for allocator functions, probed or not.
    probed_files: HashSet<(u64, u64)>,
    /// "malloc in /usr/lib/x86_64-linux-gnu/libc.so.6", … for the report.
    pub attached: Vec<String>,
    /// Each program loaded: what the verifier processed, how long it took.
    pub programs: Vec<ProgramLoad>,
    /// What a trap costs on this machine, measured at start (None: could not be measured).
    pub trap_cost: Option<TrapCost>,
    /// Keeps the kernel's BPF run-time statistics on (see `probe_run_ns`).
    _run_time_stats: Option<std::os::fd::OwnedFd>,
}

/// Probes of one program in one file: file offsets, each with its cookie.
#[derive(Clone, Debug)]
struct ProbeSet {
    program: &'static str,
    path: PathBuf,
    offsets: Vec<u64>,
    cookies: Vec<u64>,
}

/// A link that keeps probes in: aya's, one per probe, or a uprobe_multi link for a set (or
/// a syscall tracepoint's). Dropping it detaches; the field is held for that alone.
#[allow(dead_code)]
enum ProbeLink {
    PerProbe(UProbeLink),
    Multi(std::os::fd::OwnedFd),
    TracePoint(aya::programs::trace_point::TracePointLink),
}

/// How allocator probes are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkMode {
    /// uprobe_multi links, the allocating functions as a uprobe session (Linux 6.13+).
    Session,
    /// uprobe_multi links, an entry and a return link (Linux 6.6+).
    Multi,
    /// aya's links, one per probe (older kernels).
    PerProbe,
}

/// How links are made: the most the kernel has, unless LEAKTRACE_PROBE_LINKS says `multi`
/// (no sessions) or `per-probe` (the paths older kernels take), for tests and comparisons.
fn link_mode() -> LinkMode {
    match std::env::var("LEAKTRACE_PROBE_LINKS").as_deref() {
        Ok("per-probe") => LinkMode::PerProbe,
        Ok("multi") => LinkMode::Multi,
        _ => LinkMode::Session,
    }
}

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
static LEAK_EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leak-ebpf"));

/// The UNWIND_MODE global and the size of the row map for `unwind`: the row map is large
/// (16 MiB), so only with dwarf.
fn unwind_settings(unwind: Unwind) -> (u32, u32) {
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
fn object_error(err: aya::EbpfError) -> AttachError {
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

/// Loads the programs for `pid` and attaches them to `modules` and the mmap tracepoints.
pub fn attach(
    pid: u32,
    modules: &[AllocatorModule],
    scopes: &[ScopeProbe],
    go: Option<&GoTarget>,
    options: LoadOptions,
) -> Result<Probes, AttachError> {
    check_kernel(true)?;
    let phase = std::time::Instant::now();
    let (unwind_mode, unwind_rows) = unwind_settings(options.unwind);
    let scope_count = scopes.len() as u32;
    let go_layout = go.and_then(|go| go.program.layout).unwrap_or_default();
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
    let mut ebpf = loader
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
            if scopes.is_empty() { 1 } else { MAX_SCOPE_TAGS },
        )
        .map_max_entries(
            map_names::SCOPE_EVENTS,
            if scopes.is_empty() {
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
        .map_err(object_error)?;
    drop(kept);
    let object_ms = phase.elapsed().as_secs_f64() * 1e3;

    let mut programs = Vec::new();
    let mode = link_mode();
    let multi = match mode {
        LinkMode::PerProbe => None,
        LinkMode::Session | LinkMode::Multi => crate::probe::multi_link::load(
            &ebpf,
            LEAK_EBPF_OBJECT,
            ENTRY_PROGRAM,
            ALLOC_RETURN_PROGRAM,
            (mode == LinkMode::Session).then_some(SESSION_PROGRAM),
        )
        .map_err(|err| log::info!("a uprobe link per probe: {err}"))
        .ok(),
    };
    if let Some(multi) = &multi {
        programs.extend(multi_loads(multi));
    }
    // The programs for a link per probe: where uprobe_multi links serve, only to measure
    // what a trap costs (once per leaktrace process), or for a file whose multi link the
    // kernel refuses (loaded then).
    if multi.is_none() || !trap_cost_measured() {
        for name in [ENTRY_PROGRAM, ALLOC_RETURN_PROGRAM] {
            load_program(&mut ebpf, name, &mut programs)?;
        }
    }
    let programs_ms = phase.elapsed().as_secs_f64() * 1e3 - object_ms;
    // The unwind tables go in before any probe: a stack walked without them would be cut
    // short, or followed through garbage, for as long as loading them takes.
    let unwind = match options.unwind {
        Unwind::Dwarf | Unwind::Hybrid => {
            let hybrid = options.unwind == Unwind::Hybrid;
            let mut tables = UnwindTables::take(&mut ebpf, hybrid).map_err(AttachError::Load)?;
            if !options.before_exec {
                tables.refresh(pid);
            }
            Some(tables)
        }
        Unwind::Fp | Unwind::Auto => None,
    };
    let (trap_cost, calibration_links) = calibrate_trap_cost(&mut ebpf);
    // Program run times, for the cost meter, while leaktrace runs (two clock reads more per
    // BPF program run, system-wide, until this descriptor is closed).
    let run_time_stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|err| log::debug!("no BPF run-time statistics: {err}"))
        .ok();
    let mut probes = Probes {
        unwind,
        trap_cost,
        _run_time_stats: run_time_stats,
        ebpf,
        links: calibration_links
            .into_iter()
            .map(ProbeLink::PerProbe)
            .collect(),
        allocation_points: Vec::new(),
        allocation_links: Vec::new(),
        allocations_paused: false,
        multi,
        attached: Vec::new(),
        pid,
        next_id: 0,
        probed_files: HashSet::new(),
        programs,
    };
    for module in modules {
        probes.attach_module(module)?;
    }
    probes.attach_scopes(scopes)?;
    if let Some(go) = go {
        probes.attach_go(go)?;
    }

    let (tracepoints, links) = attach_syscall_tracepoints(&mut probes.ebpf, &mut probes.programs)?;
    probes.attached.extend(tracepoints);
    // Detached with the uprobes, in parallel: each waits for the kernel too.
    probes.links.extend(links);
    log::debug!(
        "pid {pid}: object and maps in {object_ms:.0} ms, allocation programs in {programs_ms:.0} ms, all in place in {:.0} ms",
        phase.elapsed().as_secs_f64() * 1e3
    );
    Ok(probes)
}

// Two functions of leaktrace's own whose probes measure what a trap costs on this machine:
// one starting with an instruction the kernel emulates (push), one with one it single-steps
// (mov).
std::arch::global_asm!(
    ".pushsection .text.leaktrace_trap_points,\"ax\",@progbits",
    ".p2align 4",
    ".globl leaktrace_trap_emulated",
    ".type leaktrace_trap_emulated,@function",
    "leaktrace_trap_emulated:",
    "push rbp",
    "pop rbp",
    "mov rax, rdi",
    "ret",
    ".size leaktrace_trap_emulated, .-leaktrace_trap_emulated",
    ".p2align 4",
    ".globl leaktrace_trap_stepped",
    ".type leaktrace_trap_stepped,@function",
    "leaktrace_trap_stepped:",
    "mov rax, rdi",
    "ret",
    ".size leaktrace_trap_stepped, .-leaktrace_trap_stepped",
    ".popsection",
);

unsafe extern "C" {
    fn leaktrace_trap_emulated(value: u64) -> u64;
    fn leaktrace_trap_stepped(value: u64) -> u64;
}

/// Calls made to time one kind of trap.
const CALIBRATION_CALLS: u64 = 5_000;
const CALIBRATION_STEPPED_CALLS: u64 = 300;

/// Measures what a uprobe trap costs on this machine: leaktrace's entry program is probed on
/// two functions of its own (it returns at once: leaktrace is not the target), each called in
/// a loop with and without the probe. The probes' links are returned to be detached with the
/// others at the end (the functions are not called again, so they cost nothing meanwhile,
/// and detaching now would wait for the kernel). None when a probe cannot be placed.
///
/// What a trap costs here, once measured.
static MEASURED: std::sync::OnceLock<TrapCost> = std::sync::OnceLock::new();

/// Whether a trap's cost has been measured (by an earlier session of this process).
fn trap_cost_measured() -> bool {
    MEASURED.get().is_some()
}

/// A trap's cost is the machine's: measured once per leaktrace process, and remembered for
/// the next session (each of watch's windows is one).
pub fn calibrate_trap_cost(ebpf: &mut Ebpf) -> (Option<TrapCost>, Vec<UProbeLink>) {
    if let Some(cost) = MEASURED.get() {
        return (Some(*cost), Vec::new());
    }
    let mut links = Vec::new();
    let cost = measure_trap_cost(ebpf, &mut links);
    if let Some(cost) = cost {
        let _ = MEASURED.set(cost);
    }
    (cost, links)
}

fn measure_trap_cost(ebpf: &mut Ebpf, links: &mut Vec<UProbeLink>) -> Option<TrapCost> {
    let me = std::process::id();
    let maps = procfs::read_maps(me).ok()?;
    let exe = PathBuf::from("/proc/self/exe");
    let file_offset = |function: unsafe extern "C" fn(u64) -> u64| -> Option<u64> {
        let address = function as usize as u64;
        let mapping = maps.iter().find(|m| m.contains(address) && m.is_file())?;
        Some(address - mapping.start + mapping.offset)
    };
    // The thread's CPU time, not wall time: on a busy machine the loop also waits for a CPU,
    // which is no part of what a trap costs.
    let time = |function: unsafe extern "C" fn(u64) -> u64, calls: u64| -> f64 {
        let started = procfs::thread_cpu_ns();
        let mut sum = 0u64;
        for i in 0..calls {
            // SAFETY: both functions return their argument and touch nothing else.
            sum = sum.wrapping_add(unsafe { function(std::hint::black_box(i)) });
        }
        std::hint::black_box(sum);
        procfs::thread_cpu_ns().saturating_sub(started) as f64 / calls as f64
    };
    let scope = UProbeScope::OneProcess(NonZeroU32::new(me)?);
    let mut measure = |function: unsafe extern "C" fn(u64) -> u64,
                       programs: &[&str],
                       calls: u64|
     -> Option<f64> {
        let untraced = time(function, calls);
        for program in programs {
            let probe = uprobe(ebpf, program).ok()?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(file_offset(function)?),
                cookie: Some(CallShape::free(NO_ARG).cookie()),
            };
            let id = probe.attach(point, &exe, scope).ok()?;
            links.push(probe.take_link(id).ok()?);
        }
        Some((time(function, calls) - untraced).max(0.0))
    };
    let emulated_ns = measure(leaktrace_trap_emulated, &[ENTRY_PROGRAM], CALIBRATION_CALLS);
    let single_stepped_ns = measure(
        leaktrace_trap_stepped,
        &[ENTRY_PROGRAM],
        CALIBRATION_STEPPED_CALLS,
    );
    // The emulated function has its entry probe already (in the untraced time too): this
    // measures what the return probe adds.
    let return_ns = measure(
        leaktrace_trap_emulated,
        &[ALLOC_RETURN_PROGRAM],
        CALIBRATION_CALLS,
    );
    let emulated_ns = emulated_ns?;
    let cost = TrapCost {
        emulated_ns,
        single_stepped_ns: single_stepped_ns?,
        return_ns: return_ns?,
    };
    log::debug!(
        "a uprobe trap costs {:.0} ns here, {:.0} ns when single-stepped, a return probe {:.0} ns more",
        cost.emulated_ns,
        cost.single_stepped_ns,
        cost.return_ns
    );
    Some(cost)
}

/// Loads every one of leaktrace's kernel programs for process `pid` (nothing is attached), as
/// the most demanding target needs them: Python frames read (CPython 3.11's layout), a Go
/// runtime's layout, every scope slot, sampling, a size range, and stacks walked with
/// `unwind`. Returns what each took; the first program the kernel refuses is an error.
pub fn verify_programs(pid: u32, unwind: Unwind) -> Result<Vec<ProgramLoad>, AttachError> {
    check_kernel(true)?;
    let (unwind_mode, unwind_rows) = unwind_settings(unwind);
    let go_layout = crate::probe::golang::known_layout("go1.23")
        .map(|(layout, _)| layout)
        .unwrap_or_default();
    let python = crate::probe::python::PYTHON_3_11;
    let scopes = MAX_SCOPES;
    let (sample_rate, min_size, max_size) = (2u32, 1u64, u64::MAX - 1);
    let mut ebpf = EbpfLoader::new()
        .override_global(GO_LAYOUT_GLOBAL, &go_layout, true)
        .override_global(leak_common::PY_LAYOUT_GLOBAL, &python, true)
        .override_global(SCOPE_COUNT_GLOBAL, &scopes, true)
        .override_global(TARGET_TGID_GLOBAL, &pid, true)
        .override_global(MIN_SIZE_GLOBAL, &min_size, true)
        .override_global(MAX_SIZE_GLOBAL, &max_size, true)
        .override_global(SAMPLE_RATE_GLOBAL, &sample_rate, true)
        .override_global(UNWIND_MODE_GLOBAL, &unwind_mode, true)
        .map_max_entries(map_names::UNWIND_ROWS, unwind_rows)
        .load(LEAK_EBPF_OBJECT)
        .map_err(object_error)?;
    // The session program is loaded for uprobe sessions only (below).
    let names: Vec<String> = ebpf
        .programs()
        .map(|(name, _)| name.to_string())
        .filter(|name| name != SESSION_PROGRAM)
        .collect();
    let mut loads = Vec::new();
    let multi = crate::probe::multi_link::load(
        &ebpf,
        LEAK_EBPF_OBJECT,
        ENTRY_PROGRAM,
        ALLOC_RETURN_PROGRAM,
        Some(SESSION_PROGRAM),
    )
    .map_err(|err| log::warn!("the programs for uprobe_multi links did not load: {err}"))
    .ok();
    if let Some(multi) = &multi {
        loads.extend(multi_loads(multi));
    }
    for name in names {
        load_program(&mut ebpf, &name, &mut loads)?;
    }
    loads.sort_by(|a, b| a.program.cmp(&b.program));
    Ok(loads)
}

/// What the verifier processed for each program loaded for uprobe_multi links.
fn multi_loads(multi: &crate::probe::multi_link::MultiPrograms) -> Vec<ProgramLoad> {
    let session = multi
        .session
        .as_ref()
        .map(|(fd, load_ms)| (SESSION_PROGRAM, "uprobe session", fd, *load_ms));
    [(
        ENTRY_PROGRAM,
        "uprobe_multi",
        &multi.entry,
        multi.entry_load_ms,
    )]
    .into_iter()
    .chain(
        multi
            .ret
            .as_ref()
            .map(|(fd, load_ms)| (ALLOC_RETURN_PROGRAM, "uprobe_multi", fd, *load_ms)),
    )
    .chain(session)
    .filter_map(|(name, kind, fd, load_ms)| {
        let info = prog_info(fd.as_fd())?;
        Some(ProgramLoad {
            program: format!("{name} ({kind})"),
            verified_instructions: info.verified_insns,
            load_ms,
        })
    })
    .collect()
}

/// Loads and attaches the mmap-family and brk syscall tracepoints; returns their names.
fn attach_syscall_tracepoints(
    ebpf: &mut Ebpf,
    loads: &mut Vec<ProgramLoad>,
) -> Result<(Vec<String>, Vec<ProbeLink>), AttachError> {
    ensure_tracefs()?;
    let mut attached = Vec::new();
    let mut links = Vec::new();
    for (name, category, tracepoint) in SYSCALL_PROGRAMS {
        load_program(ebpf, name, loads)?;
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| AttachError::Load(format!("program {name} missing from the object")))?
            .try_into()
            .map_err(|err: aya::programs::ProgramError| AttachError::Load(err.to_string()))?;
        let link = program
            .attach(category, tracepoint)
            .and_then(|id| program.take_link(id))
            .map_err(|err| AttachError::Probe {
                function: tracepoint.to_string(),
                module: "the kernel".to_string(),
                reason: format!("{:#}", anyhow::Error::from(err)),
            })?;
        links.push(ProbeLink::TracePoint(link));
        attached.push(format!("{category}:{tracepoint}"));
    }
    Ok((attached, links))
}

/// `leaktrace watch`'s always-on gear for one process: its page faults, one in `period`,
/// credited to the user stacks that took them, and (with `syscalls`) its anonymous mmap,
/// munmap, mremap and brk calls with their stacks. No allocator is probed. Dropping it
/// stops everything.
pub struct FaultSampler {
    /// The syscall tracepoints' links, detached when dropped (before the programs).
    _links: Vec<ProbeLink>,
    pub ebpf: Ebpf,
    /// The sampling period: each sample stands for this many minor faults.
    pub period: u64,
    /// Each program loaded: what the verifier processed, how long it took.
    pub programs: Vec<ProgramLoad>,
}

/// Loads the page-fault sampler for `pid` and starts it on every CPU. `syscalls` adds the
/// mmap-family and brk tracepoints: while any syscall tracepoint is attached, every syscall
/// of every process takes the kernel's slower path (about 5% of redis-benchmark's
/// throughput here), so gear 1 leaves them off unless asked.
pub fn attach_fault_sampler(
    pid: u32,
    unwind: Unwind,
    period: u64,
    syscalls: bool,
) -> Result<FaultSampler, AttachError> {
    check_kernel(syscalls)?;
    let (unwind_mode, unwind_rows) = unwind_settings(unwind);
    // The allocation maps stay unused here: the smallest the kernel accepts. mmap and brk
    // events are few (no allocator call is probed, so these are every caller's, the
    // allocator's own included).
    let mut ebpf = EbpfLoader::new()
        .override_global(TARGET_TGID_GLOBAL, &pid, true)
        .override_global(UNWIND_MODE_GLOBAL, &unwind_mode, true)
        .map_max_entries(map_names::ALLOCS, 1)
        .map_max_entries(map_names::STACK_TOTALS, 1)
        .map_max_entries(map_names::PENDING_CALLS, 1)
        .map_max_entries(map_names::PENDING_SYSCALLS, 1024)
        .map_max_entries(map_names::MMAP_EVENTS, FAULT_SAMPLER_EVENTS_BYTES)
        .map_max_entries(map_names::UNWIND_ROWS, unwind_rows)
        .map_max_entries(map_names::SCOPE_TOTALS, 1)
        .map_max_entries(map_names::SCOPE_STACKS, 1)
        .map_max_entries(map_names::SCOPE_TAGS, 1)
        .map_max_entries(map_names::SCOPE_TAG_OWNERS, 1)
        .map_max_entries(map_names::SCOPE_CALLS, 1)
        .map_max_entries(map_names::SCOPE_EVENTS, 4096)
        .load(LEAK_EBPF_OBJECT)
        .map_err(object_error)?;
    let mut programs = Vec::new();
    load_program(&mut ebpf, PAGE_FAULT_PROGRAM, &mut programs)?;
    let program: &mut PerfEvent = ebpf
        .program_mut(PAGE_FAULT_PROGRAM)
        .ok_or_else(|| {
            AttachError::Load(format!(
                "program {PAGE_FAULT_PROGRAM} missing from the object"
            ))
        })?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| AttachError::Load(err.to_string()))?;
    let cpus = aya::util::online_cpus()
        .map_err(|(_, err)| AttachError::Load(format!("could not list the CPUs: {err}")))?;
    // Every process's faults are counted on each CPU; the program keeps the target's. A
    // per-thread event would miss threads that existed before it was opened.
    for cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::PageFaultsMin),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(period.max(1)),
                false,
            )
            .map_err(|err| match os_error(&err) {
                Some(libc::EPERM) | Some(libc::EACCES) => AttachError::NotPermitted,
                _ => AttachError::Probe {
                    function: "the page-fault event".to_string(),
                    module: format!("CPU {cpu}"),
                    reason: format!("{:#}", anyhow::Error::from(err)),
                },
            })?;
    }
    let links = if syscalls {
        attach_syscall_tracepoints(&mut ebpf, &mut programs)?.1
    } else {
        Vec::new()
    };
    Ok(FaultSampler {
        _links: links,
        ebpf,
        period: period.max(1),
        programs,
    })
}

/// Ring buffer for the fault sampler's mmap and brk events (read every second).
const FAULT_SAMPLER_EVENTS_BYTES: u32 = 256 << 10;

impl Probes {
    /// Probes a module's allocator functions (one found after the start: a dlopen'd
    /// library with its own allocator).
    pub fn attach_module(&mut self, module: &AllocatorModule) -> Result<(), AttachError> {
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(self.pid)
                .ok_or(AttachError::Load("process id 0 cannot be traced".into()))?,
        );
        if let Some(id) = file_id(&module.probe_path) {
            self.probed_files.insert(id);
        }
        let set = |program: &'static str| ProbeSet {
            program,
            path: module.probe_path.clone(),
            offsets: Vec::new(),
            cookies: Vec::new(),
        };
        // With uprobe sessions an allocating function has one probe, running the session
        // program at its entry and (when the entry wants it) at its return.
        let sessions = self.multi.as_ref().is_some_and(|m| m.session.is_some());
        let (mut returns, mut entries, mut frees) = (
            set(ALLOC_RETURN_PROGRAM),
            set(if sessions {
                SESSION_PROGRAM
            } else {
                ENTRY_PROGRAM
            }),
            set(ENTRY_PROGRAM),
        );
        for function in &module.functions {
            // Ids tell probed functions apart in the kernel (see CallShape::id).
            let shape = function.shape.with_id(self.next_id);
            self.next_id = self.next_id.wrapping_add(1);
            let sets = if shape.func.has_return_probe() && sessions {
                vec![&mut entries]
            } else if shape.func.has_return_probe() {
                vec![&mut returns, &mut entries]
            } else {
                vec![&mut frees]
            };
            for set in sets {
                set.offsets.push(function.probe_offset);
                set.cookies.push(shape.cookie());
            }
            log::debug!(
                "{} in {} ({}): probe at +{:#x} ({}, {})",
                function.symbol,
                module.display_path,
                module.allocator,
                function.probe_offset - function.file_offset,
                function.instruction,
                if function.emulated {
                    "emulated"
                } else {
                    "single-stepped"
                }
            );
            self.attached
                .push(format!("{} in {}", function.symbol, module.display_path));
        }
        // Return probes first: an entry that fires is then always matched by its return.
        for (set, allocating) in [(returns, true), (entries, true), (frees, false)] {
            if set.offsets.is_empty() {
                continue;
            }
            if allocating && self.allocations_paused {
                // Put in with the others when the budget lets them back.
                self.allocation_points.push(set);
                continue;
            }
            let links = self.attach_set(&set, scope).map_err(|(offset, err)| {
                let symbol = module
                    .functions
                    .iter()
                    .find(|f| f.probe_offset == offset)
                    .map_or_else(|| format!("+{offset:#x}"), |f| f.symbol.clone());
                probe_error(&symbol, &module.display_path, err)
            })?;
            if allocating {
                self.allocation_links.extend(links);
                self.allocation_points.push(set);
            } else {
                self.links.extend(links);
            }
        }
        Ok(())
    }

    /// Probes a Go executable's runtime: goroutine creation and exit, and its heap spans
    /// (whichever of them the runtime's layout and functions were found for).
    fn attach_go(&mut self, go: &GoTarget) -> Result<(), AttachError> {
        let program = &go.program;
        let mut points: Vec<(&str, &GoProbe)> = Vec::new();
        if program.can_count_goroutines() {
            // Exits first: a goroutine counted created is then always seen ending. The other
            // way round, those created and ended while the second probe was being placed
            // (placing one can wait for the kernel for 100 ms) stayed alive forever.
            points.extend(program.goexit.iter().map(|p| (GO_GOEXIT_PROGRAM, p)));
            points.extend(program.newproc.iter().map(|p| (GO_NEWPROC_PROGRAM, p)));
        }
        if program.can_follow_heap() {
            // Frees first: a span recorded is then always seen going back.
            points.extend(program.span_free.iter().map(|p| (GO_SPAN_FREE_PROGRAM, p)));
            points.extend(program.span_full.iter().map(|p| (GO_SPAN_FULL_PROGRAM, p)));
            points.extend(
                program
                    .large_spans
                    .iter()
                    .map(|p| (GO_LARGE_SPAN_PROGRAM, p)),
            );
        }
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(self.pid)
                .ok_or(AttachError::Load("process id 0 cannot be traced".into()))?,
        );
        for (name, point) in points {
            load_program(&mut self.ebpf, name, &mut self.programs)?;
            let probe = uprobe(&mut self.ebpf, name)?;
            let at = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(point.file_offset),
                cookie: Some(match (point.on_stack_check, point.span_slot) {
                    (true, _) => GO_ON_STACK_CHECK,
                    (false, Some(slot)) => leak_common::GO_SPAN_IN_SLOT | u64::from(slot),
                    (false, None) => 0,
                }),
            };
            let link = probe
                .attach(at, &go.probe_path, scope)
                .and_then(|id| probe.take_link(id))
                .map_err(|err| probe_error(&point.symbol, &go.display_path, err))?;
            self.links.push(ProbeLink::PerProbe(link));
            log::debug!(
                "{} in {}: probe at file offset {:#x}",
                point.symbol,
                go.display_path,
                point.file_offset
            );
            self.attached
                .push(format!("{} in {}", point.symbol, go.display_path));
        }
        Ok(())
    }

    /// Probes each --scope function's entry and return; scope numbers follow the order.
    fn attach_scopes(&mut self, scopes: &[ScopeProbe]) -> Result<(), AttachError> {
        if scopes.is_empty() {
            return Ok(());
        }
        for name in [SCOPE_ENTRY_PROGRAM, SCOPE_RETURN_PROGRAM] {
            load_program(&mut self.ebpf, name, &mut self.programs)?;
        }
        let target = UProbeScope::OneProcess(
            NonZeroU32::new(self.pid)
                .ok_or(AttachError::Load("process id 0 cannot be traced".into()))?,
        );
        for (index, scope) in scopes.iter().enumerate() {
            for at in &scope.points {
                let shape = ScopeShape {
                    label_arg: at.label_slot,
                    ..scope.spec.shape(index as u8)
                };
                // Return probe first: an entry that fires is then always matched by its
                // return.
                for program in [SCOPE_RETURN_PROGRAM, SCOPE_ENTRY_PROGRAM] {
                    let probe = uprobe(&mut self.ebpf, program)?;
                    let point = UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(at.probe_offset),
                        cookie: Some(shape.cookie()),
                    };
                    let link = probe
                        .attach(point, &at.probe_path, target)
                        .and_then(|id| probe.take_link(id))
                        .map_err(|err| probe_error(&at.symbol, &at.display_path, err))?;
                    self.links.push(ProbeLink::PerProbe(link));
                }
                self.attached.push(format!(
                    "scope {} at {} in {}",
                    scope.spec.describe(),
                    at.symbol,
                    at.display_path
                ));
            }
        }
        Ok(())
    }

    /// Those of `modules` whose files are not probed yet.
    pub fn unprobed(&self, modules: Vec<AllocatorModule>) -> Vec<AllocatorModule> {
        modules
            .into_iter()
            .filter(|module| {
                file_id(&module.probe_path).is_none_or(|id| !self.probed_files.contains(&id))
            })
            .collect()
    }

    /// Allocator modules the process mapped since the probes were placed (or since the last
    /// call), not yet probed: say, a plugin linked with its own allocator.
    pub fn new_allocator_modules(&mut self, extra: &[KnownFn]) -> Vec<AllocatorModule> {
        let Ok(maps) = procfs::read_maps(self.pid) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for mapping in maps.iter().filter(|m| m.executable && m.is_file()) {
            let probe_path = probe_path_for(self.pid, mapping);
            let Some(id) = file_id(&probe_path) else {
                continue;
            };
            if !self.probed_files.insert(id) {
                continue;
            }
            let Ok(data) = crate::sys::file_bytes::open(&probe_path) else {
                continue;
            };
            let module = module_probes(&data, probe_path, mapping.file_path().to_string(), extra);
            // A library of C++ operators alone (libstdc++ loaded late) is worth probing too.
            found.extend(module);
        }
        found
    }
}

impl Probes {
    /// Runs of leaktrace's programs the kernel skipped because another BPF program was
    /// running on the same CPU (`recursion_misses` in the kernel's program info): events
    /// lost before any of leaktrace's own counters could see them.
    pub fn missed_runs(&self) -> u64 {
        [
            ENTRY_PROGRAM,
            ALLOC_RETURN_PROGRAM,
            SCOPE_ENTRY_PROGRAM,
            SCOPE_RETURN_PROGRAM,
        ]
        .into_iter()
        .chain(SYSCALL_PROGRAMS.iter().map(|(name, _, _)| *name))
        .filter_map(|name| self.ebpf.program(name)?.fd().ok())
        .filter_map(|fd| prog_info(fd.as_fd()))
        .chain(self.multi_infos())
        .map(|info| info.recursion_misses)
        .sum()
    }

    /// The kernel's information on the programs loaded for uprobe_multi links.
    fn multi_infos(&self) -> Vec<aya_obj::generated::bpf_prog_info> {
        self.multi
            .iter()
            .flat_map(|multi| {
                std::iter::once(&multi.entry)
                    .chain(multi.ret.as_ref().map(|(fd, _)| fd))
                    .chain(multi.session.as_ref().map(|(fd, _)| fd))
            })
            .filter_map(|fd| prog_info(fd.as_fd()))
            .collect()
    }
}

/// A program's information (BPF_OBJ_GET_INFO_BY_FD): aya 0.14 exposes neither
/// `recursion_misses` nor the programs it did not load.
fn prog_info(fd: std::os::fd::BorrowedFd<'_>) -> Option<aya_obj::generated::bpf_prog_info> {
    use std::os::fd::AsRawFd;
    /// The `info` member of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: a plain C struct of integers; all zeros is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd()).ok()?,
        info_len: u32::try_from(std::mem::size_of_val(&info)).ok()?,
        info: (&raw mut info) as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`, alive for the call.
    let cmd = aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long;
    unsafe { crate::sys::bpf_call::bpf(cmd, &mut attr) }.ok()?;
    Some(info)
}

/// Device and inode of a file: the same library reached by different paths is one.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(path).ok()?;
    Some((metadata.dev(), metadata.ino()))
}

impl Probes {
    /// Puts a set of probes in: one uprobe_multi link when the programs were loaded for
    /// them, else a link per probe. On failure, the offset that failed (any for a multi link).
    fn attach_set(
        &mut self,
        set: &ProbeSet,
        scope: UProbeScope,
    ) -> Result<Vec<ProbeLink>, (u64, aya::programs::ProgramError)> {
        use crate::probe::multi_link::LinkKind;
        if let Some(multi) = &mut self.multi {
            let program = match (set.program, &multi.session) {
                (SESSION_PROGRAM, Some((session, _))) => Ok((session, LinkKind::Session)),
                (ALLOC_RETURN_PROGRAM, _) => multi
                    .ret(ALLOC_RETURN_PROGRAM)
                    .map(|ret| (ret, LinkKind::Return)),
                _ => Ok((&multi.entry, LinkKind::Entry)),
            };
            match program.and_then(|(program, kind)| {
                crate::probe::multi_link::attach(
                    program,
                    &set.path,
                    &set.offsets,
                    &set.cookies,
                    kind,
                    self.pid,
                )
                .map_err(|err| format!("{kind:?} uprobe_multi link refused: {err}"))
            }) {
                Ok(link) => return Ok(vec![ProbeLink::Multi(link)]),
                Err(err) => log::info!("on {}, {err}: a link per probe", set.path.display()),
            }
        }
        if set.program == SESSION_PROGRAM {
            // Without the session link, each function gets a return probe and an entry probe.
            let mut links = Vec::new();
            for program in [ALLOC_RETURN_PROGRAM, ENTRY_PROGRAM] {
                let per_probe = ProbeSet {
                    program,
                    ..set.clone()
                };
                links.extend(self.attach_set(&per_probe, scope)?);
            }
            return Ok(links);
        }
        // Loaded on first use where uprobe_multi links serve the rest.
        if let Err(err) = load_program(&mut self.ebpf, set.program, &mut self.programs) {
            log::warn!("{err}");
            return Err((
                set.offsets.first().copied().unwrap_or_default(),
                aya::programs::ProgramError::NotLoaded,
            ));
        }
        let mut links = Vec::new();
        for (&offset, &cookie) in set.offsets.iter().zip(&set.cookies) {
            let attached = (|| {
                let probe: &mut UProbe = self
                    .ebpf
                    .program_mut(set.program)
                    .ok_or(aya::programs::ProgramError::NotLoaded)?
                    .try_into()?;
                let at = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: Some(cookie),
                };
                probe
                    .attach(at, &set.path, scope)
                    .and_then(|id| probe.take_link(id))
            })();
            match attached {
                Ok(link) => links.push(ProbeLink::PerProbe(link)),
                Err(err) => return Err((offset, err)),
            }
        }
        Ok(links)
    }

    /// How the allocator probes are linked, for the report: "uprobe session",
    /// "uprobe_multi" or "per probe".
    pub fn link_kind(&self) -> &'static str {
        match &self.multi {
            Some(multi) if multi.session.is_some() => "uprobe session",
            Some(_) => "uprobe_multi",
            None => "per probe",
        }
    }

    /// Time the kernel has spent running leaktrace's uprobe programs (on the target's
    /// threads), when its run-time statistics are on.
    pub fn probe_run_ns(&self) -> Option<u64> {
        self._run_time_stats.as_ref()?;
        let programs = [
            ENTRY_PROGRAM,
            ALLOC_RETURN_PROGRAM,
            SCOPE_ENTRY_PROGRAM,
            SCOPE_RETURN_PROGRAM,
            GO_NEWPROC_PROGRAM,
            GO_GOEXIT_PROGRAM,
            GO_SPAN_FULL_PROGRAM,
            GO_SPAN_FREE_PROGRAM,
            GO_LARGE_SPAN_PROGRAM,
        ];
        let multi: u64 = self.multi_infos().iter().map(|info| info.run_time_ns).sum();
        Some(
            programs
                .into_iter()
                .filter_map(|name| self.ebpf.program(name)?.info().ok())
                .map(|info| info.run_time().as_nanos() as u64)
                .sum::<u64>()
                + multi,
        )
    }

    /// The entry program's run time and runs so far, its copies for uprobe_multi links
    /// included (it runs for the frees, and for allocation entries where the kernel has no
    /// uprobe sessions). None without run-time statistics.
    pub fn entry_program_runs(&self) -> Option<(u64, u64)> {
        self._run_time_stats.as_ref()?;
        let own = self
            .ebpf
            .program(ENTRY_PROGRAM)
            .and_then(|program| program.info().ok())
            .map_or((0, 0), |info| {
                (info.run_time().as_nanos() as u64, info.run_count())
            });
        let multi = self
            .multi
            .iter()
            .filter_map(|multi| prog_info(multi.entry.as_fd()))
            .fold((0, 0), |(ns, runs), info| {
                (ns + info.run_time_ns, runs + info.run_cnt)
            });
        Some((own.0 + multi.0, own.1 + multi.1))
    }

    /// Says whether every entry probe has been in long enough that a return without its
    /// entry means a lost event (see leak-ebpf's ENTRIES_ARMED).
    pub fn arm_entries(&mut self, armed: bool) {
        let Some(map) = self.ebpf.map_mut(map_names::ENTRIES_ARMED) else {
            return;
        };
        match aya::maps::Array::<_, u32>::try_from(map) {
            Ok(mut array) => {
                if let Err(err) = array.set(0, u32::from(armed), 0) {
                    log::debug!("could not arm the entry probes: {err}");
                }
            }
            Err(err) => log::debug!("could not arm the entry probes: {err}"),
        }
    }

    /// Whether the allocating functions' probes are in.
    pub fn allocations_probed(&self) -> bool {
        !self.allocations_paused
    }

    /// Takes the allocating functions' probes out (the free probes stay). Detaching waits
    /// for the kernel, so it happens on a thread of its own.
    pub fn pause_allocations(&mut self) {
        self.allocations_paused = true;
        detach_in_background(
            std::mem::take(&mut self.allocation_links),
            "detach-allocation-probes",
        );
    }

    /// Takes every probe out, on a thread of its own: the maps keep what was recorded.
    pub fn detach_all(&mut self) {
        self.pause_allocations();
        detach_in_background(std::mem::take(&mut self.links), "detach-probes");
    }

    /// Puts the allocating functions' probes back (each return probe before its entry).
    pub fn resume_allocations(&mut self) -> Result<(), AttachError> {
        if !self.allocations_paused {
            return Ok(());
        }
        self.allocations_paused = false;
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(self.pid)
                .ok_or(AttachError::Load("process id 0 cannot be traced".into()))?,
        );
        let sets = self.allocation_points.clone();
        for set in &sets {
            match self.attach_set(set, scope) {
                Ok(links) => self.allocation_links.extend(links),
                Err((offset, err)) => {
                    // Half in is worse than out: entries without their returns.
                    self.pause_allocations();
                    return Err(probe_error(
                        &format!("+{offset:#x}"),
                        &set.path.display().to_string(),
                        err,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Detaches `links` without the caller waiting for the kernel: in a process of its own
/// (see `detach_in_helper`), else on a thread of its own (`name`), in parallel.
fn detach_in_background(links: Vec<ProbeLink>, name: &str) {
    if links.is_empty() {
        return;
    }
    let Err(links) = detach_in_helper(links) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || detach_in_parallel(links));
}

/// Detaches `links` in a process of its own, which nobody signals: a uprobe taken out by a
/// thread that a SIGKILL reaches midway keeps its breakpoint in the target (the kernel's
/// write of the original instruction gives up on a fatal signal) while the probe is gone,
/// and the target then dies of SIGTRAP at its next call. A grandchild (reparented at once:
/// no zombie) keeps a copy of every descriptor; this process drops its own copies of
/// `links`, which does not wait; the grandchild then closes everything, which for those
/// links is the last reference, and exits. If this process dies first, the grandchild
/// closes everything when its pipe ends, and every link comes out there. Err gives the
/// links back when no process can be started.
fn detach_in_helper(links: Vec<ProbeLink>) -> Result<(), Vec<ProbeLink>> {
    use std::os::fd::AsRawFd;
    let Ok((reader, writer)) = std::io::pipe() else {
        return Err(links);
    };
    let (reader_fd, writer_fd) = (reader.as_raw_fd(), writer.as_raw_fd());
    // SAFETY: the children run only async-signal-safe calls (fork, setsid, signal, close,
    // read, close_range, _exit) on values prepared before the fork, then exit.
    let middle = unsafe { libc::fork() };
    if middle < 0 {
        return Err(links);
    }
    if middle == 0 {
        // SAFETY: as above.
        unsafe {
            if libc::fork() == 0 {
                become_link_keeper();
                libc::close(writer_fd);
                wait_for_pipe_end(reader_fd);
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                libc::_exit(0);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: reaping our own child, which exits at once.
    unsafe { libc::waitpid(middle, std::ptr::null_mut(), 0) };
    drop(reader);
    drop(links);
    drop(writer);
    Ok(())
}

/// In a forked keeper of links (see `detach_in_helper`, `hand_off_links`): a session of its
/// own, out of leaktrace's process group, and the default action for the signals leaktrace
/// handles (its handlers only note them): a SIGTERM or SIGINT ends it, as any process.
///
/// # Safety
/// Async-signal-safe calls only: fine in a child forked from a threaded process.
unsafe fn become_link_keeper() {
    // SAFETY: setsid and signal are async-signal-safe.
    unsafe {
        libc::setsid();
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}

/// Blocks until every writing end of the pipe `reader` reads from is closed (or a byte
/// comes).
///
/// # Safety
/// As for `become_link_keeper`.
unsafe fn wait_for_pipe_end(reader: i32) {
    let mut byte = 0u8;
    // SAFETY: read into a local byte; errno of this thread.
    unsafe {
        while libc::read(reader, (&raw mut byte).cast(), 1) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
    }
}

/// Detaching a uprobe waits for RCU grace periods, about 90 ms each here, and the kernel
/// does most of it under one mutex (event_mutex). From parallel threads the parts outside
/// the mutex overlap: about 15% less.
fn detach_in_parallel(links: Vec<ProbeLink>) {
    std::thread::scope(|scope| {
        for link in links {
            if std::thread::Builder::new()
                .spawn_scoped(scope, move || drop(link))
                .is_err()
            {
                // No thread to spare: this one detaches the rest in turn.
                break;
            }
        }
    });
}

impl Probes {
    /// Removes the probes as leaktrace exits, without making it wait: each link's removal
    /// waits for the kernel (an RCU grace period, 50 to 100 ms, several in a row), which
    /// made every `attach` and `run` end with half a second or more of nothing. A child
    /// process keeps a copy of each link descriptor and closes them once this process has
    /// exited (it reads a pipe whose writing end this process holds until then); this
    /// process's own copies then close at once. The probes stay in for that fraction of a
    /// second after the report is written, recording nothing anyone reads. Where no child
    /// can be started, the probes are removed here as before.
    pub fn detach_after_exit(self) {
        if let Err(err) = hand_off_links() {
            log::debug!("probes removed before exit: {err}");
        }
        drop(self);
    }
}

/// Forks the child that closes this process's BPF links after it exits (see
/// `Probes::detach_after_exit`). The child keeps nothing else: not the standard streams (a
/// reader waiting for their end would wait for it), not sockets or files.
fn hand_off_links() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, IntoRawFd};
    // Which descriptors are links, found before the fork: the child may not allocate.
    let mut keep: Vec<i32> = fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            (target.as_os_str() == "anon_inode:bpf_link").then_some(fd)
        })
        .collect();
    if keep.is_empty() {
        return Ok(());
    }
    let (reader, writer) = std::io::pipe()?;
    let writer_fd = writer.as_raw_fd();
    keep.retain(|&fd| fd != writer_fd);
    keep.push(reader.as_raw_fd());
    keep.sort_unstable();
    // SAFETY: the child runs only async-signal-safe calls (setsid, signal, close_range,
    // close, read, _exit) on memory allocated before the fork, then exits.
    let child = unsafe { libc::fork() };
    match child {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // SAFETY: as above.
            unsafe {
                become_link_keeper();
                let mut from: u32 = 0;
                for &fd in &keep {
                    let fd = fd as u32;
                    if fd > from {
                        libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32);
                    }
                    from = fd + 1;
                }
                libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
                // The writing end's number may have been a link's when the list was read
                // (a link detached meanwhile): this process must not keep its own pipe open.
                libc::close(writer_fd);
                wait_for_pipe_end(reader.as_raw_fd());
                libc::_exit(0);
            }
        }
        _ => {
            // The writing end stays open until this process exits: the child's signal.
            let _ = writer.into_raw_fd();
            drop(reader);
            Ok(())
        }
    }
}

impl Drop for Probes {
    /// Detaches everything, in a process of its own (see `detach_in_helper`), else here
    /// (see `detach_in_parallel`: 17 probes take about 1.5 s here).
    fn drop(&mut self) {
        let mut links = std::mem::take(&mut self.links);
        links.append(&mut self.allocation_links);
        let started = std::time::Instant::now();
        let count = links.len();
        if let Err(links) = detach_in_helper(links) {
            detach_in_parallel(links);
        }
        log::debug!(
            "{count} uprobes detached in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// The kernel's limit on instructions its verifier processes for one program.
pub const VERIFIER_LIMIT: u32 = 1_000_000;
/// The share of that limit each of leaktrace's programs must stay under, whatever the target:
/// a quarter, so that a kernel that explores more paths, or a target's constants that prune
/// fewer, still load.
pub const VERIFIER_BUDGET: u32 = VERIFIER_LIMIT / 4;

/// Loads program `name` (the kernel verifies it now) unless it is loaded, and notes in `loads`
/// how many instructions the verifier processed and how long the load took.
fn load_program(
    ebpf: &mut Ebpf,
    name: &str,
    loads: &mut Vec<ProgramLoad>,
) -> Result<(), AttachError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| AttachError::Load(format!("program {name} missing from the object")))?;
    if program.fd().is_ok() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let loaded = match program {
        aya::programs::Program::UProbe(program) => program.load(),
        aya::programs::Program::TracePoint(program) => program.load(),
        aya::programs::Program::PerfEvent(program) => program.load(),
        _ => {
            return Err(AttachError::Load(format!(
                "program {name} is of a kind leaktrace does not load"
            )));
        }
    };
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Err(err) = loaded {
        log::error!("the kernel refused program {name} after {load_ms:.0} ms: {err}");
        return Err(load_error(name, err));
    }
    let verified_instructions = program
        .info()
        .ok()
        .and_then(|info| info.verified_instruction_count())
        .unwrap_or(0);
    log::debug!(
        "program {name}: {verified_instructions} instructions verified ({:.1}% of the kernel's limit) in {load_ms:.0} ms",
        f64::from(verified_instructions) * 100.0 / f64::from(VERIFIER_LIMIT)
    );
    if verified_instructions > VERIFIER_BUDGET {
        log::warn!(
            "program {name} needed {verified_instructions} verified instructions, over leaktrace's budget of {VERIFIER_BUDGET}: it may not load on another kernel"
        );
    }
    loads.push(ProgramLoad {
        program: name.to_string(),
        verified_instructions,
        load_ms,
    });
    Ok(())
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, AttachError> {
    ebpf.program_mut(name)
        .ok_or_else(|| AttachError::Load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| AttachError::Load(err.to_string()))
}

fn load_error(name: &str, err: aya::programs::ProgramError) -> AttachError {
    if os_error(&err) == Some(libc::EPERM) {
        return AttachError::NotPermitted;
    }
    AttachError::Load(format!("{name}: {:#}", anyhow::Error::from(err)))
}

fn probe_error(symbol: &str, module: &str, err: aya::programs::ProgramError) -> AttachError {
    match os_error(&err) {
        Some(libc::EINVAL) => AttachError::ProbeConflict {
            function: symbol.to_string(),
            module: module.to_string(),
        },
        Some(libc::EPERM) | Some(libc::EACCES) => AttachError::NotPermitted,
        _ => AttachError::Probe {
            function: symbol.to_string(),
            module: module.to_string(),
            reason: format!("{:#}", anyhow::Error::from(err)),
        },
    }
}

/// The OS error code somewhere in an error's chain.
fn os_error(err: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(error) = current {
        if let Some(code) = error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = error.source();
    }
    None
}

/// What the kernel must offer before anything is loaded: BTF, the uprobe event source, and
/// (`tracepoints`) tracefs, mounted here when it is not.
pub fn check_kernel(tracepoints: bool) -> Result<(), AttachError> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(AttachError::KernelLacks("BTF (/sys/kernel/btf/vmlinux)"));
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Err(AttachError::KernelLacks(
            "uprobes (/sys/bus/event_source/devices/uprobe)",
        ));
    }
    if tracepoints {
        ensure_tracefs()?;
    }
    Ok(())
}

/// Syscall tracepoints are attached through tracefs, which is not always mounted: mounts it
/// at /sys/kernel/tracing, or says why that cannot be done.
fn ensure_tracefs() -> Result<(), AttachError> {
    if Path::new("/sys/kernel/tracing/events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    // SAFETY: constant NUL-terminated strings; mounting tracefs has no other effect.
    let result = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(AttachError::NoTracefs(
            io::Error::last_os_error().to_string(),
        ));
    }
    log::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ld_list_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc8a5f6000)\n\
            \tlibdemo.so => /opt/demo/libdemo.so (0x00007f0a1c000000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a1be00000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f0a1c200000)\n\
            \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ld_list(text),
            vec![
                PathBuf::from("/opt/demo/libdemo.so"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn finds_the_family_in_this_machines_libc() {
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ]
        .iter()
        .find_map(|path| fs::read(path).ok());
        let Some(libc) = libc else {
            return; // not a glibc x86_64 machine
        };
        let (functions, _, allocator) =
            find_allocator_functions(&libc, "/usr/lib/x86_64-linux-gnu/libc.so.6", &[])
                .expect("parse libc");
        assert_eq!(allocator, "glibc");
        assert!(is_allocator(&functions));
        for wanted in [
            "malloc",
            "calloc",
            "realloc",
            "reallocarray",
            "free",
            "posix_memalign",
            "valloc",
            "pvalloc",
        ] {
            assert!(
                functions.iter().any(|f| f.symbol == wanted),
                "{wanted} missing"
            );
        }
        assert!(
            functions
                .iter()
                .any(|f| f.symbol == "memalign" || f.symbol == "aligned_alloc")
        );
        let mut offsets: Vec<u64> = functions.iter().map(|f| f.file_offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), functions.len(), "aliases are listed once");
    }

    /// Every known function of every allocator `cargo xtask setup` installs is probed on an
    /// instruction the kernel emulates, or left to the probed function it calls.
    #[test]
    fn every_installed_allocator_is_probed_on_emulated_instructions() {
        let libraries = [
            ("glibc", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            ("jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
            ("tcmalloc", "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4"),
            (
                "tcmalloc",
                "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
            ),
            ("mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
            ("C++ operators", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"),
        ];
        let mut stepped = Vec::new();
        for (allocator, path) in libraries {
            let data = fs::read(path)
                .unwrap_or_else(|err| panic!("{path}: {err} (cargo xtask setup installs it)"));
            let (functions, covered, _) =
                find_allocator_functions(&data, path, &[]).expect("an ELF library");
            assert!(!functions.is_empty(), "nothing found in {path}");
            for function in &functions {
                if !function.emulated {
                    stepped.push(format!(
                        "{allocator} {} +{:#x}: {}",
                        function.symbol,
                        function.probe_offset - function.file_offset,
                        function.instruction
                    ));
                }
            }
            for wrapper in &covered {
                assert!(
                    functions.iter().all(|f| f.symbol != wrapper.symbol),
                    "{} is both probed and left to {}",
                    wrapper.symbol,
                    wrapper.callee
                );
            }
        }
        assert!(stepped.is_empty(), "single-stepped: {stepped:#?}");
    }

    #[test]
    fn a_non_elf_has_no_allocator() {
        assert!(find_allocator_functions(b"not an elf", "x", &[]).is_err());
    }
}
