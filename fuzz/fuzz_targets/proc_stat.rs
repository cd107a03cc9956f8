//! /proc/PID/stat: the process kind (missing, zombie, kernel thread), its state and start
//! time. The command name inside parentheses may hold anything, parentheses included.
#![no_main]

use leaktrace::sys::procfs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let kind = procfs::parse_process_kind(&text);
    let state = procfs::parse_stat_state(&text);
    if state == Some('Z') {
        assert_eq!(kind, procfs::ProcessKind::Zombie);
    }
    let _ = procfs::parse_stat_start_time(&text);
    let _ = procfs::parse_program_break(&[], &text);
});
