//! Gear 1 of a target: its sampled page faults (and, with --watch-mmap, its mmap and brk
//! calls) with their stacks, always on.
use super::*;

/// The always-on gear of one target.
pub(super) struct Gear1 {
    /// The mmap and brk regions by stack, and the stacks of every sample.
    pub(super) collector: Collector,
    /// Whether mmap and brk calls are traced (--watch-mmap).
    pub(super) mmap_traced: bool,
    pub(super) growth: FaultGrowth,
    pub(super) tables: Option<UnwindTables>,
    pub(super) modules: Modules,
    pub(super) symbolizer: Symbolizer,
    /// The process's "[uprobes]" mappings, found once per report (see `frames`).
    pub(super) trampolines: Vec<procfs::Mapping>,
    /// Kept last: dropping it detaches the sampler.
    pub(super) sampler: FaultSampler,
}

impl Gear1 {
    pub(super) fn start(
        pid: u32,
        unwind: Unwind,
        period: u64,
        syscalls: bool,
    ) -> Result<Gear1, String> {
        let mut sampler = attach::attach_fault_sampler(pid, unwind, period, syscalls)
            .map_err(|err| err.to_string())?;
        let page_size = procfs::page_size();
        let growth = FaultGrowth::take(&mut sampler.ebpf, sampler.period, page_size)
            .map_err(|err| err.to_string())?;
        let maps = KernelMaps::take(&mut sampler.ebpf).map_err(|err| err.to_string())?;
        let mut collector =
            Collector::new(maps, procfs::monotonic_ns(), page_size, 0..=u64::MAX, 1);
        collector.set_program_break(procfs::program_break(pid));
        let tables = match unwind {
            Unwind::Dwarf | Unwind::Hybrid => {
                let mut tables = UnwindTables::take(&mut sampler.ebpf, unwind == Unwind::Hybrid)?;
                tables.refresh(pid);
                Some(tables)
            }
            Unwind::Fp | Unwind::Auto => None,
        };
        let mut modules = Modules::default();
        let _ = modules.refresh(pid);
        Ok(Gear1 {
            collector,
            mmap_traced: syscalls,
            growth,
            tables,
            modules,
            symbolizer: Symbolizer::new(),
            trampolines: Vec::new(),
            sampler,
        })
    }

    /// Finds the "[uprobes]" mapping (see `frames`): once per report, not once per stack.
    pub(super) fn find_trampolines(&mut self, pid: u32) {
        self.trampolines = procfs::read_maps(pid)
            .unwrap_or_default()
            .into_iter()
            .filter(|mapping| mapping.path == "[uprobes]")
            .collect();
    }

    /// Symbolized frames of a recorded stack. While a precise window's return probes are
    /// in place, the allocator's return address on the stack is the kernel's uretprobe
    /// trampoline (in the "[uprobes]" mapping, as `find_trampolines` last saw it); the walk
    /// goes on by frame pointers there.
    pub(super) fn frames(&mut self, stack_id: u32) -> Vec<crate::model::Frame> {
        let ips = self.collector.stack_ips(stack_id).to_vec();
        let mut frames = self.symbolizer.symbolize_stack(&self.modules, &ips);
        for frame in &mut frames {
            if frame.function.is_none()
                && self
                    .trampolines
                    .iter()
                    .any(|mapping| mapping.contains(frame.address))
            {
                frame.function = Some(UPROBE_TRAMPOLINE.to_string());
            }
        }
        frames
    }

    /// Reads the samples and the mmap and brk events; new modules get unwind tables and
    /// symbols.
    pub(super) fn refresh(&mut self, pid: u32) {
        if let Err(err) = self.collector.sample(procfs::monotonic_ns()) {
            log::warn!("pid {pid}: could not read gear 1's maps: {err}");
        }
        if let Err(err) = self.growth.read() {
            log::warn!("pid {pid}: could not read the page-fault samples: {err}");
        }
        if let Some(tables) = &mut self.tables {
            tables.refresh(pid);
        }
        if self.collector.take_new_stacks() {
            let _ = self.modules.refresh(pid);
        }
    }

    /// Anonymous memory mapped now (mmap and brk), by the stack that mapped it, most first.
    pub(super) fn mapped(&self) -> Vec<(u32, u64)> {
        let mut mapped: Vec<(u32, u64)> = self
            .collector
            .histories()
            .filter(|history| history.key.origin != Origin::Heap)
            .filter(|history| history.totals.outstanding_bytes > 0)
            .map(|history| (history.key.stack_id, history.totals.outstanding_bytes))
            .collect();
        mapped.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        mapped
    }
}

/// Stands for the caller a uretprobe hid (see `Gear1::frames`).
pub(super) const UPROBE_TRAMPOLINE: &str = "[uretprobe trampoline]";
