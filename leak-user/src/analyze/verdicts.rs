//! Judging stacks: the baseline of outstanding memory, its robust growth rate, when it began
//! rising, and the leaking / growing / stable / transient verdict. Pure functions of a
//! stack's history; no I/O.
//!
//! The baseline is the low point of each of a few equal time windows: memory that is freed
//! between bursts does not lift it, memory that is never freed does. A stack leaks when its
//! baseline rises steadily (Theil–Sen slope, straight-line fit, mostly rising steps, still
//! rising in the recent half) and the allocations made when the rise began are still live.
//! A steady rise whose old allocations are freed is growth (a queue or cache turning over).
use crate::{
    model::units::human_bytes,
    model::{ProcessSample, Reachability, Sample, StackHistory, Totals, Trend, Verdict},
};

/// Knobs of the verdict, with the defaults the CLI exposes.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Fewer samples than this cannot show a trend.
    pub min_samples: usize,
    /// Windows the series is cut into for its baseline (one low point each).
    pub baseline_windows: usize,
    /// Least share of the baseline's changes that must be rises.
    pub min_rising_fraction: f64,
    /// Least number of baseline rises (one step up is an event, not a trend).
    pub min_rises: usize,
    /// Least r² of a straight line through the baseline.
    pub min_r_squared: f64,
    /// The oldest live allocation must be at least this share of the time since the rise
    /// began (what was allocated then is still held).
    pub min_oldest_fraction: f64,
    /// A stack whose allocations are all young and whose recent low is at most this share
    /// below its recent high is memory in flight (batches), not held.
    pub min_transient_swing: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_samples: 4,
            baseline_windows: 16,
            min_rising_fraction: 0.6,
            min_rises: 3,
            min_r_squared: 0.5,
            min_oldest_fraction: 0.5,
            min_transient_swing: 0.5,
        }
    }
}

/// Most points the Theil–Sen estimator looks at (it is quadratic); longer series are
/// thinned evenly.
const MAX_SLOPE_POINTS: usize = 256;

/// Theil–Sen slope: the median of the slopes between every pair of points. A few outliers
/// (a burst, a late free) do not move it, unlike least squares.
pub fn theil_sen_slope(points: &[(f64, f64)]) -> f64 {
    let thinned: Vec<(f64, f64)> = if points.len() > MAX_SLOPE_POINTS {
        let step = points.len() as f64 / MAX_SLOPE_POINTS as f64;
        (0..MAX_SLOPE_POINTS)
            .map(|i| points[(i as f64 * step) as usize])
            .collect()
    } else {
        points.to_vec()
    };
    let mut slopes = Vec::with_capacity(thinned.len() * thinned.len() / 2);
    for (i, (x1, y1)) in thinned.iter().enumerate() {
        for (x2, y2) in &thinned[i + 1..] {
            let dx = x2 - x1;
            if dx.abs() > f64::EPSILON {
                slopes.push((y2 - y1) / dx);
            }
        }
    }
    median(&mut slopes)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Least-squares line `(intercept, slope)` and its residual sum of squares.
fn least_squares(points: &[(f64, f64)]) -> (f64, f64, f64) {
    let n = points.len() as f64;
    if points.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let intercept = mean_y - slope * mean_x;
    let residual = points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum();
    (intercept, slope, residual)
}

/// r² of the least-squares line: 1 for points on a line, 0 when the line explains nothing
/// (or the points are flat: a flat series has no trend to explain).
pub fn r_squared(points: &[(f64, f64)]) -> f64 {
    if points.len() < 3 {
        return 0.0;
    }
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let total: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    if total <= f64::EPSILON {
        return 0.0;
    }
    let (_, _, residual) = least_squares(points);
    (1.0 - residual / total).clamp(0.0, 1.0)
}

/// The low point of each of up to `windows` equal slices of the series (at least two
/// samples each), placed at the time of that low point.
pub fn baseline(points: &[(f64, f64)], windows: usize) -> Vec<(f64, f64)> {
    if points.is_empty() {
        return Vec::new();
    }
    let windows = windows.clamp(1, (points.len() / 2).max(1));
    let size = points.len() as f64 / windows as f64;
    (0..windows)
        .filter_map(|w| {
            let start = (w as f64 * size) as usize;
            let end = (((w + 1) as f64 * size) as usize).min(points.len());
            points[start..end]
                .iter()
                .copied()
                .min_by(|a, b| a.1.total_cmp(&b.1))
        })
        .collect()
}

/// When a rise began: the break point of the best "flat, then a straight rise" fit (a hinge)
/// through the points. The first point's time when the rise was already under way.
pub fn growth_onset(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return points.first().map(|p| p.0);
    }
    let mut best: Option<(f64, f64)> = None;
    for hinge in &points[..points.len() - 1] {
        let shifted: Vec<(f64, f64)> = points
            .iter()
            .map(|(t, y)| ((t - hinge.0).max(0.0), *y))
            .collect();
        let (_, slope, residual) = least_squares(&shifted);
        if slope <= 0.0 {
            continue;
        }
        // Ties go to the earlier hinge: a line that fits as well from the start needs no break.
        if best.is_none_or(|(_, best_residual)| residual < best_residual * (1.0 - 1e-9)) {
            best = Some((hinge.0, residual));
        }
    }
    best.map(|(onset, _)| onset)
}

/// How a series' baseline moves.
#[derive(Clone, Debug, PartialEq)]
pub struct Rise {
    /// Theil–Sen slope of the baseline, units per second.
    pub slope: f64,
    pub r_squared: f64,
    /// Share of the baseline's changes that are rises.
    pub rising_fraction: f64,
    /// Number of baseline rises.
    pub rises: usize,
    /// The baseline still rises in the recent half.
    pub still_rising: bool,
    /// All of the above pass the thresholds.
    pub steady: bool,
    /// When the rise began (steady rises only).
    pub onset: Option<f64>,
    /// The baseline points.
    pub points: Vec<(f64, f64)>,
}

/// The trend of a series' baseline. The rise is measured from its onset, so a leak that
/// began late in a long flat history is judged on its own part of the series.
pub fn rise(points: &[(f64, f64)], thresholds: &Thresholds) -> Rise {
    let points = baseline(points, thresholds.baseline_windows);
    let least = 4.max(thresholds.min_rises + 1);
    let from = growth_onset(&points)
        .and_then(|onset| points.iter().position(|p| p.0 >= onset))
        .filter(|from| points.len() - from >= least)
        .unwrap_or(0);
    let rising_part = &points[from..];
    let slope = theil_sen_slope(rising_part);
    let r_squared = r_squared(rising_part);
    let (mut rises, mut falls) = (0usize, 0usize);
    for pair in rising_part.windows(2) {
        if pair[1].1 > pair[0].1 {
            rises += 1;
        } else if pair[1].1 < pair[0].1 {
            falls += 1;
        }
    }
    let rising_fraction = if rises + falls == 0 {
        0.0
    } else {
        rises as f64 / (rises + falls) as f64
    };
    let recent = &rising_part[rising_part.len() / 2..];
    let still_rising = recent.len() >= 2
        && theil_sen_slope(recent) > 0.0
        && recent[recent.len() - 1].1 > recent[0].1;
    let steady = slope > 0.0
        && still_rising
        && rises >= thresholds.min_rises
        && rising_fraction >= thresholds.min_rising_fraction
        && r_squared >= thresholds.min_r_squared;
    let onset = if steady {
        rising_part.first().map(|p| p.0)
    } else {
        None
    };
    Rise {
        slope,
        r_squared,
        rising_fraction,
        rises,
        still_rising,
        steady,
        onset,
        points,
    }
}

