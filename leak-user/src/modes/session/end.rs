//! The end of a session: the process held at its exit stop (what it loaded read before it
//! goes), the reachability scan (every live block classified by what still points to it),
//! and the final report written.
use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    ops::Range,
    path::PathBuf,
};

use super::{Outcome, Session, SessionError};
use crate::{
    analyze::exit_stack::{ProgramAtExit, Walker},
    analyze::reachability::{self, Class},
    export::report,
    model::{Block, Exit, Reachability, ReachabilityScan, StackKey},
    sys::freeze::{Frozen, ThreadRegisters},
    sys::memory::ProcessMemory,
    sys::procfs,
};

impl Session {
    /// The process stopped at its exit with its memory still mapped: what it loaded is
    /// read before it goes, its memory figures taken at the end, and what still points to
    /// each block.
    pub(super) fn exiting(
        &mut self,
        registers: Option<ThreadRegisters>,
    ) -> Result<(), SessionError> {
        let _ = self.modules.refresh(self.pid);
        self.last_process_sample_ns = None;
        self.tick()?;
        if self.options.reachability {
            self.scan_reachability(Some(registers.unwrap_or_default()));
        }
        Ok(())
    }

    /// The registers and the live stack (stack pointer, where its live part begins) of a
    /// thread stopped at the process's exit: from the frame that called exit, as
    /// LeakSanitizer ignores the frames below `exit()`'s entry; the exit path's frames are
    /// left out, but not what they saved of the caller's registers. A thread that was
    /// waiting `in_syscall` is taken from the frame that called into the C library for it
    /// (`program_in_library_call`). Otherwise (a fatal signal, another thread's exit found
    /// it running) the thread may have stopped in a leaf function: its red zone counts.
    fn program_part(
        &self,
        walker: &mut Option<Walker>,
        thread: &ThreadRegisters,
        in_syscall: bool,
    ) -> (Vec<u64>, (u64, u64)) {
        let mut memory = ProcessMemory { pid: self.pid };
        let sp = thread.stack_pointer;
        let program = walker
            .as_mut()
            .and_then(|walker| {
                walker.program_at_exit(thread, &mut memory).or_else(|| {
                    in_syscall
                        .then(|| walker.program_in_library_call(thread, &mut memory))
                        .flatten()
                })
            })
            .filter(|program| program.stack_from >= sp)
            .unwrap_or_else(|| ProgramAtExit {
                stack_from: sp.saturating_sub(reachability::RED_ZONE),
                saved_registers: Vec::new(),
            });
        log::debug!(
            "thread at exit: stack scanned from {:#x} (stack pointer {sp:#x}), {} saved registers",
            program.stack_from,
            program.saved_registers.len()
        );
        let mut values = thread.values.clone();
        values.extend(program.saved_registers);
        (values, (sp, program.stack_from))
    }

    /// What the ends of the process's other threads (`thread_exit`) add to a scan. At the
    /// exit, the threads the process's end took were live until then: their registers are
    /// roots and their stacks live from their stack pointers up, as valgrind takes every
    /// thread's. A thread that ended itself (its function returned) left a stack of dead
    /// frames below where it ended: a stack no live thread runs on is live only above the
    /// last end on it (the thread's descriptor and TLS), not in the frames below, which
    /// glibc keeps mapped for the next thread.
    fn add_thread_ends(
        &self,
        walker: &mut Option<Walker>,
        at_exit: bool,
        maps: &[procfs::Mapping],
        registers: &mut Vec<u64>,
        live_stacks: &mut Vec<(u64, u64)>,
    ) {
        let ends = self.collector.thread_ends();
        let mut taken = 0;
        for (tid, end) in &ends {
            if *tid == self.pid || end.syscall == leak_common::SYS_EXIT || !at_exit {
                continue;
            }
            let thread = ThreadRegisters {
                values: end.registers.to_vec(),
                stack_pointer: end.registers[leak_common::ThreadEnd::STACK_POINTER],
                instruction_pointer: end.ip,
                frame_pointer: end.registers[leak_common::ThreadEnd::FRAME_POINTER],
            };
            let (values, live) = self.program_part(walker, &thread, end.syscall != u64::MAX);
            registers.extend(values);
            live_stacks.push(live);
            taken += 1;
        }
        let mapping_of = |sp: u64| maps.iter().position(|m| m.start <= sp && sp < m.end);
        let live_in: std::collections::HashSet<usize> = live_stacks
            .iter()
            .filter_map(|&(sp, _)| mapping_of(sp))
            .collect();
        // The last end on each stack no live thread runs on.
        let mut last_end: HashMap<usize, (u64, u64)> = HashMap::new();
        for (_, end) in ends
            .iter()
            .filter(|(tid, end)| *tid != self.pid && end.syscall == leak_common::SYS_EXIT)
        {
            let sp = end.registers[leak_common::ThreadEnd::STACK_POINTER];
            let Some(mapping) = mapping_of(sp).filter(|mapping| !live_in.contains(mapping)) else {
                continue;
            };
            let slot = last_end.entry(mapping).or_insert((end.ended_ns, sp));
            if end.ended_ns >= slot.0 {
                *slot = (end.ended_ns, sp);
            }
        }
        log::debug!(
            "thread ends: {taken} threads taken by the exit, {} stacks of ended threads",
            last_end.len()
        );
        live_stacks.extend(last_end.into_values().map(|(_, sp)| (sp, sp)));
    }

