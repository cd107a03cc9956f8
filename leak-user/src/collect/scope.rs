//! Request scopes, collected: the kernel's scope maps read every sample, each call followed
//! until `--scope-retain-after` past its return, and a series of what each (function,
//! label) holds (`model::scope::ScopeRecords`), for the report and for correlating growth
//! with requests.
use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use leak_common::{MAX_SCOPES, ScopeCall, ScopeLabel, ScopeReturn, ScopeTotals, map_names};

use crate::{
    collect::drain::DrainError,
    model::scope::{ScopeRecords, label_text, signed_floor},
    model::series::push_thinned,
};

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
    /// What the maps said so far.
    pub records: ScopeRecords,
    /// Calls that returned holding memory, by when to read them again: (due ns, call, tag).
    due: VecDeque<(u64, u64, u32)>,
    /// Retaining calls not yet taken (see `take_retaining_calls`).
    retaining: Vec<RetainingCall>,
    /// Retaining calls left out because `MAX_RETAINING_CALLS` were waiting.
    pub retaining_skipped: u64,
    /// When the label map was last listed.
    labels_read_ns: Option<u64>,
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
            records: ScopeRecords::default(),
            due: VecDeque::new(),
            retaining: Vec::new(),
            retaining_skipped: 0,
            labels_read_ns: None,
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
        tags.extend(
            self.records
                .labels
                .keys()
                .copied()
                .filter(|&tag| tag > MAX_SCOPES),
        );
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
            if sum.calls == 0 && sum.allocs == 0 && !self.records.figures.contains_key(&tag) {
                continue;
            }
            // A labelled tag is counted once its label is known (the kernel adds the label
            // first; this sample may have listed labels just before).
            let index = if tag <= MAX_SCOPES {
                tag - 1
            } else {
                match self.records.labels.get(&tag) {
                    Some((index, _)) => *index,
                    None => continue,
                }
            };
            *scope_held.entry(index).or_default() += sum.held_bytes;
            let figures = self.records.figures.entry(tag).or_default();
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
            let series = self.records.scope_series.entry(index).or_default();
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
            let figures = self.records.figures.entry(tag).or_default();
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
            .any(|call| self.records.describe_tag(call.tag).is_none())
        {
            self.read_labels();
        }
        std::mem::take(&mut self.retaining)
    }

    /// Lists the label map: the labels handed out since the last listing.
    fn read_labels(&mut self) {
        for entry in self.tags.iter() {
            let Ok((label, tag)) = entry else { continue };
            self.records
                .labels
                .entry(tag)
                .or_insert_with(|| (label.index, label_text(&label)));
        }
    }
}
