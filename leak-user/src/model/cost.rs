//! What tracing costs the target, and the budget leaktrace keeps (--max-overhead).
//!
//! Each probed call traps into the kernel: once for a free, twice for an allocation (entry
//! and return), once more when the probed instruction must be single-stepped. The cost of a
//! trap on this machine is measured at start (`attach::calibrate_trap_cost`: a function of
//! leaktrace's own, probed, called in a loop), and multiplied by the calls the kernel counted
//! each interval; the programs' own run time comes from the kernel's BPF statistics. Set
//! against the target's own CPU time over the same interval (which includes both: the kernel
//! runs them on the target's threads), it is the share of the target's CPU that goes to
//! leaktrace.
//!
//! Over the budget, leaktrace duty-cycles its allocation probes: they are taken out for part
//! of every cycle while the free probes stay, so blocks freed meanwhile are still seen going;
//! allocations made while they are out are not recorded, and the report says for how long
//! that was. What the free probes cost alone is measured while the allocation probes are
//! out (estimated from the free calls counted, before that), and the part of the cycle they
//! stay in is set so that the two together keep the budget. Where the frees alone cost more
//! than the budget, nothing but stopping keeps it (a block freed unseen would read as leaked
//! forever): leaktrace stops tracing, and says so. Where the estimate is well over the
//! budget, it stops after the first measurement, without taking the allocation probes out
//! to measure the frees first.
use serde::{Deserialize, Serialize};

/// What one trap costs on this machine, measured at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrapCost {
    /// A probe on an instruction the kernel emulates.
    pub emulated_ns: f64,
    /// A probe on an instruction the kernel single-steps.
    pub single_stepped_ns: f64,
    /// What a return probe adds.
    #[serde(default)]
    pub return_ns: f64,
}

impl TrapCost {
    /// The traps of `traps` events, with the programs' own run time apart.
    pub fn traps_ns(&self, traps: &Traps) -> f64 {
        let returns = traps.allocations.saturating_sub(traps.returns_skipped);
        traps.allocations as f64 * self.emulated_ns
            + returns as f64 * self.return_ns
            + traps.frees as f64 * self.emulated_ns
    }
}

/// Traps taken per kind of event the kernel counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traps {
    /// Allocating calls (entry and return probe each).
    pub allocations: u64,
    /// Frees (entry probe only).
    pub frees: u64,
    /// Allocating calls whose entry skipped the return probe (uprobe sessions).
    pub returns_skipped: u64,
}

impl Traps {
    pub fn total(&self) -> u64 {
        self.allocations * 2 + self.frees - self.returns_skipped.min(self.allocations)
    }

    /// The events counted since `then` (counts of the same counters, taken earlier).
    pub fn since(&self, then: &Traps) -> Traps {
        Traps {
            allocations: self.allocations.saturating_sub(then.allocations),
            frees: self.frees.saturating_sub(then.frees),
            returns_skipped: self.returns_skipped.saturating_sub(then.returns_skipped),
        }
    }
}

/// The share of the target's CPU time spent in leaktrace's probes over an interval, in
/// percent: `spent_ns` in traps and programs while the target used `cpu_ns` (which includes
/// them). None when the target used no CPU.
pub fn cpu_share_percent(spent_ns: f64, cpu_ns: u64) -> Option<f64> {
    if cpu_ns == 0 {
        return None;
    }
    Some((spent_ns / cpu_ns as f64 * 100.0).min(100.0))
}

/// The fraction of a cycle allocation probes stay in so that the probes' cost stays under
/// `budget_percent`, given what all of them cost while in (`share_percent`) and what the
/// free probes cost alone (`frees_percent`, 0 until measured): 1 when within budget, never
/// below `MIN_ON_FRACTION` (some allocations are still seen). Frees alone over the budget
/// cannot be helped this way (see `frees_over_budget`).
pub fn on_fraction(share_percent: f64, frees_percent: f64, budget_percent: f64) -> f64 {
    if share_percent <= budget_percent || share_percent <= 0.0 {
        return 1.0;
    }
    // Over a cycle the probes cost on × share + (1 − on) × frees: solved for the budget.
    // A little under it in fact, since the target's own CPU time grows back while the
    // allocation probes are out.
    let frees = frees_percent.clamp(0.0, budget_percent);
    ((budget_percent - frees) / (share_percent - frees)).clamp(MIN_ON_FRACTION, 1.0)
}

