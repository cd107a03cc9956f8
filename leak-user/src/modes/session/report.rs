//! The report, interim or final: the stacks drained, aggregated and judged, the process's
//! trend, scopes and suspects, the runtimes and goroutines; handed to the exporters.
use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use leak_common::Counter;

use super::{Session, SessionError};
use crate::{
    analyze::aggregate::{self, GoRuntime, Judging, REPORT_SERIES_POINTS, evenly_spread},
    analyze::scope::{self, NamedStack},
    analyze::suspects,
    analyze::verdicts::{self, Context},
    collect::scope::ScopeCollector,
    export::publish::{Publication, publish},
    model::scope::ScopeSpec,
    model::{
        Exit, Frame, GoroutineReport, GoroutineSiteReport, ProcessReport, REPORT_VERSION, Report,
        RuntimeInfo, ScopeReport, StackKey, StackReport, Suspect,
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
        // Scope calls are taken only for the spans that carry them (OTLP).
        let scope_calls = match (&self.telemetry, &mut self.scopes) {
            (Some(_), Some(scopes)) => scope_call_spans(scopes, &self.options.scopes, report),
            _ => Vec::new(),
        };
        publish(
            &self.target,
            self.telemetry.as_mut(),
            self.endpoint.as_ref(),
            &Publication {
                report,
                export_top: self.options.export_top,
                probes_attached: self.probes.attached.len() as u64,
                scope_calls: &scope_calls,
            },
        );
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
    /// Collect (the drained stacks named by their frames) → aggregate (grouped by frames)
    /// → analyse (judged, ordered, the top listed) → report (with the process's trend,
    /// scopes, runtimes and goroutines).
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
        let go = GoRuntime {
            present: self.go.is_some(),
            heap_from_profile: self.go_heap_from_profile(),
        };
        let (drained, at_last_gc) = self.drained_stacks(go.heap_from_profile);
        // Scope calls' stacks are named from `frames_by_key`.
        let (groups, frames_by_key) = aggregate::group(drained, go, self.scopes.is_some());
        // Go spans of small objects by stack and size class, when they stand for the heap.
        let no_span_classes = HashMap::new();
        let span_classes = if go.present && !go.heap_from_profile {
            self.collector.go_span_classes()
        } else {
            &no_span_classes
        };
        let judging = Judging {
            context,
            thresholds: &self.options.thresholds,
            suppressions: &self.options.suppressions,
            sort: self.options.sort,
            go: go.present,
            held_old_enough: self.options.min_age.is_some().then_some(&held_old_enough),
            reachability: self.reachability.as_ref().map(|(by_stack, _)| by_stack),
            span_classes,
        };
        let listed =
            aggregate::aggregate(groups, &judging, at_last_gc, &mut self.confirmed_leaks, top);
        // The traced heap as the stacks count it, listed or not (a Go heap read from the
        // runtime's profile: its stacks, not the spans the kernel's count).
        let heap_bytes = if go.heap_from_profile {
            listed.heap_bytes
        } else {
            self.collector.heap_outstanding_bytes()
        };
        let (dropped, events) = self.counters();
        let process = self.process_report(heap_bytes);
        let (scopes, suspects) =
            self.scope_reports(&frames_by_key, &listed.stacks, process.as_ref(), span_s);
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
            omitted_stacks: listed.omitted_stacks,
            omitted_outstanding_bytes: listed.omitted_outstanding_bytes,
            process,
            reachability_scan: self.reachability.as_ref().map(|(_, scan)| *scan),
            leak_summary: listed.leak_summary,
            stacks: listed.stacks,
            scopes,
            suspects,
            runtimes: self.runtimes(),
            goroutines: self.goroutine_report(top, &context),
            forked_by: self.forked_by,
            children: Vec::new(),
        })
    }

    /// The kernel's counters, what was dropped apart from the other events, with the runs
    /// of the probe programs the kernel skipped and what the symbolizer and the scope
    /// spans missed.
    fn counters(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
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
        (dropped, events)
    }

    /// The process's memory over time and its trend, once it was sampled; `heap_bytes`,
    /// the traced heap as the report's stacks count it.
    fn process_report(&self, heap_bytes: u64) -> Option<ProcessReport> {
        let process = verdicts::process_trend(&self.process_samples, &self.options.thresholds);
        (!self.process_samples.is_empty()).then(|| ProcessReport {
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
        })
    }

    /// With --scope: each scope's figures, and the suspects among the listed `stacks`
    /// (their frames by key in `frames_by_key`).
    fn scope_reports(
        &self,
        frames_by_key: &HashMap<StackKey, Vec<Frame>>,
        stacks: &[StackReport],
        process: Option<&ProcessReport>,
        span_s: f64,
    ) -> (Vec<ScopeReport>, Vec<Suspect>) {
        let Some(collector) = &self.scopes else {
            return (Vec::new(), Vec::new());
        };
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
        let named = suspects::suspects(stacks, process, &found.groups, span_s);
        (found.reports, named)
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
            let (verdict, confidence, growth_per_s) =
                verdicts::judge_count(&points, &self.options.thresholds);
            let verdict = verdicts::count_verdict_at_exit(verdict, context.exited, history.alive());
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
