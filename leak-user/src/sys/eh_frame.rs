//! A module's `.eh_frame` call-frame information reduced to rows the kernel's DWARF stack
//! walker can follow (CFA = rsp or rbp plus an offset; the caller's rbp unchanged or saved
//! at CFA plus an offset), whether a module keeps frame pointers, and where a mapping's
//! code sits in its file (what both the kernel's tables and the walk at exit need).
use std::collections::HashMap;

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, EndianSlice, FrameDescriptionEntry, LittleEndian,
    RegisterRule, UnwindContext, UnwindSection, UnwindTable, X86_64,
};
use leak_common::{CFA_END, CFA_RBP, CFA_RSP, CFA_UNKNOWN, UnwindRow};
use object::{Object, ObjectSection};

type Reader<'data> = EndianSlice<'data, LittleEndian>;

/// A module's `.eh_frame` and the base addresses its pointers are relative to.
fn eh_frame_of<'data>(
    file: &object::File<'data>,
) -> Option<(EhFrame<Reader<'data>>, BaseAddresses)> {
    let section = file.section_by_name(".eh_frame")?;
    let data = section.data().ok()?;
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    Some((EhFrame::new(data, LittleEndian), bases))
}

/// Calls `visit` with each function's (FDE's) start, end and unwind table from a module's
/// `.eh_frame`, until it returns false. False when the module has no usable `.eh_frame`.
fn for_each_function<'data>(
    file: &object::File<'data>,
    mut visit: impl FnMut(
        &FrameDescriptionEntry<Reader<'data>>,
        &mut UnwindTable<'_, '_, Reader<'data>>,
    ) -> bool,
) -> bool {
    let Some((eh_frame, bases)) = eh_frame_of(file) else {
        return false;
    };
    let mut context = Box::new(UnwindContext::new());
    let mut entries = eh_frame.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else {
            continue;
        };
        let Ok(mut table) = fde.rows(&eh_frame, &bases, &mut context) else {
            continue;
        };
        if !visit(&fde, &mut table) {
            break;
        }
    }
    true
}

/// The registers a function keeps for its caller (rbx, rbp, r12 to r15) that it has saved on
/// the stack at module address `pc`, each as its offset from the canonical frame address.
/// Empty when `pc` has no `.eh_frame` entry.
pub fn saved_registers_at(elf: &[u8], pc: u64) -> Vec<i64> {
    let Some((eh_frame, bases)) = object::File::parse(elf)
        .ok()
        .and_then(|file| eh_frame_of(&file))
    else {
        return Vec::new();
    };
    let mut context = Box::new(UnwindContext::new());
    let Ok(row) =
        eh_frame.unwind_info_for_address(&bases, &mut context, pc, EhFrame::cie_from_offset)
    else {
        return Vec::new();
    };
    [
        X86_64::RBX,
        X86_64::RBP,
        X86_64::R12,
        X86_64::R13,
        X86_64::R14,
        X86_64::R15,
    ]
    .into_iter()
    .filter_map(|register| match row.register(register) {
        Some(RegisterRule::Offset(offset)) => Some(offset),
        _ => None,
    })
    .collect()
}

/// Files whose rows `cached_module_rows` keeps at most.
const MAX_CACHED_MODULES: usize = 512;

/// `module_rows` of the file `id` (device, inode), read once per leaktrace process: each
/// session (a forked child's, a watch window's) and the exit walk take the same files' rows.
/// The file's length and build id are part of the key: an inode number is reused once its
/// file is deleted (a service redeployed while `watch` runs).
pub fn cached_module_rows(id: &(String, u64), elf: &[u8]) -> std::sync::Arc<Vec<UnwindRow>> {
    type Key = (String, u64, usize, Option<Vec<u8>>);
    static CACHE: std::sync::Mutex<Option<HashMap<Key, std::sync::Arc<Vec<UnwindRow>>>>> =
        std::sync::Mutex::new(None);
    let build_id = object::File::parse(elf)
        .ok()
        .and_then(|file| file.build_id().ok().flatten().map(<[u8]>::to_vec));
    let key = (id.0.clone(), id.1, elf.len(), build_id);
    if let Some(rows) = CACHE
        .lock()
        .ok()
        .and_then(|cache| cache.as_ref()?.get(&key).cloned())
    {
        return rows;
    }
    let rows = std::sync::Arc::new(module_rows(elf));
    if let Ok(mut cache) = CACHE.lock() {
        let cache = cache.get_or_insert_with(HashMap::new);
        // Bounded: a long watch across redeployments sees ever new files.
        if cache.len() >= MAX_CACHED_MODULES {
            cache.clear();
        }
        cache.insert(key, rows.clone());
    }
    rows
}

/// A module's rows, sorted by pc, with runs of equal rules merged. Empty when it has no
/// usable `.eh_frame`.
pub fn module_rows(elf: &[u8]) -> Vec<UnwindRow> {
    let Ok(file) = object::File::parse(elf) else {
        return Vec::new();
    };
    let mut rows: Vec<UnwindRow> = Vec::new();
    for_each_function(&file, |_, table| {
        let mut end = None;
        while let Ok(Some(row)) = table.next_row() {
            let Ok(pc) = u32::try_from(row.start_address()) else {
                break;
            };
            let outermost = matches!(row.register(X86_64::RA), Some(RegisterRule::Undefined));
            rows.push(if outermost {
                UnwindRow {
                    pc,
                    kind: CFA_END,
                    ..UnwindRow::default()
                }
            } else {
                row_for(pc, row.cfa(), row.register(X86_64::RBP))
            });
            end = u32::try_from(row.end_address()).ok();
        }
        // Past the function: nothing is known until the next one starts.
        if let Some(end) = end {
            rows.push(UnwindRow {
                pc: end,
                kind: CFA_UNKNOWN,
                ..UnwindRow::default()
            });
        }
        true
    });
    compact(rows)
}