/// The context a verdict is given in.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// CLOCK_MONOTONIC ns now (or when the target exited).
    pub now_ns: u64,
    /// Seconds the target was observed.
    pub span_s: f64,
    /// The program has exited: whatever it still held was never freed.
    pub exited: bool,
}

fn bytes_points(series: &[Sample]) -> Vec<(f64, f64)> {
    series
        .iter()
        .map(|sample| (sample.at_s, sample.outstanding_bytes as f64))
        .collect()
}

/// The verdict on one stack, with the numbers behind it.
pub fn judge(history: &StackHistory, context: Context, thresholds: &Thresholds) -> Trend {
    let totals = &history.totals;
    let survival_fraction = if totals.total_allocs == 0 {
        // Everything live predates tracing.
        if totals.outstanding_allocs > 0 {
            1.0
        } else {
            0.0
        }
    } else {
        (totals.outstanding_allocs as f64 / totals.total_allocs as f64).min(1.0)
    };
    let trend = |verdict, confidence: f64, rise: Option<&Rise>| Trend {
        verdict,
        confidence: confidence.clamp(0.0, 1.0),
        growth_bytes_per_s: rise.map_or(0.0, |rise| rise.slope),
        r_squared: rise.map_or(0.0, |rise| rise.r_squared),
        growth_onset: rise.and_then(|rise| rise.onset),
        survival_fraction,
    };
    let series = &history.series;
    let enough_data = series.len() >= thresholds.min_samples;
    let rise = enough_data.then(|| rise(&bytes_points(series), thresholds));
    if totals.outstanding_allocs == 0 {
        return trend(Verdict::Transient, 1.0, rise.as_ref());
    }
    if totals.outstanding_bytes == 0 {
        // Zero-byte blocks: nothing to rise. Never freed by the end of the program, they
        // are leaked all the same (malloc(0) returns a block that must be freed).
        return if context.exited {
            trend(Verdict::Leaking, 0.5, None)
        } else {
            trend(Verdict::Transient, 1.0, rise.as_ref())
        };
    }
    let Some(rise) = rise else {
        // Too short to see a trend. After exit, what was never freed is a leak; while
        // running, it is only held so far.
        return if context.exited {
            trend(Verdict::Leaking, 0.5, None)
        } else {
            trend(Verdict::Stable, 0.3, None)
        };
    };
    // More baseline points make any verdict surer.
    let data = (rise.points.len() as f64 / thresholds.baseline_windows as f64).min(1.0);
    if rise.steady {
        let last_at = series.last().map_or(0.0, |sample| sample.at_s);
        let onset = rise.onset.unwrap_or(series[0].at_s);
        let rising_for = (last_at - onset).max(f64::EPSILON);
        // Unknown age (cannot happen for traced allocations) counts as old: do not hide a rise.
        let held_share = history
            .oldest_age_s(context.now_ns)
            .map_or(1.0, |age| (age / rising_for).min(1.0));
        let shape = (rise.r_squared + rise.rising_fraction) / 2.0;
        return if held_share >= thresholds.min_oldest_fraction {
            trend(Verdict::Leaking, shape * data * held_share, Some(&rise))
        } else {
            trend(
                Verdict::Growing,
                shape * data * (1.0 - held_share),
                Some(&rise),
            )
        };
    }
    // Memory that keeps returning to nothing is in flight, not held.
    let recent = &rise.points[rise.points.len() / 2..];
    let empty_share =
        recent.iter().filter(|point| point.1 == 0.0).count() as f64 / recent.len().max(1) as f64;
    if empty_share > 0.0 && !context.exited {
        return trend(Verdict::Transient, empty_share * data, Some(&rise));
    }
    // So is memory that swings between a low and a high while nothing in it lives long: a
    // batch that piles up and is released between two samples never shows its zero.
    let observed_s = series[series.len() - 1].at_s - series[0].at_s;
    let all_young = history
        .oldest_age_s(context.now_ns)
        .is_some_and(|age| age < thresholds.min_oldest_fraction * observed_s);
    let recent_samples = &series[series.len() / 2..];
    let low = recent_samples
        .iter()
        .map(|s| s.outstanding_bytes)
        .min()
        .unwrap_or(0);
    let high = recent_samples
        .iter()
        .map(|s| s.outstanding_bytes)
        .max()
        .unwrap_or(0);
    let swing = if high == 0 {
        0.0
    } else {
        1.0 - low as f64 / high as f64
    };
    if all_young && swing >= thresholds.min_transient_swing && !context.exited {
        return trend(Verdict::Transient, swing * data, Some(&rise));
    }
    // Stable: the surer, the flatter the baseline's recent half.
    let level = rise.points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let recent_change = recent.last().map_or(0.0, |p| p.1) - recent.first().map_or(0.0, |p| p.1);
    let flatness = 1.0 - (recent_change.abs() / level).min(1.0);
    let mut stable = trend(Verdict::Stable, flatness * data, Some(&rise));
    stable.growth_onset = None;
    stable
}

/// The verdict on a count over time (goroutines alive at one creation site), with the
/// baseline's slope in units per second. A count whose baseline rises steadily is leaking (the
/// goroutine-leak rule, per site); one that keeps returning to zero is transient; any other
/// non-zero count is stable. Counts carry no ages, so there is no "growing".
pub fn judge_count(points: &[(f64, f64)], thresholds: &Thresholds) -> (Verdict, f64, f64) {
    let last = points.last().map_or(0.0, |point| point.1);
    if points.len() < thresholds.min_samples {
        let verdict = if last > 0.0 {
            Verdict::Stable
        } else {
            Verdict::Transient
        };
        return (verdict, 0.3, 0.0);
    }
    let rise = rise(points, thresholds);
    let data = (rise.points.len() as f64 / thresholds.baseline_windows as f64).min(1.0);
    if rise.steady {
        let shape = (rise.r_squared + rise.rising_fraction) / 2.0;
        return (Verdict::Leaking, (shape * data).clamp(0.0, 1.0), rise.slope);
    }
    let recent = &rise.points[rise.points.len() / 2..];
    let empty_share =
        recent.iter().filter(|point| point.1 == 0.0).count() as f64 / recent.len().max(1) as f64;
    if last == 0.0 || empty_share > 0.0 {
        return (
            Verdict::Transient,
            (empty_share.max(0.5) * data).min(1.0),
            0.0,
        );
    }
    (Verdict::Stable, data, rise.slope.max(0.0))
}

/// A goroutine creation site's verdict (`judge_count`) once the program `exited`: a count
/// judged transient that still had goroutines `alive` at the end is stable, not transient.
pub fn count_verdict_at_exit(verdict: Verdict, exited: bool, alive: u64) -> Verdict {
    if exited && verdict == Verdict::Transient && alive > 0 {
        Verdict::Stable
    } else {
        verdict
    }
}

