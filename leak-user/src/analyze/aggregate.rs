//! Aggregating by stack: the drained stacks, named by their frames, into the report's
//! stacks. Stacks that symbolize to the same frames are one stack to the reader (`group`);
//! what the loader or the Go runtime maps for itself is left out. Each group is judged
//! (`verdicts`), weighed against what the reachability scan found, confirmed while the
//! program runs, excused when its memory is not the program's, then ordered and cut to the
//! top (`aggregate`). The drained stacks come in as model types: nothing here reads a map,
//! a file or the target.
use std::collections::{HashMap, HashSet, hash_map::Entry};

use crate::{
    analyze::c_runtime,
    analyze::go_heap,
    analyze::suppress::{self, Suppression},
    analyze::verdicts::{self, Context, Thresholds, Unconfirmed},
    model::{
        Frame, Held, InUse, LeakSummary, Origin, Reachability, StackHistory, StackKey, StackReport,
        Trend, Verdict,
    },
};

/// What orders the stacks within a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Outstanding bytes.
    Bytes,
    /// Outstanding allocations.
    Count,
    /// Growth rate of the baseline.
    Growth,
}

/// Most points of a stack's series a report carries.
pub const REPORT_SERIES_POINTS: usize = 32;

/// One drained stack with its frames.
pub struct DrainedStack {
    pub history: StackHistory,
    pub frames: Vec<Frame>,
    /// A bucket of Go's heap profile (its key's `caller_hint` is the bucket's address), not
    /// a stack the kernel recorded.
    pub from_go_profile: bool,
}

/// Drained stacks that symbolize to the same frames: one stack to the reader.
pub struct Group {
    pub frames: Vec<Frame>,
    pub members: Vec<StackHistory>,
    /// The members that are buckets of Go's heap profile.
    pub in_profile: Vec<StackKey>,
}

/// The target's Go runtime, as far as the aggregation needs it.
#[derive(Clone, Copy, Debug, Default)]
pub struct GoRuntime {
    /// The target is a Go program.
    pub present: bool,
    /// Its heap's stacks come from the runtime's heap profile (else from its spans).
    pub heap_from_profile: bool,
}

/// The drained stacks in groups of the same frames, in the order first seen, without what
/// the loader or the Go runtime mapped for itself; with `name_heap_stacks`, every heap
/// stack's frames by key too (scope calls' stacks are named from these).
pub fn group(
    stacks: Vec<DrainedStack>,
    go: GoRuntime,
    name_heap_stacks: bool,
) -> (Vec<Group>, HashMap<StackKey, Vec<Frame>>) {
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<(Origin, Vec<FrameIdentity>), usize> = HashMap::new();
    let mut frames_by_key: HashMap<StackKey, Vec<Frame>> = HashMap::new();
    for stack in stacks {
        let DrainedStack {
            history,
            frames,
            from_go_profile,
        } = stack;
        if name_heap_stacks && history.key.origin == Origin::Heap {
            frames_by_key.insert(history.key, frames.clone());
        }
        if runtime_own(&history, &frames, from_go_profile, go) {
            continue;
        }
        let in_profile: Vec<StackKey> =
            from_go_profile.then_some(history.key).into_iter().collect();
        if frames.is_empty() {
            groups.push(Group {
                frames,
                members: vec![history],
                in_profile,
            });
            continue;
        }
        let identity: Vec<FrameIdentity> = frames.iter().map(frame_identity).collect();
        match group_of.entry((history.key.origin, identity)) {
            Entry::Occupied(entry) => {
                let group = &mut groups[*entry.get()];
                group.members.push(history);
                group.in_profile.extend(in_profile);
            }
            Entry::Vacant(entry) => {
                entry.insert(groups.len());
                groups.push(Group {
                    frames,
                    members: vec![history],
                    in_profile,
                });
            }
        }
    }
    (groups, frames_by_key)
}

/// Whether a drained stack is memory the loader or the Go runtime keeps for itself, left
/// out of the report. The loader mapping a library's zero-filled segments, or its own
/// start-up allocator, is part of the program image, not the program's memory.
fn runtime_own(
    history: &StackHistory,
    frames: &[Frame],
    from_go_profile: bool,
    go: GoRuntime,
) -> bool {
    if history.key.origin != Origin::Heap && mapped_by_loader(frames) {
        return true;
    }
    // A Go runtime's own mappings hold its heap (followed by span, above), its
    // goroutine stacks and reservations: counting them too would count the heap
    // twice. With the runtime's heap profile read, its stacks stand for the small
    // objects' spans (each span's objects may be anyone's); a large object's span is
    // its own, charged to the stack that allocated it, and counted exactly.
    if go.present
        && !from_go_profile
        && mapped_by_go_runtime(frames)
        && (history.key.origin != Origin::Heap
            || (go.heap_from_profile && !go_heap::is_large_object_stack(frames)))
    {
        return true;
    }
    // The runtime's goroutine bookkeeping (each goroutine's `g`, the list of all of
    // them, blocked ones' waiting records) grows and shrinks with the goroutines,
    // which are counted per creation site.
    go.present && go_heap::goroutine_bookkeeping(frames)
}

