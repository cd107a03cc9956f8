//! Go's own symbol table, `.gopclntab` (Go 1.18 and later): function names, entry addresses,
//! files and lines. Every Go binary has it, stripped ones too (`-ldflags='-s -w'` removes
//! the ELF symbol table and DWARF, not this table, which the runtime needs for its own stack
//! traces). The format is the runtime's (runtime/symtab.go): a header, a function table
//! sorted by entry, and per function run-length tables from pc to file and to line. Pure.

/// Header magics: Go 1.18–1.19 and Go 1.20 onwards (the function records both use start
/// with the same fields).
const MAGIC_1_18: u32 = 0xFFFF_FFF0;
const MAGIC_1_20: u32 = 0xFFFF_FFF1;
/// Header size with 8-byte pointers: magic, 4 bytes, then 8 words.
const HEADER_BYTES: usize = 8 + 8 * 8;
/// Offsets in a function record (`runtime._func`).
const FUNC_NAME: usize = 4;
const FUNC_PCFILE: usize = 20;
const FUNC_PCLN: usize = 24;
const FUNC_CU: usize = 32;

/// A location from the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoLocation {
    pub function: String,
    /// The function's entry address.
    pub entry: u64,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// A parsed `.gopclntab` (borrowed: it reads the section's bytes as it goes).