/// One history for stacks that symbolize to the same frames (the same source lines reached
/// through different return addresses, e.g. an unrolled loop calling malloc five times).
/// Totals add up; the series add up on the time grid of the member seen first (of those,
/// the one with the fewest samples), each member contributing its latest sample at or
/// before each point (0 before it first appeared): a member that appeared late (a Go
/// profile bucket of a new size for the same stack) does not cut the history short.
pub fn merge_histories(members: &[&StackHistory]) -> Option<StackHistory> {
    let first = members.first()?;
    let start = |history: &StackHistory| history.series.first().map_or(f64::INFINITY, |s| s.at_s);
    let grid = members
        .iter()
        .min_by(|a, b| {
            start(a)
                .total_cmp(&start(b))
                .then(a.series.len().cmp(&b.series.len()))
        })
        .map_or(&first.series, |history| &history.series);
    let mut merged = StackHistory {
        key: first.key,
        totals: Totals::default(),
        series: grid
            .iter()
            .map(|sample| Sample {
                at_s: sample.at_s,
                outstanding_bytes: 0,
                outstanding_allocs: 0,
                total_allocs: 0,
            })
            .collect(),
        oldest_live_ns: None,
    };
    for member in members {
        let totals = &mut merged.totals;
        totals.outstanding_bytes += member.totals.outstanding_bytes;
        totals.outstanding_allocs += member.totals.outstanding_allocs;
        totals.total_allocs += member.totals.total_allocs;
        totals.total_frees += member.totals.total_frees;
        totals.total_bytes += member.totals.total_bytes;
        merged.oldest_live_ns = match (merged.oldest_live_ns, member.oldest_live_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut next = 0;
        for point in &mut merged.series {
            while next < member.series.len() && member.series[next].at_s <= point.at_s {
                next += 1;
            }
            if let Some(latest) = next.checked_sub(1).map(|i| member.series[i]) {
                point.outstanding_bytes += latest.outstanding_bytes;
                point.outstanding_allocs += latest.outstanding_allocs;
                point.total_allocs += latest.total_allocs;
            }
        }
    }
    Some(merged)
}

/// Why a stack judged leaking is not announced as leaking yet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unconfirmed {
    /// The history as it stood at an earlier analysis (`at_s`, seconds since tracing
    /// began) did not show the leak yet: the rise is too new to have held.
    NotHeld { at_s: f64 },
    /// It keeps less and less of what it allocates: of each allocation, `early` bytes on
    /// average stayed in the first half of the rise, only `recent` in the recent half. A
    /// rise that levels off: memory that replaces what was allocated before tracing began
    /// (the values of a fixed set of keys rewritten: each rewrite of a key already rewritten
    /// frees a traced value), or a cache filling up to its size.
    LevellingOff { early: f64, recent: f64 },
}

/// Earlier analyses a leak must have held in: the history as it stood halfway and three
/// quarters through the rise judged leaking too.
pub const CONFIRMING_CUTS: [f64; 2] = [0.5, 0.25];

/// A rise levels off when the bytes it keeps per allocation in its recent half fall below
/// this share of those in its first half.
pub const LEVELLING_SHARE: f64 = 0.8;

/// Whether a leaking verdict holds before it is announced. The same judgement on the
/// history as it stood at earlier points of the rise (CONFIRMING_CUTS back from the last
/// sample) must say leaking too: a rise that shows in one analysis only is a suspect. And it
/// must keep as much of what it allocates as it did: per allocation, the baseline's gain in
/// the recent half of the rise at least LEVELLING_SHARE of its gain in the first half. A
/// leak keeps a steady share of its allocations whatever the load; a program rewriting the
/// values of a fixed keyspace keeps all of its first rewrites, then ever fewer as more of
/// the keys it rewrites were rewritten since the attach already.
pub fn confirm(
    history: &StackHistory,
    trend: &Trend,
    context: Context,
    thresholds: &Thresholds,
) -> Result<(), Unconfirmed> {
    let series = &history.series;
    let Some(last) = series.last() else {
        return Ok(());
    };
    let onset = trend.growth_onset.unwrap_or(series[0].at_s);
    let rising_for = (last.at_s - onset).max(0.0);
    // A history needs this many samples for its baseline to show the least number of
    // rises: an earlier analysis is never cut shorter (a short attach, or samples that came
    // late on a loaded machine, would otherwise leave too few to judge).
    let judgeable = 2 * (thresholds.min_rises + 1).max(thresholds.min_samples);
    let earliest = series
        .get(judgeable - 1)
        .map_or(last.at_s, |sample| sample.at_s);
    for back in CONFIRMING_CUTS {
        let cut = (last.at_s - rising_for * back).max(earliest);
        if cut >= last.at_s {
            continue;
        }
        let then = as_of(history, cut, context);
        if judge(&then, context_at(context, last.at_s, cut), thresholds).verdict != Verdict::Leaking
        {
            return Err(Unconfirmed::NotHeld { at_s: cut });
        }
    }
    let rising: Vec<(f64, f64)> = bytes_points(series)
        .into_iter()
        .filter(|point| point.0 >= onset)
        .collect();
    let low = baseline(&rising, thresholds.baseline_windows);
    if low.len() >= 3 {
        let (start, middle, end) = (low[0], low[low.len() / 2], low[low.len() - 1]);
        let allocs_at = |at: f64| {
            series
                .iter()
                .rev()
                .find(|sample| sample.at_s <= at)
                .map_or(0, |sample| sample.total_allocs)
        };
        let allocs = [allocs_at(start.0), allocs_at(middle.0), allocs_at(end.0)];
        if allocs[1] > allocs[0] && allocs[2] > allocs[1] {
            let early = (middle.1 - start.1) / (allocs[1] - allocs[0]) as f64;
            let recent = (end.1 - middle.1) / (allocs[2] - allocs[1]) as f64;
            if early > 0.0 && recent < LEVELLING_SHARE * early {
                return Err(Unconfirmed::LevellingOff { early, recent });
            }
        }
    }
    Ok(())
}

/// `context` as it was at `cut` (seconds since tracing began) when now is `last_s`.
fn context_at(context: Context, last_s: f64, cut: f64) -> Context {
    let back_ns = ((last_s - cut).max(0.0) * 1e9) as u64;
    Context {
        now_ns: context.now_ns.saturating_sub(back_ns),
        span_s: (context.span_s - (last_s - cut)).max(0.0),
        exited: false,
    }
}

/// The history as it stood at `cut`: its samples up to then, what it held then, and its
/// oldest live allocation if that one was live then (otherwise every block held then has
/// been freed since: the oldest then is unknown, counted as new).
fn as_of(history: &StackHistory, cut: f64, context: Context) -> StackHistory {
    let series: Vec<Sample> = history
        .series
        .iter()
        .copied()
        .filter(|sample| sample.at_s <= cut)
        .collect();
    let last_s = history.series.last().map_or(cut, |sample| sample.at_s);
    let cut_ns = context_at(context, last_s, cut).now_ns;
    let held = series.last().copied().unwrap_or(Sample {
        at_s: cut,
        outstanding_bytes: 0,
        outstanding_allocs: 0,
        total_allocs: 0,
    });
    StackHistory {
        key: history.key,
        totals: Totals {
            outstanding_bytes: held.outstanding_bytes,
            outstanding_allocs: held.outstanding_allocs,
            ..history.totals
        },
        series,
        oldest_live_ns: history.oldest_live_ns.map(|oldest| oldest.min(cut_ns)),
    }
}

