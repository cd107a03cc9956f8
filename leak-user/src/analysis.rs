//! Judging stacks: robust growth rate and the leaking / stable / transient verdict.
//! Pure functions of a stack's history; no I/O.
use crate::model::{Sample, StackHistory, Verdict};

/// Knobs of the verdict, with the defaults the CLI exposes.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Fewer samples than this cannot show a trend.
    pub min_samples: usize,
    /// Share of the series' changes that must be increases for a rise to count as steady.
    pub min_rising_fraction: f64,
    /// The oldest live allocation must be at least this share of the observed span old
    /// (old allocations stay unfreed).
    pub min_oldest_fraction: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_samples: 4,
            min_rising_fraction: 0.6,
            min_oldest_fraction: 0.3,
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

/// Growth of outstanding bytes, bytes per second.
pub fn growth_bytes_per_s(series: &[Sample]) -> f64 {
    let points: Vec<(f64, f64)> = series
        .iter()
        .map(|sample| (sample.at_s, sample.outstanding_bytes as f64))
        .collect();
    theil_sen_slope(&points)
}

/// Share of the changes between consecutive samples that are increases.
fn rising_fraction(series: &[Sample]) -> f64 {
    let (mut ups, mut changes) = (0usize, 0usize);
    for pair in series.windows(2) {
        if pair[1].outstanding_bytes != pair[0].outstanding_bytes {
            changes += 1;
            if pair[1].outstanding_bytes > pair[0].outstanding_bytes {
                ups += 1;
            }
        }
    }
    if changes == 0 {
        0.0
    } else {
        ups as f64 / changes as f64
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

/// The verdict and growth rate of one stack.
pub fn judge(history: &StackHistory, context: Context, thresholds: &Thresholds) -> (Verdict, f64) {
    let series = &history.series;
    let enough_data = series.len() >= thresholds.min_samples;
    let growth = if enough_data {
        growth_bytes_per_s(series)
    } else {
        0.0
    };
    if history.totals.outstanding_allocs == 0 || history.totals.outstanding_bytes == 0 {
        return (Verdict::Transient, growth);
    }
    let oldest_age_s = history.oldest_age_s(context.now_ns);

    if enough_data {
        let first = series[0].outstanding_bytes;
        let last = series[series.len() - 1].outstanding_bytes;
        let old_enough =
            oldest_age_s.is_none_or(|age| age >= thresholds.min_oldest_fraction * context.span_s);
        if growth > 0.0
            && last > first
            && rising_fraction(series) >= thresholds.min_rising_fraction
            && old_enough
        {
            return (Verdict::Leaking, growth);
        }
        // Memory that repeatedly returns to nothing is in flight, not held.
        let recent = &series[series.len() / 2..];
        if recent.iter().any(|sample| sample.outstanding_bytes == 0) && !context.exited {
            return (Verdict::Transient, growth);
        }
        return (Verdict::Stable, growth);
    }
    // Too short to see a trend (and to quote a rate). After exit, what was never freed is a
    // leak; while running, it is only held so far.
    if context.exited {
        (Verdict::Leaking, 0.0)
    } else {
        (Verdict::Stable, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, StackKey, Totals};

    fn history(
        bytes: &[u64],
        outstanding_allocs: u64,
        oldest_live_ns: Option<u64>,
    ) -> StackHistory {
        StackHistory {
            key: StackKey {
                origin: Origin::Heap,
                stack_id: 1,
                caller_hint: 0,
            },
            totals: Totals {
                outstanding_bytes: *bytes.last().unwrap_or(&0),
                outstanding_allocs,
                total_allocs: 100,
                total_frees: 100 - outstanding_allocs.min(100),
                total_bytes: 1000,
            },
            series: bytes
                .iter()
                .enumerate()
                .map(|(i, b)| Sample {
                    at_s: i as f64,
                    outstanding_bytes: *b,
                })
                .collect(),
            oldest_live_ns,
        }
    }

    const SEC: u64 = 1_000_000_000;

    fn running(span_s: f64) -> Context {
        Context {
            now_ns: span_s as u64 * SEC,
            span_s,
            exited: false,
        }
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
    fn steady_rise_with_old_allocations_is_leaking() {
        let bytes: Vec<u64> = (0..10).map(|i| 1024 * i).collect();
        let (verdict, growth) = judge(
            &history(&bytes, 9, Some(SEC)),
            running(9.0),
            &Thresholds::default(),
        );
        assert_eq!(verdict, Verdict::Leaking);
        assert!((growth - 1024.0).abs() < 1.0);
    }

    #[test]
    fn rise_made_only_of_young_allocations_is_not_leaking() {
        // Everything live was allocated in the last 0.5 s of a 9 s window.
        let bytes: Vec<u64> = (0..10).map(|i| 1024 * i).collect();
        let (verdict, _) = judge(
            &history(&bytes, 9, Some(8 * SEC + SEC / 2)),
            running(9.0),
            &Thresholds::default(),
        );
        assert_ne!(verdict, Verdict::Leaking);
    }

    #[test]
    fn flat_hold_is_stable() {
        let bytes = [4096u64; 10];
        let (verdict, growth) = judge(
            &history(&bytes, 1, Some(0)),
            running(9.0),
            &Thresholds::default(),
        );
        assert_eq!(verdict, Verdict::Stable);
        assert_eq!(growth, 0.0);
    }

    #[test]
    fn balanced_churn_is_transient() {
        let bytes = [0u64, 64, 0, 0, 64, 0, 64, 0, 0, 64];
        let (verdict, _) = judge(
            &history(&bytes, 1, Some(9 * SEC)),
            running(9.0),
            &Thresholds::default(),
        );
        assert_eq!(verdict, Verdict::Transient);
        let (verdict, _) = judge(
            &history(&[0; 10], 0, None),
            running(9.0),
            &Thresholds::default(),
        );
        assert_eq!(verdict, Verdict::Transient);
    }

    #[test]
    fn noisy_rise_still_leaks() {
        let bytes: Vec<u64> = (0..30)
            .map(|i| 10_000 * i + if i % 3 == 0 { 5_000 } else { 0 })
            .collect();
        let (verdict, growth) = judge(
            &history(&bytes, 29, Some(0)),
            running(29.0),
            &Thresholds::default(),
        );
        assert_eq!(verdict, Verdict::Leaking);
        assert!((growth - 10_000.0).abs() < 1_000.0, "growth {growth}");
    }

    #[test]
    fn unfreed_at_exit_of_a_short_run_is_leaking() {
        let context = Context {
            now_ns: SEC,
            span_s: 0.2,
            exited: true,
        };
        let (verdict, _) = judge(
            &history(&[640], 10, Some(0)),
            context,
            &Thresholds::default(),
        );
        assert_eq!(verdict, Verdict::Leaking);
    }
}
