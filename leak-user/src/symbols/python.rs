//! CPython frames named: a Python frame is recorded as a code object's address and the
//! instruction running in it. Its function, file and line come from the code object, read
//! from the target's memory the first time the frame is named: `co_qualname`,
//! `co_filename`, and the line of the instruction from `co_linetable` (CPython's location
//! table, Objects/locations.md).
use std::collections::HashMap;

use crate::model::Frame;
use crate::sys::memory::Memory;

/// The module name Python frames are shown under.
pub const PYTHON_MODULE: &str = "[python]";

/// Offsets in a 3.11 code object and in the objects it points to.
mod code_3_11 {
    pub const FIRST_LINE: u64 = 72;
    pub const FILENAME: u64 = 112;
    pub const QUALNAME: u64 = 128;
    pub const LINE_TABLE: u64 = 136;
    /// PyUnicodeObject: length, state bits, and where a compact string's characters start.
    pub const STR_LENGTH: u64 = 16;
    pub const STR_STATE: u64 = 32;
    pub const STR_ASCII_DATA: u64 = 48;
    pub const STR_COMPACT_DATA: u64 = 72;
    /// PyBytesObject: size and bytes.
    pub const BYTES_SIZE: u64 = 16;
    pub const BYTES_DATA: u64 = 32;
}

/// What a code object says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Code {
    qualname: Option<String>,
    filename: Option<String>,
    first_line: u32,
    line_table: Vec<u8>,
}

/// Names Python frames from the target's code objects, each code object read once.
pub struct PythonNames {
    pid: u32,
    codes: HashMap<u64, Code>,
}

impl PythonNames {
    pub fn new(pid: u32) -> PythonNames {
        PythonNames {
            pid,
            codes: HashMap::new(),
        }
    }

    /// Reads the code objects of a stack's Python frames not read yet, while the target
    /// still has them (a code object is gone once its function is, or the process).
    pub fn read_codes(&mut self, stack: &[u64]) {
        for &entry in stack {
            if let Some((code, _, _)) = leak_common::python_frame(entry) {
                self.code(code);
            }
        }
    }

    fn code(&mut self, code: u64) -> &Code {
        let pid = self.pid;
        self.codes.entry(code).or_insert_with(|| {
            read_code(&mut crate::sys::memory::ProcessMemory { pid }, code).unwrap_or_default()
        })
    }

    /// The frame of instruction `instruction` of the code object at `code`.
    pub fn frame(&mut self, code: u64, instruction: u64) -> Frame {
        let found = self.code(code);
        Frame {
            function: found.qualname.clone(),
            file: found.filename.clone(),
            line: line_of_instruction(&found.line_table, found.first_line, instruction),
            module: Some(PYTHON_MODULE.into()),
            address: code,
            module_offset: None,
            inlined: false,
        }
    }
}

/// A Python str's text: compact ASCII or compact Latin-1/UCS-2/UCS-4.
fn read_str(memory: &mut dyn Memory, object: u64) -> Option<String> {
    use code_3_11::*;
    let length = memory.read_u64(object + STR_LENGTH)?;
    if length > 4096 {
        return None;
    }
    let state = memory.read_u64(object + STR_STATE)? as u32;
    let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
    if compact == 0 {
        return None;
    }
    let (data, width) = if ascii == 1 {
        (object + STR_ASCII_DATA, 1)
    } else {
        (object + STR_COMPACT_DATA, kind as u64)
    };
    if !(1..=4).contains(&width) || width == 3 {
        return None;
    }
    let mut bytes = vec![0u8; (length * width) as usize];
    if memory.read(data, &mut bytes) != bytes.len() {
        return None;
    }
    Some(match width {
        1 => bytes.iter().map(|&b| char::from(b)).collect(),
        2 => bytes
            .chunks_exact(2)
            .map(|c| char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]]))).unwrap_or('?'))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('?'))
            .collect(),
    })
}