/// Why a stack has its verdict, in a sentence for the report (empty for stable and
/// transient stacks). `alone` is the verdict its history gave before the reachability
/// scan and the confirmation had their say.
pub fn why(
    trend: &Trend,
    alone: Verdict,
    reachability: Option<&Reachability>,
    exited: bool,
    unconfirmed: Option<Unconfirmed>,
) -> String {
    let since = trend
        .growth_onset
        .map(|onset| format!(" since {onset:.1}s"))
        .unwrap_or_default();
    let lost = reachability.map_or(0, |found| found.lost.blocks + found.indirectly_lost.blocks);
    let blocks = |count: u64| format!("{count} block{}", if count == 1 { "" } else { "s" });
    match trend.verdict {
        Verdict::Leaking if lost > 0 && exited => format!(
            "lost: {} no longer pointed to when the target exited",
            blocks(lost)
        ),
        Verdict::Leaking if lost > 0 => format!(
            "rising{since}, and a scan found {} no longer pointed to",
            blocks(lost)
        ),
        Verdict::Leaking if exited && trend.growth_onset.is_none() => {
            "still held when the target exited, never freed".to_string()
        }
        Verdict::Leaking if exited => format!(
            "the baseline rose steadily{since}, and what was allocated when it began was \
             still held when the target exited"
        ),
        Verdict::Leaking => format!(
            "the baseline rose steadily{since} and kept rising at every analysis since, and \
             what was allocated when it began is still held"
        ),
        Verdict::Suspect => match unconfirmed {
            Some(Unconfirmed::LevellingOff { early, recent }) => format!(
                "rising{since}, not confirmed: it keeps ever less of what it allocates ({} \
                 an allocation stayed early in the rise, {} lately): levelling off, as \
                 memory replacing what was there before tracing began does (the values of a \
                 fixed set of keys rewritten), or a cache filling up",
                human_bytes(early),
                human_bytes(recent.max(0.0))
            ),
            Some(Unconfirmed::NotHeld { at_s }) => format!(
                "rising{since}, not confirmed yet: as it stood at {at_s:.1}s it did not look \
                 like a leak (a leak must hold across analyses)"
            ),
            None => format!("rising{since}, not confirmed yet"),
        },
        Verdict::Growing if alone == Verdict::Leaking => format!(
            "rising{since}, but a scan found every block still pointed to: memory the \
             program keeps (a cache or a queue that grows), not lost"
        ),
        Verdict::Growing => format!(
            "rising{since}, but its old allocations are freed: it turns over (a queue or a \
             cache that keeps growing)"
        ),
        Verdict::Reachable => "never freed, but still pointed to when the target exited".into(),
        Verdict::Stable | Verdict::Transient => String::new(),
    }
}

/// A stack's verdict once the reachability scan has classified its blocks. After the
/// program exited, the scan decides, as valgrind's does: a block lost or only reached from
/// lost ones is a leak (a lost zero-byte block too), and memory all still pointed to is
/// `reachable`, held but not lost, whatever its trend said (a block allocated once and kept
/// in a global is not "growing"). While the program runs, rising memory it can still reach
/// is a growing cache or queue, not a leak.
pub fn verdict_with_reachability(verdict: Verdict, found: &Reachability, exited: bool) -> Verdict {
    let lost_blocks = found.lost.blocks + found.indirectly_lost.blocks;
    if exited {
        if lost_blocks > 0 {
            Verdict::Leaking
        } else if found.interior.blocks == 0 && found.reachable.blocks > 0 {
            Verdict::Reachable
        } else {
            verdict
        }
    } else if verdict == Verdict::Leaking && lost_blocks == 0 && found.reachable.bytes > 0 {
        Verdict::Growing
    } else {
        verdict
    }
}

/// The verdict of a stack whose memory is excused, whatever its trend: the C runtime's own,
/// accepted by a suppression, or a Go size class charged to other stacks too much to tell
/// whose rise it is. A leaking, suspect or growing verdict becomes stable; the others stand.
pub fn stable_when_excused(verdict: Verdict) -> Verdict {
    if matches!(
        verdict,
        Verdict::Leaking | Verdict::Suspect | Verdict::Growing
    ) {
        Verdict::Stable
    } else {
        verdict
    }
}

/// The trend of the process's resident memory and of its traced heap.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessTrend {
    pub rss: Rise,
    pub heap_growth_bytes_per_s: f64,
}

pub fn process_trend(samples: &[ProcessSample], thresholds: &Thresholds) -> ProcessTrend {
    // The process's own memory: resident anonymous plus swapped out. Shared memory (a
    // database's shared buffers, touched page by page) and file pages are not its growth.
    let rss: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.at_s, s.anon_bytes.saturating_add(s.swap_bytes) as f64))
        .collect();
    let heap: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.at_s, s.heap_bytes as f64))
        .collect();
    ProcessTrend {
        rss: rise(&rss, thresholds),
        heap_growth_bytes_per_s: rise(&heap, thresholds).slope,
    }
}

/// When `leaktrace watch` opens a precise window on its own: the process's anonymous memory
/// (resident plus swapped) has a baseline that rose in every recent window, fast enough.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EscalationRule {
    /// How far back the rule looks, seconds.
    pub lookback_s: f64,
    /// Windows the lookback is cut into (one low point each). A sawtooth whose period is
    /// shorter than one window has a flat baseline.
    pub windows: usize,
    /// Least growth of the baseline, bytes per second.
    pub min_growth_bytes_per_s: f64,
    /// Least r² of a straight line through the baseline.
    pub min_r_squared: f64,
}

impl Default for EscalationRule {
    fn default() -> Self {
        EscalationRule {
            lookback_s: 20.0,
            windows: 5,
            min_growth_bytes_per_s: 32.0 * 1024.0,
            min_r_squared: 0.8,
        }
    }
}

/// Why the rule fired.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Escalation {
    pub growth_bytes_per_s: f64,
    pub r_squared: f64,
}

