//! Placing the uprobes: an allocator module's functions (a uprobe_multi link or uprobe session
//! per set of probes where the kernel has them, else a link per probe), a Go runtime's
//! functions, and the --scope functions; and finding allocator modules mapped since.
use std::{fs, num::NonZeroU32, path::Path, path::PathBuf};

use aya::programs::{
    UProbe,
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
};
use leak_common::{
    ALLOC_RETURN_PROGRAM, ENTRY_PROGRAM, GO_GOEXIT_PROGRAM, GO_LARGE_SPAN_PROGRAM,
    GO_NEWPROC_PROGRAM, GO_ON_STACK_CHECK, GO_SPAN_FREE_PROGRAM, GO_SPAN_FULL_PROGRAM,
    SCOPE_ENTRY_PROGRAM, SCOPE_RETURN_PROGRAM, SESSION_PROGRAM, ScopeShape,
};

use crate::{
    model::allocators::KnownFn,
    probe::attach::Probes,
    probe::attach::error::{AttachError, probe_error},
    probe::attach::files::probe_path_for,
    probe::attach::links::ProbeLink,
    probe::attach::modules::{AllocatorModule, module_probes},
    probe::attach::programs::{load_program, uprobe},
    probe::attach::scopes::ScopeProbe,
    probe::golang::{GoProbe, GoTarget},
    sys::procfs,
};

/// Probes of one program in one file: file offsets, each with its cookie.
#[derive(Clone, Debug)]
pub(super) struct ProbeSet {
    pub program: &'static str,
    pub path: PathBuf,
    pub offsets: Vec<u64>,
    pub cookies: Vec<u64>,
}

impl Probes {
    /// The uprobes' scope: the traced process alone.
    pub(super) fn target_process(&self) -> Result<UProbeScope, AttachError> {
        Ok(UProbeScope::OneProcess(NonZeroU32::new(self.pid).ok_or(
            AttachError::Load("process id 0 cannot be traced".into()),
        )?))
    }

