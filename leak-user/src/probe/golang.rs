//! Go programs: where the runtime's probes go, the runtime's struct layout, and goroutines per
//! creation site.
//!
//! A Go program allocates from its own heap and runs goroutines the kernel never sees, so
//! leaktrace probes the runtime itself (see the Go section of leak-common): the functions come
//! from the binary's symbol table, the struct offsets the probes read from its DWARF, and the
//! goroutines alive before tracing began from the runtime's list of every goroutine
//! (`runtime.allgs`), read once at attach.
use std::collections::HashMap;
use std::path::PathBuf;

use gimli::{EndianSlice, LittleEndian};
use iced_x86::{Decoder, DecoderOptions, FlowControl};
use leak_common::GoLayout;
use object::{Object, ObjectSection, ObjectSymbol};

use crate::model::go_runtime::LARGE_CALLERS;
use crate::model::go_runtime::{self, ProfileAddresses};
use crate::probe::probe_site::probe_offset;

/// The runtime's page (`_PageSize`): 8 KiB on every platform Go supports.
const GO_PAGE_BYTES: u64 = 8192;
/// RAX's argument slot (leak_common::ARGUMENT_SLOTS): Go's first result register.
const RAX_SLOT: u8 = 6;

/// Functions of the runtime leaktrace probes.
pub const NEWPROC: &str = "runtime.newproc";
pub const GOEXIT: &str = "runtime.goexit0";
pub const SPAN_FULL: &str = "runtime.(*mcache).refill";
pub const SPAN_FREE: &str = "runtime.(*mheap).freeSpanLocked";
pub const ALLOC_LARGE: &str = "runtime.(*mcache).allocLarge";

/// A probe point in the executable: the symbol it stands for and its offset in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoProbe {
    pub symbol: String,
    pub file_offset: u64,
    /// The probe sits on the function's stack-check branch (`jbe` to morestack), which
    /// the kernel emulates: the program skips the pass that is about to grow the stack (the
    /// function then starts over and passes the probe again).
    pub on_stack_check: bool,
    /// The probe after allocLarge, moved past the return: the argument slot the span is in
    /// there (see leak_common::GO_SPAN_IN_SLOT); None: RAX, at the return.
    pub span_slot: Option<u8>,
    /// Bytes from the start of the function probed, the instruction there, and whether the
    /// kernel emulates it.
    pub offset_in_function: u64,
    pub instruction: String,
    pub emulated: bool,
}

/// What leaktrace found in a Go executable.
#[derive(Clone, Debug, Default)]
pub struct GoProgram {
    /// `runtime.buildVersion`, e.g. "go1.19.8".
    pub version: Option<String>,
    /// The offsets the probes read; None without DWARF (a binary built with `-ldflags=-w`).
    pub layout: Option<GoLayout>,
    /// `runtime.g.atomicstatus`, for reading `allgs`.
    pub g_status: Option<u64>,
    /// Virtual address of `runtime.allgs` (a slice of *g).
    pub allgs: Option<u64>,
    pub newproc: Option<GoProbe>,
    pub goexit: Option<GoProbe>,
    pub span_full: Option<GoProbe>,
    pub span_free: Option<GoProbe>,
    /// The instructions just after each call to `(*mcache).allocLarge`.
    pub large_spans: Vec<GoProbe>,
    /// Where the runtime's own heap profile is (see go_profile), when its variables and
    /// layout are known.
    pub profile: Option<ProfileAddresses>,
    /// Why it cannot be read, when it cannot.
    pub profile_unknown: Option<String>,
}

impl GoProgram {
    /// Reads a Go executable; None when the ELF image is not one.
    pub fn inspect(elf: &[u8]) -> Option<GoProgram> {
        let file = object::File::parse(elf).ok()?;
        let is_go = file.section_by_name(".gopclntab").is_some()
            || file.section_by_name(".go.buildinfo").is_some();
        if !is_go {
            return None;
        }
        let symbols = go_symbols(&file);
        let probe = |name: &str| entry_probe(&file, elf, &symbols, name);
        let mut program = GoProgram {
            version: go_version(&file, elf, &symbols),
            allgs: symbols.get("runtime.allgs").map(|(address, _)| *address),
            newproc: probe(NEWPROC),
            goexit: probe(GOEXIT),
            span_full: probe(SPAN_FULL),
            span_free: probe(SPAN_FREE),
            ..GoProgram::default()
        };
        let offsets = runtime_struct_offsets(&file);
        program.find_layout(&offsets);
        program.find_profile(&file, elf, &symbols, &offsets);
        program.large_spans = large_span_probes(&file, elf, &symbols, program.layout);
        Some(program)
    }