/// Whether a program's own code keeps frame pointers: `main` defines the CFA from rbp
/// somewhere (or, without a `main`, most functions do). None when it has no usable
/// `.eh_frame`. A small program's few functions are outnumbered by the C runtime's, so
/// `main`, compiled with the program's flags, decides when there is one.
pub fn keeps_frame_pointers(elf: &[u8]) -> Option<bool> {
    use object::ObjectSymbol;
    let file = object::File::parse(elf).ok()?;
    let main = file
        .symbols()
        .chain(file.dynamic_symbols())
        .find(|symbol| symbol.name() == Ok("main") && symbol.is_definition())
        .map(|symbol| symbol.address());
    let (mut functions, mut with_rbp) = (0u64, 0u64);
    let mut main_uses_rbp = None;
    let usable = for_each_function(&file, |fde, table| {
        let mut uses_rbp = false;
        while let Ok(Some(row)) = table.next_row() {
            if matches!(row.cfa(), CfaRule::RegisterAndOffset { register, .. } if *register == X86_64::RBP)
            {
                uses_rbp = true;
                break;
            }
        }
        if main.is_some_and(|main| fde.contains(main)) {
            main_uses_rbp = Some(uses_rbp);
            return false;
        }
        functions += 1;
        with_rbp += u64::from(uses_rbp);
        true
    });
    if !usable {
        return None;
    }
    main_uses_rbp.or_else(|| (functions > 0).then(|| with_rbp * 2 >= functions))
}

fn row_for<T: gimli::ReaderOffset>(
    pc: u32,
    cfa: &CfaRule<T>,
    rbp: Option<RegisterRule<T>>,
) -> UnwindRow {
    let unknown = UnwindRow {
        pc,
        kind: CFA_UNKNOWN,
        ..UnwindRow::default()
    };
    let CfaRule::RegisterAndOffset { register, offset } = cfa else {
        return unknown;
    };
    let kind = match *register {
        X86_64::RSP => CFA_RSP,
        X86_64::RBP => CFA_RBP,
        _ => return unknown,
    };
    let Ok(cfa_offset) = i16::try_from(*offset) else {
        return unknown;
    };
    let rbp_offset_words = match rbp {
        Some(RegisterRule::Offset(at)) if at % 8 == 0 => match i8::try_from(at / 8) {
            Ok(words) => words,
            Err(_) => return unknown,
        },
        // Undefined, same value, or a rule the kernel does not follow: rbp as it is.
        _ => 0,
    };
    UnwindRow {
        pc,
        cfa_offset,
        kind,
        rbp_offset_words,
    }
}

/// Sorts rows by pc; at equal pcs a function's own rule wins over the previous function's
/// end marker; consecutive rows with the same rule are merged.
fn compact(mut rows: Vec<UnwindRow>) -> Vec<UnwindRow> {
    rows.sort_by_key(|row| (row.pc, row.kind != CFA_UNKNOWN));
    let mut out: Vec<UnwindRow> = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(last) = out.last_mut() {
            if last.pc == row.pc {
                *last = row;
                continue;
            }
            let same_rule = last.kind == row.kind
                && last.cfa_offset == row.cfa_offset
                && last.rbp_offset_words == row.rbp_offset_words;
            if same_rule {
                continue;
            }
        }
        out.push(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_merges_equal_rules_and_prefers_a_function_over_a_gap() {
        let rsp = |pc, offset| UnwindRow {
            pc,
            cfa_offset: offset,
            kind: CFA_RSP,
            rbp_offset_words: 0,
        };
        let gap = |pc| UnwindRow {
            pc,
            kind: CFA_UNKNOWN,
            ..UnwindRow::default()
        };
        let rows = compact(vec![
            rsp(0x20, 8),
            gap(0x10),
            rsp(0x10, 8),
            rsp(0x11, 16),
            rsp(0x18, 16),
            gap(0x30),
        ]);
        assert_eq!(
            rows,
            vec![rsp(0x10, 8), rsp(0x11, 16), rsp(0x20, 8), gap(0x30)]
        );
    }

    #[test]
    fn tells_builds_with_frame_pointers_apart() {
        // glibc is built without them.
        if let Ok(libc) = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6") {
            assert_eq!(keeps_frame_pointers(&libc), Some(false));
        }
        assert_eq!(keeps_frame_pointers(b"not an elf"), None);
    }

    #[test]
    fn libc_malloc_starts_with_the_return_address_at_rsp() {
        let Ok(libc) = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6") else {
            return; // not a glibc x86_64 machine
        };
        let rows = module_rows(&libc);
        assert!(rows.len() > 1000, "{} rows", rows.len());
        assert!(
            rows.windows(2).all(|pair| pair[0].pc < pair[1].pc),
            "sorted"
        );
        let file = object::File::parse(&*libc).expect("parse libc");
        let malloc = object::Object::dynamic_symbols(&file)
            .find(|symbol| object::ObjectSymbol::name(symbol) == Ok("malloc"))
            .map(|symbol| object::ObjectSymbol::address(&symbol))
            .expect("malloc");
        let at = |pc: u64| {
            let index = rows.partition_point(|row| u64::from(row.pc) <= pc);
            rows[index - 1]
        };
        // At a function's first instruction the CFA is rsp + 8 (the return address).
        let entry = at(malloc);
        assert_eq!((entry.kind, entry.cfa_offset), (CFA_RSP, 8));
    }
}
