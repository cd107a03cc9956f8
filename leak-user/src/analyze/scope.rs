//! Request scopes (`--scope FUNCTION[:argN=str|int]`): what each call of a function (a
//! request handler, say) allocates and keeps, read from the kernel's scope maps (see
//! leak-common's "Request scopes"). This module parses the flag, reads the maps every sample,
//! follows each call until `--scope-retain-after` past its return, and keeps a series of what
//! each (function, label) holds, for the report and for correlating growth with requests.
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use leak_common::{
    MAX_SCOPES, SCOPE_LABEL_INT, SCOPE_LABEL_STR, SCOPE_NO_LABEL, ScopeCall, ScopeLabel,
    ScopeReturn, ScopeShape, ScopeTotals, map_names,
};

use crate::{
    analyze::suspects::Group,
    collect::drain::DrainError,
    model::series::push_thinned,
    model::{Held, LabelReport, ScopeFigures, ScopeReport, ScopeStackReport, StackKey},
};

/// What labels a scope's calls: a register argument (0-based) read as an integer or as a
/// pointer to a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelArg {
    pub index: u8,
    pub kind: LabelKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelKind {
    Int,
    Str,
}

/// One `--scope` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeSpec {
    pub function: String,
    pub label: Option<LabelArg>,
}

impl ScopeSpec {
    /// The kernel's view of it, as scope number `index`.
    pub fn shape(&self, index: u8) -> ScopeShape {
        ScopeShape {
            index,
            label_arg: self.label.map_or(SCOPE_NO_LABEL, |label| label.index),
            label_kind: match self.label.map(|label| label.kind) {
                Some(LabelKind::Str) => SCOPE_LABEL_STR,
                _ => SCOPE_LABEL_INT,
            },
        }
    }

    /// "handle_request:arg1=str", as given.
    pub fn describe(&self) -> String {
        match self.label {
            Some(label) => format!(
                "{}:arg{}={}",
                self.function,
                label.index,
                match label.kind {
                    LabelKind::Int => "int",
                    LabelKind::Str => "str",
                }
            ),
            None => self.function.clone(),
        }
    }
}

/// Parses `FUNCTION` or `FUNCTION:argN=str|int` (N from 0, the first argument, to 5).
pub fn parse_scope(text: &str) -> Result<ScopeSpec, String> {
    // The last `:` starts the label, unless it belongs to a `::` of a C++ name.
    let (function, label) = match text.rsplit_once(':') {
        Some((function, label)) if !function.ends_with(':') && !label.is_empty() => {
            (function, Some(label))
        }
        _ => (text, None),
    };
    // Whitespace only inside a C++ parameter list ("parse(char const*)").
    let outside_parameters = function.split('(').next().unwrap_or(function);
    if function.is_empty() || outside_parameters.contains(char::is_whitespace) {
        return Err(format!(
            "'{text}': give a function name, optionally with :argN=str or :argN=int"
        ));
    }
    let label = match label {
        None => None,
        Some(label) => {
            let parsed = label.strip_prefix("arg").and_then(|rest| {
                let (index, kind) = rest.split_once('=')?;
                let index: u8 = index.parse().ok().filter(|index| *index <= 5)?;
                let kind = match kind {
                    "str" => LabelKind::Str,
                    "int" => LabelKind::Int,
                    _ => return None,
                };
                Some(LabelArg { index, kind })
            });
            Some(parsed.ok_or_else(|| {
                format!(
                    "'{text}': the label is argN=str or argN=int, N the argument from 0 (the first) to 5"
                )
            })?)
        }
    };
    Ok(ScopeSpec {
        function: function.to_string(),
        label,
    })
}

/// Checks the list of --scope flags as a whole.
pub fn check_scopes(scopes: &[ScopeSpec]) -> Result<(), String> {
    if scopes.len() > MAX_SCOPES as usize {
        return Err(format!(
            "--scope is given {} times; at most {MAX_SCOPES} functions can be scopes",
            scopes.len()
        ));
    }
    let mut seen = HashSet::new();
    if let Some(twice) = scopes.iter().find(|spec| !seen.insert(&spec.function)) {
        return Err(format!(
            "--scope {} is given twice: one label argument per function",
            twice.function
        ));
    }
    Ok(())
}

