//! The eBPF object holds exactly the maps, programs and globals leak-common names: user space
//! finds each by that name (leak-ebpf checks its side when it builds, see its names.rs).
use std::collections::BTreeSet;

use leak_common::map_names;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

fn object() -> object::File<'static> {
    object::File::parse(crate::probe::attach::ebpf_object())
        .expect("the eBPF object is an ELF file")
}

/// The name of the section `symbol` is in.
fn section_of(file: &object::File<'_>, symbol: &object::Symbol<'_, '_>) -> Option<String> {
    symbol
        .section_index()
        .and_then(|index| file.section_by_index(index).ok())
        .and_then(|section| section.name().ok().map(str::to_owned))
}

#[test]
fn the_objects_maps_are_the_shared_and_the_kernel_only_ones() {
    let file = object();
    // aya-ebpf's #[map] puts maps in "maps"; BTF maps would be in ".maps".
    let in_object: BTreeSet<&str> = file
        .symbols()
        .filter(|symbol| symbol.kind() == SymbolKind::Data)
        .filter(|symbol| {
            section_of(&file, symbol).is_some_and(|name| name == "maps" || name == ".maps")
        })
        .map(|symbol| symbol.name().expect("a map's name is UTF-8"))
        .collect();
    assert!(!in_object.is_empty(), "no maps found in the object");
    let listed: BTreeSet<&str> = map_names::ALL
        .iter()
        .chain(map_names::KERNEL_ONLY)
        .copied()
        .collect();
    assert_eq!(
        map_names::ALL.len() + map_names::KERNEL_ONLY.len(),
        listed.len(),
        "a map is listed twice in map_names::ALL and KERNEL_ONLY"
    );
    assert_eq!(
        in_object,
        listed,
        "in the object, not listed: {:?}; listed, not in the object: {:?}",
        in_object.difference(&listed).collect::<Vec<_>>(),
        listed.difference(&in_object).collect::<Vec<_>>()
    );
}

#[test]
fn the_objects_programs_and_globals_are_leak_commons() {
    let file = object();
    // Programs: global functions outside .text, whose section says the program type
    // (uprobe, tracepoint, perf_event…); .text holds the BPF-to-BPF functions.
    let programs: BTreeSet<&str> = file
        .symbols()
        .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.is_global())
        .filter(|symbol| section_of(&file, symbol).is_some_and(|name| name != ".text"))
        .map(|symbol| symbol.name().expect("a program's name is UTF-8"))
        .collect();
    // Globals: global data in the sections aya turns into global data maps.
    let globals: BTreeSet<&str> = file
        .symbols()
        .filter(|symbol| symbol.kind() == SymbolKind::Data && symbol.is_global())
        .filter(|symbol| {
            section_of(&file, symbol).is_some_and(|name| {
                [".rodata", ".data", ".bss"]
                    .iter()
                    .any(|prefix| name == *prefix || name.starts_with(&format!("{prefix}.")))
            })
        })
        .map(|symbol| symbol.name().expect("a global's name is UTF-8"))
        .collect();
    let expected_programs: BTreeSet<&str> = leak_common::ALL_PROGRAMS.iter().copied().collect();
    let expected_globals: BTreeSet<&str> = leak_common::ALL_GLOBALS.iter().copied().collect();
    assert_eq!(programs, expected_programs);
    assert_eq!(globals, expected_globals);
}
