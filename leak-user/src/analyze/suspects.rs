//! Which scope calls explain growth: for each leaking stack, and for the process's memory
//! when it rises, the --scope functions (and labels) whose calls hold its memory, whose
//! retained bytes began rising when it did, or that were first called around then. Pure: it
//! reads the report's stacks and the scope analysis.
use std::collections::HashMap;

use crate::{
    model::units::human_bytes,
    model::{Origin, ProcessReport, ScopeFigures, StackReport, Suspect, Verdict},
};

/// One (function, label) as the correlation sees it: a label's calls, or a function's
/// when its calls are not labelled.
#[derive(Clone, Debug, Default)]
pub struct Group {
    pub function: String,
    pub label: Option<String>,
    /// Bytes its calls still hold, by stack id.
    pub held_by_stack: HashMap<String, u64>,
    pub figures: ScopeFigures,
}

/// Least share of a stack's live bytes a group's calls must hold to be named for it.
const MIN_SHARE: f64 = 0.05;
/// Suspects listed at most.
const MAX_SUSPECTS: usize = 10;

/// How close (seconds) a group's change must be to a growth onset to be "when it began":
/// five seconds, or a tenth of the time traced when that is longer.
fn tolerance(span_s: f64) -> f64 {
    (span_s / 10.0).max(5.0)
}

/// The reasons a group goes with growth that began at `onset` (seconds since tracing began,
/// if known), other than holding the memory itself.
fn timing_reasons(group: &Group, onset: Option<f64>, span_s: f64) -> Vec<String> {
    let mut reasons = Vec::new();
    let Some(onset) = onset else {
        return reasons;
    };
    let near = tolerance(span_s);
    let figures = &group.figures;
    if figures.retained_growth_bytes_per_s > 0.0
        && let Some(rise) = figures.retained_growth_onset
        && (rise - onset).abs() <= near
    {
        reasons.push(format!(
            "what its calls retain began rising at {rise:.1}s (+{}/s), when the growth began ({onset:.1}s)",
            human_bytes(figures.retained_growth_bytes_per_s)
        ));
    }
    // New since tracing began (not already called in the first seconds), around when the
    // growth began.
    if let Some(first) = figures.first_call_s
        && first > near.min(span_s / 4.0)
        && (first - onset).abs() <= near
    {
        reasons.push(format!(
            "first called at {first:.1}s: new since the growth began ({onset:.1}s)"
        ));
    }
    reasons
}