/// The label of a tag as people read it: the string, or the integer in decimal.
pub fn label_text(label: &ScopeLabel) -> String {
    if label.kind == u32::from(SCOPE_LABEL_STR) {
        let end = label
            .text
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(label.text.len());
        String::from_utf8_lossy(&label.text[..end]).into_owned()
    } else {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&label.text[..8]);
        u64::from_le_bytes(bytes).to_string()
    }
}

/// What one tag ((function, label), or a function's calls without a label of their own)
/// did, summed over the CPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TagFigures {
    /// Calls, bytes allocated, held now (negative sums read as 0) and held at return.
    pub totals: ScopeTotals,
    /// Calls followed to `retain_after` past their return, and what they then still held.
    pub followed_calls: u64,
    pub held_later_bytes: u64,
    /// Of the returned calls that held nothing, the ones that returned at least `retain_after` ago (as of the last sample
    /// that old): they count with the followed calls.
    pub returned_empty_aged: u64,
    /// (ns, returned_empty) at recent samples, back to `retain_after` ago.
    empty_history: VecDeque<(u64, u64)>,
    /// When its first call was seen, ns (CLOCK_MONOTONIC), at sample resolution.
    pub first_seen_ns: Option<u64>,
    /// (ns, held bytes) at each sample.
    pub series: Vec<(u64, u64)>,
}

/// A scope call that still held at least the span threshold when it returned.
#[derive(Clone, Debug, PartialEq)]
pub struct RetainingCall {
    pub tag: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub allocated_bytes: u64,
    pub held_at_return: u64,
}

/// The scope maps, and what they said so far.
pub struct ScopeCollector {
    totals: PerCpuArray<MapData, ScopeTotals>,
    tags: BpfHashMap<MapData, ScopeLabel, u32>,
    calls: BpfHashMap<MapData, u64, ScopeCall>,
    events: RingBuf<MapData>,
    /// How many --scope functions there are (tags 1..=scope_count are theirs).
    scope_count: u32,
    retain_after_ns: u64,
    span_threshold: u64,
    series_cap: usize,
    /// By tag.
    pub figures: BTreeMap<u32, TagFigures>,
    /// Tag → (scope index, label); tags 1..=MAX_SCOPES have no label.
    pub labels: HashMap<u32, (u32, String)>,
    /// By scope index: (ns, bytes its calls hold, all labels together) at each sample.
    scope_series: BTreeMap<u32, Vec<(u64, u64)>>,
    /// Calls that returned holding memory, by when to read them again: (due ns, call, tag).
    due: VecDeque<(u64, u64, u32)>,
    /// Retaining calls not yet taken (see `take_retaining_calls`).
    retaining: Vec<RetainingCall>,
    /// Retaining calls left out because `MAX_RETAINING_CALLS` were waiting.
    pub retaining_skipped: u64,
    /// When the label map was last listed.
    labels_read_ns: Option<u64>,
    /// By scope index: the functions probed for it ("symbol in module"), as the report
    /// lists them.
    pub probed: Vec<Vec<String>>,
}

/// How often the label map is listed: each listing costs two syscalls per label (up to
/// 1008), and a new label's totals wait for its listing at most this long.
const LABELS_EVERY_NS: u64 = 1_000_000_000;

/// Retaining calls kept between two takes (one span each): a flood of them is counted, not
/// kept.
const MAX_RETAINING_CALLS: usize = 256;

