//! Goroutines per creation site: the kernel's counts (the runtime's newproc and goexit
//! probes, see `probe::golang`) on top of what the runtime's `allgs` held when tracing began.
use std::collections::HashMap;

use aya::maps::{HashMap as KernelHashMap, MapData};
use leak_common::{GoLayout, GoroutineSite, map_names};

use crate::model::GoroutineSample;
use crate::sys::memory::{Memory, ProcessMemory};

/// `_Gdead`: a goroutine that has exited, kept in `allgs` for reuse.
const G_DEAD: u32 = 6;

/// The most goroutines read from `allgs`; a list longer than this is cut (and says so).
const MAX_GOROUTINES_READ: u64 = 1 << 22;

/// One creation site's figures over the session.
#[derive(Clone, Debug, Default)]
pub struct SiteHistory {
    /// The `go` statement's return address (`g.gopc`).
    pub gopc: u64,
    /// Stack of the latest `go` statement seen there (`UNKNOWN_STACK_ID` if none).
    pub stack_id: u32,
    pub alive_at_start: u64,
    pub created: u64,
    pub exited: u64,
    pub series: Vec<GoroutineSample>,
}

impl SiteHistory {
    pub fn alive(&self) -> u64 {
        self.series
            .last()
            .map_or(self.alive_at_start, |sample| sample.alive)
    }
}

/// Goroutines per creation site: the kernel's counts since the probes went in, on top of
/// what `allgs` held when tracing began.
pub struct Goroutines {
    map: KernelHashMap<MapData, u64, GoroutineSite>,
    /// Per site, goroutines alive before tracing (see `baseline`).
    baseline: HashMap<u64, i64>,
    sites: HashMap<u64, SiteHistory>,
    series_cap: usize,
    /// The `allgs` read was cut at MAX_GOROUTINES_READ, or failed.
    pub baseline_incomplete: bool,
}

impl Goroutines {
    pub fn take(ebpf: &mut aya::Ebpf, series_cap: usize) -> Result<Goroutines, String> {
        let map = ebpf
            .take_map(map_names::GOROUTINE_SITES)
            .ok_or_else(|| format!("map {} is missing", map_names::GOROUTINE_SITES))?;
        Ok(Goroutines {
            map: KernelHashMap::try_from(map).map_err(|err| err.to_string())?,
            baseline: HashMap::new(),
            sites: HashMap::new(),
            series_cap,
            baseline_incomplete: false,
        })
    }

    fn counts(&self) -> HashMap<u64, GoroutineSite> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Reads the goroutines alive now from the target's `allgs` (after the probes are in
    /// place, so that none is missed): what the probes have not counted yet is the baseline.
    /// `list` is where the executable keeps `allgs`, the runtime's layout, and the offset
    /// of `g.atomicstatus` (see `probe::golang::GoProgram`); `bias` the executable's load
    /// bias.
    pub fn read_baseline(
        &mut self,
        pid: u32,
        list: (Option<u64>, Option<GoLayout>, Option<u64>),
        bias: u64,
    ) {
        let (Some(allgs), Some(layout), Some(status)) = list else {
            self.baseline_incomplete = true;
            return;
        };
        let mut memory = ProcessMemory { pid };
        // The counts and the list are read with the target stopped: a goroutine started or
        // ended between the two reads would otherwise be counted twice or not at all (a
        // service starting 200 goroutines a second showed 14 "alive" that had all ended).
        let frozen = crate::sys::freeze::Frozen::freeze(pid)
            .map_err(|err| log::debug!("goroutine list read without stopping pid {pid}: {err}"))
            .ok();
        let before = self.counts();
        let read = live_goroutines(&mut memory, allgs.wrapping_add(bias), layout.g_gopc, status);
        if let Some(frozen) = frozen {
            log::debug!(
                "pid {pid} stopped {:.1} ms to read its goroutines",
                frozen.stopped_for().as_secs_f64() * 1e3
            );
        }
        let Some((alive, cut)) = read else {
            log::warn!(
                "could not read the goroutine list of pid {pid}: goroutines started before tracing are not counted"
            );
            self.baseline_incomplete = true;
            return;
        };
        self.baseline_incomplete = cut;
        // A site the probes counted before the read but with none alive at it starts at
        // zero too: its goroutines that ended while the exit probe was not yet in (it goes
        // in after the creation probe) would otherwise stay "alive" for good.
        for (&gopc, counted) in &before {
            self.baseline
                .insert(gopc, baseline(0, counted.created, counted.exited));
        }
        for (gopc, count) in alive {
            let counted = before.get(&gopc).copied().unwrap_or_default();
            self.baseline
                .insert(gopc, baseline(count, counted.created, counted.exited));
        }
    }

    /// One sample of every site's alive count.
    pub fn sample(&mut self, at_s: f64) {
        let counts = self.counts();
        for (&gopc, &start) in &self.baseline {
            self.sites.entry(gopc).or_insert_with(|| SiteHistory {
                gopc,
                stack_id: leak_common::UNKNOWN_STACK_ID,
                alive_at_start: start.max(0) as u64,
                ..SiteHistory::default()
            });
        }
        for (gopc, site) in &counts {
            let history = self.sites.entry(*gopc).or_insert_with(|| SiteHistory {
                gopc: *gopc,
                stack_id: leak_common::UNKNOWN_STACK_ID,
                ..SiteHistory::default()
            });
            history.created = site.created;
            history.exited = site.exited;
            if site.stack_id != leak_common::UNKNOWN_STACK_ID {
                history.stack_id = site.stack_id;
            }
        }
        for history in self.sites.values_mut() {
            let start = self.baseline.get(&history.gopc).copied().unwrap_or(0);
            let alive = alive_now(start, history.created, history.exited);
            crate::model::series::push_thinned(
                &mut history.series,
                GoroutineSample { at_s, alive },
                self.series_cap,
            );
        }
    }