    /// Classifies every live traced block by what still points to it. A running target is
    /// stopped for it (every thread, released on return whatever happens). One held at
    /// exit is already stopped: `at_exit` has the registers of the thread leaktrace
    /// started, read at its exit stop; the other threads' are those they ended with
    /// (`add_thread_ends`). As valgrind does, each thread's stack is scanned from its
    /// stack pointer up: the frames below it are dead, whatever pointers they left.
    /// Problems are said, not fatal: the report goes on without reachability.
    fn scan_reachability(&mut self, at_exit: Option<ThreadRegisters>) {
        // Frozen first: a block the target frees between the listing and the freeze would
        // be listed but referenced by nothing any more, so read as lost.
        let frozen = if at_exit.is_some() {
            None
        } else {
            match Frozen::freeze(self.pid) {
                Ok(frozen) => Some(frozen),
                Err(err) => {
                    eprintln!("leaktrace: reachability not scanned: {err}");
                    return;
                }
            }
        };
        let blocks = match self.collector.live_blocks() {
            Ok(blocks) => blocks,
            Err(err) => {
                eprintln!("leaktrace: reachability not scanned: {err}");
                return;
            }
        };
        // Where each thread's live stack begins: a frozen thread may be in a leaf function
        // using its red zone; at the exit stop the thread is in the exit system call.
        let maps = procfs::read_maps(self.pid).unwrap_or_default();
        let mut walker = at_exit
            .is_some()
            .then(|| Walker::new(self.pid, maps.clone()));
        let (mut registers, mut live_stacks) = match (&frozen, &at_exit) {
            (Some(frozen), _) => {
                let (registers, stack_pointers) = frozen.registers();
                let live = stack_pointers
                    .iter()
                    .map(|&sp| (sp, sp.saturating_sub(reachability::RED_ZONE)))
                    .collect();
                (registers, live)
            }
            (None, Some(exiting)) if exiting.stack_pointer != 0 => {
                let (values, live) = self.program_part(&mut walker, exiting, false);
                (values, vec![live])
            }
            (None, _) => Default::default(),
        };
        self.add_thread_ends(
            &mut walker,
            at_exit.is_some(),
            &maps,
            &mut registers,
            &mut live_stacks,
        );
        let tracked: Vec<Block> = blocks.iter().map(|(block, _)| *block).collect();
        // `run` traced the program from its first instruction: memory around the tracked
        // blocks is the allocator's own. A forked child inherited blocks it never saw
        // allocated (until it executes a program): those are roots.
        let roots = reachability::roots(
            &maps,
            &tracked,
            &live_stacks,
            self.traced_from_start,
            &self.collector.program_regions(),
        );
        let (glibc_data, roots) = self.split_glibc_data(&maps, roots);
        let mut memory = ProcessMemory { pid: self.pid };
        let classification = reachability::classify_with_glibc(
            &tracked,
            &roots,
            &glibc_data,
            &registers,
            &mut memory,
            self.options.scan_limit,
        );
        let paused = frozen.map(|frozen| frozen.stopped_for());
        let by_stack = classes_by_stack(&blocks, &classification.classes);
        let scan = ReachabilityScan {
            paused_ms: paused.map_or(0.0, |paused| paused.as_secs_f64() * 1e3),
            scanned_bytes: classification.scanned_bytes,
            blocks: tracked.len() as u64,
            truncated: classification.truncated,
        };
        log::info!(
            "reachability: {} blocks, {} bytes read, target stopped {:.1} ms",
            scan.blocks,
            scan.scanned_bytes,
            scan.paused_ms
        );
        self.reachability = Some((by_stack, scan));
    }