/// What judging the groups weighs besides their histories.
pub struct Judging<'a> {
    pub context: Context,
    pub thresholds: &'a Thresholds,
    pub suppressions: &'a [Suppression],
    pub sort: SortKey,
    /// The target is a Go program: its heap is collected, not freed.
    pub go: bool,
    /// With --min-age, what each stack holds at least that old (None: every live block
    /// counts).
    pub held_old_enough: Option<&'a HashMap<StackKey, Held>>,
    /// The reachability scan's classes by stack, once it ran.
    pub reachability: Option<&'a HashMap<StackKey, Reachability>>,
    /// Go spans of small objects by stack id and size class, when they stand for the heap
    /// (empty otherwise).
    pub span_classes: &'a HashMap<u32, HashMap<u32, u64>>,
}

/// The report's stacks, and what the listing leaves out.
#[derive(Debug)]
pub struct Aggregate {
    /// At most `top` stacks, by verdict, then by --sort.
    pub stacks: Vec<StackReport>,
    /// Stacks left out (younger than --min-age, or past the top) and what they hold.
    pub omitted_stacks: u64,
    pub omitted_outstanding_bytes: u64,
    /// After the program exited: what it leaked, by class.
    pub leak_summary: Option<LeakSummary>,
    /// What the heap stacks hold, listed or not.
    pub heap_bytes: u64,
}

/// Judges each group, orders them and keeps the `top` (0: all) as the report's stacks.
/// `at_last_gc`: what each Go heap profile bucket held at the last GC. `confirmed_leaks`:
/// the stacks (by `model::stack_id_of`) whose leak was confirmed and that have been judged
/// leaking at every analysis since; kept from one analysis to the next.
pub fn aggregate(
    groups: Vec<Group>,
    judging: &Judging,
    at_last_gc: HashMap<StackKey, InUse>,
    confirmed_leaks: &mut HashSet<String>,
    top: usize,
) -> Aggregate {
    let mut at_last_gc = at_last_gc;
    let class_totals = class_totals(judging.span_classes);
    let mut judged: Vec<Judged> = Vec::new();
    let mut omitted = (0u64, 0u64);
    for group in groups {
        judged.extend(judge_group(
            group,
            judging,
            &class_totals,
            &mut at_last_gc,
            confirmed_leaks,
            &mut omitted,
        ));
    }
    order(&mut judged, judging.sort);
    let heap_bytes = judged
        .iter()
        .filter(|judged| judged.history.key.origin == Origin::Heap)
        .map(|judged| judged.history.totals.outstanding_bytes)
        .sum();
    let leak_summary = judging.context.exited.then(|| leak_summary(&judged));
    let top = if top == 0 { usize::MAX } else { top };
    for judged in judged.split_off(judged.len().min(top)) {
        omitted.0 += 1;
        omitted.1 += judged.history.totals.outstanding_bytes;
    }
    Aggregate {
        stacks: judged
            .into_iter()
            .map(|judged| judged.report(judging.context.now_ns, &at_last_gc))
            .collect(),
        omitted_stacks: omitted.0,
        omitted_outstanding_bytes: omitted.1,
        leak_summary,
        heap_bytes,
    }
}

/// A group as judged for the report: its merged history, verdict, frames, classes, excuse
/// and why.
struct Judged {
    history: StackHistory,
    trend: Trend,
    frames: Vec<Frame>,
    reachability: Option<Reachability>,
    excused: Excused,
    why: String,
}

/// Why a stack's memory is not the program's leak, whatever its trend: the C runtime's
/// own, or accepted by a suppression (its name).
struct Excused {
    c_runtime: Option<&'static str>,
    suppressed: Option<String>,
}

