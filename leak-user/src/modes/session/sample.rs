//! The sampling loop: a tick every sample interval reads the kernel maps (and the scope,
//! goroutine and Go profile readers), follows new modules and allocators, reads /proc once
//! a second and meters the probes' cost; an attached process is traced so until the
//! duration, Ctrl-C or its exit, with a report every interval.
use std::io::{IsTerminal, Write};

use super::{Session, SessionError, start::allocator_info};
use crate::{
    export::report::{self, Format},
    model::series::{MAX_SERIES_LEN, push_thinned},
    model::{Exit, ProcessSample, Verdict},
    probe::attach::{self, AllocatorModule},
    sys::procfs,
};

/// Time between reads of the process's /proc memory figures.
const PROCESS_SAMPLE_NS: u64 = 1_000_000_000;

impl Session {
    /// Reads the code objects of new stacks' Python frames while the target has them.
    fn read_python_codes(&mut self) {
        let Some(names) = &mut self.symbolizer.python else {
            return;
        };
        let new: Vec<u32> = self
            .collector
            .histories()
            .map(|history| history.key.stack_id)
            .filter(|id| self.python_stacks_read.insert(*id))
            .collect();
        for id in new {
            names.read_codes(self.collector.stack_ips(id));
        }
    }

    /// Tells the kernel where the interpreter's `_PyRuntime` is, once the interpreter is
    /// mapped (at once when attaching; after the exec for a launched command).
    pub(super) fn point_python_runtime(&mut self) {
        let Some((interpreter, slot)) = &mut self.python else {
            return;
        };
        let Some(map) = slot else { return };
        // Not mapped yet (a launched command before its exec): tried again next tick.
        let Some(bias) = attach::mapped_load_bias(self.pid, &interpreter.probe_path) else {
            return;
        };
        let runtime = interpreter.runtime_symbol.wrapping_add(bias);
        match map.set(0, runtime, 0) {
            Ok(()) => {
                log::info!(
                    "Python {} in {}: frames read from _PyRuntime at {runtime:#x}",
                    interpreter.version_text().unwrap_or_default(),
                    interpreter.display_path
                );
                *slot = None;
            }
            Err(err) => log::warn!("could not point the kernel at _PyRuntime: {err}"),
        }
    }

    /// Go's heap profile as it is now (from the first tick the executable is mapped in).
    fn read_go_profile(&mut self, now_ns: u64) {
        let Some((go, _)) = &self.go else { return };
        let Some(addresses) = go.program.profile else {
            return;
        };
        if self.go_profile.is_none() {
            // Not mapped yet (a launched command before its exec): tried again next tick.
            let Some(bias) = attach::mapped_load_bias(self.pid, &go.probe_path) else {
                return;
            };
            self.go_profile = Some(crate::collect::go_profile::HeapProfile::new(
                crate::model::go_runtime::ProfileAddresses {
                    buckets: addresses.buckets.wrapping_add(bias),
                    cycle: addresses.cycle.wrapping_add(bias),
                    rate: addresses.rate.wrapping_add(bias),
                },
            ));
        }
        if let Some(profile) = &mut self.go_profile {
            let mut memory = crate::sys::memory::ProcessMemory { pid: self.pid };
            let started = std::time::Instant::now();
            profile.read(
                &mut memory,
                now_ns.saturating_sub(self.started_ns) as f64 / 1e9,
            );
            log::debug!(
                "Go heap profile of pid {}: {} buckets read in {:.2} ms",
                self.pid,
                profile.buckets().len(),
                started.elapsed().as_secs_f64() * 1e3
            );
        }
    }

    /// The goroutines alive before the probes went in, from the runtime's own list.
    pub(super) fn read_goroutine_baseline(&mut self) {
        let Some((go, Some(goroutines))) = &mut self.go else {
            return;
        };
        let bias = attach::mapped_load_bias(self.pid, &go.probe_path);
        goroutines.read_baseline(
            self.pid,
            (go.program.allgs, go.program.layout, go.program.g_status),
            bias.unwrap_or(0),
        );
    }

    /// One sample; re-reads the module list when new stacks appeared (a dlopen'd library).
    pub(super) fn tick(&mut self) -> Result<(), SessionError> {
        let now_ns = procfs::monotonic_ns();
        // New modules get unwind tables (a launched command: once it runs its own program).
        if let Some(tables) = &mut self.unwind
            && self.launched_program.is_none()
        {
            tables.refresh(self.pid);
        }
        self.collector.sample(now_ns)?;
        if let Some(scopes) = &mut self.scopes {
            scopes.sample(now_ns, false)?;
        }
        if let Some((_, Some(goroutines))) = &mut self.go {
            goroutines.sample(now_ns.saturating_sub(self.started_ns) as f64 / 1e9);
        }
        self.read_go_profile(now_ns);
        if self.python.as_ref().is_some_and(|(_, slot)| slot.is_some()) {
            self.point_python_runtime();
        }
        if self.collector.take_new_stacks() {
            let _ = self.modules.refresh(self.pid);
            self.read_python_codes();
        }
        self.sample_process(now_ns);
        self.meter_cost(now_ns);
        if let Some(at) = self.arm_entries_at
            && now_ns >= at
            && self.probes.allocations_probed()
        {
            self.probes.arm_entries(true);
            self.arm_entries_at = None;
        }
        Ok(())
    }

