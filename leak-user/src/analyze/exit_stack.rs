//! Where the program's own stack begins at its exit stop. The thread is deep in the exit
//! path then (`exit`, the handlers it runs, `_exit`), and those frames' unwritten slots
//! still hold what the program's dead frames left there: a pointer to a block lost long ago
//! would read as live. As LeakSanitizer ignores the frames below `exit()`'s entry, the scan
//! starts at the frame that called `exit` (or `_exit`, called directly): the walk goes
//! through the exit path with the modules' `.eh_frame` rules (as the kernel side walks
//! stacks) and takes the canonical frame address of its outermost frame.
use std::{collections::HashMap, ops::Range};

use leak_common::{CFA_RBP, CFA_RSP, UnwindRow};
use object::{Object, ObjectSymbol};

use crate::{sys::freeze::ThreadRegisters, sys::memory::Memory, sys::procfs::Mapping};

/// The C library's functions that end a process: their frames are the exit path.
const EXIT_FUNCTIONS: [&str; 3] = ["exit", "_exit", "_Exit"];

/// Frames walked at most before giving up.
const MAX_FRAMES: usize = 64;

/// A module's rows and its exit functions (module addresses), read once per walk.
struct Module {
    elf: crate::sys::file_bytes::FileBytes,
    bias: u64,
    rows: std::sync::Arc<Vec<UnwindRow>>,
    exit_functions: Vec<Range<u64>>,
}

impl Module {
    fn load(pid: u32, mapping: &Mapping) -> Option<Module> {
        let elf = crate::sys::file_bytes::open_mapped(pid, mapping).ok()?;
        let bias = crate::sys::elf::mapping_bias(&elf, mapping)?;
        let rows =
            crate::sys::eh_frame::cached_module_rows(&(mapping.dev.clone(), mapping.inode), &elf);
        let file = object::File::parse(&*elf).ok()?;
        let exit_functions = file
            .dynamic_symbols()
            .filter(|symbol| symbol.is_definition())
            .filter(|symbol| {
                symbol.name().is_ok_and(|name| {
                    EXIT_FUNCTIONS.contains(&name.split('@').next().unwrap_or(name))
                })
            })
            .map(|symbol| symbol.address()..symbol.address() + symbol.size().max(1))
            .collect();
        Some(Module {
            elf,
            bias,
            rows,
            exit_functions,
        })
    }

    /// The row in force at module address `pc`.
    fn row(&self, pc: u64) -> Option<UnwindRow> {
        let at = self.rows.partition_point(|row| u64::from(row.pc) <= pc);
        at.checked_sub(1).map(|index| self.rows[index])
    }
}

/// The program's part of a thread's state at its exit stop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProgramAtExit {
    /// Where the stack of the code that called `exit` (or `_exit`) begins: the canonical
    /// frame address of the outermost exit function's frame.
    pub stack_from: u64,
    /// What the exit path's frames saved of the registers they keep for their callers
    /// (rbx, rbp, r12 to r15): the caller's pointers held in registers when it called
    /// `exit`, which the exit path then put in frames that are left out.
    pub saved_registers: Vec<u64>,
}

/// Walks the stacks of one stopped process's threads: its mappings and the modules met
/// are read once for all of them.
pub struct Walker {
    pid: u32,
    maps: Vec<Mapping>,
    modules: HashMap<(String, u64), Option<Module>>,
}

impl Walker {
    /// A walker of process `pid`'s stacks, whose mappings are `maps`.
    pub fn new(pid: u32, maps: Vec<Mapping>) -> Walker {
        Walker {
            pid,
            maps,
            modules: HashMap::new(),
        }
    }

    /// The program's part of the stack and registers of a thread stopped at its exit with
    /// `registers`. None when the walk finds no exit function (the thread was elsewhere:
    /// another thread ended the process) or cannot go on.
    pub fn program_at_exit(
        &mut self,
        registers: &ThreadRegisters,
        memory: &mut impl Memory,
    ) -> Option<ProgramAtExit> {
        self.program_part(registers, memory, Skip::ExitPath)
    }