    pub fn sites(&self) -> impl Iterator<Item = &SiteHistory> {
        self.sites.values()
    }
}

/// Live goroutines per creation site (`gopc`), read from `allgs` (at `allgs`, already moved
/// by the load bias); exited ones (kept for reuse) are left out. The second value says
/// whether the list was cut at `MAX_GOROUTINES_READ`.
pub fn live_goroutines(
    memory: &mut dyn Memory,
    allgs: u64,
    gopc_offset: u64,
    status_offset: u64,
) -> Option<(HashMap<u64, u64>, bool)> {
    let mut header = [0u8; 16];
    if memory.read(allgs, &mut header) != header.len() {
        return None;
    }
    let array = u64::from_le_bytes(header[..8].try_into().ok()?);
    let len = u64::from_le_bytes(header[8..].try_into().ok()?);
    let cut = len > MAX_GOROUTINES_READ;
    let len = len.min(MAX_GOROUTINES_READ) as usize;
    let mut pointers = vec![0u8; len * 8];
    if memory.read(array, &mut pointers) != pointers.len() {
        return None;
    }
    let goroutines: Vec<u64> = pointers
        .chunks_exact(8)
        .filter_map(|chunk| chunk.try_into().ok().map(u64::from_le_bytes))
        .filter(|&g| g != 0)
        .collect();
    let mut fields = vec![[0u8; 12]; goroutines.len()];
    let mut requests: Vec<(u64, &mut [u8])> = Vec::with_capacity(goroutines.len() * 2);
    for (g, field) in goroutines.iter().zip(fields.iter_mut()) {
        let (status, gopc) = field.split_at_mut(4);
        requests.push((g + status_offset, status));
        requests.push((g + gopc_offset, gopc));
    }
    let got = memory.read_each(&mut requests);
    drop(requests);
    let mut sites: HashMap<u64, u64> = HashMap::new();
    for (index, field) in fields.iter().enumerate() {
        if got.get(index * 2) != Some(&4) || got.get(index * 2 + 1) != Some(&8) {
            continue;
        }
        let status = u32::from_le_bytes(field[..4].try_into().unwrap_or_default());
        let gopc = u64::from_le_bytes(field[4..].try_into().unwrap_or_default());
        // Statuses above 9 (with the scan bit, 0x1000) are still alive; dead is exactly 6.
        if status != G_DEAD && gopc != 0 {
            *sites.entry(gopc).or_default() += 1;
        }
    }
    Some((sites, cut))
}

/// The goroutines a site had when tracing began: those alive at the `allgs` read, less
/// those the probes had counted in (created, less exited) by then.
pub fn baseline(alive_at_read: u64, created: u64, exited: u64) -> i64 {
    alive_at_read as i64 - (created as i64 - exited as i64)
}

/// The site's goroutines alive now, from its baseline and the probes' counts.
pub fn alive_now(baseline: i64, created: u64, exited: u64) -> u64 {
    (baseline + created as i64 - exited as i64).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake process memory: an allgs slice of four goroutines, one of them dead.
    struct FakeMemory(HashMap<u64, Vec<u8>>);

    impl Memory for FakeMemory {
        fn read(&mut self, address: u64, buffer: &mut [u8]) -> usize {
            for (start, bytes) in &self.0 {
                if address >= *start && address + buffer.len() as u64 <= start + bytes.len() as u64
                {
                    let from = (address - start) as usize;
                    buffer.copy_from_slice(&bytes[from..from + buffer.len()]);
                    return buffer.len();
                }
            }
            0
        }
    }

    #[test]
    fn counts_live_goroutines_per_creation_site() {
        let (status_at, gopc_at) = (144u64, 296u64);
        let mut memory = HashMap::new();
        let gs = [0x10_000u64, 0x20_000, 0x30_000, 0x40_000];
        let mut header = 0x9000u64.to_le_bytes().to_vec();
        header.extend(5u64.to_le_bytes());
        memory.insert(0x8000, header);
        let mut array: Vec<u8> = gs.iter().flat_map(|g| g.to_le_bytes()).collect();
        array.extend(0u64.to_le_bytes()); // a nil slot
        memory.insert(0x9000, array);
        for (g, (status, gopc)) in gs.iter().zip([
            (2u32, 0x401000u64),
            (4, 0x401000),
            (G_DEAD, 0x401000),
            (0x1004, 0x402000),
        ]) {
            let mut bytes = vec![0u8; 400];
            bytes[status_at as usize..][..4].copy_from_slice(&status.to_le_bytes());
            bytes[gopc_at as usize..][..8].copy_from_slice(&gopc.to_le_bytes());
            memory.insert(*g, bytes);
        }
        let (sites, cut) =
            live_goroutines(&mut FakeMemory(memory), 0x8000, gopc_at, status_at).expect("read");
        assert!(!cut);
        assert_eq!(sites.get(&0x401000), Some(&2));
        assert_eq!(sites.get(&0x402000), Some(&1));
        assert_eq!(sites.len(), 2);
    }

    #[test]
    fn alive_counts_start_from_the_baseline() {
        // 10 alive at the read; by then the probes had seen 3 start and 1 end: 8 were there
        // when tracing began.
        let start = baseline(10, 3, 1);
        assert_eq!(start, 8);
        assert_eq!(alive_now(start, 13, 6), 15);
        // Exits of goroutines the read missed never go below zero.
        assert_eq!(alive_now(0, 0, 4), 0);
    }
}
