//! The allocator functions of one ELF file: which of the functions leaktrace knows (and the
//! user named) it defines, where each one's probe goes, and which are left to a function
//! they call.
use std::collections::BTreeMap;

use leak_common::{AllocFn, CallShape, NO_ARG};

use crate::{
    model::allocators::{self, KnownFn},
    probe::attach::functions::{argument_or_none, function_symbols, probe_point},
    probe::probe_site,
    sys::elf::virtual_to_file_offset,
};

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

/// Finds the allocator functions leaktrace knows, and the user-named `extra` ones, in an
/// ELF image; returns them with the allocator the module is. Aliases at the same address
/// (memalign and aligned_alloc in glibc, malloc and tc_malloc) are listed once.
pub(super) fn find_allocator_functions(
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
fn reads_of(shape: CallShape) -> probe_site::Reads {
    probe_site::Reads {
        arguments: [shape.size, shape.count, shape.ptr, shape.out].map(argument_or_none),
        product: (shape.count != NO_ARG).then_some((shape.count, shape.size)),
        stack_pointer: shape.func.has_return_probe(),
    }
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

fn is_cxx_operator(symbol: &str) -> bool {
    allocators::CXX_NEW_SYMBOLS.contains(&symbol)
        || allocators::CXX_DELETE_SYMBOLS.contains(&symbol)
}

/// A module is an allocator if, besides C++ operators, it both allocates and frees.
pub(super) fn is_allocator(functions: &[AllocatorFn]) -> bool {
    let own = || functions.iter().filter(|f| !is_cxx_operator(&f.symbol));
    own().any(|f| f.shape.func == AllocFn::Free) && own().any(|f| f.shape.func != AllocFn::Free)
}

/// The probes a module gets: all it has if it is an allocator; otherwise its C++ operators
/// (libstdc++, or a program that defines its own) and the user-named functions.
pub(super) fn probes_for_module(
    functions: Vec<AllocatorFn>,
    extra: &[KnownFn],
) -> Vec<AllocatorFn> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