/// Whether the free probes alone, measured while the allocation probes were out, cost more
/// than `budget_percent`, as a share of the target's CPU and of one core (see
/// `over_budget`).
pub fn frees_over_budget(frees: &FreesCost, budget_percent: f64) -> bool {
    felt_over(frees.cpu_share_percent, frees.core_percent, budget_percent)
}

/// What the free probes would cost alone, estimated while every probe is in: over `seconds`
/// the target used `cpu_ns` of CPU, `spent_ns` of it in all the probes, and called free
/// `frees` times, each a trap at the emulated cost running the entry program for
/// `entry_ns_per_run` (its runs' average: frees only under uprobe sessions, frees and
/// allocation entries otherwise). None when it used no CPU or called no free.
///
/// The target does more work per second of CPU once the allocation probes are out, so the
/// frees' share is that of their cost in the work done per free: its own work (what the CPU
/// went to besides the probes) plus the free probe. Of a core, that share of the CPU it used.
/// The measure taken with the allocation probes out replaces it.
pub fn frees_estimate(
    trap: &TrapCost,
    frees: u64,
    entry_ns_per_run: f64,
    spent_ns: f64,
    seconds: f64,
    cpu_ns: u64,
) -> Option<FreesCost> {
    if frees == 0 || cpu_ns == 0 {
        return None;
    }
    let per_free = trap.emulated_ns + entry_ns_per_run;
    let own_work = (cpu_ns as f64 - spent_ns).max(0.0) / frees as f64;
    let share = per_free / (own_work + per_free);
    let cores = cpu_ns as f64 / (seconds * 1e9).max(1.0);
    Some(FreesCost {
        cpu_share_percent: share * 100.0,
        core_percent: (share * cores * 100.0).min(100.0),
        estimated: true,
    })
}

/// How far over the budget an estimate of the frees' cost must be for leaktrace to stop
/// without measuring them alone first (the measure takes the allocation probes out for a
/// second or more, at full cost until then; an estimate near the budget is measured).
pub const FREES_ESTIMATE_MARGIN: f64 = 1.5;

/// What the free probes cost alone, measured while the allocation probes were out (or
/// estimated, where tracing stopped on an estimate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FreesCost {
    pub cpu_share_percent: f64,
    pub core_percent: f64,
    /// Estimated from the free calls counted with every probe in, not measured alone.
    #[serde(default)]
    pub estimated: bool,
}

/// The smallest part of a cycle allocation probes stay in.
pub const MIN_ON_FRACTION: f64 = 0.02;

/// Whether a measured cost is over `budget_percent` and worth cutting: over that share of
/// the target's CPU and of one core. A target that mostly waits can spend most of its
/// little CPU time in the probes while they cost the machine, and its throughput, next to
/// nothing: cutting them then would only blind the trace.
pub fn over_budget(report: &CostReport, budget_percent: f64) -> bool {
    felt_over(
        report.cpu_share_percent,
        report.core_percent,
        budget_percent,
    )
}

/// Over `budget_percent` both as a share of the target's CPU and of one core.
fn felt_over(cpu_share_percent: f64, core_percent: f64, budget_percent: f64) -> bool {
    cpu_share_percent > budget_percent && core_percent > budget_percent
}