    /// The struct layout the probes read, and `g.atomicstatus`: from DWARF, else those of a
    /// release leaktrace was checked against.
    fn find_layout(&mut self, offsets: &StructOffsets) {
        let field = |owner: &str, name: &str| struct_field(offsets, owner, name);
        self.g_status = field("runtime.g", "atomicstatus");
        if let (Some(g_gopc), Some(mcache_alloc), Some(span_start), Some(span_npages)) = (
            field("runtime.g", "gopc"),
            field("runtime.mcache", "alloc"),
            field("runtime.mspan", "startAddr"),
            field("runtime.mspan", "npages"),
        ) {
            self.layout = Some(GoLayout {
                g_gopc,
                mcache_alloc,
                span_start,
                span_npages,
                page_bytes: GO_PAGE_BYTES,
            });
        } else if let Some((layout, status)) = self.version.as_deref().and_then(known_layout) {
            // No DWARF (-ldflags=-w): the layout of a release leaktrace was checked against.
            self.layout = Some(layout);
            self.g_status = Some(status);
        }
    }

    /// Where the runtime's own heap profile is (`profile`), or why it cannot be read
    /// (`profile_unknown`).
    fn find_profile(
        &mut self,
        file: &object::File<'_>,
        elf: &[u8],
        symbols: &HashMap<String, (u64, u64)>,
        offsets: &StructOffsets,
    ) {
        let field = |owner: &str, name: &str| struct_field(offsets, owner, name);
        let known_release = self.version.as_deref().and_then(known_layout).is_some();
        // The heap profile: its layout from DWARF, else that of a release checked against it.
        let profile_layout = match field("runtime.bucket", "nstk") {
            Some(nstk) => {
                nstk == go_runtime::BUCKET_NSTK_OFFSET
                    && field("runtime.memRecord", "future")
                        == Some(go_runtime::MEM_RECORD_FUTURE_OFFSET)
                    && field("runtime.memRecordCycle", "free_bytes")
                        == Some(go_runtime::CYCLE_FREE_BYTES_OFFSET)
            }
            None => known_release,
        };
        match profile_addresses(file, elf, symbols, known_release) {
            Some(addresses) if profile_layout => self.profile = Some(addresses),
            Some(_) => {
                self.profile_unknown = Some(format!(
                    "the heap profile's layout in Go {} is not the one leaktrace reads",
                    self.version.as_deref().unwrap_or("of unknown version")
                ));
            }
            None => {
                self.profile_unknown = Some(
                    "no ELF symbol table (built with -ldflags=-s?) and a Go release whose code \
                     leaktrace was not checked against: the runtime's heap profile cannot be \
                     found"
                        .to_string(),
                );
            }
        }
    }

    /// Whether goroutines can be counted: both probes and the layout were found.
    pub fn can_count_goroutines(&self) -> bool {
        self.layout.is_some() && self.newproc.is_some() && self.goexit.is_some()
    }

    /// Whether the heap can be followed: spans filled, large spans and freed spans.
    pub fn can_follow_heap(&self) -> bool {
        self.layout.is_some()
            && self.span_full.is_some()
            && self.span_free.is_some()
            && !self.large_spans.is_empty()
    }