pub struct Pclntab<'a> {
    data: &'a [u8],
    quantum: u64,
    functions: usize,
    text_start: u64,
    funcnames: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    /// The function table: (entry offset, record offset) pairs, then the records.
    pcln: usize,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn c_string(data: &[u8], at: usize) -> Option<String> {
    let rest = data.get(at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// An unsigned LEB128 varint at `*at`, moving past it.
pub fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = *data.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

impl<'a> Pclntab<'a> {
    /// Reads the header of a `.gopclntab` section; `text` is the `.text` section's address,
    /// used when the table's own text start is left for the loader to fill (PIE).
    pub fn parse(data: &'a [u8], text: u64) -> Option<Pclntab<'a>> {
        let magic = u32_at(data, 0)?;
        if magic != MAGIC_1_18 && magic != MAGIC_1_20 {
            return None;
        }
        let (quantum, pointer) = (*data.get(6)?, *data.get(7)?);
        if pointer != 8 || quantum == 0 || data.len() < HEADER_BYTES {
            return None;
        }
        let word = |index: usize| u64_at(data, 8 + index * 8);
        let offset = |index: usize| -> Option<usize> {
            let value = usize::try_from(word(index)?).ok()?;
            (value < data.len()).then_some(value)
        };
        let text_start = match word(2)? {
            0 => text,
            start => start,
        };
        Some(Pclntab {
            data,
            quantum: u64::from(quantum),
            functions: usize::try_from(word(0)?).ok()?,
            text_start,
            funcnames: offset(3)?,
            cutab: offset(4)?,
            filetab: offset(5)?,
            pctab: offset(6)?,
            pcln: offset(7)?,
        })
    }

    /// Function `index`'s entry address and record offset.
    fn function(&self, index: usize) -> Option<(u64, usize)> {
        let at = self.pcln + index * 8;
        let entry = u32_at(self.data, at)?;
        let record = u32_at(self.data, at + 4)?;
        Some((
            self.text_start + u64::from(entry),
            self.pcln + usize::try_from(record).ok()?,
        ))
    }

    /// Every function's name and entry address.
    pub fn functions(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        (0..self.functions).filter_map(|index| {
            let (entry, record) = self.function(index)?;
            Some((self.name(record)?, entry))
        })
    }

    fn name(&self, record: usize) -> Option<String> {
        let offset = u32_at(self.data, record + FUNC_NAME)?;
        c_string(self.data, self.funcnames + offset as usize)
    }

    /// The value a pc-value table gives `pc` in a function entered at `entry`.
    fn pc_value(&self, table: u32, entry: u64, pc: u64) -> Option<i64> {
        if table == 0 {
            return None;
        }
        let mut at = self.pctab + table as usize;
        let mut value: i64 = -1;
        let mut current = entry;
        let mut first = true;
        loop {
            let delta = varint(self.data, &mut at)?;
            if delta == 0 && !first {
                return None;
            }
            first = false;
            value += if delta & 1 == 1 {
                !((delta >> 1) as i64)
            } else {
                (delta >> 1) as i64
            };
            current += varint(self.data, &mut at)? * self.quantum;
            if pc < current {
                return Some(value);
            }
        }
    }

    /// The function, file and line of address `pc` (a return address is looked up as given:
    /// pass the call instruction's address).
    pub fn lookup(&self, pc: u64) -> Option<GoLocation> {
        if self.functions == 0 || pc < self.text_start {
            return None;
        }
        // The last function entered at or below pc; the table's last entry is the end.
        let (mut low, mut high) = (0usize, self.functions);
        while low < high {
            let middle = (low + high) / 2;
            if self.function(middle)?.0 <= pc {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        if low == 0 {
            return None;
        }
        let (entry, record) = self.function(low - 1)?;
        let (end, _) = self.function(low)?;
        if pc >= end {
            return None;
        }
        let function = self.name(record)?;
        let line = self
            .pc_value(u32_at(self.data, record + FUNC_PCLN)?, entry, pc)
            .and_then(|line| u32::try_from(line).ok());
        let file = self
            .pc_value(u32_at(self.data, record + FUNC_PCFILE)?, entry, pc)
            .and_then(|index| {
                let cu = u32_at(self.data, record + FUNC_CU)? as usize;
                let slot = self.cutab + (cu + usize::try_from(index).ok()?) * 4;
                let offset = u32_at(self.data, slot)?;
                c_string(self.data, self.filetab + offset as usize)
            });
        Some(GoLocation {
            function,
            entry,
            file,
            line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of two functions at 0x401000 (main.f, 0x40 bytes: lines 10 then 12 from
    /// +0x20, file a.go) and 0x401040 (main.g, 0x10 bytes: line 20, file b.go).
    fn table() -> Vec<u8> {
        let mut data = vec![0u8; HEADER_BYTES];
        data[..4].copy_from_slice(&MAGIC_1_20.to_le_bytes());
        data[6] = 1;
        data[7] = 8;
        let put_word = |data: &mut Vec<u8>, index: usize, value: u64| {
            data[8 + index * 8..16 + index * 8].copy_from_slice(&value.to_le_bytes());
        };
        put_word(&mut data, 0, 2);
        put_word(&mut data, 1, 2);
        put_word(&mut data, 2, 0x401000);
        // funcnametab
        let funcnames = data.len();
        data.extend(b"main.f\0main.g\0");
        // cutab: one CU of two files, offsets into filetab
        let cutab = data.len();
        data.extend(0u32.to_le_bytes());
        data.extend(5u32.to_le_bytes());
        let filetab = data.len();
        data.extend(b"a.go\0b.go\0");
        // pctab: tables at offsets 1.. (0 means none)
        let pctab = data.len();
        data.push(0);
        // f's lines: value -1+22=10 (svarint 22 → +11) for 0x20, then +2 (4) for 0x20, end.
        let f_lines = data.len() - pctab;
        data.extend([22, 0x20, 4, 0x20, 0]);
        // f's file: index 0 (delta +1 → 2) for 0x40.
        let f_files = data.len() - pctab;
        data.extend([2, 0x40, 0]);
        let g_lines = data.len() - pctab;
        data.extend([42, 0x10, 0]);
        // g's file: index 1 (delta +2 → 4).
        let g_files = data.len() - pctab;
        data.extend([4, 0x10, 0]);
        // pclntab: functab then the records.
        let pcln = data.len();
        let record = |name: u32, files: usize, lines: usize| {
            let mut r = vec![0u8; 44];
            r[FUNC_NAME..FUNC_NAME + 4].copy_from_slice(&name.to_le_bytes());
            r[FUNC_PCFILE..FUNC_PCFILE + 4].copy_from_slice(&(files as u32).to_le_bytes());
            r[FUNC_PCLN..FUNC_PCLN + 4].copy_from_slice(&(lines as u32).to_le_bytes());
            r
        };
        let functab_bytes = 3 * 8;
        for (entry, record_at) in [(0u32, functab_bytes), (0x40, functab_bytes + 44), (0x50, 0)] {
            data.extend(entry.to_le_bytes());
            data.extend((record_at as u32).to_le_bytes());
        }
        data.extend(record(0, f_files, f_lines));
        data.extend(record(7, g_files, g_lines));
        for (index, value) in [
            (3, funcnames),
            (4, cutab),
            (5, filetab),
            (6, pctab),
            (7, pcln),
        ] {
            put_word(&mut data, index, value as u64);
        }
        data
    }

    #[test]
    fn names_files_and_lines_by_address() {
        let data = table();
        let table = Pclntab::parse(&data, 0).expect("header");
        let at = |pc| table.lookup(pc).map(|l| (l.function, l.file, l.line));
        let location =
            |f: &str, file: &str, line| Some((f.to_string(), Some(file.to_string()), Some(line)));
        assert_eq!(at(0x401000), location("main.f", "a.go", 10));
        assert_eq!(at(0x40101f), location("main.f", "a.go", 10));
        assert_eq!(at(0x401020), location("main.f", "a.go", 12));
        assert_eq!(at(0x401045), location("main.g", "b.go", 20));
        assert_eq!(at(0x401050), None);
        assert_eq!(at(0x400fff), None);
        let functions: Vec<(String, u64)> = table.functions().collect();
        assert_eq!(
            functions,
            vec![("main.f".into(), 0x401000), ("main.g".into(), 0x401040)]
        );
    }

    #[test]
    fn other_data_is_not_a_table() {
        assert!(Pclntab::parse(&[0u8; 100], 0).is_none());
        let mut data = table();
        data[7] = 4;
        assert!(Pclntab::parse(&data, 0).is_none());
        // A truncated table answers nothing rather than panicking.
        let data = table();
        let cut = Pclntab::parse(&data[..HEADER_BYTES + 8], 0);
        assert!(cut.is_none_or(|t| t.lookup(0x401000).is_none()));
    }
}