/// One group judged: its members' histories merged and judged, then what the reachability
/// scan, the confirmation, the excuses and a shared Go size class say. None, and counted
/// in `omitted` (stacks, bytes), when it holds nothing at least --min-age old.
fn judge_group(
    group: Group,
    judging: &Judging,
    class_totals: &HashMap<u32, u64>,
    at_last_gc: &mut HashMap<StackKey, InUse>,
    confirmed_leaks: &mut HashSet<String>,
    omitted: &mut (u64, u64),
) -> Option<Judged> {
    let Group {
        frames,
        members,
        in_profile,
    } = group;
    let refs: Vec<&StackHistory> = members.iter().collect();
    let mut history = verdicts::merge_histories(&refs)?;
    // Go's heap is collected, not freed: what it holds when the program ends was not
    // lost, and only its trend tells a leak.
    let go_heap = judging.go
        && history.key.origin == Origin::Heap
        && (!in_profile.is_empty() || mapped_by_go_runtime(&frames));
    let context = Context {
        exited: judging.context.exited && !go_heap,
        ..judging.context
    };
    let mut trend = verdicts::judge(&history, context, judging.thresholds);
    if !in_profile.is_empty() {
        merge_at_last_gc(&in_profile, history.key, at_last_gc);
    }
    // The runtime's profile gives no ages: its stacks are never left out by age.
    if let Some(held_old_enough) = judging.held_old_enough
        && in_profile.is_empty()
    {
        // Only what is at least --min-age old counts as held.
        let held = held_by(&members, held_old_enough);
        if held.allocs == 0 {
            omitted.0 += 1;
            omitted.1 += history.totals.outstanding_bytes;
            return None;
        }
        history.totals.outstanding_allocs = held.allocs;
        history.totals.outstanding_bytes = held.bytes;
    }
    let reachability = judging
        .reachability
        .map(|by_stack| reachability_of(&members, by_stack));
    let judged_alone = trend.verdict;
    // Rising memory that the program can still reach is a growing cache or
    // queue, not a leak.
    if let Some(found) = &reachability {
        trend.verdict = verdicts::verdict_with_reachability(trend.verdict, found, context.exited);
    }
    let unconfirmed = confirm(
        &history,
        &frames,
        &mut trend,
        reachability.as_ref(),
        context,
        judging.thresholds,
        confirmed_leaks,
    );
    let excused = excuse(
        &history,
        &frames,
        &trend,
        reachability.as_ref(),
        context,
        judging,
    );
    if excused.c_runtime.is_some() || excused.suppressed.is_some() {
        trend.verdict = verdicts::stable_when_excused(trend.verdict);
    }
    let mut why = verdicts::why(
        &trend,
        judged_alone,
        reachability.as_ref(),
        context.exited,
        unconfirmed,
    );
    if let Some(others) = shared_span_class(&members, judging.span_classes, class_totals) {
        let verdict = verdicts::stable_when_excused(trend.verdict);
        if verdict != trend.verdict {
            trend.verdict = verdict;
            why = span_class_shared_why(others);
        }
    }
    Some(Judged {
        history,
        trend,
        frames,
        reachability,
        excused,
        why,
    })
}

/// What the Go profile buckets `in_profile` held at the last GC, added up under `key`
/// (the group's).
fn merge_at_last_gc(
    in_profile: &[StackKey],
    key: StackKey,
    at_last_gc: &mut HashMap<StackKey, InUse>,
) {
    let mut sum = InUse::default();
    for member in in_profile {
        if let Some(found) = at_last_gc.remove(member) {
            sum.bytes += found.bytes;
            sum.objects += found.objects;
        }
    }
    at_last_gc.insert(key, sum);
}

/// What the `members` of a group hold at least --min-age old.
fn held_by(members: &[StackHistory], held_old_enough: &HashMap<StackKey, Held>) -> Held {
    let mut held = Held::default();
    for member in members {
        let member_held = held_old_enough
            .get(&member.key)
            .copied()
            .unwrap_or_default();
        held.allocs += member_held.allocs;
        held.bytes += member_held.bytes;
    }
    held
}

/// The reachability scan's classes of a group's `members`, added up.
fn reachability_of(
    members: &[StackHistory],
    by_stack: &HashMap<StackKey, Reachability>,
) -> Reachability {
    let mut sum = Reachability::default();
    for member in members {
        if let Some(found) = by_stack.get(&member.key) {
            sum.add(found);
        }
    }
    sum
}

