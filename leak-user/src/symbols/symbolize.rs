//! Addresses → frames (function, file, line, module, inlined calls) with blazesym.
//!
//! The target's executable mappings are recorded while it is alive, and each mapped file is
//! kept open, so stacks can be symbolized after the target exits, after a library is
//! dlclose'd, and for processes in other mount namespaces.
use std::{collections::HashMap, fs::File, os::fd::AsRawFd, path::PathBuf};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer as Blazesym,
    source::{Elf, Source},
};

use crate::{
    model::{Frame, RuntimeInfo},
    symbols::perf_map::{self, PerfMap},
    sys::procfs::{self, Mapping},
};

/// Identity of a mapped file (device and inode), stable across renames and namespaces.
type FileId = (String, u64);

/// The target's executable file mappings, and its perf map for JIT-compiled code.
#[derive(Default)]
pub struct Modules {
    mappings: Vec<Mapping>,
    files: HashMap<FileId, File>,
    perf_map: PerfMap,
    /// A V8 runtime (node, or a program linking libnode) was seen among the mappings.
    node: bool,
}

impl Modules {
    /// Re-reads /proc/PID/maps. Mappings that disappeared are kept (unless something new
    /// overlaps them) so stacks recorded earlier still resolve.
    pub fn refresh(&mut self, pid: u32) -> std::io::Result<()> {
        let executable: Vec<Mapping> = procfs::read_maps(pid)?
            .into_iter()
            .filter(|mapping| mapping.executable)
            .collect();
        self.perf_map
            .refresh(pid, perf_map::namespaced_pid(pid), |address| {
                executable.iter().any(|mapping| mapping.contains(address))
            });
        let current: Vec<Mapping> = executable.into_iter().filter(Mapping::is_file).collect();
        self.node |= current.iter().any(|mapping| is_node(mapping.file_path()));
        for mapping in &current {
            let id = (mapping.dev.clone(), mapping.inode);
            if self.files.contains_key(&id) {
                continue;
            }
            let opened = File::open(procfs::map_file_path(pid, mapping))
                .or_else(|_| File::open(procfs::path_in_root(pid, mapping.file_path())));
            if let Ok(file) = opened {
                self.files.insert(id, file);
            }
        }
        let mut merged: Vec<Mapping> = self
            .mappings
            .drain(..)
            .filter(|old| {
                !current
                    .iter()
                    .any(|new| new.start < old.end && old.start < new.end)
            })
            .collect();
        merged.extend(current);
        merged.sort_by_key(|mapping| mapping.start);
        self.mappings = merged;
        Ok(())
    }

    /// The mapping holding `address`, if any.
    pub fn find(&self, address: u64) -> Option<&Mapping> {
        let index = self
            .mappings
            .partition_point(|mapping| mapping.start <= address);
        let mapping = self.mappings.get(index.checked_sub(1)?)?;
        mapping.contains(address).then_some(mapping)
    }

    /// The runtimes seen, with how their JIT code is named.
    pub fn runtimes(&self) -> Vec<RuntimeInfo> {
        if !self.node {
            return Vec::new();
        }
        let perf_map = self
            .perf_map
            .path
            .as_ref()
            .map(|path| path.display().to_string());
        let hint = perf_map.is_none().then(|| {
            "no perf map (/tmp/perf-PID.map): JavaScript functions show as unnamed [jit] frames; start node with --perf-basic-prof --interpreted-frames-native-stack".to_string()
        });
        vec![RuntimeInfo {
            runtime: "node".into(),
            version: None,
            perf_map,
            hint,
            heap: None,
        }]
    }

    fn open_path(&self, mapping: &Mapping) -> Option<PathBuf> {
        let file = self.files.get(&(mapping.dev.clone(), mapping.inode))?;
        Some(PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())))
    }
}