    /// Why Go support is partial, for the report; None when it is complete.
    pub fn missing(&self) -> Option<String> {
        let version = self.version.as_deref().unwrap_or("of unknown version");
        if self.layout.is_none() {
            return Some(format!(
                "the Go runtime's struct layout is unknown: the executable has no DWARF (built \
                 with -ldflags=-w?) and Go {version} is not a release leaktrace knows the layout \
                 of, so goroutines and the Go heap are not traced; rebuild without -w"
            ));
        }
        let mut absent: Vec<&str> = Vec::new();
        if !self.can_count_goroutines() {
            absent.push("goroutines");
        }
        if !self.can_follow_heap() {
            absent.push("the Go heap");
        }
        let mut notes = Vec::new();
        if !absent.is_empty() {
            notes.push(format!(
                "this Go runtime ({version}) lacks functions leaktrace probes: {} not traced",
                absent.join(" and ")
            ));
        }
        if self.can_count_goroutines() && (self.allgs.is_none() || self.g_status.is_none()) {
            notes.push(
                "no ELF symbol table (built with -ldflags=-s?): goroutines started before \
                 leaktrace attached are not counted; rebuild without -s to count them"
                    .to_string(),
            );
        }
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

/// A Go executable being traced: where to probe it, and what it is.
#[derive(Clone, Debug)]
pub struct GoTarget {
    /// The file to attach the probes to (through /proc/PID/root in attach mode).
    pub probe_path: PathBuf,
    /// The path as the target sees it.
    pub display_path: String,
    pub program: GoProgram,
}

impl GoTarget {
    /// The executable at `probe_path`, when it is a Go program.
    pub fn of_file(probe_path: PathBuf, display_path: String) -> Option<GoTarget> {
        let elf = crate::sys::file_bytes::open(&probe_path).ok()?;
        let program = GoProgram::inspect(&elf)?;
        Some(GoTarget {
            probe_path,
            display_path,
            program,
        })
    }
}

/// The executable's functions and variables by name (address and size): its symbol table,
/// else what Go's own table keeps.
fn go_symbols(file: &object::File<'_>) -> HashMap<String, (u64, u64)> {
    let mut symbols: HashMap<String, (u64, u64)> = file
        .symbols()
        .filter(|symbol| symbol.is_definition())
        .filter_map(|symbol| {
            Some((
                symbol.name().ok()?.to_string(),
                (symbol.address(), symbol.size()),
            ))
        })
        .collect();
    if !symbols.contains_key(NEWPROC) {
        // Stripped (-ldflags=-s): the functions are still in Go's own table.
        symbols.extend(pclntab_functions(file));
    }
    symbols
}

/// The probe on runtime function `name`, near its entry.
///
/// The probe moves past the stack check onto its branch, which the kernel emulates rather
/// than single-steps (see probe_site). A call that must grow its stack passes that branch
/// twice (morestack starts the function over); the kernel program tells the first pass by
/// the flags the branch is about to act on (`on_stack_check`).
fn entry_probe(
    file: &object::File<'_>,
    elf: &[u8],
    symbols: &HashMap<String, (u64, u64)>,
    name: &str,
) -> Option<GoProbe> {
    let (address, _) = symbols.get(name)?;
    let entry = crate::sys::elf::virtual_to_file_offset(file, *address)?;
    let start = usize::try_from(entry).ok()?;
    let code = elf.get(start..start.saturating_add(64).min(elf.len()))?;
    let moved = probe_offset(code);
    let on_stack_check = moved > 0 && is_stack_check_branch(&code[moved as usize..]);
    // Anything else than the stack check's branch: the entry.
    let offset_in_function = if on_stack_check { moved } else { 0 };
    let (instruction, emulated) =
        crate::probe::probe_site::describe(code, *address, offset_in_function)
            .unwrap_or_else(|| ("?".into(), false));
    Some(GoProbe {
        symbol: name.to_string(),
        file_offset: entry + offset_in_function,
        on_stack_check,
        span_slot: None,
        offset_in_function,
        instruction,
        emulated,
    })
}

/// The Go release that built the executable: `runtime.buildVersion`, else what its build
/// information says.
fn go_version(
    file: &object::File<'_>,
    elf: &[u8],
    symbols: &HashMap<String, (u64, u64)>,
) -> Option<String> {
    symbols
        .get("runtime.buildVersion")
        .and_then(|(address, _)| read_go_string(file, elf, *address))
        .or_else(|| {
            let info = file.section_by_name(".go.buildinfo")?;
            build_info_version(info.data().ok()?)
        })
}

/// Offsets of struct members, by struct and member name.
type StructOffsets = HashMap<(String, String), u64>;

/// The members of the runtime's structs leaktrace reads, from DWARF (none without it).
fn runtime_struct_offsets(file: &object::File<'_>) -> StructOffsets {
    struct_offsets(
        file,
        &[
            ("runtime.g", &["gopc", "atomicstatus"]),
            ("runtime.mcache", &["alloc"]),
            ("runtime.mspan", &["startAddr", "npages"]),
            ("runtime.bucket", &["nstk"]),
            ("runtime.memRecord", &["future"]),
            ("runtime.memRecordCycle", &["free_bytes"]),
        ],
    )
}

/// Member `name` of struct `owner`, if DWARF has it.
fn struct_field(offsets: &StructOffsets, owner: &str, name: &str) -> Option<u64> {
    offsets.get(&(owner.into(), name.into())).copied()
}

/// The addresses of the heap profile's variables: from the symbol table, else (for a
/// `known_release`) from the runtime's code.
fn profile_addresses(
    file: &object::File<'_>,
    elf: &[u8],
    symbols: &HashMap<String, (u64, u64)>,
    known_release: bool,
) -> Option<ProfileAddresses> {
    let variable = |name: &str| symbols.get(name).map(|(address, _)| *address);
    match (
        variable("runtime.mbuckets"),
        variable("runtime.mProfCycle"),
        variable("runtime.MemProfileRate"),
    ) {
        (Some(buckets), Some(cycle), Some(rate)) => Some(ProfileAddresses {
            buckets,
            cycle,
            rate,
        }),
        // No symbol table (-ldflags=-s): where the runtime's code reads them, in the
        // releases this was checked against.
        _ if known_release => {
            let code = |name: &str| {
                function_code(file, elf, symbols, name).map(|(address, _, code)| (address, code))
            };
            profile_variables_in_code(
                code("runtime.mProf_FlushLocked"),
                code("runtime.mProf_Free"),
                code("runtime.profilealloc"),
            )
        }
        _ => None,
    }
}

/// The probes just after each call to allocLarge, where the span it returns is in RAX. Each
/// follows the code from the return to the first instruction the kernel emulates, as long
/// as the span is still in a register and its start and size are not written meanwhile.
/// None without the runtime's struct layout.
fn large_span_probes(
    file: &object::File<'_>,
    elf: &[u8],
    symbols: &HashMap<String, (u64, u64)>,
    layout: Option<GoLayout>,
) -> Vec<GoProbe> {
    let protected: Vec<(u64, u64)> = layout
        .map(|layout| vec![(layout.span_start, 8), (layout.span_npages, 8)])
        .unwrap_or_default();
    let mut probes = Vec::new();
    let Some((target, _)) = symbols.get(ALLOC_LARGE) else {
        return probes;
    };
    if protected.is_empty() {
        return probes;
    }
    for caller in LARGE_CALLERS {
        let Some((address, offset, code)) = function_code(file, elf, symbols, caller) else {
            continue;
        };
        for after in returns_from_calls(code, address, *target) {
            let returned = after - address;
            let (offset_in_function, span_slot) = match crate::probe::probe_site::follow_value(
                code, returned, RAX_SLOT, &protected,
            ) {
                Some((moved, slot)) => (moved, Some(slot)),
                None => (returned, None),
            };
            let (instruction, emulated) =
                crate::probe::probe_site::describe(code, address, offset_in_function)
                    .unwrap_or_else(|| ("?".into(), false));
            probes.push(GoProbe {
                symbol: format!("{caller} after {ALLOC_LARGE}"),
                file_offset: offset_in_function + offset,
                on_stack_check: false,
                span_slot,
                offset_in_function,
                instruction,
                emulated,
            });
        }
    }
    probes
}

/// Function `name` of the executable (`symbols`: address and size): its address, its
/// offset in the file, and its code.
fn function_code<'a>(
    file: &object::File<'_>,
    elf: &'a [u8],
    symbols: &HashMap<String, (u64, u64)>,
    name: &str,
) -> Option<(u64, u64, &'a [u8])> {
    let (address, size) = symbols.get(name)?;
    let offset = crate::sys::elf::virtual_to_file_offset(file, *address)?;
    let start = usize::try_from(offset).ok()?;
    let end = start
        .saturating_add(usize::try_from(*size).ok()?)
        .min(elf.len());
    Some((*address, offset, elf.get(start..end)?))
}

/// The heap profile's variables where the runtime's code reads them, for a binary without
/// a symbol table (each function as its address and code): `runtime.mbuckets`, the first
/// word `mProf_FlushLocked` loads RIP-relative (the list's head); `runtime.mProfCycle`, the
/// first 32-bit word `mProf_Free` loads so; `runtime.MemProfileRate`, the second word
/// `profilealloc` loads so (after `mcache0`). The same in Go 1.19 to 1.23; the unit test
/// `known_layouts_match_each_toolchains_dwarf` checks them against the symbol table of a
/// program each installed toolchain builds.
pub fn profile_variables_in_code(
    flush: Option<(u64, &[u8])>,
    free: Option<(u64, &[u8])>,
    profilealloc: Option<(u64, &[u8])>,
) -> Option<ProfileAddresses> {
    // Each RIP-relative load's target and the size of the register it loads.
    let loads = |(address, code): (u64, &[u8])| -> Vec<(u64, u32)> {
        Decoder::with_ip(64, code, address, DecoderOptions::NONE)
            .into_iter()
            .filter(|instruction| {
                instruction.mnemonic() == iced_x86::Mnemonic::Mov
                    && instruction.is_ip_rel_memory_operand()
                    && instruction.op0_kind() == iced_x86::OpKind::Register
                    && instruction.op1_kind() == iced_x86::OpKind::Memory
            })
            .map(|instruction| {
                (
                    instruction.ip_rel_memory_address(),
                    instruction.op0_register().size() as u32,
                )
            })
            .collect()
    };
    let buckets = loads(flush?).into_iter().find(|(_, size)| *size == 8)?.0;
    let cycle = loads(free?).into_iter().find(|(_, size)| *size == 4)?.0;
    let rate = loads(profilealloc?)
        .into_iter()
        .filter(|(_, size)| *size == 8)
        .nth(1)?
        .0;
    Some(ProfileAddresses {
        buckets,
        cycle,
        rate,
    })
}

/// Every function of Go's own table, by name: (entry, size up to the next function). A name
/// can appear twice: a function and its ABI wrapper (`runtime.newproc` and what the symbol
/// table calls `runtime.newproc.abi0`, a small trampoline for assembly callers); the larger
/// one is the function.
fn pclntab_functions(file: &object::File<'_>) -> HashMap<String, (u64, u64)> {
    let mut found: HashMap<String, (u64, u64)> = HashMap::new();
    let Some(data) = file
        .section_by_name(".gopclntab")
        .and_then(|section| section.data().ok())
    else {
        return found;
    };
    let text = file
        .section_by_name(".text")
        .map_or(0, |text| text.address());
    let Some(table) = crate::sys::pclntab::Pclntab::parse(data, text) else {
        return found;
    };
    let functions: Vec<(String, u64)> = table.functions().collect();
    for (index, (name, entry)) in functions.iter().enumerate() {
        let end = functions.get(index + 1).map_or(*entry, |next| next.1);
        let size = end.saturating_sub(*entry);
        let kept = found.entry(name.clone()).or_insert((*entry, size));
        if size > kept.1 {
            *kept = (*entry, size);
        }
    }
    found
}

/// The Go version recorded in `.go.buildinfo` (Go 1.18+, where it is stored inline).
pub fn build_info_version(info: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !info.starts_with(MAGIC) || info.get(15)? & 2 == 0 {
        return None;
    }
    // After the 32-byte header: the version, as a varint length and the bytes.
    let mut at = 32;
    let len = usize::try_from(crate::sys::pclntab::varint(info, &mut at)?).ok()?;
    let version = std::str::from_utf8(info.get(at..at.checked_add(len)?)?).ok()?;
    version.starts_with("go").then(|| version.to_string())
}

/// The runtime layout, and `g.atomicstatus`, of Go releases checked against their DWARF, for
/// binaries built without it (the unit test `known_layouts_match_each_toolchains_dwarf`
/// checks every toolchain installed). mcache.alloc +40, mspan.startAddr +24 and
/// mspan.npages +32 in all of them; g.gopc and g.atomicstatus move:
///
/// | release | g.gopc | g.atomicstatus |
/// |---|---|---|
/// | 1.19 | 296 | 144 |
/// | 1.21, 1.22 | 280 | 144 |
/// | 1.23 | 288 | 152 |
///
/// 1.20 and 1.24 onwards are not listed: no toolchain of theirs could be checked here.
pub fn known_layout(version: &str) -> Option<(GoLayout, u64)> {
    let release = version.strip_prefix("go")?;
    let minor: Vec<&str> = release.splitn(3, '.').collect();
    let (g_gopc, g_status) = match (minor.first()?, minor.get(1)?) {
        (&"1", &"19") => (296, 144),
        (&"1", &"21" | &"22") => (280, 144),
        (&"1", &"23") => (288, 152),
        _ => return None,
    };
    Some((
        GoLayout {
            g_gopc,
            mcache_alloc: 40,
            span_start: 24,
            span_npages: 32,
            page_bytes: GO_PAGE_BYTES,
        },
        g_status,
    ))
}

/// A Go string header (pointer, length) at `address` in the file, and the text it points to.
fn read_go_string(file: &object::File<'_>, elf: &[u8], address: u64) -> Option<String> {
    let at = |address: u64, len: usize| -> Option<&[u8]> {
        let offset =
            usize::try_from(crate::sys::elf::virtual_to_file_offset(file, address)?).ok()?;
        elf.get(offset..offset.checked_add(len)?)
    };
    let header = at(address, 16)?;
    let pointer = u64::from_le_bytes(header[..8].try_into().ok()?);
    let len = u64::from_le_bytes(header[8..].try_into().ok()?);
    if len == 0 || len > 256 {
        return None;
    }
    String::from_utf8(at(pointer, len as usize)?.to_vec()).ok()
}

/// Whether `code` starts with the branch of a Go stack check: `jbe` (taken when the stack
/// pointer is at or below the goroutine's stack guard).
fn is_stack_check_branch(code: &[u8]) -> bool {
    let mut decoder = Decoder::new(64, code, DecoderOptions::NONE);
    decoder.can_decode() && decoder.decode().mnemonic() == iced_x86::Mnemonic::Jbe
}

/// Addresses of the instructions just after each direct call to `target` in `code`, which
/// starts at virtual address `address`.
pub fn returns_from_calls(code: &[u8], address: u64, target: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut after = Vec::new();
    for instruction in &mut decoder {
        if instruction.is_invalid() {
            continue;
        }
        if instruction.flow_control() == FlowControl::Call
            && instruction.near_branch_target() == target
        {
            after.push(instruction.next_ip());
        }
    }
    after
}

/// Byte offsets of the named members of the named structs, from the file's DWARF (sections
/// compressed or not). Missing ones are left out.
fn struct_offsets(file: &object::File<'_>, wanted: &[(&str, &[&str])]) -> StructOffsets {
    let mut found = HashMap::new();
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<'_, [u8]>, ()> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|section| section.uncompressed_data().ok())
            .unwrap_or_default())
    };
    let Ok(sections) = gimli::DwarfSections::load(load) else {
        return found;
    };
    let dwarf = sections.borrow(|section| EndianSlice::new(section, LittleEndian));
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut cursor = unit.entries();
        // The wanted struct being read, and the depth of its members.
        let mut inside: Option<(&str, isize)> = None;
        while let Ok(Some(entry)) = cursor.next_dfs() {
            let depth = entry.depth();
            let tag = entry.tag();
            let name = entry
                .attr_value(gimli::DW_AT_name)
                .and_then(|value| dwarf.attr_string(&unit, value).ok())
                .and_then(|name| name.to_string().ok().map(str::to_owned));
            if let Some((owner, member_depth)) = inside {
                if depth == member_depth && tag == gimli::DW_TAG_member {
                    let offset = entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|value| value.udata_value());
                    if let (Some(name), Some(offset)) = (name.as_deref(), offset)
                        && wanted.iter().any(|(struct_name, members)| {
                            *struct_name == owner && members.contains(&name)
                        })
                    {
                        found.insert((owner.to_string(), name.to_string()), offset);
                    }
                    continue;
                }
                if depth < member_depth {
                    inside = None;
                }
            }
            if tag == gimli::DW_TAG_structure_type
                && let Some((owner, _)) = wanted
                    .iter()
                    .find(|(struct_name, _)| Some(*struct_name) == name.as_deref())
            {
                inside = Some((owner, depth + 1));
            }
        }
        if wanted.iter().all(|(owner, members)| {
            members
                .iter()
                .all(|m| found.contains_key(&(owner.to_string(), m.to_string())))
        }) {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_from_build_info_and_knows_1_19() {
        let mut info = b"\xff Go buildinf:".to_vec();
        info.push(8);
        info.push(2);
        info.resize(32, 0);
        info.push(8);
        info.extend(b"go1.19.8");
        assert_eq!(build_info_version(&info).as_deref(), Some("go1.19.8"));
        info[15] = 0;
        assert_eq!(build_info_version(&info), None);
        let (layout, status) = known_layout("go1.19.8").expect("1.19");
        assert_eq!((layout.g_gopc, layout.mcache_alloc, status), (296, 40, 144));
        assert!(known_layout("go1.20.5").is_none());
        assert!(known_layout("go1.24.0").is_none());
        assert!(known_layout("devel").is_none());
    }

    #[test]
    fn finds_the_instruction_after_each_call_to_a_function() {
        // At 0x1000: call 0x2000; nop; call 0x3000; call 0x2000.
        let mut code = Vec::new();
        let call = |from: u64, to: u64| {
            let mut bytes = vec![0xE8];
            bytes.extend_from_slice(&((to as i64 - (from as i64 + 5)) as i32).to_le_bytes());
            bytes
        };
        code.extend(call(0x1000, 0x2000));
        code.push(0x90);
        code.extend(call(0x1006, 0x3000));
        code.extend(call(0x100B, 0x2000));
        assert_eq!(
            returns_from_calls(&code, 0x1000, 0x2000),
            vec![0x1005, 0x1010]
        );
        assert_eq!(returns_from_calls(&code, 0x1000, 0x4000), Vec::<u64>::new());
    }

    /// Every Go toolchain on this machine: `go` on PATH and Debian's /usr/lib/go-*/bin/go,
    /// each once (Debian's /usr/bin/go is a link to one of the others).
    fn toolchains() -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let name = path.file_name()?.to_str()?;
                name.starts_with("go-").then(|| path.join("bin/go"))
            })
            .filter(|go| go.exists())
            .collect();
        if let Some(on_path) = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("go"))
                .find(|go| go.exists())
        }) {
            found.push(on_path);
        }
        let mut found: Vec<PathBuf> = found
            .into_iter()
            .filter_map(|go| std::fs::canonicalize(go).ok())
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// The table for binaries without DWARF agrees with the DWARF of a program built by each
    /// toolchain installed (`cargo xtask setup` installs Go 1.19 and 1.21–1.23); a release
    /// missing from the table fails too, asking for its row.
    #[test]
    fn known_layouts_match_each_toolchains_dwarf() {
        let toolchains = toolchains();
        if toolchains.is_empty() {
            assert!(
                !std::env::var("LEAKTRACE_REQUIRE_BPF").is_ok_and(|v| v == "1"),
                "no Go toolchain installed (cargo xtask setup installs them)"
            );
            eprintln!("SKIPPED known_layouts_match_each_toolchains_dwarf: no Go toolchain");
            return;
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join("target/go-layout-check");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let source = dir.join("main.go");
        std::fs::write(&source, "package main\n\nfunc main() { go func() {}() }\n")
            .expect("write main.go");
        for (index, go) in toolchains.iter().enumerate() {
            let binary = dir.join(format!("program-{index}"));
            let built = std::process::Command::new(go)
                .arg("build")
                .arg("-o")
                .arg(&binary)
                .arg(&source)
                .env("GOCACHE", root.join("target/go-cache"))
                .env("GOFLAGS", "-buildvcs=false")
                .output()
                .expect("run go build");
            assert!(
                built.status.success(),
                "{}: {}",
                go.display(),
                String::from_utf8_lossy(&built.stderr)
            );
            let elf = std::fs::read(&binary).expect("read the program");
            let program = GoProgram::inspect(&elf).expect("a Go program");
            let version = program.version.clone().expect("its version");
            let from_dwarf = (
                program.layout.expect("a layout from DWARF"),
                program.g_status.expect("g.atomicstatus from DWARF"),
            );
            assert_eq!(
                known_layout(&version),
                Some(from_dwarf),
                "{} ({version}): add this release's row to known_layout",
                go.display()
            );
            // The heap profile's layout (checked against DWARF in inspect) and variables,
            // found from the code as in a binary without symbols.
            let profile = program.profile.unwrap_or_else(|| {
                panic!(
                    "{} ({version}): {:?}",
                    go.display(),
                    program.profile_unknown
                )
            });
            let file = object::File::parse(&*elf).expect("ELF");
            let code = |name: &str| -> Option<(u64, &[u8])> {
                let symbol = file.symbols().find(|symbol| symbol.name() == Ok(name))?;
                let offset =
                    crate::sys::elf::virtual_to_file_offset(&file, symbol.address())? as usize;
                Some((
                    symbol.address(),
                    &elf[offset..offset + symbol.size() as usize],
                ))
            };
            assert_eq!(
                profile_variables_in_code(
                    code("runtime.mProf_FlushLocked"),
                    code("runtime.mProf_Free"),
                    code("runtime.profilealloc"),
                ),
                Some(profile),
                "{} ({version}): the code reads the profile's variables elsewhere",
                go.display()
            );
        }
    }
}
