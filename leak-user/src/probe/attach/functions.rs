//! The functions an ELF file defines, and where a probe on one goes: what finding an
//! allocator's functions and a --scope's share.
use std::{collections::BTreeMap, path::PathBuf};

use leak_common::NO_ARG;
use object::{Object, ObjectSymbol, SymbolKind};

use crate::{probe::probe_site, sys::elf::virtual_to_file_offset};

/// A function symbol: where it starts and how long it is (0: unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FnSymbol {
    pub address: u64,
    pub size: u64,
}

/// Every function an ELF file defines, by name (versioned names in .symtab, like
/// "malloc@@GLIBC_2.2.5", without their version).
pub(super) fn function_symbols(file: &object::File<'_>) -> BTreeMap<String, FnSymbol> {
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
pub(super) struct ProbePoint {
    pub file_offset: u64,
    pub placement: probe_site::Placement,
    pub instruction: String,
    pub emulated: bool,
}

/// Functions longer than this are placed from their first bytes only (no internal jumps
/// are looked for beyond them; the path followed is far shorter).
const MAX_FUNCTION_SCANNED: u64 = 64 << 10;

/// The file offset of `function` and where its probe goes (see `probe_site`).
pub(super) fn probe_point(
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

/// An argument register the entry program reads (the first six), else NO_ARG.
pub(super) fn argument_or_none(argument: u8) -> u8 {
    if argument < 6 { argument } else { NO_ARG }
}

/// "; closest: a, b" for an error about `wanted`, a name that matched nothing in `files`:
/// the names they define closest to it, or "". Worked out only then: it takes every
/// symbol of every file demangled.
pub(super) fn closest_in_files(wanted: &str, files: &[(PathBuf, String)]) -> String {
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
