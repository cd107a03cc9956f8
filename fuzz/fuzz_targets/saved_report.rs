//! A saved JSON report, as `leaktrace report` and `leaktrace diff` read it: when it parses, it
//! is rendered in every format and compared with itself.
#![no_main]

use leaktrace::export::report::{self, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(saved) = report::json::from_bytes(data, "fuzz.json") else {
        return;
    };
    for format in [
        Format::Text,
        Format::Json,
        Format::Folded,
        Format::Svg,
        Format::Pprof,
    ] {
        let _ = report::render(&saved, format, false);
    }
    let diff = report::diff::diff(&saved, &saved);
    assert!(diff.changes.iter().all(|change| change.delta_bytes == 0));
    let _ = report::diff::render_text(&diff, 10);
    let _ = report::diff::render_json(&diff);
});