    /// Probes allocators the process loaded since the start (a plugin with its own).
    fn follow_new_allocators(&mut self) {
        let modules = self.probes.new_allocator_modules(&self.options.alloc_fns);
        self.probe_modules(modules, "loaded after the start");
    }

    /// Probes each of `modules` (`why` they are new, for the log) and lists its allocator.
    pub(super) fn probe_modules(&mut self, modules: Vec<AllocatorModule>, why: &str) {
        for module in modules {
            match self.probes.attach_module(&module) {
                Ok(()) => {
                    log::info!(
                        "pid {}: probing {} in {}, {why}: {}",
                        self.pid,
                        module.allocator,
                        module.display_path,
                        module
                            .functions
                            .iter()
                            .map(|f| f.symbol.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    self.allocators
                        .push(allocator_info(&module, &self.options.alloc_fns));
                }
                Err(err) => log::warn!("could not probe {}: {err}", module.display_path),
            }
        }
    }

    /// Reads the process's memory figures, at most once a second (smaps_rollup walks every
    /// mapping of the target).
    fn sample_process(&mut self, now_ns: u64) {
        if self
            .last_process_sample_ns
            .is_some_and(|last| now_ns.saturating_sub(last) < PROCESS_SAMPLE_NS)
        {
            return;
        }
        // A launched command is measured once it runs its own program, not leaktrace's fork.
        if let Some(own) = &self.launched_program {
            match procfs::exe_path(self.pid) {
                Ok(exe) if exe != *own => self.launched_program = None,
                _ => return,
            }
        }
        self.follow_new_allocators();
        let Some(usage) = procfs::memory_usage(self.pid, true) else {
            return;
        };
        self.last_process_sample_ns = Some(now_ns);
        push_thinned(
            &mut self.process_samples,
            ProcessSample {
                at_s: now_ns.saturating_sub(self.started_ns) as f64 / 1e9,
                rss_bytes: usage.rss_bytes,
                anon_bytes: usage.anon_bytes,
                swap_bytes: usage.swap_bytes,
                virtual_bytes: usage.virtual_bytes,
                pss_bytes: usage.pss_bytes,
                heap_bytes: match &self.go_profile {
                    Some(profile) if profile.in_use() => profile.in_use_bytes(),
                    _ => self.collector.heap_outstanding_bytes(),
                },
            },
            MAX_SERIES_LEN,
        );
    }

    /// Traces an attached process until the duration, Ctrl-C, or its exit.
    pub(super) async fn trace_attached(&mut self) -> Result<Option<Exit>, SessionError> {
        let mut sample = tokio::time::interval(self.options.sample_interval);
        let mut report_every = tokio::time::interval(self.options.interval);
        report_every.tick().await;
        let deadline = self
            .options
            .duration
            .map(|duration| tokio::time::Instant::now() + duration);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        // --duration ends the trace on time, not at the next sample.
        let end = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(end);
        loop {
            tokio::select! {
                _ = sample.tick() => {
                    let alive = procfs::is_alive(self.pid);
                    self.tick()?;
                    if !alive {
                        return Ok(Some(Exit { code: None, signal: None }));
                    }
                    if self.stopped() {
                        // Over the budget with frees alone: the report now.
                        return Ok(None);
                    }
                }
                _ = &mut end => {
                    let alive = procfs::is_alive(self.pid);
                    self.tick()?;
                    if !alive {
                        return Ok(Some(Exit { code: None, signal: None }));
                    }
                    return Ok(None);
                }
                _ = report_every.tick() => self.interval_report()?,
                _ = &mut ctrl_c => {
                    self.tick()?;
                    return Ok(None);
                }
            }
        }
    }

    fn interval_report(&mut self) -> Result<(), SessionError> {
        let report = self.analyse(None, false)?;
        let stdout = std::io::stdout();
        if self.options.output.is_none()
            && self.options.format == Format::Text
            && stdout.is_terminal()
        {
            // A live view: redraw in place.
            let mut out = stdout.lock();
            let _ = write!(out, "\x1b[H\x1b[2J{}", report::text::render(&report, true));
            let _ = out.flush();
        } else {
            eprintln!(
                "leaktrace: {:.1}s, {} stacks listed, {} leaking, {} suspect, {} growing, {} dropped events",
                report.duration_s,
                report.stacks.len(),
                report.count(Verdict::Leaking),
                report.count(Verdict::Suspect),
                report.count(Verdict::Growing),
                report.dropped.values().sum::<u64>()
            );
        }
        Ok(())
    }
}
