//! /proc/PID/maps as leaktrace reads it (bytes, not always UTF-8), then what is derived from
//! the mappings: the program break and the paths files are opened by.
#![no_main]

use leaktrace::sys::procfs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let maps = procfs::parse_maps(&text);
    for mapping in &maps {
        assert!(mapping.start <= mapping.end, "{mapping:?}");
        let _ = mapping.is_file();
        let _ = mapping.file_path();
        assert!(!mapping.contains(mapping.end));
        let _ = procfs::path_in_root(1, mapping.file_path());
        let _ = procfs::map_file_path(1, mapping);
    }
    let _ = procfs::parse_program_break(&maps, &text);
});