/// Symbolizes addresses, caching results for the session.
pub struct Symbolizer {
    blazesym: Blazesym,
    cache: HashMap<(FileId, u64), Vec<Frame>>,
    /// JIT frames, named when first seen: code addresses are reused once V8 collects code,
    /// and a stack is named best by the perf map as it was when the stack was new.
    jit: HashMap<u64, Frame>,
    /// Addresses that could not be symbolized (no module, no symbol).
    pub failures: u64,
    /// Names Python frames, when the target runs CPython.
    pub python: Option<crate::symbols::python::PythonNames>,
    /// Go's own symbol tables, per file (None: the file has none).
    go_tables: HashMap<FileId, Option<GoTable>>,
}

/// A Go binary's `.gopclntab`, and where its file offsets are in memory.
struct GoTable {
    /// The whole file, mapped, and where `.gopclntab` is in it.
    data: crate::sys::file_bytes::FileBytes,
    section: std::ops::Range<usize>,
    text: u64,
    /// Loadable segments: (file offset, file size, virtual address).
    segments: Vec<(u64, u64, u64)>,
}

impl GoTable {
    fn read(path: &std::path::Path) -> Option<GoTable> {
        use object::{Object, ObjectSection, ObjectSegment};
        let data = crate::sys::file_bytes::open(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let (offset, size) = file.section_by_name(".gopclntab")?.file_range()?;
        let start = usize::try_from(offset).ok()?;
        let section = start..start.checked_add(usize::try_from(size).ok()?)?;
        data.get(section.clone())?;
        let text = file
            .section_by_name(".text")
            .map_or(0, |text| text.address());
        let segments = file
            .segments()
            .map(|segment| {
                let (start, size) = segment.file_range();
                (start, size, segment.address())
            })
            .collect();
        drop(file);
        Some(GoTable {
            data,
            section,
            text,
            segments,
        })
    }

    /// The location of the instruction before return address `offset` (a file offset).
    fn lookup(&self, offset: u64) -> Option<crate::sys::pclntab::GoLocation> {
        let &(start, _, address) = self
            .segments
            .iter()
            .find(|(start, size, _)| (*start..start + size).contains(&offset))?;
        let pc = offset - start + address;
        crate::sys::pclntab::Pclntab::parse(&self.data[self.section.clone()], self.text)?
            .lookup(pc.saturating_sub(1))
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Symbolizer {
            blazesym: Blazesym::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .build(),
            cache: HashMap::new(),
            jit: HashMap::new(),
            failures: 0,
            python: None,
            go_tables: HashMap::new(),
        }
    }

    /// Frames for each return address of a stack, innermost first; an address inside
    /// inlined code expands into several frames. Python frames recorded with the stack take
    /// the place of the interpreter's frames that ran them.
    pub fn symbolize_stack(&mut self, modules: &Modules, addresses: &[u64]) -> Vec<Frame> {
        let (python, native): (Vec<u64>, Vec<u64>) = addresses
            .iter()
            .partition(|&&address| leak_common::python_frame(address).is_some());
        let frames = self.symbolize_native(modules, &native);
        if python.is_empty() {
            return frames;
        }
        let named: Vec<(Frame, bool)> = python
            .iter()
            .filter_map(|&entry| leak_common::python_frame(entry))
            .map(|(code, instruction, is_entry)| {
                let frame = match &mut self.python {
                    Some(names) => names.frame(code, instruction),
                    None => Frame {
                        module: Some(crate::symbols::python::PYTHON_MODULE.into()),
                        address: code,
                        ..Frame::default()
                    },
                };
                (frame, is_entry)
            })
            .collect();
        splice_python(frames, named)
    }

    fn symbolize_native(&mut self, modules: &Modules, addresses: &[u64]) -> Vec<Frame> {
        let _ = self.prefetch(modules, addresses);
        let mut frames = Vec::new();
        for &address in addresses {
            match modules.find(address) {
                Some(mapping) => {
                    let key = (
                        (mapping.dev.clone(), mapping.inode),
                        address - mapping.start + mapping.offset,
                    );
                    match self.cache.get(&key) {
                        Some(cached) => frames.extend(cached.iter().map(|frame| Frame {
                            address,
                            ..frame.clone()
                        })),
                        None => frames.push(unknown_in_module(mapping, address)),
                    }
                }
                None => {
                    let named = match self.jit.get(&address) {
                        Some(frame) => Some(frame.clone()),
                        None => modules.perf_map.frame(address).inspect(|frame| {
                            self.jit.insert(address, frame.clone());
                        }),
                    };
                    frames.push(named.unwrap_or(Frame {
                        address,
                        ..Frame::default()
                    }));
                }
            }
        }
        frames
    }

    /// Symbolizes every not-yet-cached address, one blazesym call per module; returns how
    /// many were new. Passing all stacks' addresses at once saves a call per stack.
    pub fn prefetch(&mut self, modules: &Modules, addresses: &[u64]) -> usize {
        let mut by_module: HashMap<FileId, (Mapping, Vec<u64>)> = HashMap::new();
        for &address in addresses {
            let Some(mapping) = modules.find(address) else {
                continue;
            };
            let id = (mapping.dev.clone(), mapping.inode);
            let file_offset = address - mapping.start + mapping.offset;
            if self.cache.contains_key(&(id.clone(), file_offset)) {
                continue;
            }
            by_module
                .entry(id)
                .or_insert_with(|| (mapping.clone(), Vec::new()))
                .1
                .push(file_offset);
        }
        let mut new = 0;
        for (id, (mapping, mut offsets)) in by_module {
            offsets.sort_unstable();
            offsets.dedup();
            new += offsets.len();
            let module_name = mapping.file_path().to_string();
            let Some(path) = modules.open_path(&mapping) else {
                for offset in offsets {
                    self.failures += 1;
                    self.cache.insert(
                        (id.clone(), offset),
                        vec![unknown_frame(&module_name, offset)],
                    );
                }
                continue;
            };
            // Return addresses point after the call; look up the call instruction itself.
            let lookups: Vec<u64> = offsets
                .iter()
                .map(|offset| offset.saturating_sub(1))
                .collect();
            let source = Source::Elf(Elf::new(path.clone()));
            let results = self
                .blazesym
                .symbolize(&source, Input::FileOffset(&lookups));
            for (index, offset) in offsets.iter().enumerate() {
                let frames = match results.as_ref().ok().and_then(|all| all.get(index)) {
                    Some(Symbolized::Sym(sym)) => {
                        let mut frames = Vec::with_capacity(1 + sym.inlined.len());
                        // blazesym lists inlined calls outermost first; frames go innermost
                        // first. Each location is where that function was executing.
                        for inlined in sym.inlined.iter().rev() {
                            let (file, line) = code_location(inlined.code_info.as_ref());
                            frames.push(Frame {
                                function: Some(inlined.name.to_string()),
                                file,
                                line,
                                module: Some(module_name.clone()),
                                module_offset: Some(*offset),
                                inlined: true,
                                ..Frame::default()
                            });
                        }
                        let (file, line) = code_location(sym.code_info.as_deref());
                        frames.push(Frame {
                            function: Some(sym.name.to_string()),
                            file,
                            line,
                            module: Some(module_name.clone()),
                            module_offset: Some(*offset),
                            ..Frame::default()
                        });
                        frames
                    }
                    _ => match go_location(&mut self.go_tables, &id, &path, *offset) {
                        // A stripped Go binary: its own table still names it.
                        Some(location) => vec![Frame {
                            function: Some(location.function),
                            file: location.file,
                            line: location.line,
                            module: Some(module_name.clone()),
                            module_offset: Some(*offset),
                            ..Frame::default()
                        }],
                        None => {
                            self.failures += 1;
                            vec![unknown_frame(&module_name, *offset)]
                        }
                    },
                };
                self.cache.insert((id.clone(), *offset), frames);
            }
        }
        new
    }
}

/// Where a return address of a Go binary without ELF symbols is, from its `.gopclntab`
/// (read once per file into `tables`).
fn go_location(
    tables: &mut HashMap<FileId, Option<GoTable>>,
    id: &FileId,
    path: &std::path::Path,
    offset: u64,
) -> Option<crate::sys::pclntab::GoLocation> {
    tables
        .entry(id.clone())
        .or_insert_with(|| GoTable::read(path))
        .as_ref()?
        .lookup(offset)
}

/// CPython's evaluator: one activation runs the Python frames from the innermost one up to
/// the first entered from C.
const PYTHON_EVALUATOR: &str = "_PyEval_EvalFrameDefault";

/// Native frames with the Python frames (innermost first, each with "entered from C") put
/// in place of the evaluator activations that ran them. Python frames left over (the native
/// walk ended early, or the evaluator is not named) go at the end.
pub fn splice_python(native: Vec<Frame>, python: Vec<(Frame, bool)>) -> Vec<Frame> {
    let mut python = python.into_iter().peekable();
    let mut frames = Vec::with_capacity(native.len() + python.len());
    for frame in native {
        let evaluator = !frame.inlined && frame.function.as_deref() == Some(PYTHON_EVALUATOR);
        if evaluator && python.peek().is_some() {
            for (python_frame, is_entry) in python.by_ref() {
                frames.push(python_frame);
                if is_entry {
                    break;
                }
            }
            continue;
        }
        frames.push(frame);
    }
    frames.extend(python.map(|(frame, _)| frame));
    frames
}

/// Whether a mapped file is a V8 runtime: the node executable, or libnode.
fn is_node(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "node" || name == "nodejs" || name.starts_with("libnode.so")
}

fn code_location(
    info: Option<&blazesym::symbolize::CodeInfo<'_>>,
) -> (Option<String>, Option<u32>) {
    match info {
        Some(info) => (Some(info.to_path().display().to_string()), info.line),
        None => (None, None),
    }
}

fn unknown_frame(module: &str, offset: u64) -> Frame {
    Frame {
        module: Some(module.to_string()),
        module_offset: Some(offset),
        ..Frame::default()
    }
}

fn unknown_in_module(mapping: &Mapping, address: u64) -> Frame {
    Frame {
        address,
        ..unknown_frame(
            mapping.file_path(),
            address - mapping.start + mapping.offset,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    #[unsafe(no_mangle)]
    extern "C" fn leaktrace_symbolize_probe_fn() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn symbolizes_a_function_of_this_test_binary() {
        let pid = std::process::id();
        let mut modules = Modules::default();
        modules.refresh(pid).expect("read own maps");
        let address = leaktrace_symbolize_probe_fn as *const () as usize as u64;
        // A return address one byte past the function start still lands in it after -1.
        let frames = Symbolizer::new().symbolize_stack(&modules, &[address + 1]);
        assert_eq!(
            frames.last().and_then(|frame| frame.function.as_deref()),
            Some("leaktrace_symbolize_probe_fn")
        );
        assert!(
            frames[0]
                .module
                .as_deref()
                .is_some_and(|m| m.contains("leaktrace"))
        );
    }

    #[test]
    fn unmapped_address_gives_a_bare_frame() {
        let modules = Modules::default();
        let frames = Symbolizer::new().symbolize_stack(&modules, &[0x1234]);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].address, 0x1234);
        assert!(frames[0].function.is_none() && frames[0].module.is_none());
    }

    #[test]
    fn python_frames_replace_the_evaluator_that_ran_them() {
        let native = |function: &str| Frame {
            function: Some(function.into()),
            ..Frame::default()
        };
        let python = |function: &str, is_entry| {
            (
                Frame {
                    function: Some(function.into()),
                    module: Some(crate::symbols::python::PYTHON_MODULE.into()),
                    ..Frame::default()
                },
                is_entry,
            )
        };
        let frames = splice_python(
            vec![
                native("malloc"),
                native(PYTHON_EVALUATOR),
                native("builtin_call"),
                native(PYTHON_EVALUATOR),
                native("main"),
            ],
            vec![
                python("cache_request", false),
                python("handle", true),
                python("main", false),
                python("<module>", true),
                python("lost", false),
            ],
        );
        let names: Vec<&str> = frames
            .iter()
            .map(|frame| frame.function.as_deref().unwrap_or("?"))
            .collect();
        assert_eq!(
            names,
            [
                "malloc",
                "cache_request",
                "handle",
                "builtin_call",
                "main",
                "<module>",
                "main",
                "lost"
            ]
        );
    }
}