/// Applies the rule to (seconds, bytes) samples, oldest first. None until the samples cover
/// the lookback, and whenever the baseline fell, stayed flat in a window, or rose too slowly:
/// a start-up allocation is one step, a healthy sawtooth has a flat baseline.
pub fn escalation(samples: &[(f64, f64)], rule: &EscalationRule) -> Option<Escalation> {
    let last = samples.last()?.0;
    let recent: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(at, _)| *at >= last - rule.lookback_s)
        .collect();
    let covered = recent.last()?.0 - recent.first()?.0;
    let windows = rule.windows.max(3);
    if covered < rule.lookback_s * 0.9 || recent.len() < 2 * windows {
        return None;
    }
    let points = baseline(&recent, windows);
    let every_window_rose = points.windows(2).all(|pair| pair[1].1 > pair[0].1);
    let slope = theil_sen_slope(&points);
    let r_squared = r_squared(&points);
    (points.len() == windows
        && every_window_rose
        && slope >= rule.min_growth_bytes_per_s
        && r_squared >= rule.min_r_squared)
        .then_some(Escalation {
            growth_bytes_per_s: slope,
            r_squared,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, StackKey};

    /// One sample a second for `seconds`, of `bytes(t)`.
    fn every_second(seconds: usize, bytes: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..seconds).map(|i| (i as f64, bytes(i as f64))).collect()
    }

    #[test]
    fn a_steady_leak_escalates_within_the_lookback() {
        let rule = EscalationRule::default();
        // 100 KiB/s on 50 MiB, RSS in whole pages with some noise.
        let leak = |t: f64| {
            let noise = if (t as u64).is_multiple_of(3) {
                8192.0
            } else {
                0.0
            };
            (50 << 20) as f64 + (t * 102_400.0 / 4096.0).floor() * 4096.0 + noise
        };
        assert!(
            escalation(&every_second(15, leak), &rule).is_none(),
            "too soon"
        );
        let fired = escalation(&every_second(22, leak), &rule).expect("escalates");
        assert!(
            (fired.growth_bytes_per_s - 102_400.0).abs() < 10_000.0,
            "{fired:?}"
        );
        // A slower leak, under the threshold, does not.
        assert!(escalation(&every_second(60, |t| 1e7 + t * 8_000.0), &rule).is_none());
    }

    #[test]
    fn sawtooth_start_up_and_flat_never_escalate() {
        let rule = EscalationRule::default();
        // Fills 2 MiB a second for 3 s, then frees it all.
        let sawtooth = |t: f64| 1e7 + ((t as u64 % 4) as f64) * 2.0 * 1048576.0;
        let start_up = |t: f64| {
            if t < 3.0 {
                1e6 * (t + 1.0) * 8.0
            } else {
                3.2e7
            }
        };
        for seconds in 10..300 {
            assert!(escalation(&every_second(seconds, sawtooth), &rule).is_none());
            assert!(escalation(&every_second(seconds, start_up), &rule).is_none());
            assert!(escalation(&every_second(seconds, |_| 5e7), &rule).is_none());
        }
        // A gap in the samples (the process was stopped) is not a covered lookback.
        let sparse: Vec<(f64, f64)> = (0..6).map(|i| (i as f64 * 10.0, 1e6 * i as f64)).collect();
        assert!(escalation(&sparse, &rule).is_none());
    }

    const SEC: u64 = 1_000_000_000;

    /// A stack sampled every `step_s` seconds with these outstanding bytes.
    fn history(
        bytes: &[u64],
        step_s: f64,
        totals: (u64, u64),
        oldest_live_ns: Option<u64>,
    ) -> StackHistory {
        let (outstanding_allocs, total_allocs) = totals;
        StackHistory {
            key: StackKey {
                origin: Origin::Heap,
                stack_id: 1,
                caller_hint: 0,
            },
            totals: Totals {
                outstanding_bytes: *bytes.last().unwrap_or(&0),
                outstanding_allocs,
                total_allocs,
                total_frees: total_allocs - outstanding_allocs.min(total_allocs),
                total_bytes: 1000,
            },
            series: bytes
                .iter()
                .enumerate()
                .map(|(i, b)| Sample {
                    at_s: i as f64 * step_s,
                    outstanding_bytes: *b,
                    outstanding_allocs: 0,
                    total_allocs: 0,
                })
                .collect(),
            oldest_live_ns,
        }
    }

    /// Running, observed for the length of `len` samples at `step_s`.
    fn running(len: usize, step_s: f64) -> Context {
        let span_s = (len - 1) as f64 * step_s;
        Context {
            now_ns: (span_s * 1e9) as u64,
            span_s,
            exited: false,
        }
    }

    fn judge_default(history: &StackHistory, context: Context) -> Trend {
        judge(history, context, &Thresholds::default())
    }

    /// Deterministic noise in [0, 1) (a small LCG: the tests need no rand crate).
    fn noise(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn theil_sen_ignores_an_outlier() {
        let mut points: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, 100.0 * i as f64)).collect();
        points[10].1 = 1e9;
        let slope = theil_sen_slope(&points);
        assert!((slope - 100.0).abs() < 1.0, "slope {slope}");
    }

    #[test]
    fn theil_sen_of_flat_and_tiny_inputs() {
        assert_eq!(theil_sen_slope(&[]), 0.0);
        assert_eq!(theil_sen_slope(&[(1.0, 5.0)]), 0.0);
        assert_eq!(theil_sen_slope(&[(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)]), 0.0);
    }

    #[test]
    fn theil_sen_thins_long_series() {
        let points: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, 3.0 * i as f64)).collect();
        assert!((theil_sen_slope(&points) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn r_squared_of_line_noise_and_flat() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 2.0 * i as f64 + 1.0)).collect();
        assert!((r_squared(&line) - 1.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 7.0)).collect();
        assert_eq!(r_squared(&flat), 0.0);
        let zigzag: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64, if i % 2 == 0 { 0.0 } else { 10.0 }))
            .collect();
        assert!(r_squared(&zigzag) < 0.1);
    }

    #[test]
    fn baseline_takes_the_low_point_of_each_window() {
        // Bursts to 1000 between lows that rise by 10 per window.
        let points: Vec<(f64, f64)> = (0..40)
            .map(|i| {
                let low = 10.0 * (i / 4) as f64;
                (i as f64, if i % 4 == 0 { low } else { low + 1000.0 })
            })
            .collect();
        let lows = baseline(&points, 10);
        assert_eq!(lows.len(), 10);
        for (w, (_, low)) in lows.iter().enumerate() {
            assert_eq!(*low, 10.0 * w as f64);
        }
        // Never fewer than two samples per window.
        assert_eq!(baseline(&points[..6], 16).len(), 3);
        assert!(baseline(&[], 16).is_empty());
    }

    #[test]
    fn onset_is_the_break_of_a_flat_then_rising_line() {
        let points: Vec<(f64, f64)> = (0..30)
            .map(|i| {
                let t = i as f64;
                (
                    t,
                    if t < 12.0 {
                        500.0
                    } else {
                        500.0 + 80.0 * (t - 12.0)
                    },
                )
            })
            .collect();
        let onset = growth_onset(&points).expect("onset");
        assert!((onset - 12.0).abs() <= 1.0, "onset {onset}");
        // Rising from the start: the onset is the first point.
        let line: Vec<(f64, f64)> = (0..30).map(|i| (i as f64 + 3.0, 5.0 * i as f64)).collect();
        assert_eq!(growth_onset(&line), Some(3.0));
    }

    #[test]
    fn onset_survives_noise() {
        let mut seed = 7;
        let points: Vec<(f64, f64)> = (0..60)
            .map(|i| {
                let t = i as f64 * 0.5;
                let level = if t < 20.0 {
                    4096.0
                } else {
                    4096.0 + 300.0 * (t - 20.0)
                };
                (t, level + 200.0 * noise(&mut seed))
            })
            .collect();
        let onset = growth_onset(&points).expect("onset");
        assert!((onset - 20.0).abs() <= 2.0, "onset {onset}");
    }

    #[test]
    fn steady_leak_with_old_allocations_is_leaking() {
        let bytes: Vec<u64> = (0..50).map(|i| 1024 * i).collect();
        let trend = judge_default(&history(&bytes, 0.2, (49, 49), Some(0)), running(50, 0.2));
        assert_eq!(trend.verdict, Verdict::Leaking);
        assert!(
            (trend.growth_bytes_per_s - 5120.0).abs() < 100.0,
            "{trend:?}"
        );
        assert!(trend.r_squared > 0.99);
        assert!(trend.confidence > 0.8, "{trend:?}");
        assert_eq!(trend.survival_fraction, 1.0);
        assert!(
            trend.growth_onset.is_some_and(|onset| onset < 1.0),
            "{trend:?}"
        );
    }

    /// `history`, with the outstanding count of each sample one block per 1024 bytes, every
    /// one of them allocated after the previous sample (a leak: all it allocates stays).
    fn counted(mut history: StackHistory) -> StackHistory {
        let mut total = 0;
        let mut held = 0;
        for sample in &mut history.series {
            sample.outstanding_allocs = sample.outstanding_bytes / 1024;
            total += sample.outstanding_allocs.saturating_sub(held);
            held = sample.outstanding_allocs;
            sample.total_allocs = total;
        }
        history
    }

    #[test]
    fn a_steady_leak_is_confirmed() {
        let bytes: Vec<u64> = (0..50).map(|i| 1024 * i).collect();
        let history = counted(history(&bytes, 0.2, (49, 49), Some(0)));
        let context = running(50, 0.2);
        let trend = judge_default(&history, context);
        assert_eq!(trend.verdict, Verdict::Leaking);
        assert_eq!(
            confirm(&history, &trend, context, &Thresholds::default()),
            Ok(())
        );
        assert!(why(&trend, Verdict::Leaking, None, false, None).contains("at every analysis"));
        assert!(why(&trend, Verdict::Leaking, None, true, None).contains("when the target exited"));
        // A leak of one block in ten allocations, under a load that doubles halfway: it
        // keeps the same share of what it allocates.
        let mut leak = history.clone();
        for (i, sample) in leak.series.iter_mut().enumerate() {
            let i = i as u64;
            sample.total_allocs = if i < 25 { 10 * i } else { 250 + 20 * (i - 25) };
            sample.outstanding_allocs = sample.total_allocs / 10;
            sample.outstanding_bytes = 1024 * sample.outstanding_allocs;
        }
        leak.totals.outstanding_bytes = leak.series[49].outstanding_bytes;
        let trend = judge_default(&leak, context);
        assert_eq!(trend.verdict, Verdict::Leaking, "{trend:?}");
        assert_eq!(
            confirm(&leak, &trend, context, &Thresholds::default()),
            Ok(())
        );
    }

    #[test]
    fn a_short_steady_leak_is_confirmed_however_its_samples_fall() {
        // 8 KiB more every 0.2 s, attached for 1.4 to 4.6 s, the samples starting anywhere
        // in the first 0.2 s and up to 50 ms late: the earlier analyses keep enough samples
        // to judge wherever their cut falls (without that, 1,491 of these 3,200 were held
        // back as suspects).
        let mut judged_leaking = 0;
        for samples in 8..24 {
            for start in 0..40 {
                for late in 0..5 {
                    let mut seed = late * 7919 + start;
                    let mut history = history(&vec![0; samples], 0.2, (0, 0), Some(0));
                    for (i, sample) in history.series.iter_mut().enumerate() {
                        let delay = if late > 0 {
                            0.05 * noise(&mut seed)
                        } else {
                            0.0
                        };
                        sample.at_s = start as f64 * 0.005 + 0.2 * i as f64 + delay;
                        sample.outstanding_allocs = 2 * (i + 1) as u64;
                        sample.total_allocs = sample.outstanding_allocs;
                        sample.outstanding_bytes = 4096 * sample.outstanding_allocs;
                    }
                    let last = history.series[samples - 1];
                    history.totals.outstanding_bytes = last.outstanding_bytes;
                    history.totals.outstanding_allocs = last.outstanding_allocs;
                    let span_s = last.at_s + 0.01;
                    let context = Context {
                        now_ns: (span_s * 1e9) as u64,
                        span_s,
                        exited: false,
                    };
                    let trend = judge_default(&history, context);
                    if trend.verdict != Verdict::Leaking {
                        continue;
                    }
                    judged_leaking += 1;
                    let held = confirm(&history, &trend, context, &Thresholds::default());
                    assert_eq!(held, Ok(()), "{samples} samples from {start}, {late}");
                }
            }
        }
        assert!(judged_leaking > 3000, "{judged_leaking}");
    }

    #[test]
    fn a_rise_seen_in_one_analysis_only_is_a_suspect() {
        // Flat at 8 KiB for 16 s, then +1 KiB every 0.2 s, analysed after each sample: the
        // first analysis that judges it leaking cannot confirm it (as it stood earlier in
        // the rise it did not look like a leak), later ones do.
        let analysed = |rising: usize| {
            let len = 80 + rising;
            let bytes: Vec<u64> = (0..len)
                .map(|i| {
                    if i < 80 {
                        8192
                    } else {
                        8192 + 1024 * (i - 80) as u64
                    }
                })
                .collect();
            let context = running(len, 0.2);
            let oldest = context.now_ns - (rising as f64 * 0.2 * 1e9) as u64;
            let history = counted(history(&bytes, 0.2, (8 + rising as u64, 200), Some(oldest)));
            let trend = judge_default(&history, context);
            let held = confirm(&history, &trend, context, &Thresholds::default());
            (trend.verdict, held)
        };
        let first = (2..120)
            .find(|rising| analysed(*rising).0 == Verdict::Leaking)
            .expect("judged leaking at last");
        let (_, held) = analysed(first);
        assert!(
            matches!(held, Err(Unconfirmed::NotHeld { at_s }) if at_s > 16.0),
            "rising for {first} samples: {held:?}"
        );
        let confirmed = (first..first + 120)
            .find(|rising| analysed(*rising).1.is_ok())
            .expect("confirmed at last");
        // Confirmed within a few seconds (the session keeps a confirmed stack confirmed while
        // it is judged leaking), and surely once the rise is well established.
        assert!(confirmed - first < 60, "{first} → {confirmed}");
        for rising in first + 60..first + 120 {
            assert_eq!(analysed(rising), (Verdict::Leaking, Ok(())), "{rising}");
        }
    }

    #[test]
    fn replacing_values_from_before_the_attach_is_a_suspect() {
        // 2048 keys whose values (200 B) from before the attach are rewritten at random, 400
        // a second: the traced values number 2048 (1 - e^(-t/τ)), τ = 5.12 s, while the
        // allocations go on at the same pace. Early it rises as a leak does.
        let keys = 2048.0;
        let tau = keys / 400.0;
        let mut history = history(&[0; 40], 0.2, (0, 0), Some(0));
        for (i, sample) in history.series.iter_mut().enumerate() {
            let t = i as f64 * 0.2;
            sample.total_allocs = (400.0 * t) as u64;
            sample.outstanding_allocs = (keys * (1.0 - (-t / tau).exp())) as u64;
            sample.outstanding_bytes = 200 * sample.outstanding_allocs;
        }
        let last = history.series[39];
        history.totals.outstanding_allocs = last.outstanding_allocs;
        history.totals.outstanding_bytes = last.outstanding_bytes;
        history.totals.total_allocs = last.total_allocs;
        let context = running(40, 0.2);
        let trend = judge_default(&history, context);
        assert_eq!(trend.verdict, Verdict::Leaking, "{trend:?}");
        let held = confirm(&history, &trend, context, &Thresholds::default());
        assert!(
            matches!(held, Err(Unconfirmed::LevellingOff { early, recent }) if recent < early / 2.0),
            "{held:?}"
        );
        let suspect = Trend {
            verdict: Verdict::Suspect,
            ..trend
        };
        assert!(why(&suspect, Verdict::Leaking, None, false, held.err()).contains("levelling off"),);
    }

    #[test]
    fn leak_starting_mid_session_reports_its_onset() {
        // Flat at 8 KiB for 10 s, then +512 B every 0.2 s; the first leaked block is 10 s old.
        let bytes: Vec<u64> = (0..100)
            .map(|i| if i < 50 { 8192 } else { 8192 + 512 * (i - 50) })
            .collect();
        let context = running(100, 0.2);
        let oldest = context.now_ns - 10 * SEC;
        let trend = judge_default(&history(&bytes, 0.2, (51, 200), Some(oldest)), context);
        assert_eq!(trend.verdict, Verdict::Leaking, "{trend:?}");
        let onset = trend.growth_onset.expect("onset");
        assert!((onset - 10.0).abs() <= 1.5, "onset {onset}");
    }

    #[test]
    fn late_leak_in_a_long_noisy_history_is_leaking() {
        // 10 minutes at 1 Hz: flat with churn, then 50 B/s leaked for the last 4 minutes.
        let mut seed = 5;
        let bytes: Vec<u64> = (0..600)
            .map(|i| {
                let leaked = if i < 360 {
                    0.0
                } else {
                    50.0 * (i - 360) as f64
                };
                (100_000.0 + leaked + 3_000.0 * noise(&mut seed)) as u64
            })
            .collect();
        let context = running(600, 1.0);
        let oldest = context.now_ns - 239 * SEC;
        let trend = judge_default(&history(&bytes, 1.0, (300, 90_000), Some(oldest)), context);
        assert_eq!(trend.verdict, Verdict::Leaking, "{trend:?}");
        assert!((trend.growth_bytes_per_s - 50.0).abs() < 10.0, "{trend:?}");
        let onset = trend.growth_onset.expect("onset");
        assert!((onset - 360.0).abs() <= 60.0, "onset {onset}");
    }

    #[test]
    fn startup_buffer_held_is_stable() {
        // One 64 MiB buffer, held all along, with small churn on top.
        let mut seed = 3;
        let bytes: Vec<u64> = (0..60)
            .map(|_| (64 << 20) + (noise(&mut seed) * 4096.0) as u64)
            .collect();
        let trend = judge_default(&history(&bytes, 0.2, (3, 500), Some(0)), running(60, 0.2));
        assert_eq!(trend.verdict, Verdict::Stable, "{trend:?}");
        assert!(trend.growth_onset.is_none());
    }

    #[test]
    fn buffer_allocated_once_during_tracing_is_stable() {
        // A single step up (a start-up table built in the first second).
        let bytes: Vec<u64> = (0..50)
            .map(|i| match i {
                0..3 => 0,
                3..6 => (i - 2) << 20,
                _ => 4 << 20,
            })
            .collect();
        let trend = judge_default(&history(&bytes, 0.2, (4, 4), Some(0)), running(50, 0.2));
        assert_eq!(trend.verdict, Verdict::Stable, "{trend:?}");
    }

    #[test]
    fn sawtooth_batches_are_transient() {
        // Batches pile up for a second (5 samples) and are released.
        let bytes: Vec<u64> = (0..60).map(|i| (i % 6) * 10_000).collect();
        let trend = judge_default(&history(&bytes, 0.2, (3, 600), Some(SEC)), running(60, 0.2));
        assert_eq!(trend.verdict, Verdict::Transient, "{trend:?}");
    }

    #[test]
    fn batches_released_between_samples_are_transient() {
        // The zero between batches is never sampled; nothing lives longer than a batch.
        let bytes: Vec<u64> = (0..75).map(|i| 20_000 + (i % 5) * 40_000).collect();
        let context = running(75, 0.2);
        let trend = judge_default(
            &history(&bytes, 0.2, (20, 900), Some(context.now_ns - SEC)),
            context,
        );
        assert_eq!(trend.verdict, Verdict::Transient, "{trend:?}");
    }

    #[test]
    fn growing_sawtooth_peaks_with_flat_lows_are_not_leaking() {
        // Bigger batches each time, but always released.
        let bytes: Vec<u64> = (0..60).map(|i| (i % 6) * 1000 * (i / 6 + 1)).collect();
        let trend = judge_default(&history(&bytes, 0.2, (3, 600), Some(SEC)), running(60, 0.2));
        assert_ne!(trend.verdict, Verdict::Leaking, "{trend:?}");
        assert_ne!(trend.verdict, Verdict::Growing, "{trend:?}");
    }

    #[test]
    fn ring_that_fills_then_replaces_is_stable() {
        // Fills 64 slots of 1 KiB in the first 2 s, then replaces entries (free + malloc).
        let bytes: Vec<u64> = (0..75)
            .map(|i| {
                let filled = (i * 64 / 10).min(64);
                filled * 1024 - if i >= 10 && i % 2 == 0 { 1024 } else { 0 }
            })
            .collect();
        let trend = judge_default(
            &history(&bytes, 0.2, (64, 400), Some(12 * SEC)),
            running(75, 0.2),
        );
        assert_eq!(trend.verdict, Verdict::Stable, "{trend:?}");
    }

    #[test]
    fn slow_leak_under_heavy_balanced_traffic_is_leaking() {
        // 300 B/s leaked from a stack that also carries in-flight requests: up to 256 KiB when
        // a sample lands in a burst, under 2 KiB between bursts (most of the time).
        let mut seed = 11;
        let bytes: Vec<u64> = (0..100)
            .map(|i| {
                let t = i as f64 * 0.2;
                let in_flight = if noise(&mut seed) < 0.4 {
                    262_144.0 * noise(&mut seed)
                } else {
                    2048.0 * noise(&mut seed)
                };
                (300.0 * t + in_flight) as u64
            })
            .collect();
        let trend = judge_default(
            &history(&bytes, 0.2, (40, 200_000), Some(0)),
            running(100, 0.2),
        );
        assert_eq!(trend.verdict, Verdict::Leaking, "{trend:?}");
        assert!(
            trend.growth_bytes_per_s > 100.0 && trend.growth_bytes_per_s < 1000.0,
            "{trend:?}"
        );
        assert!(trend.survival_fraction < 0.001);
    }

    #[test]
    fn slow_leak_in_big_steps_is_leaking() {
        // One 1 KiB block every 2 s over 30 s.
        let bytes: Vec<u64> = (0..150).map(|i| 1024 * (i / 10 + 1)).collect();
        let trend = judge_default(&history(&bytes, 0.2, (15, 15), Some(0)), running(150, 0.2));
        assert_eq!(trend.verdict, Verdict::Leaking, "{trend:?}");
        assert!(
            (trend.growth_bytes_per_s - 512.0).abs() < 100.0,
            "{trend:?}"
        );
    }

    #[test]
    fn growth_whose_old_allocations_are_freed_is_growing() {
        // A cache that grows by 2 KiB/s but refreshes every entry each second: nothing live is
        // older than 1 s.
        let bytes: Vec<u64> = (0..75).map(|i| 2048 * i / 5 + 4096).collect();
        let context = running(75, 0.2);
        let trend = judge_default(
            &history(&bytes, 0.2, (30, 3000), Some(context.now_ns - SEC)),
            context,
        );
        assert_eq!(trend.verdict, Verdict::Growing, "{trend:?}");
        assert!(trend.growth_bytes_per_s > 1500.0, "{trend:?}");
    }

    #[test]
    fn noisy_rise_still_leaks() {
        let bytes: Vec<u64> = (0..30)
            .map(|i| 10_000 * i + if i % 3 == 0 { 5_000 } else { 0 })
            .collect();
        let trend = judge_default(&history(&bytes, 1.0, (29, 29), Some(0)), running(30, 1.0));
        assert_eq!(trend.verdict, Verdict::Leaking);
        assert!(
            (trend.growth_bytes_per_s - 10_000.0).abs() < 1_000.0,
            "{trend:?}"
        );
    }

    #[test]
    fn rise_made_only_of_young_allocations_is_not_leaking() {
        let bytes: Vec<u64> = (0..50).map(|i| 1024 * i).collect();
        let context = running(50, 0.2);
        let trend = judge_default(
            &history(&bytes, 0.2, (9, 9), Some(context.now_ns - SEC / 2)),
            context,
        );
        assert_ne!(trend.verdict, Verdict::Leaking, "{trend:?}");
    }

    #[test]
    fn balanced_churn_is_transient() {
        let bytes = [0u64, 64, 0, 0, 64, 0, 64, 0, 0, 64];
        let trend = judge_default(
            &history(&bytes, 1.0, (1, 5), Some(9 * SEC)),
            running(10, 1.0),
        );
        assert_eq!(trend.verdict, Verdict::Transient);
        let trend = judge_default(&history(&[0; 10], 1.0, (0, 5), None), running(10, 1.0));
        assert_eq!(trend.verdict, Verdict::Transient);
        assert_eq!(trend.confidence, 1.0);
    }

    #[test]
    fn unfreed_at_exit_of_a_short_run_is_leaking() {
        let context = Context {
            now_ns: SEC,
            span_s: 0.2,
            exited: true,
        };
        let trend = judge_default(&history(&[640], 1.0, (10, 10), Some(0)), context);
        assert_eq!(trend.verdict, Verdict::Leaking);
    }

    #[test]
    fn merged_histories_add_up_on_a_shared_grid() {
        let a = history(&[100, 200, 300, 400], 1.0, (4, 4), Some(5));
        let mut b = history(&[10, 20], 1.0, (2, 2), Some(3));
        // b appeared at 2 s.
        for sample in &mut b.series {
            sample.at_s += 2.0;
        }
        let merged = merge_histories(&[&a, &b]).expect("merged");
        assert_eq!(merged.totals.outstanding_bytes, 420);
        assert_eq!(merged.totals.outstanding_allocs, 6);
        assert_eq!(merged.oldest_live_ns, Some(3));
        let bytes: Vec<(f64, u64)> = merged
            .series
            .iter()
            .map(|s| (s.at_s, s.outstanding_bytes))
            .collect();
        // On a's grid (seen first): b counts 0 before it appeared.
        assert_eq!(bytes, vec![(0.0, 100), (1.0, 200), (2.0, 310), (3.0, 420)]);
        let merged = merge_histories(&[&b, &a]).expect("merged");
        assert_eq!(merged.series.len(), 4, "in either order");
        assert!(merge_histories(&[]).is_none());
    }

    #[test]
    fn process_baseline_rise_and_onset() {
        let samples: Vec<ProcessSample> = (0..40)
            .map(|i| {
                let t = i as f64;
                let private = if t < 10.0 {
                    50 << 20
                } else {
                    (50 << 20) + (t as u64 - 10) * (1 << 20)
                };
                ProcessSample {
                    at_s: t,
                    rss_bytes: private + (8 << 20),
                    anon_bytes: private - (1 << 20),
                    swap_bytes: 1 << 20,
                    heap_bytes: 1000 * i,
                    ..ProcessSample::default()
                }
            })
            .collect();
        let trend = process_trend(&samples, &Thresholds::default());
        assert!(trend.rss.steady);
        let onset = trend.rss.onset.expect("onset");
        assert!((onset - 10.0).abs() <= 2.5, "onset {onset}");
        assert!((trend.heap_growth_bytes_per_s - 1000.0).abs() < 100.0);
        let flat: Vec<ProcessSample> = (0..40)
            .map(|i| ProcessSample {
                at_s: i as f64,
                rss_bytes: 50 << 20,
                ..ProcessSample::default()
            })
            .collect();
        assert!(!process_trend(&flat, &Thresholds::default()).rss.steady);
        // Resident memory that rises by shared pages alone (a database touching its shared
        // buffers) is not the process's growth.
        let shared: Vec<ProcessSample> = (0..40)
            .map(|i| ProcessSample {
                at_s: i as f64,
                rss_bytes: (50 << 20) + i * (1 << 20),
                anon_bytes: 10 << 20,
                ..ProcessSample::default()
            })
            .collect();
        assert!(!process_trend(&shared, &Thresholds::default()).rss.steady);
    }

    #[test]
    fn a_count_that_climbs_is_leaking_and_one_that_returns_to_zero_is_not() {
        let thresholds = Thresholds::default();
        let climbing: Vec<(f64, f64)> = (0..60).map(|i| (i as f64 * 0.1, i as f64 * 2.0)).collect();
        let (verdict, confidence, slope) = judge_count(&climbing, &thresholds);
        assert_eq!(verdict, Verdict::Leaking);
        assert!(confidence > 0.5, "{confidence}");
        assert!((slope - 20.0).abs() < 1.0, "{slope}");
        let bursts: Vec<(f64, f64)> = (0..60)
            .map(|i| (i as f64 * 0.1, if i % 3 == 0 { 0.0 } else { 4.0 }))
            .collect();
        assert_eq!(judge_count(&bursts, &thresholds).0, Verdict::Transient);
        let pool: Vec<(f64, f64)> = (0..60).map(|i| (i as f64 * 0.1, 8.0)).collect();
        assert_eq!(judge_count(&pool, &thresholds).0, Verdict::Stable);
        assert_eq!(
            judge_count(&[(0.0, 0.0)], &thresholds).0,
            Verdict::Transient
        );
    }
}