    /// The program's part of the stack and registers of a thread stopped in a system call
    /// the C library made for it (a thread waiting in `pause`, `nanosleep`,
    /// `pthread_join`…): the stack from the frame that called into the C library. The
    /// library's own frames below it are new frames over old ones, and their slots never
    /// written keep what the program's dead frames left (valgrind sees those slots as
    /// undefined and skips them). What those frames saved of the caller's registers counts.
    /// None when the thread is not in the C library (a static program, a system call of the
    /// program's own) or the walk cannot go on.
    pub fn program_in_library_call(
        &mut self,
        registers: &ThreadRegisters,
        memory: &mut impl Memory,
    ) -> Option<ProgramAtExit> {
        self.program_part(registers, memory, Skip::LibraryCall)
    }
}

/// The frames left out of a thread's stack, innermost first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// The exit path, to the outermost exit function's frame.
    ExitPath,
    /// The C library's frames, to the outermost before the first frame outside it.
    LibraryCall,
}

/// Whether `path` is the C library (glibc or musl, its loader, glibc's old libpthread),
/// whose frames a thread waiting in a system call it made is in.
fn is_c_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    [
        "libc.so",
        "libc-2.",
        "libpthread",
        "ld-linux",
        "ld-musl",
        "libc.musl",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

impl Walker {
    fn program_part(
        &mut self,
        registers: &ThreadRegisters,
        memory: &mut impl Memory,
        skip: Skip,
    ) -> Option<ProgramAtExit> {
        let (pid, maps, modules) = (self.pid, &self.maps, &mut self.modules);
        let (mut pc, mut sp, mut bp) = (
            registers.instruction_pointer,
            registers.stack_pointer,
            registers.frame_pointer,
        );
        // The outermost exit function's frame so far; the walk goes on past the C library's
        // own functions between them (exit's handlers are not exported).
        let mut found = None;
        let mut exit_module: Option<(String, u64)> = None;
        // Callee-saved registers saved by each frame walked, by the frame's CFA.
        let mut saved: Vec<(u64, u64)> = Vec::new();
        for depth in 0..MAX_FRAMES {
            let Some(mapping) = maps.iter().find(|mapping| {
                mapping.executable && mapping.is_file() && mapping.start <= pc && pc < mapping.end
            }) else {
                break;
            };
            let file = (mapping.dev.clone(), mapping.inode);
            if skip == Skip::LibraryCall && !is_c_library(&mapping.path) {
                // The first frame outside the C library: the program's.
                break;
            }
            if found.is_some() && exit_module.as_ref() != Some(&file) {
                // Out of the C library that holds the exit path: nothing more to find.
                break;
            }
            let Some(module) = modules
                .entry(file.clone())
                .or_insert_with(|| Module::load(pid, mapping))
                .as_ref()
            else {
                break;
            };
            // A return address points after its call: the call's own row is the byte before.
            let at = pc
                .wrapping_sub(module.bias)
                .wrapping_sub(u64::from(depth > 0));
            let Some(row) = module.row(at) else {
                break;
            };
            let base = match row.kind {
                CFA_RSP => sp,
                CFA_RBP => bp,
                _ => break,
            };
            let cfa = base.wrapping_add_signed(i64::from(row.cfa_offset));
            for offset in crate::sys::eh_frame::saved_registers_at(&module.elf, at) {
                if let Some(value) = memory.read_u64(cfa.wrapping_add_signed(offset)) {
                    saved.push((cfa, value));
                }
            }
            if skip == Skip::LibraryCall
                || module
                    .exit_functions
                    .iter()
                    .any(|range| range.contains(&at))
            {
                found = Some(cfa);
                exit_module = Some(file);
            }
            let Some(return_address) = memory.read_u64(cfa.wrapping_sub(8)) else {
                break;
            };
            if row.rbp_offset_words != 0 {
                let Some(saved) =
                    memory.read_u64(cfa.wrapping_add_signed(i64::from(row.rbp_offset_words) * 8))
                else {
                    break;
                };
                bp = saved;
            }
            // Frames only go up the stack.
            if return_address == 0 || cfa <= sp {
                break;
            }
            (pc, sp) = (return_address, cfa);
        }
        let stack_from = found?;
        Some(ProgramAtExit {
            stack_from,
            // Saved in the frames left out (at or below the outermost exit function's CFA).
            saved_registers: saved
                .into_iter()
                .filter(|&(cfa, _)| cfa <= stack_from)
                .map(|(_, value)| value)
                .collect(),
        })
    }
}
