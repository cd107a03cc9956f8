//! The report, interim or final: the stacks drained, aggregated and judged, the process's
//! trend, scopes and suspects, the runtimes and goroutines; handed to the exporters.
use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    time::Duration,
};

use leak_common::Counter;

use super::{
    Excused, FrameIdentity, Judged, Session, SessionError, SortKey, evenly_spread, frame_identity,
    mapped_by_go_runtime, mapped_by_loader, shared_span_class, stacks::NamedHistory,
    verdict_with_reachability,
};
use crate::{
    analyze::c_runtime,
    analyze::scope::{self, NamedStack},
    analyze::suspects,
    analyze::verdicts::{self, Context},
    collect::scope::ScopeCollector,
    export::metrics,
    export::otel::Telemetry,
    model::scope::ScopeSpec,
    model::{
        Exit, Frame, GoroutineReport, GoroutineSiteReport, Held, InUse, LeakSummary, Origin,
        ProcessReport, REPORT_VERSION, Reachability, Report, RuntimeInfo, StackHistory, StackKey,
        StackReport, Trend, Verdict,
    },
    probe::golang::GoTarget,
    sys::procfs,
};

/// Spans for the scope calls that kept at least --scope-span-threshold, with what their
/// scope (and label) keeps by stack, from `report`.
fn scope_call_spans(
    scopes: &mut ScopeCollector,
    specs: &[ScopeSpec],
    report: &Report,
) -> Vec<crate::export::otel::ScopeCallSpan> {
    let now_ns = procfs::monotonic_ns();
    let now = std::time::SystemTime::now();
    let at = |ns: u64| now - Duration::from_nanos(now_ns.saturating_sub(ns));
    let calls = scopes.take_retaining_calls();
    calls
        .into_iter()
        .filter_map(|call| {
            let (index, label) = scopes.records.describe_tag(call.tag)?;
            let function = specs.get(index as usize)?.function.clone();
            let scope = report.scopes.iter().find(|s| s.function == function);
            let figures = scope.map(|scope| {
                label
                    .and_then(|label| scope.labels.iter().find(|l| l.label == label))
                    .map_or(&scope.figures, |label| &label.figures)
            });
            Some(crate::export::otel::ScopeCallSpan {
                function,
                label: label.map(str::to_string),
                tid: call.tid,
                start: at(call.start_ns),
                end: at(call.end_ns),
                allocated_bytes: call.allocated_bytes,
                retained_bytes: call.held_at_return,
                retaining_stacks: figures
                    .map(|figures| {
                        figures
                            .top_stacks
                            .iter()
                            .map(|stack| (stack.retained_bytes, stack.frames.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Most points of a stack's series a report carries.
const REPORT_SERIES_POINTS: usize = 32;

/// Most process samples a report carries.
const REPORT_PROCESS_POINTS: usize = 256;

impl Session {
    /// Whether the Go heap's stacks come from the runtime's profile (else from its spans).
    fn go_heap_from_profile(&self) -> bool {
        self.go_profile
            .as_ref()
            .is_some_and(crate::collect::go_profile::HeapProfile::in_use)
    }

    pub(super) fn exporting(&self) -> bool {
        self.telemetry.is_some() || self.endpoint.is_some()
    }

    /// Hands one analysis to the exporters.
    fn publish(&mut self, report: &Report) {
        let probes = self.probes.attached.len() as u64;
        if let Some(telemetry) = &mut self.telemetry {
            telemetry.publish(report, probes);
            if let Some(scopes) = &mut self.scopes {
                let calls = scope_call_spans(scopes, &self.options.scopes, report);
                telemetry.publish_scope_calls(&calls);
            }
        }
        if let Some(endpoint) = &self.endpoint {
            let failures = self.telemetry.as_ref().map_or(0, Telemetry::failures);
            endpoint.publish(metrics::points(
                report,
                self.options.export_top,
                probes,
                failures,
            ));
        }
    }

    /// The stacks the report lists and those the exporters see (more, when --export-top is
    /// above --top).
    pub(super) fn analyse(
        &mut self,
        exited: Option<Exit>,
        final_report: bool,
    ) -> Result<Report, SessionError> {
        let listed = if self.exporting() {
            self.options.top.max(self.options.export_top)
        } else {
            self.options.top
        };
        if final_report && let Some(scopes) = &mut self.scopes {
            // Labels handed out since the last listing count in the final figures.
            scopes.sample(procfs::monotonic_ns(), true)?;
        }
        let mut report = self.build_report(exited, listed, final_report)?;
        if let Some(telemetry) = &self.telemetry {
            report
                .events
                .insert("otlp_export_failures".into(), telemetry.failures());
        }
        if self.exporting() {
            self.publish(&report);
        }
        Ok(truncated(report, self.options.top))
    }

    /// The report now. A `final_report` pays for an exact walk of the live allocations;
    /// interim ones walk them within a CPU budget (see `Collector::scan_live_allocations`).
    fn build_report(
        &mut self,
        exited: Option<Exit>,
        top: usize,
        final_report: bool,
    ) -> Result<Report, SessionError> {
        let now_ns = procfs::monotonic_ns();
        let min_age_ns = self
            .options
            .min_age
            .map_or(0, |age| u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
        let held_old_enough = self.collector.scan_live_allocations(
            now_ns.saturating_sub(min_age_ns),
            now_ns,
            final_report,
        )?;
        let span_s = now_ns.saturating_sub(self.started_ns) as f64 / 1e9;
        let context = Context {
            now_ns,
            span_s,
            exited: exited.is_some(),
        };
        // Stacks that symbolize to the same frames are one stack to the reader. The loader
        // mapping a library's zero-filled segments, or its own start-up allocator, is part of
        // the program image, not the program's memory.
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
        let mut groups: Vec<(Vec<Frame>, Vec<StackHistory>)> = Vec::new();
        let mut group_of: HashMap<(Origin, Vec<FrameIdentity>), usize> = HashMap::new();
        let go_from_profile = self.go_heap_from_profile();
        let (profile_histories, mut at_last_gc) = if go_from_profile {
            self.go_profile_histories()
        } else {
            (Vec::new(), HashMap::new())
        };
        // Scope calls' stacks are named from these.
        let mut frames_by_key: HashMap<StackKey, Vec<Frame>> = HashMap::new();
        let mut active: Vec<NamedHistory> = active
            .into_iter()
            .map(|history| {
                let frames = self.frames_of(&history);
                (history, frames)
            })
            .collect();
        active.extend(profile_histories);
        for (history, frames) in active {
            if self.scopes.is_some() && history.key.origin == Origin::Heap {
                frames_by_key.insert(history.key, frames.clone());
            }
            if history.key.origin != Origin::Heap && mapped_by_loader(&frames) {
                continue;
            }
            // A Go runtime's own mappings hold its heap (followed by span, above), its
            // goroutine stacks and reservations: counting them too would count the heap
            // twice. With the runtime's heap profile read, its stacks stand for the small
            // objects' spans (each span's objects may be anyone's); a large object's span is
            // its own, charged to the stack that allocated it, and counted exactly.
            if self.go.is_some()
                && history.key.stack_id != crate::collect::go_profile::PROFILE_STACK_ID
                && mapped_by_go_runtime(&frames)
                && (history.key.origin != Origin::Heap
                    || (go_from_profile
                        && !crate::analyze::go_heap::is_large_object_stack(&frames)))
            {
                continue;
            }
            // The runtime's goroutine bookkeeping (each goroutine's `g`, the list of all of
            // them, blocked ones' waiting records) grows and shrinks with the goroutines,
            // which are counted per creation site.
            if self.go.is_some() && crate::analyze::go_heap::goroutine_bookkeeping(&frames) {
                continue;
            }
            if frames.is_empty() {
                groups.push((frames, vec![history]));
                continue;
            }
            let identity: Vec<FrameIdentity> = frames.iter().map(frame_identity).collect();
            match group_of.entry((history.key.origin, identity)) {
                Entry::Occupied(entry) => groups[*entry.get()].1.push(history),
                Entry::Vacant(entry) => {
                    entry.insert(groups.len());
                    groups.push((frames, vec![history]));
                }
            }
        }
        // Go spans of small objects by stack and size class, when they stand for the heap.
        let span_classes = if self.go.is_some() && !go_from_profile {
            self.collector.go_span_classes().clone()
        } else {
            HashMap::new()
        };
        let mut class_totals: HashMap<u32, u64> = HashMap::new();
        for classes in span_classes.values() {
            for (class, spans) in classes {
                *class_totals.entry(*class).or_default() += spans;
            }
        }
        let mut judged: Vec<Judged> = Vec::new();
        let mut omitted = (0u64, 0u64);
        for (frames, members) in groups {
            let refs: Vec<&StackHistory> = members.iter().collect();
            let Some(mut history) = verdicts::merge_histories(&refs) else {
                continue;
            };
            let in_profile: Vec<StackKey> = members
                .iter()
                .map(|member| member.key)
                .filter(|key| key.stack_id == crate::collect::go_profile::PROFILE_STACK_ID)
                .collect();
            // Go's heap is collected, not freed: what it holds when the program ends was not
            // lost, and only its trend tells a leak.
            let go_heap = self.go.is_some()
                && history.key.origin == Origin::Heap
                && (!in_profile.is_empty() || mapped_by_go_runtime(&frames));
            let context = Context {
                exited: context.exited && !go_heap,
                ..context
            };
            let trend = verdicts::judge(&history, context, &self.options.thresholds);
            if !in_profile.is_empty() {
                let mut sum = InUse::default();
                for key in &in_profile {
                    if let Some(found) = at_last_gc.remove(key) {
                        sum.bytes += found.bytes;
                        sum.objects += found.objects;
                    }
                }
                at_last_gc.insert(history.key, sum);
            }
            // The runtime's profile gives no ages: its stacks are never left out by age.
            if self.options.min_age.is_some() && in_profile.is_empty() {
                // Only what is at least --min-age old counts as held.
                let mut held = Held::default();
                for member in &members {
                    let member_held = held_old_enough
                        .get(&member.key)
                        .copied()
                        .unwrap_or_default();
                    held.allocs += member_held.allocs;
                    held.bytes += member_held.bytes;
                }
                if held.allocs == 0 {
                    omitted.0 += 1;
                    omitted.1 += history.totals.outstanding_bytes;
                    continue;
                }
                history.totals.outstanding_allocs = held.allocs;
                history.totals.outstanding_bytes = held.bytes;
            }
            let reachability = self.reachability.as_ref().map(|(by_stack, _)| {
                let mut sum = Reachability::default();
                for member in &members {
                    if let Some(found) = by_stack.get(&member.key) {
                        sum.add(found);
                    }
                }
                sum
            });
            let mut trend = trend;
            let judged_alone = trend.verdict;
            // Rising memory that the program can still reach is a growing cache or
            // queue, not a leak.
            if let Some(found) = &reachability {
                trend.verdict = verdict_with_reachability(trend.verdict, found, context.exited);
            }
            // While the program runs a leak is announced once its evidence holds (see
            // verdicts::confirm); a scan that found its blocks lost is evidence enough.
            let lost_found = reachability
                .as_ref()
                .map_or(0, |found| found.lost.blocks + found.indirectly_lost.blocks);
            let mut unconfirmed = None;
            if trend.verdict == Verdict::Leaking && !context.exited && lost_found == 0 {
                // Once confirmed, a stack stays so while it is judged leaking: an earlier
                // part of its history judged again may say otherwise at a window's edge.
                let id = crate::model::stack_id_of(history.key.origin, &frames);
                if !self.confirmed_leaks.contains(&id) {
                    match verdicts::confirm(&history, &trend, context, &self.options.thresholds) {
                        Ok(()) => {
                            self.confirmed_leaks.insert(id);
                        }
                        Err(why) => {
                            trend.verdict = Verdict::Suspect;
                            unconfirmed = Some(why);
                        }
                    }
                }
            } else if !context.exited && !self.confirmed_leaks.is_empty() {
                self.confirmed_leaks
                    .remove(&crate::model::stack_id_of(history.key.origin, &frames));
            }
            // The C runtime's own memory is never the program's leak, nor is what a
            // suppression accepts.
            let lost = reachability
                .as_ref()
                .map_or(trend.verdict == Verdict::Leaking, |found| {
                    found.lost.blocks + found.indirectly_lost.blocks + found.interior.blocks > 0
                });
            let excused = Excused {
                c_runtime: c_runtime::held_by(history.key.origin, &frames, context.exited),
                suppressed: crate::analyze::suppress::matching(
                    &self.options.suppressions,
                    &frames,
                    lost,
                )
                .map(str::to_string),
            };
            if (excused.c_runtime.is_some() || excused.suppressed.is_some())
                && matches!(
                    trend.verdict,
                    Verdict::Leaking | Verdict::Suspect | Verdict::Growing
                )
            {
                trend.verdict = Verdict::Stable;
            }
            let mut why = verdicts::why(
                &trend,
                judged_alone,
                reachability.as_ref(),
                context.exited,
                unconfirmed,
            );
            if let Some(others) = shared_span_class(&members, &span_classes, &class_totals)
                && matches!(
                    trend.verdict,
                    Verdict::Leaking | Verdict::Suspect | Verdict::Growing
                )
            {
                trend.verdict = Verdict::Stable;
                why = format!(
                    "rising, but {:.0}% of the live spans of its objects' size class are charged \
                     to other stacks: with Go's heap profile off a span is charged whole to the \
                     stack that filled it last, so which of them keeps the memory cannot be told \
                     (the goroutine counts may; a build that links runtime/pprof can)",
                    others * 100.0
                );
            }
            judged.push((history, trend, frames, reachability, excused, why));
        }
        let sort = self.options.sort;
        judged.sort_by(|(a, a_trend, ..), (b, b_trend, ..)| {
            let key = |history: &StackHistory, trend: &Trend| match sort {
                SortKey::Bytes => history.totals.outstanding_bytes as f64,
                SortKey::Count => history.totals.outstanding_allocs as f64,
                SortKey::Growth => trend.growth_bytes_per_s,
            };
            a_trend
                .verdict
                .cmp(&b_trend.verdict)
                .then(key(b, b_trend).total_cmp(&key(a, a_trend)))
                .then(b.totals.outstanding_bytes.cmp(&a.totals.outstanding_bytes))
                .then(b.totals.total_bytes.cmp(&a.totals.total_bytes))
                .then(a.key.cmp(&b.key))
        });
        // The traced heap as the stacks count it, listed or not (a Go heap read from the
        // runtime's profile: its stacks, not the spans the kernel's count).
        let heap_bytes: u64 = if go_from_profile {
            judged
                .iter()
                .filter(|(history, ..)| history.key.origin == Origin::Heap)
                .map(|(history, ..)| history.totals.outstanding_bytes)
                .sum()
        } else {
            self.collector.heap_outstanding_bytes()
        };
        let leak_summary = exited.is_some().then(|| {
            let mut summary = LeakSummary::default();
            for (history, trend, _, reachability, excused, _) in &judged {
                let outstanding = (
                    history.totals.outstanding_bytes,
                    history.totals.outstanding_allocs,
                );
                if excused.suppressed.is_some() {
                    summary.suppressed_bytes += outstanding.0;
                    continue;
                }
                summary.add(
                    trend.verdict,
                    outstanding,
                    reachability.as_ref(),
                    excused.c_runtime.is_some(),
                );
            }
            summary
        });
        let mut kept = judged;
        let top = if top == 0 { usize::MAX } else { top };
        for (history, ..) in kept.split_off(kept.len().min(top)) {
            omitted.0 += 1;
            omitted.1 += history.totals.outstanding_bytes;
        }
        let mut stacks = Vec::with_capacity(kept.len());
        for (history, trend, frames, reachability, excused, why) in kept {
            stacks.push(StackReport {
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
            });
        }
        let mut dropped = BTreeMap::new();
        let mut events = BTreeMap::new();
        for counter in Counter::ALL {
            let value = self.collector.counter(counter);
            if counter.is_drop() {
                dropped.insert(counter.name().to_string(), value);
            } else {
                events.insert(counter.name().to_string(), value);
            }
        }
        // Runs of our programs the kernel skipped (another BPF program was running on the
        // CPU): the events are gone before any of our counters could see them.
        dropped.insert("missed_program_runs".to_string(), self.probes.missed_runs());
        events.insert(
            "symbolization_failures".to_string(),
            self.symbolizer.failures,
        );
        if let Some(scopes) = &self.scopes {
            events.insert(
                "scope_call_spans_skipped".to_string(),
                scopes.retaining_skipped,
            );
        }
        let process = verdicts::process_trend(&self.process_samples, &self.options.thresholds);
        let process = (!self.process_samples.is_empty()).then(|| ProcessReport {
            rss_growth_bytes_per_s: process.rss.slope,
            rss_rising: process.rss.steady,
            rss_growth_onset: process.rss.onset,
            heap_growth_bytes_per_s: process.heap_growth_bytes_per_s,
            memory_limit_bytes: procfs::memory_limit(self.pid),
            samples: {
                let mut samples = evenly_spread(&self.process_samples, REPORT_PROCESS_POINTS);
                // The traced heap as the stacks count it now: one total across the report.
                if let Some(last) = samples.last_mut() {
                    last.heap_bytes = heap_bytes;
                }
                samples
            },
        });
        let (scopes, suspects) = match &self.scopes {
            Some(collector) => {
                let settings = scope::ReportSettings {
                    specs: &self.options.scopes,
                    started_ns: self.started_ns,
                    span_s,
                    retain_after_s: self.options.scope_retain_after.as_secs_f64(),
                    max_labels: self.options.scope_max_labels,
                    sample_rate: u64::from(self.options.sample_rate),
                    thresholds: &self.options.thresholds,
                };
                let mut name = |key: &StackKey| {
                    frames_by_key.get(key).map(|frames| NamedStack {
                        id: crate::model::stack_id_of(key.origin, frames),
                        frames: frames.iter().map(Frame::identity).collect(),
                    })
                };
                let found = scope::analyse(
                    &collector.records,
                    &settings,
                    self.collector.scope_held(),
                    &mut name,
                );
                let named = suspects::suspects(&stacks, process.as_ref(), &found.groups, span_s);
                (found.reports, named)
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(Report {
            version: REPORT_VERSION,
            target: self.target.clone(),
            mode: self.mode.to_string(),
            duration_s: span_s,
            sample_rate: self.options.sample_rate,
            unwind: self.options.unwind.report_name().to_string(),
            allocators: self.allocators.clone(),
            programs: self.probes.programs.clone(),
            cost: self.cost_report(procfs::monotonic_ns()),
            exited,
            dropped,
            events,
            omitted_stacks: omitted.0,
            omitted_outstanding_bytes: omitted.1,
            process,
            reachability_scan: self.reachability.as_ref().map(|(_, scan)| *scan),
            leak_summary,
            stacks,
            scopes,
            suspects,
            runtimes: self.runtimes(),
            goroutines: self.goroutine_report(top, &context),
            forked_by: self.forked_by,
            children: Vec::new(),
        })
    }

    fn runtimes(&self) -> Vec<RuntimeInfo> {
        let mut runtimes = self.modules.runtimes();
        if let Some((interpreter, _)) = &self.python {
            runtimes.push(RuntimeInfo {
                runtime: "python".into(),
                version: interpreter.version_text(),
                perf_map: None,
                hint: interpreter.hint(),
                heap: None,
            });
        }
        if let Some((go, _)) = &self.go {
            runtimes.push(RuntimeInfo {
                runtime: "go".into(),
                version: go.program.version.clone(),
                perf_map: None,
                hint: go.program.missing(),
                heap: self.go_heap_source(go),
            });
        }
        runtimes
    }

    /// Where the Go heap's stacks come from, in a sentence.
    fn go_heap_source(&self, go: &GoTarget) -> Option<String> {
        use crate::collect::go_profile::Unread;
        const SPANS: &str = "the Go heap is followed a span at a time instead: a span is \
                             charged to the stack that filled it last, so stacks allocating \
                             objects of one size share what any of them keeps";
        let profile = self.go_profile.as_ref();
        if let Some(profile) = profile.filter(|profile| profile.in_use()) {
            let gc = match profile.last_cycle_change_s {
                Some(at_s) => format!("the last seen at {at_s:.1}s"),
                None => "none seen while traced".to_string(),
            };
            let cut = if profile.cut {
                " (the bucket list was cut: older stacks are not read)"
            } else {
                ""
            };
            let sampling = if profile.rate == 1 {
                "every allocation recorded".to_string()
            } else {
                format!(
                    "one allocation sampled per {} bytes, scaled as pprof scales it",
                    profile.rate
                )
            };
            return Some(format!(
                "from the runtime's heap profile ({sampling}): {} GC cycles completed while \
                 traced, {gc}; outstanding counts what was allocated and not yet swept, \
                 \"at_last_gc\" what was in use at the last GC{cut}",
                profile.gc_cycles_seen()
            ));
        }
        if !go.program.can_follow_heap() {
            return None;
        }
        let why = match profile.and_then(|profile| profile.unread.clone()) {
            Some(Unread::Off) => "the runtime's heap profile is off (MemProfileRate 0: the \
                                  linker turns it off in a program that never calls \
                                  runtime.MemProfile, e.g. one that does not import \
                                  runtime/pprof or net/http/pprof)"
                .to_string(),
            Some(Unread::Unreadable(reason)) => {
                format!("the runtime's heap profile could not be read ({reason})")
            }
            Some(Unread::NotYet) | None => match &go.program.profile_unknown {
                Some(reason) => format!("the runtime's heap profile cannot be read: {reason}"),
                None => "the runtime's heap profile was not read yet".to_string(),
            },
        };
        Some(format!("{why}; {SPANS}"))
    }

    /// Goroutines per creation site, leaking sites first, then by goroutines alive.
    fn goroutine_report(&mut self, top: usize, context: &Context) -> Option<GoroutineReport> {
        let Some((_, Some(goroutines))) = &self.go else {
            return None;
        };
        let histories: Vec<crate::collect::goroutines::SiteHistory> =
            goroutines.sites().cloned().collect();
        let mut sites = Vec::with_capacity(histories.len());
        let mut report = GoroutineReport::default();
        for history in histories {
            report.alive += history.alive();
            report.created += history.created;
            report.exited += history.exited;
            let points: Vec<(f64, f64)> = history
                .series
                .iter()
                .map(|sample| (sample.at_s, sample.alive as f64))
                .collect();
            let (mut verdict, confidence, growth_per_s) =
                verdicts::judge_count(&points, &self.options.thresholds);
            if context.exited && verdict == Verdict::Transient && history.alive() > 0 {
                verdict = Verdict::Stable;
            }
            let stack = if history.stack_id == leak_common::UNKNOWN_STACK_ID {
                Vec::new()
            } else {
                let ips = self.collector.stack_ips(history.stack_id).to_vec();
                self.symbolizer.symbolize_stack(&self.modules, &ips)
            };
            // The site is the stack's first frame (inlined frames included, the innermost
            // one is where the `go` statement is).
            let site = self
                .symbolizer
                .symbolize_stack(&self.modules, &[history.gopc])
                .into_iter()
                .next()
                .unwrap_or_default();
            sites.push(GoroutineSiteReport {
                verdict,
                confidence,
                site,
                stack,
                alive: history.alive(),
                alive_at_start: history.alive_at_start,
                created: history.created,
                exited: history.exited,
                growth_per_s,
                series: evenly_spread(&history.series, REPORT_SERIES_POINTS),
            });
        }
        sites.sort_by(|a, b| {
            a.verdict
                .cmp(&b.verdict)
                .then(b.alive.cmp(&a.alive))
                .then(b.created.cmp(&a.created))
                .then(a.site.address.cmp(&b.site.address))
        });
        let top = if top == 0 { usize::MAX } else { top };
        for omitted in sites.split_off(sites.len().min(top)) {
            report.omitted_sites += 1;
            report.omitted_alive += omitted.alive;
        }
        report.sites = sites;
        Some(report)
    }
}

/// The report with at most `top` stacks (0: all); the rest count as omitted.
fn truncated(mut report: Report, top: usize) -> Report {
    if top == 0 || report.stacks.len() <= top {
        return report;
    }
    for stack in report.stacks.split_off(top) {
        report.omitted_stacks += 1;
        report.omitted_outstanding_bytes += stack.outstanding_bytes;
    }
    report
}