    /// Probes a module's allocator functions (one found after the start: a dlopen'd
    /// library with its own allocator).
    pub fn attach_module(&mut self, module: &AllocatorModule) -> Result<(), AttachError> {
        let scope = self.target_process()?;
        if let Some(id) = file_id(&module.probe_path) {
            self.probed_files.insert(id);
        }
        let set = |program: &'static str| ProbeSet {
            program,
            path: module.probe_path.clone(),
            offsets: Vec::new(),
            cookies: Vec::new(),
        };
        // With uprobe sessions an allocating function has one probe, running the session
        // program at its entry and (when the entry wants it) at its return.
        let sessions = self.multi.as_ref().is_some_and(|m| m.session.is_some());
        let (mut returns, mut entries, mut frees) = (
            set(ALLOC_RETURN_PROGRAM),
            set(if sessions {
                SESSION_PROGRAM
            } else {
                ENTRY_PROGRAM
            }),
            set(ENTRY_PROGRAM),
        );
        for function in &module.functions {
            // Ids tell probed functions apart in the kernel (see CallShape::id).
            let shape = function.shape.with_id(self.next_id);
            self.next_id = self.next_id.wrapping_add(1);
            let sets = if shape.func.has_return_probe() && sessions {
                vec![&mut entries]
            } else if shape.func.has_return_probe() {
                vec![&mut returns, &mut entries]
            } else {
                vec![&mut frees]
            };
            for set in sets {
                set.offsets.push(function.probe_offset);
                set.cookies.push(shape.cookie());
            }
            log::debug!(
                "{} in {} ({}): probe at +{:#x} ({}, {})",
                function.symbol,
                module.display_path,
                module.allocator,
                function.probe_offset - function.file_offset,
                function.instruction,
                if function.emulated {
                    "emulated"
                } else {
                    "single-stepped"
                }
            );
            self.attached
                .push(format!("{} in {}", function.symbol, module.display_path));
        }
        // Return probes first: an entry that fires is then always matched by its return.
        for (set, allocating) in [(returns, true), (entries, true), (frees, false)] {
            if set.offsets.is_empty() {
                continue;
            }
            if allocating && self.allocations_paused {
                // Put in with the others when the budget lets them back.
                self.allocation_points.push(set);
                continue;
            }
            let links = self.attach_set(&set, scope).map_err(|(offset, err)| {
                let symbol = module
                    .functions
                    .iter()
                    .find(|f| f.probe_offset == offset)
                    .map_or_else(|| format!("+{offset:#x}"), |f| f.symbol.clone());
                probe_error(&symbol, &module.display_path, err)
            })?;
            if allocating {
                self.allocation_links.extend(links);
                self.allocation_points.push(set);
            } else {
                self.links.extend(links);
            }
        }
        Ok(())
    }

    /// Probes a Go executable's runtime: goroutine creation and exit, and its heap spans
    /// (whichever of them the runtime's layout and functions were found for).
    pub(super) fn attach_go(&mut self, go: &GoTarget) -> Result<(), AttachError> {
        let program = &go.program;
        let mut points: Vec<(&str, &GoProbe)> = Vec::new();
        if program.can_count_goroutines() {
            // Exits first: a goroutine counted created is then always seen ending. The other
            // way round, those created and ended while the second probe was being placed
            // (placing one can wait for the kernel for 100 ms) stayed alive forever.
            points.extend(program.goexit.iter().map(|p| (GO_GOEXIT_PROGRAM, p)));
            points.extend(program.newproc.iter().map(|p| (GO_NEWPROC_PROGRAM, p)));
        }
        if program.can_follow_heap() {
            // Frees first: a span recorded is then always seen going back.
            points.extend(program.span_free.iter().map(|p| (GO_SPAN_FREE_PROGRAM, p)));
            points.extend(program.span_full.iter().map(|p| (GO_SPAN_FULL_PROGRAM, p)));
            points.extend(
                program
                    .large_spans
                    .iter()
                    .map(|p| (GO_LARGE_SPAN_PROGRAM, p)),
            );
        }
        let scope = self.target_process()?;
        for (name, point) in points {
            load_program(&mut self.ebpf, name, &mut self.programs)?;
            let probe = uprobe(&mut self.ebpf, name)?;
            let at = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(point.file_offset),
                cookie: Some(match (point.on_stack_check, point.span_slot) {
                    (true, _) => GO_ON_STACK_CHECK,
                    (false, Some(slot)) => leak_common::GO_SPAN_IN_SLOT | u64::from(slot),
                    (false, None) => 0,
                }),
            };
            let link = probe
                .attach(at, &go.probe_path, scope)
                .and_then(|id| probe.take_link(id))
                .map_err(|err| probe_error(&point.symbol, &go.display_path, err))?;
            self.links.push(ProbeLink::PerProbe(link));
            log::debug!(
                "{} in {}: probe at file offset {:#x}",
                point.symbol,
                go.display_path,
                point.file_offset
            );
            self.attached
                .push(format!("{} in {}", point.symbol, go.display_path));
        }
        Ok(())
    }

    /// Probes each --scope function's entry and return; scope numbers follow the order.
    pub(super) fn attach_scopes(&mut self, scopes: &[ScopeProbe]) -> Result<(), AttachError> {
        if scopes.is_empty() {
            return Ok(());
        }
        for name in [SCOPE_ENTRY_PROGRAM, SCOPE_RETURN_PROGRAM] {
            load_program(&mut self.ebpf, name, &mut self.programs)?;
        }
        let target = self.target_process()?;
        for (index, scope) in scopes.iter().enumerate() {
            for at in &scope.points {
                let shape = ScopeShape {
                    label_arg: at.label_slot,
                    ..scope.spec.shape(index as u8)
                };
                // Return probe first: an entry that fires is then always matched by its
                // return.
                for program in [SCOPE_RETURN_PROGRAM, SCOPE_ENTRY_PROGRAM] {
                    let probe = uprobe(&mut self.ebpf, program)?;
                    let point = UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(at.probe_offset),
                        cookie: Some(shape.cookie()),
                    };
                    let link = probe
                        .attach(point, &at.probe_path, target)
                        .and_then(|id| probe.take_link(id))
                        .map_err(|err| probe_error(&at.symbol, &at.display_path, err))?;
                    self.links.push(ProbeLink::PerProbe(link));
                }
                self.attached.push(format!(
                    "scope {} at {} in {}",
                    scope.spec.describe(),
                    at.symbol,
                    at.display_path
                ));
            }
        }
        Ok(())
    }

    /// Those of `modules` whose files are not probed yet.
    pub fn unprobed(&self, modules: Vec<AllocatorModule>) -> Vec<AllocatorModule> {
        modules
            .into_iter()
            .filter(|module| {
                file_id(&module.probe_path).is_none_or(|id| !self.probed_files.contains(&id))
            })
            .collect()
    }

    /// Allocator modules the process mapped since the probes were placed (or since the last
    /// call), not yet probed: say, a plugin linked with its own allocator.
    pub fn new_allocator_modules(&mut self, extra: &[KnownFn]) -> Vec<AllocatorModule> {
        let Ok(maps) = procfs::read_maps(self.pid) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for mapping in maps.iter().filter(|m| m.executable && m.is_file()) {
            let probe_path = probe_path_for(self.pid, mapping);
            let Some(id) = file_id(&probe_path) else {
                continue;
            };
            if !self.probed_files.insert(id) {
                continue;
            }
            let Ok(data) = crate::sys::file_bytes::open(&probe_path) else {
                continue;
            };
            let module = module_probes(&data, probe_path, mapping.file_path().to_string(), extra);
            // A library of C++ operators alone (libstdc++ loaded late) is worth probing too.
            found.extend(module);
        }
        found
    }

    /// Puts a set of probes in: one uprobe_multi link when the programs were loaded for
    /// them, else a link per probe. On failure, the offset that failed (any for a multi link).
    pub(super) fn attach_set(
        &mut self,
        set: &ProbeSet,
        scope: UProbeScope,
    ) -> Result<Vec<ProbeLink>, (u64, aya::programs::ProgramError)> {
        use crate::probe::multi_link::LinkKind;
        if let Some(multi) = &mut self.multi {
            let program = match (set.program, &multi.session) {
                (SESSION_PROGRAM, Some((session, _))) => Ok((session, LinkKind::Session)),
                (ALLOC_RETURN_PROGRAM, _) => multi
                    .ret(ALLOC_RETURN_PROGRAM)
                    .map(|ret| (ret, LinkKind::Return)),
                _ => Ok((&multi.entry, LinkKind::Entry)),
            };
            match program.and_then(|(program, kind)| {
                crate::probe::multi_link::attach(
                    program,
                    &set.path,
                    &set.offsets,
                    &set.cookies,
                    kind,
                    self.pid,
                )
                .map_err(|err| format!("{kind:?} uprobe_multi link refused: {err}"))
            }) {
                Ok(link) => return Ok(vec![ProbeLink::Multi(link)]),
                Err(err) => log::info!("on {}, {err}: a link per probe", set.path.display()),
            }
        }
        if set.program == SESSION_PROGRAM {
            // Without the session link, each function gets a return probe and an entry probe.
            let mut links = Vec::new();
            for program in [ALLOC_RETURN_PROGRAM, ENTRY_PROGRAM] {
                let per_probe = ProbeSet {
                    program,
                    ..set.clone()
                };
                links.extend(self.attach_set(&per_probe, scope)?);
            }
            return Ok(links);
        }
        // Loaded on first use where uprobe_multi links serve the rest.
        if let Err(err) = load_program(&mut self.ebpf, set.program, &mut self.programs) {
            log::warn!("{err}");
            return Err((
                set.offsets.first().copied().unwrap_or_default(),
                aya::programs::ProgramError::NotLoaded,
            ));
        }
        let mut links = Vec::new();
        for (&offset, &cookie) in set.offsets.iter().zip(&set.cookies) {
            let attached = (|| {
                let probe: &mut UProbe = self
                    .ebpf
                    .program_mut(set.program)
                    .ok_or(aya::programs::ProgramError::NotLoaded)?
                    .try_into()?;
                let at = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: Some(cookie),
                };
                probe
                    .attach(at, &set.path, scope)
                    .and_then(|id| probe.take_link(id))
            })();
            match attached {
                Ok(link) => links.push(ProbeLink::PerProbe(link)),
                Err(err) => return Err((offset, err)),
            }
        }
        Ok(links)
    }
}

/// Device and inode of a file: the same library reached by different paths is one.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(path).ok()?;
    Some((metadata.dev(), metadata.ino()))
}
