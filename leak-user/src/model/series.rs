//! A stack's history: samples in a series that stays bounded however long the session
//! and however many stacks there are.
use crate::model::Sample;

/// Samples kept per stack before the series is thinned to half its resolution.
pub const MAX_SERIES_LEN: usize = 2048;

/// Memory the series of all stacks may take together: with many stacks each keeps fewer
/// samples (never fewer than `MIN_SERIES_LEN`, enough for the baseline's windows), so the
/// agent's memory stays bounded whatever the target does.
const SERIES_BUDGET_BYTES: usize = 32 << 20;

const MIN_SERIES_LEN: usize = 64;

/// Samples each stack's series keeps when there are `stacks` of them.
pub fn series_cap(stacks: usize) -> usize {
    (SERIES_BUDGET_BYTES / size_of::<Sample>() / stacks.max(1))
        .clamp(MIN_SERIES_LEN, MAX_SERIES_LEN)
}

/// Appends a sample; a series at `cap` samples keeps every other one (as often as needed),
/// so memory stays bounded while the series still spans the whole session.
pub fn push_thinned<T>(series: &mut Vec<T>, sample: T, cap: usize) {
    let cap = cap.max(2);
    if series.len() >= cap {
        while series.len() >= cap {
            let mut index = 0;
            series.retain(|_| {
                index += 1;
                index % 2 == 1
            });
        }
        series.shrink_to(cap);
    }
    series.push(sample);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_stacks_share_a_bounded_budget() {
        assert_eq!(series_cap(1), MAX_SERIES_LEN);
        assert_eq!(series_cap(1_000_000), MIN_SERIES_LEN);
        let cap = series_cap(10_000);
        assert!((MIN_SERIES_LEN..MAX_SERIES_LEN).contains(&cap));
        assert!(10_000 * cap * size_of::<Sample>() <= SERIES_BUDGET_BYTES);
        // A series shrinks to a smaller cap at once and keeps its span.
        let mut series: Vec<u32> = (0..2048).collect();
        push_thinned(&mut series, 2048, 100);
        assert!(series.len() <= 100, "{}", series.len());
        assert_eq!((series[0], series.last().copied()), (0, Some(2048)));
        assert!(series.capacity() <= 200);
    }
}