/// While the program runs a leak is announced once its evidence holds (see
/// verdicts::confirm); a scan that found its blocks lost is evidence enough. A leaking
/// `trend` not confirmed yet becomes suspect, and the reason is returned.
fn confirm(
    history: &StackHistory,
    frames: &[Frame],
    trend: &mut Trend,
    reachability: Option<&Reachability>,
    context: Context,
    thresholds: &Thresholds,
    confirmed_leaks: &mut HashSet<String>,
) -> Option<Unconfirmed> {
    let lost_found =
        reachability.map_or(0, |found| found.lost.blocks + found.indirectly_lost.blocks);
    let mut unconfirmed = None;
    if trend.verdict == Verdict::Leaking && !context.exited && lost_found == 0 {
        // Once confirmed, a stack stays so while it is judged leaking: an earlier
        // part of its history judged again may say otherwise at a window's edge.
        let id = crate::model::stack_id_of(history.key.origin, frames);
        if !confirmed_leaks.contains(&id) {
            match verdicts::confirm(history, trend, context, thresholds) {
                Ok(()) => {
                    confirmed_leaks.insert(id);
                }
                Err(why) => {
                    trend.verdict = Verdict::Suspect;
                    unconfirmed = Some(why);
                }
            }
        }
    } else if !context.exited && !confirmed_leaks.is_empty() {
        confirmed_leaks.remove(&crate::model::stack_id_of(history.key.origin, frames));
    }
    unconfirmed
}

/// The C runtime's own memory is never the program's leak, nor is what a
/// suppression accepts.
fn excuse(
    history: &StackHistory,
    frames: &[Frame],
    trend: &Trend,
    reachability: Option<&Reachability>,
    context: Context,
    judging: &Judging,
) -> Excused {
    let lost = reachability.map_or(trend.verdict == Verdict::Leaking, |found| {
        found.lost.blocks + found.indirectly_lost.blocks + found.interior.blocks > 0
    });
    Excused {
        c_runtime: c_runtime::held_by(history.key.origin, frames, context.exited),
        suppressed: suppress::matching(judging.suppressions, frames, lost).map(str::to_string),
    }
}

/// Orders judged stacks by verdict, then by `sort`, then by what they hold.
fn order(judged: &mut [Judged], sort: SortKey) {
    let key = |history: &StackHistory, trend: &Trend| match sort {
        SortKey::Bytes => history.totals.outstanding_bytes as f64,
        SortKey::Count => history.totals.outstanding_allocs as f64,
        SortKey::Growth => trend.growth_bytes_per_s,
    };
    judged.sort_by(|a, b| {
        let (a_trend, b_trend) = (&a.trend, &b.trend);
        let (a, b) = (&a.history, &b.history);
        a_trend
            .verdict
            .cmp(&b_trend.verdict)
            .then(key(b, b_trend).total_cmp(&key(a, a_trend)))
            .then(b.totals.outstanding_bytes.cmp(&a.totals.outstanding_bytes))
            .then(b.totals.total_bytes.cmp(&a.totals.total_bytes))
            .then(a.key.cmp(&b.key))
    });
}

/// What the program leaked, by class, from every judged stack (listed or not).
fn leak_summary(judged: &[Judged]) -> LeakSummary {
    let mut summary = LeakSummary::default();
    for judged in judged {
        let outstanding = (
            judged.history.totals.outstanding_bytes,
            judged.history.totals.outstanding_allocs,
        );
        if judged.excused.suppressed.is_some() {
            summary.suppressed_bytes += outstanding.0;
            continue;
        }
        summary.add(
            judged.trend.verdict,
            outstanding,
            judged.reachability.as_ref(),
            judged.excused.c_runtime.is_some(),
        );
    }
    summary
}

impl Judged {
    /// The stack as the report lists it.
    fn report(self, now_ns: u64, at_last_gc: &HashMap<StackKey, InUse>) -> StackReport {
        let Judged {
            history,
            trend,
            frames,
            reachability,
            excused,
            why,
        } = self;
        StackReport {
            verdict: trend.verdict,
            origin: history.key.origin,
            outstanding_bytes: history.totals.outstanding_bytes,
            outstanding_allocs: history.totals.outstanding_allocs,
            total_allocs: history.totals.total_allocs,
            total_frees: history.totals.total_frees,
            total_bytes: history.totals.total_bytes,
            oldest_age_s: history.oldest_age_s(now_ns),
            growth_bytes_per_s: trend.growth_bytes_per_s,
            confidence: trend.confidence,
            growth_onset: trend.growth_onset,
            r_squared: trend.r_squared,
            survival_fraction: trend.survival_fraction,
            frames,
            reachability,
            held_by_c_runtime: excused.c_runtime.map(str::to_string),
            suppressed_by: excused.suppressed,
            series: evenly_spread(&history.series, REPORT_SERIES_POINTS),
            why,
            at_last_gc: at_last_gc.get(&history.key).copied(),
        }
    }
}