impl ScopeCollector {
    pub fn take(
        ebpf: &mut aya::Ebpf,
        scope_count: u32,
        retain_after: Duration,
        span_threshold: u64,
        series_cap: usize,
    ) -> Result<ScopeCollector, DrainError> {
        fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut aya::Ebpf,
            name: &'static str,
        ) -> Result<T, DrainError> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| DrainError::new(name, "missing from the eBPF object"))?;
            T::try_from(map).map_err(|err| DrainError::new(name, err.to_string()))
        }
        Ok(ScopeCollector {
            totals: take(ebpf, map_names::SCOPE_TOTALS)?,
            tags: take(ebpf, map_names::SCOPE_TAGS)?,
            calls: take(ebpf, map_names::SCOPE_CALLS)?,
            events: take(ebpf, map_names::SCOPE_EVENTS)?,
            scope_count,
            retain_after_ns: u64::try_from(retain_after.as_nanos()).unwrap_or(u64::MAX),
            span_threshold,
            series_cap,
            figures: BTreeMap::new(),
            labels: HashMap::new(),
            scope_series: BTreeMap::new(),
            due: VecDeque::new(),
            retaining: Vec::new(),
            retaining_skipped: 0,
            labels_read_ns: None,
            probed: Vec::new(),
        })
    }

    /// One sample: every tag's totals, new labels (once a second, or now with
    /// `all_labels`: the final sample), and the calls due to be read again.
    pub fn sample(&mut self, now_ns: u64, all_labels: bool) -> Result<(), DrainError> {
        let error =
            |err: aya::maps::MapError| DrainError::new(map_names::SCOPE_TOTALS, err.to_string());
        if all_labels
            || self
                .labels_read_ns
                .is_none_or(|at| now_ns.saturating_sub(at) >= LABELS_EVERY_NS)
        {
            self.read_labels();
            self.labels_read_ns = Some(now_ns);
        }
        let mut scope_held: BTreeMap<u32, u64> = BTreeMap::new();
        // Each scope's own tag, and the labelled ones handed out so far.
        let mut tags: Vec<u32> = (1..=self.scope_count).collect();
        tags.extend(self.labels.keys().copied().filter(|&tag| tag > MAX_SCOPES));
        tags.sort_unstable();
        for tag in tags {
            let per_cpu = self.totals.get(&tag, 0).map_err(error)?;
            let mut sum = ScopeTotals::default();
            for cpu in per_cpu.iter() {
                sum.add(cpu);
            }
            // Frees on another CPU than the allocation can leave a CPU's share negative
            // while the sum is exact; a sum read between the two is clamped.
            sum.held_bytes = signed_floor(sum.held_bytes);
            sum.held_blocks = signed_floor(sum.held_blocks);
            if sum.calls == 0 && sum.allocs == 0 && !self.figures.contains_key(&tag) {
                continue;
            }
            // A labelled tag is counted once its label is known (the kernel adds the label
            // first; this sample may have listed labels just before).
            let index = if tag <= MAX_SCOPES {
                tag - 1
            } else {
                match self.labels.get(&tag) {
                    Some((index, _)) => *index,
                    None => continue,
                }
            };
            *scope_held.entry(index).or_default() += sum.held_bytes;
            let figures = self.figures.entry(tag).or_default();
            figures.totals = sum;
            figures
                .empty_history
                .push_back((now_ns, sum.returned_empty));
            let cutoff = now_ns.saturating_sub(self.retain_after_ns);
            while figures
                .empty_history
                .get(1)
                .is_some_and(|&(at, _)| at <= cutoff)
            {
                figures.empty_history.pop_front();
            }
            figures.returned_empty_aged = match figures.empty_history.front() {
                Some(&(at, empty)) if at <= cutoff => empty,
                _ => 0,
            };
            figures.first_seen_ns.get_or_insert(now_ns);
            push_thinned(
                &mut figures.series,
                (now_ns, sum.held_bytes),
                self.series_cap,
            );
        }
        for (index, held) in scope_held {
            let series = self.scope_series.entry(index).or_default();
            push_thinned(series, (now_ns, held), self.series_cap);
        }
        self.follow_calls(now_ns);
        Ok(())
    }

    /// Takes the calls that returned holding memory (a retaining one above the span
    /// threshold is noted for its span), and reads again those that returned
    /// `retain_after` ago: what they still hold. Two map operations per such call in all,
    /// however many are followed at once.
    fn follow_calls(&mut self, now_ns: u64) {
        while let Some(item) = self.events.next() {
            if item.len() < size_of::<ScopeReturn>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole ScopeReturn; read_unaligned copes with alignment.
            let returned: ScopeReturn = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if returned.held_at_return >= self.span_threshold {
                if self.retaining.len() < MAX_RETAINING_CALLS {
                    self.retaining.push(RetainingCall {
                        tag: returned.tag,
                        tid: returned.tid,
                        start_ns: returned.start_ns,
                        end_ns: returned.end_ns,
                        allocated_bytes: returned.allocated_bytes,
                        held_at_return: returned.held_at_return,
                    });
                } else {
                    self.retaining_skipped += 1;
                }
            }
            self.due.push_back((
                returned.end_ns.saturating_add(self.retain_after_ns),
                returned.call,
                returned.tag,
            ));
        }
        // Events come in about the order calls ended (per CPU exactly): a call a little out
        // of order is read a sample late.
        while let Some(&(due, call, tag)) = self.due.front() {
            if due > now_ns {
                break;
            }
            self.due.pop_front();
            let Ok(followed) = self.calls.get(&call, 0) else {
                continue;
            };
            let _ = self.calls.remove(&call);
            let figures = self.figures.entry(tag).or_default();
            figures.followed_calls += 1;
            figures.held_later_bytes += signed_floor(followed.held_bytes);
        }
    }

    /// Calls that held at least the span threshold when they returned, since the last call.
    pub fn take_retaining_calls(&mut self) -> Vec<RetainingCall> {
        // A call under a label newer than the last listing: list the labels now, so that
        // `describe_tag` knows it.
        if self
            .retaining
            .iter()
            .any(|call| self.describe_tag(call.tag).is_none())
        {
            self.read_labels();
        }
        std::mem::take(&mut self.retaining)
    }

    /// Lists the label map: the labels handed out since the last listing.
    fn read_labels(&mut self) {
        for entry in self.tags.iter() {
            let Ok((label, tag)) = entry else { continue };
            self.labels
                .entry(tag)
                .or_insert_with(|| (label.index, label_text(&label)));
        }
    }

    /// The scope function (index into the --scope list) and label of a tag.
    pub fn describe_tag(&self, tag: u32) -> Option<(u32, Option<&str>)> {
        if (1..=MAX_SCOPES).contains(&tag) {
            return Some((tag - 1, None));
        }
        self.labels
            .get(&tag)
            .map(|(index, label)| (*index, Some(label.as_str())))
    }
}

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