fn read_code(memory: &mut dyn Memory, code: u64) -> Option<Code> {
    use code_3_11::*;
    let mut first_line = [0u8; 4];
    if memory.read(code + FIRST_LINE, &mut first_line) != 4 {
        return None;
    }
    let qualname = memory
        .read_u64(code + QUALNAME)
        .and_then(|s| read_str(memory, s));
    let filename = memory
        .read_u64(code + FILENAME)
        .and_then(|s| read_str(memory, s));
    let line_table = memory
        .read_u64(code + LINE_TABLE)
        .and_then(|bytes| {
            let size = memory.read_u64(bytes + BYTES_SIZE)?;
            if size > 1 << 20 {
                return None;
            }
            let mut table = vec![0u8; size as usize];
            (memory.read(bytes + BYTES_DATA, &mut table) == table.len()).then_some(table)
        })
        .unwrap_or_default();
    Some(Code {
        qualname,
        filename,
        first_line: i32::from_le_bytes(first_line).max(0) as u32,
        line_table,
    })
}

/// The source line of instruction `instruction` (in 2-byte code units), from a 3.11
/// location table whose lines start at `first_line`. None when the table has no line for it.
pub fn line_of_instruction(table: &[u8], first_line: u32, instruction: u64) -> Option<u32> {
    let mut bytes = table.iter().copied();
    let mut line = i64::from(first_line);
    let mut at = 0u64;
    let varint = |bytes: &mut dyn Iterator<Item = u8>| -> Option<u64> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = bytes.next()?;
            value |= u64::from(byte & 63) << shift;
            if byte & 64 == 0 {
                return Some(value);
            }
            shift += 6;
            if shift > 60 {
                return None;
            }
        }
    };
    let signed = |value: u64| -> i64 {
        if value & 1 == 1 {
            -((value >> 1) as i64)
        } else {
            (value >> 1) as i64
        }
    };
    while let Some(first) = bytes.next() {
        if first & 0x80 == 0 {
            return None;
        }
        let code = (first >> 3) & 15;
        let length = u64::from(first & 7) + 1;
        let entry_line = match code {
            15 => None,
            14 => {
                line += signed(varint(&mut bytes)?);
                // End line, start column and end column.
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
                Some(line)
            }
            13 => {
                line += signed(varint(&mut bytes)?);
                Some(line)
            }
            10..=12 => {
                line += i64::from(code - 10);
                bytes.next()?;
                bytes.next()?;
                Some(line)
            }
            _ => {
                bytes.next()?;
                Some(line)
            }
        };
        if instruction < at + length {
            return entry_line.and_then(|line| u32::try_from(line).ok());
        }
        at += length;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lines_from_a_location_table() {
        // A function at line 10:
        //  - 1 unit, no column form (13), line +0            → 10
        //  - 2 units, one-line form (11): line +1, 2 bytes   → 11
        //  - 3 units, short form (0), 1 byte                 → 11
        //  - 1 unit, long form (14): line +3, 3 more varints → 14
        //  - 2 units, no location (15)                       → none
        //  - 1 unit, no column form: line -2 (svarint 5)     → 12
        let table = [
            0x80 | 13 << 3,
            0x00,
            0x80 | 11 << 3 | 1,
            4,
            9,
            0x80 | 2,
            0x12,
            0x80 | 14 << 3,
            6,
            0,
            5,
            9,
            0x80 | 15 << 3 | 1,
            0x80 | 13 << 3,
            5,
        ];
        let lines: Vec<Option<u32>> = (0..11)
            .map(|instruction| line_of_instruction(&table, 10, instruction))
            .collect();
        assert_eq!(
            lines,
            vec![
                Some(10),
                Some(11),
                Some(11),
                Some(11),
                Some(11),
                Some(11),
                Some(14),
                None,
                None,
                Some(12),
                None
            ]
        );
        // A varint of two chunks: 0x40 0x01 is 0 + (1 << 6) = 64, signed +32.
        let long = [0x80 | 13 << 3, 0x40, 0x01];
        assert_eq!(line_of_instruction(&long, 1, 0), Some(33));
    }
}
