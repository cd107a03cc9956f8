//! Request scopes, analysed: what each (function, label) holds as the report shows it, and
//! the groups `suspects` correlates with the growth.
use std::collections::HashMap;

use crate::{
    analyze::suspects::Group,
    model::scope::{ScopeRecords, ScopeSpec, TagFigures, add_figures},
    model::{Held, LabelReport, ScopeFigures, ScopeReport, ScopeStackReport, StackKey},
};

/// How the collected figures become the report's `scopes`.
pub struct ReportSettings<'a> {
    pub specs: &'a [ScopeSpec],
    pub started_ns: u64,
    /// Seconds traced so far.
    pub span_s: f64,
    pub retain_after_s: f64,
    pub max_labels: usize,
    /// Heap allocations are sampled one in this many: bytes are scaled by it.
    pub sample_rate: u64,
    pub thresholds: &'a crate::analyze::verdicts::Thresholds,
}

/// A stack as the scope report names it: its id (as in the metrics) and its frames.
pub struct NamedStack {
    pub id: String,
    pub frames: Vec<String>,
}

/// The report's scopes, and what each (function, label) holds by stack id, for suspects.
pub struct ScopeAnalysis {
    pub reports: Vec<ScopeReport>,
    /// Each label (or each function without a label argument).
    pub groups: Vec<Group>,
}

/// Stacks listed per scope or label.
const TOP_SCOPE_STACKS: usize = 5;
/// The label that stands for labels beyond --scope-max-labels (and calls the kernel could
/// not give a tag of their own).
pub const OTHER_LABEL: &str = "(other)";

/// The scopes as the report shows them. `held` is what the live walk found by tag and
/// stack; `name` names a stack.
pub fn analyse(
    records: &ScopeRecords,
    settings: &ReportSettings<'_>,
    held: &HashMap<u32, HashMap<StackKey, Held>>,
    name: &mut dyn FnMut(&StackKey) -> Option<NamedStack>,
) -> ScopeAnalysis {
    let mut reports = Vec::new();
    let mut groups = Vec::new();
    for (index, spec) in settings.specs.iter().enumerate() {
        let index = index as u32;
        // This scope's tags: its own (index + 1), then labelled ones.
        let tags: Vec<u32> = records
            .figures
            .keys()
            .copied()
            .filter(|&tag| {
                tag == index + 1 || records.labels.get(&tag).is_some_and(|(i, _)| *i == index)
            })
            .collect();
        let figures_of = |tags: &[u32], series: Option<&[(u64, u64)]>| {
            let (sum, by_stack) = tag_figures(records, held, tags);
            (sum, by_stack, series.map(<[_]>::to_vec))
        };
        let rate = settings.sample_rate.max(1);
        let mut named = |by_stack: &HashMap<StackKey, Held>| by_stack_id(by_stack, rate, name);
        let (all, all_held, _) = figures_of(&tags, None);
        let all_series = records.scope_series.get(&index).map(Vec::as_slice);
        let all_named = named(&all_held);
        let figures = figures_report(records, settings, &all, all_series, &all_named);
        let mut labels = Vec::new();
        if spec.label.is_some() {
            let mut labelled: Vec<(String, u32)> = tags
                .iter()
                .filter_map(|tag| Some((records.labels.get(tag)?.1.clone(), *tag)))
                .collect();
            let rank = |tag: &u32| {
                records
                    .figures
                    .get(tag)
                    .map_or((0, 0), |f| (f.totals.held_bytes, f.totals.calls))
            };
            labelled.sort_by(|a, b| rank(&b.1).cmp(&rank(&a.1)).then(a.0.cmp(&b.0)));
            let cut = labelled.len().min(settings.max_labels);
            let mut other_tags: Vec<u32> = labelled[cut..].iter().map(|(_, t)| *t).collect();
            other_tags.push(index + 1);
            for (label, tag) in &labelled[..cut] {
                let (sum, by_stack, series) = figures_of(
                    &[*tag],
                    records.figures.get(tag).map(|f| f.series.as_slice()),
                );
                let by_id = named(&by_stack);
                let figures = figures_report(records, settings, &sum, series.as_deref(), &by_id);
                groups.push(Group {
                    function: spec.function.clone(),
                    label: Some(label.clone()),
                    held_by_stack: by_id
                        .into_iter()
                        .map(|(id, (bytes, _, _))| (id, bytes))
                        .collect(),
                    figures: figures.clone(),
                });
                labels.push(LabelReport {
                    label: label.clone(),
                    figures,
                });
            }
            let (sum, by_stack, _) = figures_of(&other_tags, None);
            if sum.totals.calls > 0 || sum.totals.held_bytes > 0 {
                let by_id = named(&by_stack);
                let figures = figures_report(records, settings, &sum, None, &by_id);
                labels.push(LabelReport {
                    label: OTHER_LABEL.to_string(),
                    figures,
                });
            }
        } else {
            groups.push(Group {
                function: spec.function.clone(),
                label: None,
                held_by_stack: all_named
                    .iter()
                    .map(|(id, (bytes, _, _))| (id.clone(), *bytes))
                    .collect(),
                figures: figures.clone(),
            });
        }
        reports.push(ScopeReport {
            function: spec.function.clone(),
            probed: records
                .probed
                .get(index as usize)
                .cloned()
                .unwrap_or_default(),
            label_argument: spec.label.map(|_| {
                spec.describe()
                    .rsplit_once(':')
                    .map(|(_, label)| label.to_string())
                    .unwrap_or_default()
            }),
            figures,
            labels,
        });
    }
    ScopeAnalysis { reports, groups }
}

