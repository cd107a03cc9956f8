//! What the probes cost the target, measured about once a second, and the --max-overhead
//! budget kept by taking the allocation probes out for part of each cycle, or by stopping.
use leak_common::Counter;

use super::{ARM_ENTRIES_AFTER_NS, Session};
use crate::{
    model::cost::{self, CostReport, Traps},
    sys::procfs,
};

/// The cost meter and the --max-overhead budget (see `cost`).
#[derive(Default)]
pub(super) struct CostMeter {
    report: CostReport,
    /// Start of the measurement under way (within one phase, allocation probes in or out).
    mark: Option<CostMark>,
    /// What the free probes would cost alone, estimated from the last measurement with
    /// every probe in (until `report.frees_only` is measured).
    frees_estimate: Option<cost::FreesCost>,
    /// Whether `report.cpu_share_percent` was measured since the probes last went in.
    fresh: bool,
    /// Whether `report.frees_only` was measured since the allocation probes last went out.
    frees_fresh: bool,
    /// When the allocation probes went in or out.
    in_since: u64,
    out_since: Option<u64>,
    /// The part of each cycle they stay in, and the cycle.
    on_fraction: f64,
    cycle_ns: u64,
    out_total_ns: u64,
}

/// Where a cost measurement starts: time, traps, the probe programs' run time, the entry
/// program's run time and runs, the target's CPU time.
#[derive(Clone, Copy)]
struct CostMark {
    ns: u64,
    traps: Traps,
    run_ns: u64,
    entry: (u64, u64),
    cpu_ns: u64,
}

/// A cost is measured over at least this long (the target's CPU time has 10 ms ticks).
const COST_MEASURE_NS: u64 = 1_000_000_000;

/// The budget's duty cycle: at least this long, longer when the probes may stay in for
/// only a small part of it (each part in must hold a measurement).
const BUDGET_CYCLE_NS: u64 = 10_000_000_000;
const BUDGET_MAX_CYCLE_NS: u64 = 120_000_000_000;

impl CostMeter {
    /// The meter as the probes go in at `started_ns`: `trap`, what one trap costs (see
    /// `cost`); `budget_percent`, --max-overhead.
    pub(super) fn new(trap: cost::TrapCost, budget_percent: Option<f64>, started_ns: u64) -> Self {
        CostMeter {
            report: CostReport {
                trap,
                budget_percent,
                ..CostReport::default()
            },
            in_since: started_ns,
            on_fraction: 1.0,
            cycle_ns: BUDGET_CYCLE_NS,
            ..CostMeter::default()
        }
    }
}