/// The suspects for the report's leaking stacks and rising process memory, most likely first.
pub fn suspects(
    stacks: &[StackReport],
    process: Option<&ProcessReport>,
    groups: &[Group],
    span_s: f64,
) -> Vec<Suspect> {
    let mut found: Vec<Suspect> = Vec::new();
    for stack in stacks.iter().filter(|s| s.verdict == Verdict::Leaking) {
        let id = crate::model::stack_id(stack);
        for group in groups {
            let held = group.held_by_stack.get(&id).copied().unwrap_or(0);
            let share = if stack.outstanding_bytes == 0 {
                0.0
            } else {
                (held as f64 / stack.outstanding_bytes as f64).min(1.0)
            };
            let mut reasons = Vec::new();
            if share >= MIN_SHARE {
                reasons.push(format!(
                    "its calls hold {:.0}% of this stack's live memory ({})",
                    share * 100.0,
                    human_bytes(held as f64)
                ));
            }
            let timing = timing_reasons(group, stack.growth_onset, span_s);
            // A heap stack's blocks carry the scope call they were made in: a group that
            // holds none of them did not make them. Other stacks (mmap, brk) are not
            // attributed, and timing is the evidence, if the group's calls keep memory.
            let attributed = stack.origin == Origin::Heap;
            if reasons.is_empty()
                && (attributed || timing.is_empty() || group.figures.retained_bytes == 0)
            {
                continue;
            }
            reasons.extend(timing);
            found.push(Suspect {
                function: group.function.clone(),
                label: group.label.clone(),
                stack_id: Some(id.clone()),
                stack_function: stack.frames.first().map(|frame| frame.identity()),
                share,
                reasons,
            });
        }
    }
    if let Some(process) = process.filter(|process| process.rss_rising) {
        for group in groups {
            if group.figures.retained_growth_bytes_per_s <= 0.0 {
                continue;
            }
            let reasons = timing_reasons(group, process.rss_growth_onset, span_s);
            if reasons.is_empty() {
                continue;
            }
            let share = if process.rss_growth_bytes_per_s > 0.0 {
                (group.figures.retained_growth_bytes_per_s / process.rss_growth_bytes_per_s)
                    .min(1.0)
            } else {
                0.0
            };
            let mut reasons = reasons;
            reasons.insert(
                0,
                format!(
                    "its calls' retained memory grows {}/s of the process's {}/s",
                    human_bytes(group.figures.retained_growth_bytes_per_s),
                    human_bytes(process.rss_growth_bytes_per_s)
                ),
            );
            found.push(Suspect {
                function: group.function.clone(),
                label: group.label.clone(),
                stack_id: None,
                stack_function: None,
                share,
                reasons,
            });
        }
    }
    found.sort_by(|a, b| {
        b.share
            .total_cmp(&a.share)
            .then(b.reasons.len().cmp(&a.reasons.len()))
    });
    found.truncate(MAX_SUSPECTS);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::report::fixtures::sample_report;

    fn figures(retained: u64, growth: f64, onset: Option<f64>, first: f64) -> ScopeFigures {
        ScopeFigures {
            calls: 100,
            retained_bytes: retained,
            retained_growth_bytes_per_s: growth,
            retained_growth_onset: onset,
            first_call_s: Some(first),
            ..ScopeFigures::default()
        }
    }

    #[test]
    fn names_the_label_that_holds_a_leaking_stack_and_appeared_with_it() {
        let report = sample_report();
        // The leaking heap stack (10240 bytes) began growing at 0.4 s in the fixture; say
        // 30 s here, in a 60 s trace.
        let mut stacks = report.stacks.clone();
        stacks[0].growth_onset = Some(30.0);
        let leak_id = crate::model::stack_id(&stacks[0]);
        let holding: HashMap<String, u64> = [(leak_id.clone(), 9216)].into();
        let groups = [
            Group {
                function: "handle_request".into(),
                label: Some("/upload".into()),
                held_by_stack: holding,
                figures: figures(9216, 300.0, Some(31.0), 29.5),
            },
            Group {
                function: "handle_request".into(),
                label: Some("/get".into()),
                held_by_stack: HashMap::new(),
                figures: figures(0, 0.0, None, 0.2),
            },
        ];
        let found = suspects(&stacks, None, &groups, 60.0);
        assert_eq!(found.len(), 1, "{found:#?}");
        let suspect = &found[0];
        assert_eq!(suspect.label.as_deref(), Some("/upload"));
        assert_eq!(suspect.stack_id.as_deref(), Some(leak_id.as_str()));
        assert_eq!(suspect.stack_function.as_deref(), Some("leak_slowly"));
        assert!((suspect.share - 0.9).abs() < 1e-9);
        assert_eq!(suspect.reasons.len(), 3, "{:?}", suspect.reasons);
        assert!(suspect.reasons[0].contains("90%"));
        assert!(suspect.reasons[1].contains("began rising at 31.0s"));
        assert!(suspect.reasons[2].contains("first called at 29.5s"));
    }

    #[test]
    fn rising_process_memory_names_groups_by_timing() {
        let mut report = sample_report();
        let process = report.process.as_mut().expect("process");
        process.rss_growth_onset = Some(20.0);
        process.rss_growth_bytes_per_s = 1000.0;
        let groups = [
            Group {
                function: "rising".into(),
                figures: figures(5000, 500.0, Some(22.0), 0.5),
                ..Group::default()
            },
            Group {
                function: "flat".into(),
                figures: figures(5000, 0.0, None, 0.5),
                ..Group::default()
            },
        ];
        let found = suspects(&[], report.process.as_ref(), &groups, 60.0);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].function, "rising");
        assert!((found[0].share - 0.5).abs() < 1e-9);
        assert!(found[0].stack_id.is_none());
    }
}
