//! The kernel's unwind maps for its DWARF stack walker (`--unwind dwarf` and `hybrid`): the
//! rows of each executable module (see `sys::eh_frame`) and the target's executable
//! mappings pointing at them; and `Unwind`, how user stacks are walked.
use std::collections::HashMap;

use aya::maps::{Array, MapData};
use leak_common::{
    MAX_UNWIND_MAPPINGS, MAX_UNWIND_ROWS, UnwindIndex, UnwindMapping, UnwindRow, map_names,
};

use crate::sys::{
    eh_frame,
    procfs::{self},
};

/// How user stacks are walked in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Unwind {
    /// hybrid if the executable keeps frame pointers, dwarf if it does not.
    #[default]
    Auto,
    /// The frame-pointer chain.
    Fp,
    /// Each module its own way: the frame-pointer chain through the modules that keep frame
    /// pointers, the .eh_frame tables of the others (a C library built without them).
    Hybrid,
    /// .eh_frame unwind tables, frame pointers where a module has none.
    Dwarf,
}

impl Unwind {
    /// Auto decided for an executable (its ELF bytes).
    pub fn resolve(self, executable: Option<&[u8]>) -> Unwind {
        match self {
            Unwind::Auto => match executable.and_then(eh_frame::keeps_frame_pointers) {
                Some(false) => Unwind::Dwarf,
                Some(true) => Unwind::Hybrid,
                None => Unwind::Fp,
            },
            chosen => chosen,
        }
    }

    /// Whether stacks are walked with unwind tables (of some modules at least), which go
    /// in before the program's first instruction.
    pub fn uses_tables(self) -> bool {
        matches!(self, Unwind::Hybrid | Unwind::Dwarf)
    }

    /// The report's name for it.
    pub fn report_name(self) -> &'static str {
        match self {
            Unwind::Dwarf => "dwarf",
            Unwind::Hybrid => "hybrid",
            Unwind::Fp | Unwind::Auto => "fp",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unwind::Auto => "auto",
            Unwind::Fp => "frame pointers",
            Unwind::Hybrid => "hybrid (frame pointers, tables where a module has none)",
            Unwind::Dwarf => "dwarf",
        }
    }
}

/// The kernel's unwind maps and what has been loaded into them.
pub struct UnwindTables {
    rows: Array<MapData, UnwindRow>,
    mappings: Array<MapData, UnwindMapping>,
    index: Array<MapData, UnwindIndex>,
    /// Rows already written, per file (device, inode): (first row, row count).
    files: HashMap<(String, u64), (u32, u32)>,
    next_row: u32,
    /// The mappings in the live half, as last written.
    live: Vec<UnwindMapping>,
    half: u32,
    /// Switches published so far (UnwindIndex::generation).
    generation: u32,
    /// Modules left without tables because the row map was full.
    pub modules_without_room: u64,
    /// Hybrid walks: the modules that keep frame pointers get no table (the kernel side
    /// follows the frame-pointer chain through a mapping without one).
    only_without_frame_pointers: bool,
    /// Files left to the frame-pointer chain (hybrid walks).
    chained: std::collections::HashSet<(String, u64)>,
}

impl UnwindTables {
    /// The unwind maps of `ebpf`; with `only_without_frame_pointers` (hybrid walks) only
    /// the modules that do not keep frame pointers get their tables.
    pub fn take(
        ebpf: &mut aya::Ebpf,
        only_without_frame_pointers: bool,
    ) -> Result<UnwindTables, String> {
        fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut aya::Ebpf,
            name: &str,
        ) -> Result<T, String> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| format!("map {name} missing from the object"))?;
            T::try_from(map).map_err(|err| format!("map {name}: {err}"))
        }
        Ok(UnwindTables {
            rows: take(ebpf, map_names::UNWIND_ROWS)?,
            mappings: take(ebpf, map_names::UNWIND_MAPPINGS)?,
            index: take(ebpf, map_names::UNWIND_INDEX)?,
            files: HashMap::new(),
            next_row: 0,
            live: Vec::new(),
            half: 0,
            generation: 0,
            modules_without_room: 0,
            only_without_frame_pointers,
            chained: std::collections::HashSet::new(),
        })
    }

    /// Loads the tables of every executable file mapping of `pid` not loaded yet, and
    /// publishes the mapping list when it changed. Returns whether it did.
    pub fn refresh(&mut self, pid: u32) -> bool {
        let Ok(maps) = procfs::read_maps(pid) else {
            return false;
        };
        let mut wanted: Vec<UnwindMapping> = Vec::new();
        for mapping in maps.iter().filter(|m| m.executable && m.is_file()) {
            if let Some(known) = self
                .live
                .iter()
                .find(|known| known.start == mapping.start && known.end == mapping.end)
            {
                wanted.push(*known);
                continue;
            }
            let id = (mapping.dev.clone(), mapping.inode);
            if self.chained.contains(&id) {
                continue;
            }
            let Ok(elf) = crate::sys::file_bytes::open_mapped(pid, mapping) else {
                continue;
            };
            if self.only_without_frame_pointers
                && !self.files.contains_key(&id)
                && eh_frame::keeps_frame_pointers(&elf) == Some(true)
            {
                log::debug!("unwind: {} keeps frame pointers: no table", mapping.path);
                self.chained.insert(id);
                continue;
            }
            let Some(bias) = crate::sys::elf::mapping_bias(&elf, mapping) else {
                continue;
            };
            let (first_row, rows) = match self.files.get(&id) {
                Some(loaded) => *loaded,
                None => {
                    let loaded = self.load_rows(&eh_frame::cached_module_rows(&id, &elf));
                    self.files.insert(id, loaded);
                    loaded
                }
            };
            wanted.push(UnwindMapping {
                start: mapping.start,
                end: mapping.end,
                bias,
                first_row,
                rows,
            });
        }
        wanted.sort_by_key(|mapping| mapping.start);
        wanted.truncate(MAX_UNWIND_MAPPINGS as usize);
        if wanted == self.live {
            return false;
        }
        // Fill the other half, then switch to it: the kernel never sees a half-written list.
        let half = self.half ^ 1;
        for (slot, mapping) in wanted.iter().enumerate() {
            let _ = self
                .mappings
                .set(half * MAX_UNWIND_MAPPINGS + slot as u32, mapping, 0);
        }
        let index = UnwindIndex {
            half,
            count: wanted.len() as u32,
            generation: self.generation + 1,
            _pad: 0,
        };
        if self.index.set(0, index, 0).is_ok() {
            self.half = half;
            self.generation = index.generation;
            self.live = wanted;
        }
        true
    }

    /// Writes rows after those already loaded; (first row, count), or (0, 0) when they do
    /// not fit.
    fn load_rows(&mut self, rows: &[UnwindRow]) -> (u32, u32) {
        let count = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        if count == 0 {
            return (0, 0);
        }
        if self.next_row.saturating_add(count) > MAX_UNWIND_ROWS {
            self.modules_without_room += 1;
            return (0, 0);
        }
        let first = self.next_row;
        let map = aya::maps::IterableMap::map(&self.rows).fd();
        match crate::sys::map_batch::set_array(map, first, rows) {
            Ok(true) => {}
            Ok(false) => {
                for (offset, row) in rows.iter().enumerate() {
                    if self.rows.set(first + offset as u32, row, 0).is_err() {
                        return (0, 0);
                    }
                }
            }
            Err(err) => {
                log::debug!("unwind rows not written: {err}");
                return (0, 0);
            }
        }
        self.next_row += count;
        (first, count)
    }
}
