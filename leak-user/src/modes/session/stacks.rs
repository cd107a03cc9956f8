//! The drained stacks named by their frames: the kernel's stacks symbolized (an mmap
//! stack's frameless syscall wrapper mended), and Go's heap profile read as stacks.
use std::collections::HashMap;

use super::Session;
use crate::{
    analyze::aggregate::DrainedStack,
    collect::go_profile::PROFILE_STACK_ID,
    model::{Frame, InUse, Origin, StackHistory, StackKey, Totals},
};

impl Session {
    /// Every stack drained from the kernel's maps that allocated or still holds, named by
    /// its frames; with `go_from_profile`, the buckets of Go's heap profile too, and what
    /// each held as of the last GC.
    pub(super) fn drained_stacks(
        &mut self,
        go_from_profile: bool,
    ) -> (Vec<DrainedStack>, HashMap<StackKey, InUse>) {
        let active: Vec<StackHistory> = self
            .collector
            .histories()
            .filter(|history| {
                history.totals.total_allocs > 0 || history.totals.outstanding_allocs > 0
            })
            .cloned()
            .collect();
        // One symbolizer call per module for every address not seen before, not one per stack.
        let symbolizing = std::time::Instant::now();
        let addresses: Vec<u64> = active
            .iter()
            .flat_map(|history| self.collector.stack_ips(history.key.stack_id).to_vec())
            .collect();
        let new_addresses = self.symbolizer.prefetch(&self.modules, &addresses);
        if new_addresses > 0 {
            log::info!(
                "symbolized {new_addresses} new addresses of {} stacks in {:.0} ms",
                active.len(),
                symbolizing.elapsed().as_secs_f64() * 1e3
            );
        }
        let (profile_stacks, at_last_gc) = if go_from_profile {
            self.go_profile_histories()
        } else {
            (Vec::new(), HashMap::new())
        };
        let mut stacks: Vec<DrainedStack> = active
            .into_iter()
            .map(|history| {
                let frames = self.frames_of(&history);
                drained(history, frames)
            })
            .collect();
        stacks.extend(profile_stacks);
        (stacks, at_last_gc)
    }

    /// The Go heap profile's buckets as stacks (keyed by bucket; large objects' only where
    /// their spans are not followed), and what each held as of the last GC.
    fn go_profile_histories(&mut self) -> (Vec<DrainedStack>, HashMap<StackKey, InUse>) {
        let (Some(profile), Some((go, _))) = (&self.go_profile, &self.go) else {
            return (Vec::new(), HashMap::new());
        };
        // Large objects are counted from their spans, every one of them, where those are
        // followed.
        let spans = go.program.can_follow_heap();
        let buckets: Vec<crate::collect::go_profile::Bucket> = profile
            .buckets()
            .iter()
            .filter(|bucket| {
                bucket.figures.allocs > 0
                    && !(spans && bucket.size > crate::collect::go_profile::MAX_SMALL_SIZE)
            })
            .cloned()
            .collect();
        let mut histories = Vec::with_capacity(buckets.len());
        let mut at_last_gc = HashMap::new();
        for bucket in buckets {
            let frames = self.profile_frames(&bucket.stack);
            let key = StackKey {
                origin: Origin::Heap,
                stack_id: PROFILE_STACK_ID,
                caller_hint: bucket.address,
            };
            let figures = bucket.figures;
            at_last_gc.insert(
                key,
                InUse {
                    bytes: figures.at_gc_bytes,
                    objects: figures.at_gc_objects,
                },
            );
            histories.push(drained(
                StackHistory {
                    key,
                    totals: Totals {
                        outstanding_bytes: figures.in_use_bytes,
                        outstanding_allocs: figures.in_use_objects,
                        total_allocs: figures.allocs,
                        total_frees: figures.frees,
                        total_bytes: figures.alloc_bytes,
                    },
                    series: bucket.series,
                    oldest_live_ns: None,
                },
                frames,
            ));
        }
        (histories, at_last_gc)
    }

    /// Frames of a Go profile stack. The runtime writes one return address per logical
    /// frame, an inlined call's caller at its inline mark; the symbolizer expands inlined
    /// calls itself, so an address that only repeats the callers the one before it was
    /// expanded into is left out.
    fn profile_frames(&mut self, stack: &[u64]) -> Vec<Frame> {
        let mut frames: Vec<Frame> = Vec::new();
        let mut last: Vec<Option<String>> = Vec::new();
        for &address in stack {
            let expanded = self.symbolizer.symbolize_stack(&self.modules, &[address]);
            let names: Vec<Option<String>> = expanded
                .iter()
                .map(|frame| frame.function.clone())
                .collect();
            let repeats = last.len() > names.len()
                && !names.is_empty()
                && names.iter().all(Option::is_some)
                && last.ends_with(&names);
            if !repeats {
                frames.extend(expanded);
            }
            last = names;
        }
        frames
    }

    /// Symbolized frames of a stack. For mmap stacks the walk starts inside the frameless
    /// syscall wrapper: with frame pointers it skips the wrapper's caller, which the caller
    /// read from the stack pointer replaces; with unwind tables the caller follows, and the
    /// wrapper is dropped.
    fn frames_of(&mut self, history: &StackHistory) -> Vec<Frame> {
        let mut ips = self.collector.stack_ips(history.key.stack_id).to_vec();
        if history.key.origin == Origin::Mmap && history.key.caller_hint != 0 && !ips.is_empty() {
            let first = self.symbolizer.symbolize_stack(&self.modules, &ips[..1]);
            let in_wrapper = first
                .last()
                .and_then(|frame| frame.function.as_deref())
                .is_some_and(is_syscall_wrapper);
            if in_wrapper {
                if ips.get(1) == Some(&history.key.caller_hint) {
                    // Walked with unwind tables: the caller is there already.
                    ips.remove(0);
                } else {
                    ips[0] = history.key.caller_hint;
                }
            }
        }
        self.symbolizer.symbolize_stack(&self.modules, &ips)
    }
}

/// A drained stack and its frames; a bucket of Go's heap profile is known by its stack id.
fn drained(history: StackHistory, frames: Vec<Frame>) -> DrainedStack {
    DrainedStack {
        from_go_profile: history.key.stack_id == PROFILE_STACK_ID,
        history,
        frames,
    }
}

/// libc's thin syscall wrappers, which keep no frame of their own.
fn is_syscall_wrapper(function: &str) -> bool {
    let name = function.trim_start_matches('_');
    ["mmap", "mmap64", "munmap", "mremap", "syscall"]
        .iter()
        .any(|wrapper| name == *wrapper || name.starts_with(&format!("{wrapper}@")))
        || function.starts_with("__GI___mmap")
        || function.starts_with("__GI___munmap")
        || function.starts_with("__GI___mremap")
}

#[cfg(test)]
mod tests {
    use super::is_syscall_wrapper;

    #[test]
    fn knows_the_wrappers() {
        for name in [
            "mmap", "mmap64", "__mmap", "__mmap64", "munmap", "__mremap", "syscall",
        ] {
            assert!(is_syscall_wrapper(name), "{name}");
        }
        for name in ["main", "mmap_region_for_cache", "malloc"] {
            assert!(!is_syscall_wrapper(name), "{name}");
        }
    }
}
