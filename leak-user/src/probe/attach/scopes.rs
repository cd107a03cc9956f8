//! Finding the functions a --scope names in the target's files, and where their probes go.
use std::path::PathBuf;

use leak_common::NO_ARG;

use crate::{
    model::scope::ScopeSpec,
    probe::attach::error::AttachError,
    probe::attach::functions::{argument_or_none, closest_in_files, function_symbols, probe_point},
    probe::probe_site,
};

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
