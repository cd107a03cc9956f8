//! pprof profile (gzipped profile.proto of github.com/google/pprof) of the memory each stack
//! holds and has allocated, for `go tool pprof`, Grafana Pyroscope and other pprof viewers.
//! The sample types are Go's heap profile names, so viewers show them as memory.
use std::{collections::HashMap, io::Write as _};

use flate2::{Compression, write::GzEncoder};

use crate::{
    export::report::folded::UNKNOWN_STACK,
    model::{Frame, Report, StackReport},
};

mod profile_proto;
#[cfg(test)]
mod tests;

pub use profile_proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// Per-sample values, in this order, as (type, unit).
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("inuse_space", "bytes"),
    ("inuse_objects", "count"),
    ("alloc_space", "bytes"),
    ("alloc_objects", "count"),
];

/// After a reachability scan, each class's bytes and blocks as of the scan (see
/// `model::Reachability`), after the types above, in this order. Pick one with
/// `go tool pprof -sample_index=lost_space`.
pub const REACHABILITY_SAMPLE_TYPES: [(&str, &str); 8] = [
    ("lost_space", "bytes"),
    ("lost_objects", "count"),
    ("indirectly_lost_space", "bytes"),
    ("indirectly_lost_objects", "count"),
    ("interior_space", "bytes"),
    ("interior_objects", "count"),
    ("reachable_space", "bytes"),
    ("reachable_objects", "count"),
];

/// What pprof opens on: the memory still held.
pub const DEFAULT_SAMPLE_TYPE: &str = "inuse_space";

pub fn render(report: &Report) -> Vec<u8> {
    gzip(&prost::Message::encode_to_vec(&profile(report)))
}

/// The report as a pprof profile, before encoding.
pub fn profile(report: &Report) -> Profile {
    let mut builder = Builder::default();
    let scanned = report.reachability_scan.is_some();
    let reachability_types: &[(&str, &str)] = if scanned {
        &REACHABILITY_SAMPLE_TYPES
    } else {
        &[]
    };
    let sample_type = SAMPLE_TYPES
        .iter()
        .chain(reachability_types)
        .map(|(kind, unit)| builder.value_type(kind, unit))
        .collect();
    // leaktrace records every allocation rather than sampling them: a period of one byte.
    let period_type = builder.value_type("space", "bytes");
    let default_sample_type = builder.strings.intern(DEFAULT_SAMPLE_TYPE);
    let mut comments = vec![format!(
        "leaktrace: pid {} ({}) traced for {:.1}s",
        report.target.pid,
        report.target.describe(),
        report.duration_s
    )];
    if report.omitted_stacks > 0 {
        comments.push(format!(
            "{} more stacks holding {} bytes are not included (raise --top)",
            report.omitted_stacks, report.omitted_outstanding_bytes
        ));
    }
    if let Some(scan) = &report.reachability_scan {
        comments.push(format!(
            "reachability: {} blocks classified, {} bytes read, target stopped {:.1} ms{}",
            scan.blocks,
            scan.scanned_bytes,
            scan.paused_ms,
            if scan.truncated {
                " (--scan-limit reached: some lost blocks may not be)"
            } else {
                ""
            }
        ));
    }
    let comment = comments
        .iter()
        .map(|comment| builder.strings.intern(comment))
        .collect();
    for stack in &report.stacks {
        builder.add_stack(stack, scanned);
    }
    Profile {
        sample_type,
        period_type: Some(period_type),
        period: 1,
        default_sample_type,
        comment,
        duration_nanos: (report.duration_s * 1e9) as i64,
        ..builder.finish()
    }
}

/// The string table: every name in a profile is an index into it.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Default for Strings {
    fn default() -> Self {
        let mut strings = Strings {
            table: Vec::new(),
            index: HashMap::new(),
        };
        // pprof requires entry 0 to be the empty string.
        strings.intern("");
        strings
    }
}

impl Strings {
    fn intern(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.index.get(text) {
            return index;
        }
        let index = self.table.len() as i64;
        self.table.push(text.to_string());
        self.index.insert(text.to_string(), index);
        index
    }
}

/// What one module's frames showed, to fill its Mapping truthfully.
struct ModuleSeen {
    mapping: Mapping,
    load_base: LoadBase,
    highest_address: u64,
}

/// The address where a module's file offset 0 would be, as its frames tell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LoadBase {
    NoFrameYet,
    At(u64),
    /// Frames disagree or lack a module offset.
    Unknown,
}

/// A location is one address and the functions executing there.
type LocationKey = (u64, u64, Vec<(u64, i64)>);

/// Builds the profile's tables, handing out ids in the order things are first seen so the
/// output is the same for the same report.
#[derive(Default)]
struct Builder {
    strings: Strings,
    samples: Vec<Sample>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<LocationKey, u64>,
    modules: Vec<ModuleSeen>,
    module_indexes: HashMap<String, usize>,
}