/// What `tags` did together: their figures summed, and what they hold by stack.
fn tag_figures(
    records: &ScopeRecords,
    held: &HashMap<u32, HashMap<StackKey, Held>>,
    tags: &[u32],
) -> (TagFigures, HashMap<StackKey, Held>) {
    let mut sum = TagFigures::default();
    for tag in tags {
        if let Some(figures) = records.figures.get(tag) {
            add_figures(&mut sum, figures);
        }
    }
    let mut by_stack: HashMap<StackKey, Held> = HashMap::new();
    for tag in tags {
        for (key, held) in held.get(tag).into_iter().flatten() {
            let sum = by_stack.entry(*key).or_default();
            sum.allocs += held.allocs;
            sum.bytes += held.bytes;
        }
    }
    (sum, by_stack)
}

/// Bytes, blocks and frames by stack id, scaled by the sample rate like the stacks'.
fn by_stack_id(
    by_stack: &HashMap<StackKey, Held>,
    rate: u64,
    name: &mut dyn FnMut(&StackKey) -> Option<NamedStack>,
) -> HashMap<String, (u64, u64, Vec<String>)> {
    let mut by_id: HashMap<String, (u64, u64, Vec<String>)> = HashMap::new();
    for (key, held) in by_stack {
        let Some(stack) = name(key) else { continue };
        let entry = by_id.entry(stack.id).or_insert((0, 0, stack.frames));
        entry.0 += held.bytes.saturating_mul(rate);
        entry.1 += held.allocs.saturating_mul(rate);
    }
    by_id
}

/// One set of calls' figures, per call and scaled by the sample rate.
fn figures_report(
    _records: &ScopeRecords,
    settings: &ReportSettings<'_>,
    sum: &TagFigures,
    series: Option<&[(u64, u64)]>,
    // Already scaled by the sample rate.
    by_id: &HashMap<String, (u64, u64, Vec<String>)>,
) -> ScopeFigures {
    let rate = settings.sample_rate.max(1);
    let per = |bytes: u64, calls: u64| {
        if calls == 0 {
            0.0
        } else {
            (bytes.saturating_mul(rate)) as f64 / calls as f64
        }
    };
    // Calls read again `retain_after` past their return, and those that held nothing
    // when they returned that long ago.
    let followed = sum.followed_calls + sum.returned_empty_aged;
    let retained_later = (followed > 0).then(|| per(sum.held_later_bytes, followed));
    let (growth, onset) = match series {
        Some(series) if series.len() >= 2 => {
            let points: Vec<(f64, f64)> = series
                .iter()
                .map(|&(at, bytes)| {
                    (
                        at.saturating_sub(settings.started_ns) as f64 / 1e9,
                        bytes.saturating_mul(rate) as f64,
                    )
                })
                .collect();
            let rise = crate::analyze::verdicts::rise(&points, settings.thresholds);
            (rise.slope.max(0.0), rise.onset)
        }
        _ => (0.0, None),
    };
    let mut top: Vec<ScopeStackReport> = by_id
        .iter()
        .map(|(id, (bytes, blocks, frames))| ScopeStackReport {
            stack_id: id.clone(),
            retained_bytes: *bytes,
            retained_blocks: *blocks,
            frames: frames.clone(),
        })
        .collect();
    top.sort_by(|a, b| {
        b.retained_bytes
            .cmp(&a.retained_bytes)
            .then(a.stack_id.cmp(&b.stack_id))
    });
    top.truncate(TOP_SCOPE_STACKS);
    ScopeFigures {
        calls: sum.totals.calls,
        // Over finished calls: one still running may not have allocated yet. A scope
        // none of whose followed calls has returned (a loop that runs for the whole
        // trace) falls back to every call begun.
        allocated_bytes_per_call: if sum.totals.returned_followed > 0 {
            per(
                sum.totals.returned_allocated_bytes,
                sum.totals.returned_followed,
            )
        } else {
            per(sum.totals.allocated_bytes, sum.totals.calls)
        },
        retained_bytes_per_call: per(sum.totals.held_at_return_bytes, sum.totals.returns),
        retained_later_bytes_per_call: retained_later,
        retained_later_after_s: settings.retain_after_s,
        retained_bytes: sum.totals.held_bytes.saturating_mul(rate),
        retained_blocks: sum.totals.held_blocks.saturating_mul(rate),
        retained_growth_bytes_per_s: growth,
        retained_growth_onset: onset,
        first_call_s: sum
            .first_seen_ns
            .map(|at| at.saturating_sub(settings.started_ns) as f64 / 1e9),
        top_stacks: top,
    }
}
