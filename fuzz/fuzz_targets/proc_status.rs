//! /proc/PID/status and smaps_rollup: memory figures and the capability sets.
#![no_main]

use leaktrace::sys::procfs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(usage) = procfs::parse_status_memory(&text) {
        // kB figures in bytes, saturated rather than wrapped when too large.
        assert!(
            usage.rss_bytes % 1024 == 0 || usage.rss_bytes == u64::MAX,
            "{usage:?}"
        );
    }
    let _ = procfs::parse_smaps_rollup_pss(&text);
    let _ = procfs::parse_effective_capabilities(&text);
    let _ = procfs::parse_cgroup_v2_path(&text);
    let _ = procfs::parse_memory_max(&text);
});