/// A cost measurement over one interval, kept for the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    /// The trap costs measured at start.
    pub trap: TrapCost,
    /// Traps per second over the last interval with allocation probes in.
    pub traps_per_s: f64,
    /// The target's CPU share spent in leaktrace's probes, last interval with probes in.
    pub cpu_share_percent: f64,
    /// The highest share seen over any interval.
    pub peak_cpu_share_percent: f64,
    /// The same time in percent of one core (of wall time), last interval with probes in:
    /// what the machine pays, whatever the target's own use.
    #[serde(default)]
    pub core_percent: f64,
    /// The free probes' cost alone, last measured while the allocation probes were out.
    #[serde(default)]
    pub frees_only: Option<FreesCost>,
    /// --max-overhead, if a budget was kept.
    pub budget_percent: Option<f64>,
    /// When tracing stopped to keep the budget (seconds since the start): the free probes
    /// alone cost more than it.
    #[serde(default)]
    pub stopped_at_s: Option<f64>,
    /// The part of the trace allocation probes were out to keep the budget (0 to 1).
    pub allocation_probes_out_fraction: f64,
    /// What leaktrace did to keep the budget, with when (seconds since the start).
    pub actions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_trap_time_over_cpu_time() {
        let trap = TrapCost {
            emulated_ns: 1000.0,
            single_stepped_ns: 5000.0,
            return_ns: 500.0,
        };
        let mut traps = Traps {
            allocations: 60_000,
            frees: 60_000,
            returns_skipped: 0,
        };
        // 60k allocations at 1.5 µs and 60k frees at 1 µs in a second of CPU: 15%.
        let share = cpu_share_percent(trap.traps_ns(&traps), 1_000_000_000).expect("CPU used");
        assert!((share - 15.0).abs() < 1e-9, "{share}");
        assert_eq!(cpu_share_percent(10.0, 0), None);
        assert_eq!(cpu_share_percent(2e9, 1_000_000_000), Some(100.0));
        assert_eq!(traps.total(), 180_000);
        // Half the allocations' returns skipped: 30k return traps of 0.5 µs fewer.
        traps.returns_skipped = 30_000;
        assert!((trap.traps_ns(&traps) - 135e6).abs() < 1e-3);
        assert_eq!(traps.total(), 150_000);
    }

    #[test]
    fn a_cost_the_machine_does_not_feel_is_never_cut() {
        let mut report = CostReport {
            cpu_share_percent: 80.0,
            core_percent: 3.0,
            ..CostReport::default()
        };
        // 80% of a mostly idle target's CPU, but 3% of a core: left alone.
        assert!(!over_budget(&report, 10.0));
        report.core_percent = 40.0;
        assert!(over_budget(&report, 10.0));
        assert!(!over_budget(&report, 90.0));
    }

    #[test]
    fn probes_stay_in_for_the_part_the_budget_allows() {
        assert_eq!(on_fraction(3.0, 0.0, 5.0), 1.0);
        assert!((on_fraction(50.0, 0.0, 5.0) - 0.1).abs() < 1e-9);
        assert_eq!(on_fraction(100.0, 0.0, 0.1), MIN_ON_FRACTION);
        // Frees cost 6% alone and everything 46%: in a tenth of the time, 6 + 0.1 × 40 = 10.
        assert!((on_fraction(46.0, 6.0, 10.0) - 0.1).abs() < 1e-9);
        // Frees alone at the budget leave nothing for allocations.
        assert_eq!(on_fraction(46.0, 12.0, 10.0), MIN_ON_FRACTION);
    }

    #[test]
    fn frees_estimated_from_a_measure_with_every_probe_in() {
        let trap = TrapCost {
            emulated_ns: 1000.0,
            single_stepped_ns: 5000.0,
            return_ns: 500.0,
        };
        // 100k frees at 1 µs of trap and 0.5 µs of program; in 1.2 s the target used 0.6 s
        // of CPU, 0.4 s of it in the probes. Its own work, 2 µs a free, and 1.5 µs of free
        // probe: 3/7 of its CPU, and of half a core.
        let estimate = frees_estimate(&trap, 100_000, 500.0, 0.4e9, 1.2, 600_000_000).expect("CPU");
        assert!((estimate.cpu_share_percent - 300.0 / 7.0).abs() < 1e-9);
        assert!((estimate.core_percent - 150.0 / 7.0).abs() < 1e-9);
        assert!(estimate.estimated);
        assert_eq!(frees_estimate(&trap, 100_000, 500.0, 0.0, 1.0, 0), None);
        assert_eq!(frees_estimate(&trap, 0, 500.0, 0.0, 1.0, 1000), None);
        // A target that frees little: far under the budget.
        let few = frees_estimate(&trap, 100, 500.0, 1e6, 1.0, 500_000_000).expect("CPU");
        assert!(!frees_over_budget(&few, 10.0), "{few:?}");
        // Over the budget, but within the margin: measured before stopping.
        assert!(frees_over_budget(&estimate, 15.0));
        assert!(!frees_over_budget(&estimate, 15.0 * FREES_ESTIMATE_MARGIN));
    }

    #[test]
    fn frees_alone_over_the_budget_on_a_busy_target() {
        let frees = FreesCost {
            cpu_share_percent: 30.0,
            core_percent: 25.0,
            estimated: false,
        };
        assert!(frees_over_budget(&frees, 10.0));
        assert!(!frees_over_budget(&frees, 30.0));
        // A mostly idle target: its frees cost the machine nothing.
        let idle = FreesCost {
            cpu_share_percent: 30.0,
            core_percent: 2.0,
            estimated: false,
        };
        assert!(!frees_over_budget(&idle, 10.0));
    }
}