impl Builder {
    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.strings.intern(kind),
            unit: self.strings.intern(unit),
        }
    }

    /// One sample: the stack's values, and when the report was `scanned`, its classes'.
    fn add_stack(&mut self, stack: &StackReport, scanned: bool) {
        let location_id = if stack.frames.is_empty() {
            vec![self.unknown_stack_location()]
        } else {
            // Frames inlined into a function share its return address: one location each.
            stack
                .frames
                .split_inclusive(|frame| !frame.inlined)
                .map(|inlined_and_caller| self.location(inlined_and_caller))
                .collect()
        };
        let label = [
            ("verdict", stack.verdict.as_str()),
            ("origin", stack.origin.as_str()),
        ]
        .into_iter()
        .map(|(key, value)| Label {
            key: self.strings.intern(key),
            str: self.strings.intern(value),
        })
        .collect();
        let mut values = vec![
            stack.outstanding_bytes,
            stack.outstanding_allocs,
            stack.total_bytes,
            stack.total_allocs,
        ];
        if scanned {
            let classes = stack.reachability.unwrap_or_default().classes();
            values.extend(
                classes
                    .iter()
                    .flat_map(|(_, _, totals)| [totals.bytes, totals.blocks]),
            );
        }
        self.samples.push(Sample {
            location_id,
            value: values
                .into_iter()
                .map(|value| i64::try_from(value).unwrap_or(i64::MAX))
                .collect(),
            label,
        });
    }

    /// The location of one return address: `frames` are the functions inlined there,
    /// innermost first, then the function that holds them, as pprof orders lines.
    fn location(&mut self, frames: &[Frame]) -> u64 {
        let Some(outer) = frames.last() else {
            return self.unknown_stack_location();
        };
        let line: Vec<Line> = frames
            .iter()
            .filter_map(|frame| {
                let name = frame.function.as_deref()?;
                Some(Line {
                    function_id: self.function(name, frame.file.as_deref()),
                    line: frame.line.map(i64::from).unwrap_or(0),
                })
            })
            .collect();
        let mapping_id = match &outer.module {
            Some(module) => self.module_seen(module, frames, !line.is_empty()),
            None => 0,
        };
        self.intern_location(outer.address, mapping_id, line)
    }

    /// Stacks the kernel could not record still hold memory; they get one named location.
    fn unknown_stack_location(&mut self) -> u64 {
        let line = vec![Line {
            function_id: self.function(UNKNOWN_STACK, None),
            line: 0,
        }];
        self.intern_location(0, 0, line)
    }

    fn intern_location(&mut self, address: u64, mapping_id: u64, line: Vec<Line>) -> u64 {
        let key = (
            address,
            mapping_id,
            line.iter().map(|l| (l.function_id, l.line)).collect(),
        );
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            mapping_id,
            address,
            line,
        });
        self.location_ids.insert(key, id);
        id
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let name = self.strings.intern(name);
        let filename = self.strings.intern(file.unwrap_or(""));
        if let Some(&id) = self.function_ids.get(&(name, filename)) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(Function {
            id,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        self.function_ids.insert((name, filename), id);
        id
    }

    /// The mapping id of `module`, noting what `frames` (one location in it) tell about it.
    fn module_seen(&mut self, module: &str, frames: &[Frame], symbolized: bool) -> u64 {
        let index = match self.module_indexes.get(module) {
            Some(&index) => index,
            None => {
                let index = self.modules.len();
                let filename = self.strings.intern(module);
                self.modules.push(ModuleSeen {
                    mapping: Mapping {
                        id: index as u64 + 1,
                        filename,
                        has_functions: true,
                        has_filenames: true,
                        has_line_numbers: true,
                        ..Mapping::default()
                    },
                    load_base: LoadBase::NoFrameYet,
                    highest_address: 0,
                });
                self.module_indexes.insert(module.to_string(), index);
                index
            }
        };
        let seen = &mut self.modules[index];
        // A mapping "has" a kind of symbol information only if every location in it has it.
        let mapping = &mut seen.mapping;
        mapping.has_functions &= symbolized;
        mapping.has_filenames &= frames.iter().all(|frame| frame.file.is_some());
        mapping.has_line_numbers &= frames.iter().all(|frame| frame.line.is_some());
        for frame in frames {
            let base = frame
                .module_offset
                .and_then(|offset| frame.address.checked_sub(offset))
                .map_or(LoadBase::Unknown, LoadBase::At);
            seen.load_base = match seen.load_base {
                LoadBase::NoFrameYet => base,
                known if known == base => known,
                _ => LoadBase::Unknown,
            };
            seen.highest_address = seen.highest_address.max(frame.address);
        }
        mapping.id
    }

    fn finish(self) -> Profile {
        let mapping = self
            .modules
            .into_iter()
            .map(|seen| {
                let mut mapping = seen.mapping;
                // The symbolizer resolves inlined calls whenever it finds the function.
                mapping.has_inline_frames = mapping.has_functions;
                // One range from the module's load address, file offset 0, lets pprof map
                // addresses back to file offsets to symbolize again with the binary.
                if let LoadBase::At(base) = seen.load_base {
                    mapping.memory_start = base;
                    mapping.memory_limit = seen.highest_address.saturating_add(1);
                }
                mapping
            })
            .collect();
        Profile {
            sample: self.samples,
            mapping,
            location: self.locations,
            function: self.functions,
            string_table: self.strings.table,
            ..Profile::default()
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}