impl Session {
    /// Measures what the probes cost the target over the last second or so, and keeps the
    /// --max-overhead budget by taking the allocation probes out for part of each cycle, or,
    /// when the free probes alone cost more than it, by stopping.
    pub(super) fn meter_cost(&mut self, now_ns: u64) {
        if self.probes.trap_cost.is_none() || self.cost.report.stopped_at_s.is_some() {
            return;
        }
        self.measure_cost(now_ns);
        let Some(budget) = self.options.max_overhead else {
            return;
        };
        let at_s = now_ns.saturating_sub(self.started_ns) as f64 / 1e9;
        let meter = &mut self.cost;
        // What the frees cost alone: measured, or estimated until measured.
        let measured = meter.report.frees_only;
        let frees = measured.or(meter.frees_estimate).unwrap_or_default();
        match meter.out_since {
            Some(_) if meter.frees_fresh && cost::frees_over_budget(&frees, budget) => {
                self.stop_tracing(now_ns, budget, frees);
            }
            None if meter.fresh
                && measured.is_none()
                && cost::frees_over_budget(&frees, budget * cost::FREES_ESTIMATE_MARGIN) =>
            {
                self.stop_tracing(now_ns, budget, frees);
            }
            None if meter.fresh && cost::over_budget(&meter.report, budget) => {
                let on = cost::on_fraction(
                    meter.report.cpu_share_percent,
                    frees.cpu_share_percent,
                    budget,
                );
                // Each part of the cycle holds a measurement: the part in to know what
                // everything costs, the part out to know what the frees cost alone.
                let measure = COST_MEASURE_NS as f64 * 1.5;
                let cycle = ((measure / on).max(measure / (1.0 - on).max(0.01)) as u64)
                    .clamp(BUDGET_CYCLE_NS, BUDGET_MAX_CYCLE_NS);
                if now_ns.saturating_sub(meter.in_since) as f64 >= on * cycle as f64 {
                    if (on - meter.on_fraction).abs() > 0.05 || meter.report.actions.is_empty() {
                        meter.report.actions.push(format!(
                            "{at_s:.1}s: the probes took {:.1}% of the target's CPU, over the budget of {budget}%: allocation probes out for {:.1}s of every {:.1}s (frees still probed)",
                            meter.report.cpu_share_percent,
                            (1.0 - on) * cycle as f64 / 1e9,
                            cycle as f64 / 1e9
                        ));
                        log::warn!("{}", meter.report.actions.last().map_or("", String::as_str));
                    }
                    meter.on_fraction = on;
                    meter.cycle_ns = cycle;
                    self.probes.arm_entries(false);
                    self.arm_entries_at = None;
                    self.probes.pause_allocations();
                    let meter = &mut self.cost;
                    meter.out_since = Some(now_ns);
                    meter.mark = None;
                    meter.fresh = false;
                    meter.frees_fresh = false;
                }
            }
            Some(out_since)
                if now_ns.saturating_sub(out_since) as f64
                    >= (1.0 - meter.on_fraction) * meter.cycle_ns as f64 =>
            {
                meter.out_total_ns += now_ns.saturating_sub(out_since);
                match self.probes.resume_allocations() {
                    Ok(()) => {
                        let meter = &mut self.cost;
                        meter.out_since = None;
                        meter.in_since = now_ns;
                        meter.mark = None;
                        self.arm_entries_at = Some(now_ns + ARM_ENTRIES_AFTER_NS);
                    }
                    Err(err) => {
                        let meter = &mut self.cost;
                        meter.out_since = Some(now_ns);
                        meter.report.actions.push(format!(
                            "{at_s:.1}s: allocation probes could not go back in: {err}"
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    /// Ends a measurement of the probes' cost when one is due (at least a second long), and
    /// starts the next. Measured with the allocation probes in, it is what all the probes
    /// cost; with them out, what the free probes cost alone.
    fn measure_cost(&mut self, now_ns: u64) {
        let meter = &mut self.cost;
        // The counters, the programs' run time and /proc are read only when a measurement
        // starts or ends (at least a second apart), not every sample.
        let due = meter
            .mark
            .is_none_or(|mark| now_ns.saturating_sub(mark.ns) >= COST_MEASURE_NS);
        if !due {
            return;
        }
        let Some(cpu) = procfs::cpu_time_ns(self.pid) else {
            return;
        };
        let mark = CostMark {
            ns: now_ns,
            traps: Traps {
                allocations: self.collector.counter(Counter::Allocations)
                    + self.collector.counter(Counter::NestedCall),
                frees: self.collector.counter(Counter::Frees),
                returns_skipped: self.collector.counter(Counter::ReturnsSkipped),
            },
            run_ns: self.probes.probe_run_ns().unwrap_or(0),
            entry: self.probes.entry_program_runs().unwrap_or((0, 0)),
            cpu_ns: cpu,
        };
        let allocations_in = self.probes.allocations_probed();
        if let Some(then) = meter.mark {
            let seconds = now_ns.saturating_sub(then.ns) as f64 / 1e9;
            let counted = mark.traps.since(&then.traps);
            let spent = meter.report.trap.traps_ns(&counted)
                + mark.run_ns.saturating_sub(then.run_ns) as f64;
            let core_percent = spent / (seconds * 1e9).max(1.0) * 100.0;
            let cpu_ns = cpu.saturating_sub(then.cpu_ns);
            let share = cost::cpu_share_percent(spent, cpu_ns);
            if allocations_in {
                meter.report.core_percent = core_percent;
                if let Some(share) = share {
                    meter.report.cpu_share_percent = share;
                    meter.report.peak_cpu_share_percent =
                        meter.report.peak_cpu_share_percent.max(share);
                    meter.fresh = true;
                }
                meter.report.traps_per_s = counted.total() as f64 / seconds;
                let entry_runs = mark.entry.1.saturating_sub(then.entry.1);
                let entry_ns = mark.entry.0.saturating_sub(then.entry.0);
                meter.frees_estimate = cost::frees_estimate(
                    &meter.report.trap,
                    counted.frees,
                    entry_ns as f64 / entry_runs.max(1) as f64,
                    spent,
                    seconds,
                    cpu_ns,
                );
                log::debug!(
                    "cost over {seconds:.1}s: {share:?}% of the target's CPU, {core_percent:.1}% of a core; {} frees, the entry program {entry_ns} ns in {entry_runs} runs: frees alone about {:?}",
                    counted.frees,
                    meter.frees_estimate
                );
            } else if let Some(share) = share {
                meter.report.frees_only = Some(cost::FreesCost {
                    cpu_share_percent: share,
                    core_percent,
                    estimated: false,
                });
                meter.frees_fresh = true;
            }
        }
        meter.mark = Some(mark);
    }

    /// Takes every probe out: the free probes alone cost more than the budget, and a block
    /// freed unseen would read as leaked. What was recorded until then is reported; an
    /// attach ends there, a watch window closes.
    fn stop_tracing(&mut self, now_ns: u64, budget: f64, frees: cost::FreesCost) {
        let at_s = now_ns.saturating_sub(self.started_ns) as f64 / 1e9;
        let meter = &mut self.cost;
        if let Some(out_since) = meter.out_since.take() {
            meter.out_total_ns += now_ns.saturating_sub(out_since);
        }
        meter.report.stopped_at_s = Some(at_s);
        meter.report.frees_only = Some(frees);
        let took = if frees.estimated {
            "would take about"
        } else {
            "took"
        };
        meter.report.actions.push(format!(
            "{at_s:.1}s: the free probes alone {took} {:.1}% of the target's CPU ({:.1}% of a core), over the budget of {budget}%: tracing stopped, the report holds what was seen until then; to trace on, --max-overhead {} or off",
            frees.cpu_share_percent,
            frees.core_percent,
            (frees.cpu_share_percent * 2.0 / 5.0).ceil() * 5.0
        ));
        log::warn!("{}", meter.report.actions.last().map_or("", String::as_str));
        self.probes.arm_entries(false);
        self.arm_entries_at = None;
        self.probes.detach_all();
    }

    /// Whether tracing stopped to keep the budget.
    pub(super) fn stopped(&self) -> bool {
        self.cost.report.stopped_at_s.is_some()
    }

    /// What the probes cost, for the report.
    pub(super) fn cost_report(&self, now_ns: u64) -> Option<CostReport> {
        self.probes.trap_cost?;
        let mut report = self.cost.report.clone();
        // After a stop, no allocation is seen either.
        let stopped_since = report
            .stopped_at_s
            .map(|at_s| self.started_ns + (at_s * 1e9) as u64);
        let out = self.cost.out_total_ns
            + self
                .cost
                .out_since
                .or(stopped_since)
                .map_or(0, |since| now_ns.saturating_sub(since));
        let traced = now_ns.saturating_sub(self.started_ns).max(1);
        report.allocation_probes_out_fraction = (out as f64 / traced as f64).min(1.0);
        Some(report)
    }
}