/// At most `points` items spread evenly over `series`, always keeping the last.
pub fn evenly_spread<T: Copy>(series: &[T], points: usize) -> Vec<T> {
    if series.len() <= points || points < 2 {
        return series.to_vec();
    }
    let step = (series.len() - 1) as f64 / (points - 1) as f64;
    (0..points)
        .map(|i| series[((i as f64 * step).round() as usize).min(series.len() - 1)])
        .collect()
}

/// What makes two frames the same place for the reader: the source location when known,
/// else the address's place in its module.
type FrameIdentity = (
    Option<String>,
    Option<String>,
    Option<u32>,
    Option<String>,
    bool,
    Option<u64>,
);

fn frame_identity(frame: &Frame) -> FrameIdentity {
    let unsymbolized = frame.function.is_none() || frame.line.is_none();
    (
        frame.function.clone(),
        frame.file.clone(),
        frame.line,
        frame.module.clone(),
        frame.inlined,
        if unsymbolized {
            frame.module_offset.or(Some(frame.address))
        } else {
            None
        },
    )
}

/// Whether an mmap stack starts in the dynamic loader (ld-linux, ld-musl).
fn mapped_by_loader(frames: &[Frame]) -> bool {
    frames
        .first()
        .and_then(|frame| frame.module.as_deref())
        .and_then(|module| module.rsplit('/').next())
        .is_some_and(|name| {
            name.starts_with("ld-linux") || name.starts_with("ld-musl") || name == "ld.so"
        })
}

/// A mapping the Go runtime made for itself: the mmap syscall is in package runtime
/// (`runtime.sysMmap`, `runtime.mmap`…), or in cgo's C wrapper that `runtime.mmap` calls in
/// a program linked with cgo. A program's own `syscall.Mmap` is not.
fn mapped_by_go_runtime(frames: &[Frame]) -> bool {
    const CGO_MMAP: [&str; 2] = ["x_cgo_mmap", "_cgo_mmap"];
    frames
        .iter()
        .map(|frame| frame.function.as_deref())
        .find(|function| !function.is_some_and(|name| CGO_MMAP.contains(&name)))
        .flatten()
        .is_some_and(|function| function.starts_with("runtime."))
}

/// A stack charged with Go spans of small objects holds at most this share of the live
/// spans of its size classes for its rise to be its own.
const OWN_SPAN_SHARE: f64 = 0.75;

/// For a stack of Go spans of small objects (its `members`' stack ids in `span_classes`):
/// the share of the live spans of its size classes charged to other stacks, when that is
/// too much for its rise to be told from theirs (see OWN_SPAN_SHARE).
fn shared_span_class(
    members: &[StackHistory],
    span_classes: &HashMap<u32, HashMap<u32, u64>>,
    class_totals: &HashMap<u32, u64>,
) -> Option<f64> {
    let mut own: HashMap<u32, u64> = HashMap::new();
    for member in members {
        for (class, spans) in span_classes.get(&member.key.stack_id).into_iter().flatten() {
            *own.entry(*class).or_default() += spans;
        }
    }
    let held: u64 = own.values().sum();
    let in_classes: u64 = own
        .keys()
        .map(|class| class_totals.get(class).copied().unwrap_or(0))
        .sum();
    let others = 1.0 - held as f64 / in_classes.max(1) as f64;
    (held > 0 && others > 1.0 - OWN_SPAN_SHARE).then_some(others)
}

/// Why a rising stack whose size class is mostly charged to `others` (a share) is stable.
fn span_class_shared_why(others: f64) -> String {
    format!(
        "rising, but {:.0}% of the live spans of its objects' size class are charged \
         to other stacks: with Go's heap profile off a span is charged whole to the \
         stack that filled it last, so which of them keeps the memory cannot be told \
         (the goroutine counts may; a build that links runtime/pprof can)",
        others * 100.0
    )
}

/// Live Go spans of small objects by size class, over every stack.
fn class_totals(span_classes: &HashMap<u32, HashMap<u32, u64>>) -> HashMap<u32, u64> {
    let mut class_totals: HashMap<u32, u64> = HashMap::new();
    for classes in span_classes.values() {
        for (class, spans) in classes {
            *class_totals.entry(*class).or_default() += spans;
        }
    }
    class_totals
}

#[cfg(test)]
mod tests {
    use super::evenly_spread;

    #[test]
    fn spreads_evenly_keeping_both_ends() {
        let series: Vec<u32> = (0..100).collect();
        let spread = evenly_spread(&series, 10);
        assert_eq!(spread.len(), 10);
        assert_eq!((spread[0], spread[9]), (0, 99));
        assert_eq!(evenly_spread(&series[..5], 10), vec![0, 1, 2, 3, 4]);
    }
}