    /// The `roots` in glibc's own writable data (its arenas), then the others.
    fn split_glibc_data(
        &self,
        maps: &[procfs::Mapping],
        roots: Vec<Range<u64>>,
    ) -> (Vec<Range<u64>>, Vec<Range<u64>>) {
        // glibc's own writable data (its arenas) is scanned apart: see classify_with_glibc.
        // The same file may be named by another path in the maps (/lib or /usr/lib).
        let canonical = |path: &str| std::fs::canonicalize(procfs::path_in_root(self.pid, path));
        let glibc: Vec<PathBuf> = self
            .allocators
            .iter()
            .filter(|found| found.allocator == "glibc")
            .filter_map(|found| canonical(&found.module).ok())
            .collect();
        let glibc_mappings: Vec<&procfs::Mapping> = maps
            .iter()
            .filter(|mapping| mapping.writable && mapping.is_file())
            .filter(|mapping| canonical(&mapping.path).is_ok_and(|path| glibc.contains(&path)))
            .collect();
        let in_glibc = |root: &Range<u64>| {
            glibc_mappings
                .iter()
                .any(|mapping| mapping.start <= root.start && root.end <= mapping.end)
        };
        roots.into_iter().partition(in_glibc)
    }

    pub(super) fn finish(mut self, exited: Option<Exit>) -> Result<Outcome, SessionError> {
        if self.options.reachability && self.reachability.is_none() && exited.is_none() {
            self.scan_reachability(None);
        }
        let analysing = std::time::Instant::now();
        let mut report = self.analyse(exited, true)?;
        report.children = std::mem::take(&mut self.child_reports);
        log::debug!(
            "final report built in {:.0} ms",
            analysing.elapsed().as_secs_f64() * 1e3
        );
        if let Some(telemetry) = self.telemetry.take() {
            telemetry.shutdown();
        }
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.shutdown();
        }
        let color = self.options.output.is_none() && std::io::stdout().is_terminal();
        let rendered = report::render(&report, self.options.format, color);
        match &self.options.output {
            Some(path) => {
                if let Err(err) = std::fs::write(path, &rendered) {
                    // The disk filled up, or the file went away: the report is kept elsewhere.
                    let fallback = std::env::temp_dir().join(format!(
                        "leaktrace-{}-{}.{}",
                        self.pid,
                        procfs::monotonic_ns() / 1_000_000_000,
                        self.options.format.extension()
                    ));
                    let kept = match std::fs::write(&fallback, &rendered) {
                        Ok(()) => {
                            format!("the report was written to {} instead", fallback.display())
                        }
                        Err(_) => {
                            let _ = std::io::stdout().lock().write_all(&rendered);
                            "the report was written to standard output instead".to_string()
                        }
                    };
                    return Err(SessionError::Output {
                        path: path.display().to_string(),
                        reason: format!("{err}; {kept}"),
                    });
                }
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&rendered);
                let _ = out.flush();
            }
        }
        let detaching = std::time::Instant::now();
        self.probes.detach_after_exit();
        log::debug!(
            "probes detached in {:.0} ms",
            detaching.elapsed().as_secs_f64() * 1e3
        );
        Ok(Outcome { report, exit: None })
    }
}

/// The scan's `classes` of the live `blocks` (in the same order), added up by stack.
fn classes_by_stack(
    blocks: &[(Block, StackKey)],
    classes: &[Class],
) -> HashMap<StackKey, Reachability> {
    let mut by_stack: HashMap<StackKey, Reachability> = HashMap::new();
    for ((block, key), class) in blocks.iter().zip(classes) {
        let reachability = by_stack.entry(*key).or_default();
        let totals = match class {
            Class::Lost => &mut reachability.lost,
            Class::IndirectlyLost => &mut reachability.indirectly_lost,
            Class::Interior => &mut reachability.interior,
            Class::Reachable => &mut reachability.reachable,
        };
        totals.bytes += block.size;
        totals.blocks += 1;
    }
    by_stack
}
