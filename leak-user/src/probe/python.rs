//! CPython: finding the interpreter in a target and its layout for the kernel's frame walk
//! (see the CPython section of leak-common); `symbols::python` names the frames.
use std::path::PathBuf;

use leak_common::PyLayout;
use object::{Object, ObjectSymbol};

/// A CPython interpreter found in a target's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonInterpreter {
    /// The file that defines `_PyRuntime` (the executable, or libpython), as the target sees
    /// it, and where to read it.
    pub display_path: String,
    pub probe_path: PathBuf,
    /// Virtual address of `_PyRuntime` in that file.
    pub runtime_symbol: u64,
    /// (major, minor, micro) from `Py_Version`, when the interpreter has it (3.11+).
    pub version: Option<(u8, u8, u8)>,
}

impl PythonInterpreter {
    /// The interpreter in an ELF file, when it is one.
    pub fn in_file(elf: &[u8], probe_path: PathBuf, display_path: String) -> Option<Self> {
        let file = object::File::parse(elf).ok()?;
        let mut runtime = None;
        let mut version_at = None;
        for symbol in file.dynamic_symbols().chain(file.symbols()) {
            if !symbol.is_definition() {
                continue;
            }
            match symbol.name() {
                Ok("_PyRuntime") => runtime = Some(symbol.address()),
                Ok("Py_Version") => version_at = Some(symbol.address()),
                _ => {}
            }
        }
        let version = version_at.and_then(|address| {
            let offset = crate::sys::elf::virtual_to_file_offset(&file, address)?;
            let start = usize::try_from(offset).ok()?;
            let bytes: [u8; 4] = elf.get(start..start + 4)?.try_into().ok()?;
            // PY_VERSION_HEX: 0xMMmmppLS.
            let hex = u32::from_le_bytes(bytes);
            Some(((hex >> 24) as u8, (hex >> 16) as u8, (hex >> 8) as u8))
        });
        Some(PythonInterpreter {
            display_path,
            probe_path,
            runtime_symbol: runtime?,
            version,
        })
    }

    pub fn version_text(&self) -> Option<String> {
        self.version
            .map(|(major, minor, micro)| format!("{major}.{minor}.{micro}"))
    }

    /// The layout the kernel reads, for the versions leaktrace knows.
    pub fn layout(&self) -> Option<PyLayout> {
        match self.version {
            Some((3, 11, _)) => Some(PYTHON_3_11),
            _ => None,
        }
    }

    /// What to do when the frames cannot be read; None when they can.
    pub fn hint(&self) -> Option<String> {
        if self.layout().is_some() {
            return None;
        }
        Some(match self.version {
            Some((3, minor, _)) if minor >= 12 => format!(
                "Python {}: its frames are not read from the interpreter; start it with -X perf (or PYTHONPERFSUPPORT=1) so that they are named from its perf map",
                self.version_text().unwrap_or_default()
            ),
            _ => format!(
                "Python {}: leaktrace reads the frames of CPython 3.11 only; stacks show the interpreter's C functions",
                self.version_text().unwrap_or_else(|| "before 3.11".into())
            ),
        })
    }
}

/// CPython 3.11 on x86-64 (checked against the DWARF of a 3.11.7 build).
pub const PYTHON_3_11: PyLayout = PyLayout {
    runtime_tstate_current: 576,
    tstate_native_thread_id: 160,
    tstate_cframe: 56,
    cframe_current_frame: 8,
    frame_code: 32,
    frame_previous: 48,
    frame_prev_instr: 56,
    frame_is_entry: 68,
    code_bytecode: 184,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_and_its_version_in_this_machines_python() {
        for path in ["/usr/bin/python3.11", "/usr/bin/python3"] {
            let Ok(elf) = std::fs::read(path) else {
                continue;
            };
            let Some(found) = PythonInterpreter::in_file(&elf, path.into(), path.into()) else {
                continue;
            };
            assert!(found.runtime_symbol != 0);
            if found
                .version
                .is_some_and(|(major, minor, _)| (major, minor) == (3, 11))
            {
                assert_eq!(found.layout(), Some(PYTHON_3_11));
                assert_eq!(found.hint(), None);
            }
            return;
        }
    }

    #[test]
    fn versions_without_a_layout_get_a_hint() {
        let interpreter = |version| PythonInterpreter {
            display_path: "python".into(),
            probe_path: "python".into(),
            runtime_symbol: 1,
            version,
        };
        assert!(
            interpreter(Some((3, 12, 1)))
                .hint()
                .unwrap_or_default()
                .contains("-X perf")
        );
        assert!(
            interpreter(Some((3, 10, 4)))
                .hint()
                .unwrap_or_default()
                .contains("3.11 only")
        );
        assert!(
            interpreter(None)
                .hint()
                .unwrap_or_default()
                .contains("before 3.11")
        );
    }
}