impl ScopeCollector {
    /// The scopes as the report shows them. `held` is what the live walk found by tag and
    /// stack; `name` names a stack.
    pub fn analyse(
        &self,
        settings: &ReportSettings<'_>,
        held: &HashMap<u32, HashMap<StackKey, Held>>,
        name: &mut dyn FnMut(&StackKey) -> Option<NamedStack>,
    ) -> ScopeAnalysis {
        let mut reports = Vec::new();
        let mut groups = Vec::new();
        for (index, spec) in settings.specs.iter().enumerate() {
            let index = index as u32;
            // This scope's tags: its own (index + 1), then labelled ones.
            let tags: Vec<u32> = self
                .figures
                .keys()
                .copied()
                .filter(|&tag| {
                    tag == index + 1 || self.labels.get(&tag).is_some_and(|(i, _)| *i == index)
                })
                .collect();
            let figures_of = |tags: &[u32], series: Option<&[(u64, u64)]>| {
                let mut sum = TagFigures::default();
                for tag in tags {
                    if let Some(figures) = self.figures.get(tag) {
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
                (sum, by_stack, series.map(<[_]>::to_vec))
            };
            // Bytes and blocks by stack id, scaled by the sample rate like the stacks'.
            let rate = settings.sample_rate.max(1);
            let mut named = |by_stack: &HashMap<StackKey, Held>| {
                let mut by_id: HashMap<String, (u64, u64, Vec<String>)> = HashMap::new();
                for (key, held) in by_stack {
                    let Some(stack) = name(key) else { continue };
                    let entry = by_id.entry(stack.id).or_insert((0, 0, stack.frames));
                    entry.0 += held.bytes.saturating_mul(rate);
                    entry.1 += held.allocs.saturating_mul(rate);
                }
                by_id
            };
            let (all, all_held, _) = figures_of(&tags, None);
            let all_series = self.scope_series.get(&index).map(Vec::as_slice);
            let all_named = named(&all_held);
            let figures = self.figures_report(settings, &all, all_series, &all_named);
            let mut labels = Vec::new();
            if spec.label.is_some() {
                let mut labelled: Vec<(String, u32)> = tags
                    .iter()
                    .filter_map(|tag| Some((self.labels.get(tag)?.1.clone(), *tag)))
                    .collect();
                let rank = |tag: &u32| {
                    self.figures
                        .get(tag)
                        .map_or((0, 0), |f| (f.totals.held_bytes, f.totals.calls))
                };
                labelled.sort_by(|a, b| rank(&b.1).cmp(&rank(&a.1)).then(a.0.cmp(&b.0)));
                let cut = labelled.len().min(settings.max_labels);
                let mut other_tags: Vec<u32> = labelled[cut..].iter().map(|(_, t)| *t).collect();
                other_tags.push(index + 1);
                for (label, tag) in &labelled[..cut] {
                    let (sum, by_stack, series) =
                        figures_of(&[*tag], self.figures.get(tag).map(|f| f.series.as_slice()));
                    let by_id = named(&by_stack);
                    let figures = self.figures_report(settings, &sum, series.as_deref(), &by_id);
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
                    let figures = self.figures_report(settings, &sum, None, &by_id);
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
                probed: self.probed.get(index as usize).cloned().unwrap_or_default(),
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

    /// One set of calls' figures, per call and scaled by the sample rate.
    fn figures_report(
        &self,
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
}

/// Adds one tag's counts to a sum (the earliest first call wins; series are not summed).
fn add_figures(sum: &mut TagFigures, figures: &TagFigures) {
    sum.totals.add(&figures.totals);
    sum.followed_calls += figures.followed_calls;
    sum.held_later_bytes += figures.held_later_bytes;
    sum.returned_empty_aged += figures.returned_empty_aged;
    sum.first_seen_ns = match (sum.first_seen_ns, figures.first_seen_ns) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
}

/// A wrapping counter read as two's complement, negative values as 0.
fn signed_floor(value: u64) -> u64 {
    u64::try_from(value as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_functions_and_label_arguments() {
        assert_eq!(
            parse_scope("handle_request"),
            Ok(ScopeSpec {
                function: "handle_request".into(),
                label: None
            })
        );
        let spec = parse_scope("handle_request:arg1=str").expect("valid");
        assert_eq!(
            spec.label,
            Some(LabelArg {
                index: 1,
                kind: LabelKind::Str
            })
        );
        assert_eq!(spec.describe(), "handle_request:arg1=str");
        assert_eq!(spec.shape(3).label_arg, 1);
        assert_eq!(spec.shape(3).label_kind, SCOPE_LABEL_STR);
        assert_eq!(
            parse_scope("Server::handle:arg0=int").map(|s| s.function),
            Ok("Server::handle".to_string())
        );
        assert_eq!(parse_scope("Server::handle").map(|s| s.label), Ok(None));
        assert_eq!(
            parse_scope("Parser::parse(char const*)").map(|s| s.function),
            Ok("Parser::parse(char const*)".to_string())
        );
        assert!(parse_scope("handle request").is_err());
        for bad in [
            "",
            ":arg1=str",
            "f:arg6=str",
            "f:arg1=float",
            "f:x",
            "two words",
        ] {
            assert!(parse_scope(bad).is_err(), "{bad}");
        }
        let many: Vec<ScopeSpec> = (0..=MAX_SCOPES)
            .map(|i| parse_scope(&format!("f{i}")).expect("valid"))
            .collect();
        assert!(check_scopes(&many).is_err());
        assert!(check_scopes(&many[..2]).is_ok());
        let twice = [
            parse_scope("f").expect("f"),
            parse_scope("f:arg0=int").expect("f"),
        ];
        assert!(check_scopes(&twice).is_err());
    }

    #[test]
    fn labels_read_as_text_or_decimal() {
        let mut label = ScopeLabel {
            index: 0,
            kind: u32::from(SCOPE_LABEL_STR),
            text: [0; leak_common::SCOPE_LABEL_BYTES],
        };
        label.text[..7].copy_from_slice(b"/upload");
        assert_eq!(label_text(&label), "/upload");
        label.kind = u32::from(SCOPE_LABEL_INT);
        label.text = [0; leak_common::SCOPE_LABEL_BYTES];
        label.text[..8].copy_from_slice(&404u64.to_le_bytes());
        assert_eq!(label_text(&label), "404");
    }
}
