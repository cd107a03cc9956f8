//! What a window leaves in --report-dir: gear 1's report, the page-fault growth
//! attribution, written atomically under safe names.
use super::*;

/// A file-name-safe version of an executable name.
pub(super) fn sanitized(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "process".into()
    } else {
        cleaned
    }
}

/// Writes to a temporary name, then renames: a reader never sees half a report.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

/// The exported view of a target between windows: its memory, and the last window's stacks.
pub(super) fn gear1_report(watched: &Watched) -> Report {
    let trend = verdicts::process_trend(&watched.samples, &Default::default());
    let mut events = BTreeMap::new();
    if let Some(gear1) = &watched.gear1 {
        events.insert("page_fault_samples".into(), gear1.growth.total_samples());
    }
    events.insert(
        crate::export::metrics::PROGRAM_LOAD_FAILURES_EVENT.into(),
        // Gear 1 is None only when its programs could not be loaded or attached.
        u64::from(watched.gear1.is_none()),
    );
    Report {
        programs: watched
            .gear1
            .as_ref()
            .map(|gear1| gear1.sampler.programs.clone())
            .unwrap_or_default(),
        duration_s: watched.since.elapsed().as_secs_f64(),
        events,
        process: (!watched.samples.is_empty()).then(|| ProcessReport {
            rss_growth_bytes_per_s: trend.rss.slope,
            rss_rising: trend.rss.steady,
            rss_growth_onset: trend.rss.onset,
            heap_growth_bytes_per_s: 0.0,
            memory_limit_bytes: procfs::memory_limit(watched.target.pid),
            samples: watched.samples.iter().rev().take(1).copied().collect(),
        }),
        stacks: watched.last_stacks.clone(),
        ..Report::empty(watched.target.clone(), "watch")
    }
}

/// Gear 1's attribution as a report whose stacks hold the bytes they first touched, so the
/// folded and flame-graph renderers draw "memory growth flame graphs".
pub(super) fn touched_report(
    target: &Target,
    span_s: f64,
    touched: &[TouchedStack],
    gear1: &mut Gear1,
) -> Report {
    let stacks = touched
        .iter()
        .map(|stack| StackReport {
            verdict: Verdict::Stable,
            origin: Origin::Mmap,
            outstanding_bytes: stack.bytes,
            outstanding_allocs: stack.samples,
            total_allocs: stack.samples,
            total_frees: 0,
            total_bytes: stack.bytes,
            oldest_age_s: None,
            growth_bytes_per_s: 0.0,
            confidence: 0.0,
            growth_onset: None,
            r_squared: 0.0,
            survival_fraction: 0.0,
            reachability: None,
            held_by_c_runtime: None,
            suppressed_by: None,
            frames: gear1.frames(stack.stack_id),
            series: Vec::new(),
            why: String::new(),
            at_last_gc: None,
        })
        .collect();
    Report {
        duration_s: span_s,
        stacks,
        ..Report::empty(target.clone(), "watch-growth")
    }
}

/// Stacks listed in the growth text.
pub(super) const GROWTH_TEXT_STACKS: usize = 10;

/// The growth attribution for people: where new memory was first touched, since watching
/// began and during the window.
pub(super) fn growth_text(
    since_start: &Report,
    in_window: &[TouchedStack],
    gear1: &mut Gear1,
    reason: &str,
) -> String {
    let mut out = String::new();
    let total: u64 = since_start.stacks.iter().map(|s| s.outstanding_bytes).sum();
    let _ = writeln!(
        out,
        "leaktrace watch: new memory by the stack that first touched it (sampled page faults, \
         one sample per {}), pid {} ({})",
        crate::model::units::human_bytes(gear1.growth.bytes_per_sample as f64),
        since_start.target.pid,
        since_start.target.exe
    );
    let _ = writeln!(out, "window opened because: {reason}");
    let _ = writeln!(
        out,
        "(during a window the allocator's caller may read {UPROBE_TRAMPOLINE}: the precise probes' return hook)"
    );
    let _ = writeln!(
        out,
        "\nSince watching began ({:.0}s): {} in {} stacks",
        since_start.duration_s,
        crate::model::units::human_bytes(total as f64),
        since_start.stacks.len()
    );
    for stack in since_start.stacks.iter().take(GROWTH_TEXT_STACKS) {
        stack_line(&mut out, stack.outstanding_bytes, &stack.frames);
    }
    if !gear1.mmap_traced {
        let _ = writeln!(
            out,
            "\nmmap and brk calls are not traced between windows (--watch-mmap traces them)."
        );
    }
    let mapped = gear1.mapped();
    if gear1.mmap_traced {
        let _ = writeln!(
            out,
            "\nAnonymous memory mapped now (mmap and brk since watching began, allocator's own \
         included), by the stack that mapped it: {} in {} stacks",
            crate::model::units::human_bytes(mapped.iter().map(|m| m.1).sum::<u64>() as f64),
            mapped.len()
        );
    }
    for (stack_id, bytes) in mapped.iter().take(GROWTH_TEXT_STACKS) {
        let frames = gear1.frames(*stack_id);
        stack_line(&mut out, *bytes, &frames);
    }
    let window_total: u64 = in_window.iter().map(|s| s.bytes).sum();
    let _ = writeln!(
        out,
        "\nDuring the window: {} in {} stacks",
        crate::model::units::human_bytes(window_total as f64),
        in_window.len()
    );
    for stack in in_window.iter().take(GROWTH_TEXT_STACKS) {
        let frames = gear1.frames(stack.stack_id);
        stack_line(&mut out, stack.bytes, &frames);
    }
    out
}

/// One line of the growth text: the bytes, then the frames.
pub(super) fn stack_line(out: &mut String, bytes: u64, frames: &[crate::model::Frame]) {
    let _ = writeln!(
        out,
        "  {:>10}  {}",
        crate::model::units::human_bytes(bytes as f64),
        frame_summary(frames)
    );
}

/// "leak_slowly ← handle ← main", innermost first, at most 12 frames (allocator frames come
/// first in gear 1 stacks).
pub(super) fn frame_summary(frames: &[crate::model::Frame]) -> String {
    if frames.is_empty() {
        return report::folded::UNKNOWN_STACK.to_string();
    }
    frames
        .iter()
        .take(12)
        .map(|frame| frame.identity())
        .collect::<Vec<_>>()
        .join(" ← ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(sanitized("redis-server"), "redis-server");
        assert_eq!(sanitized("my app/x"), "my_app_x");
        assert_eq!(sanitized(""), "process");
    }
}
