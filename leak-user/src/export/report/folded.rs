//! Folded stacks, the input of flamegraph.pl and inferno: one line per stack, frames from
//! the outermost call to the allocation joined by `;`, then the stack's outstanding bytes.
//! After a reachability scan, a stack's bytes are split by class under leaf frames such as
//! `[lost]` and `[still reachable]`, so a flame graph shows what is leaked and what is held.
use std::fmt::Write as _;

use crate::model::{Frame, Report, StackReport};

/// The single frame of a stack the kernel could not record, so its bytes still show.
pub const UNKNOWN_STACK: &str = "[unknown stack]";

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for stack in holding_memory(report) {
        let frames = frame_names(stack).join(";");
        for (leaf, bytes) in leaves(stack) {
            let _ = match leaf {
                Some(class) => writeln!(out, "{frames};{class} {bytes}"),
                None => writeln!(out, "{frames} {bytes}"),
            };
        }
    }
    out
}

/// A stack's outstanding bytes as flame-graph leaves. Without a reachability scan, one leaf:
/// the stack itself. With one, a `[class]` leaf per class holding memory, and the bytes
/// allocated after the scan (when there are any) on the stack itself. The classes are as of
/// the scan, so blocks freed since it still count there.
pub(super) fn leaves(stack: &StackReport) -> Vec<(Option<String>, u64)> {
    let Some(reachability) = &stack.reachability else {
        return vec![(None, stack.outstanding_bytes)];
    };
    let mut leaves: Vec<(Option<String>, u64)> = reachability
        .classes()
        .iter()
        .filter(|(_, _, totals)| totals.bytes > 0)
        .map(|(_, label, totals)| (Some(format!("[{label}]")), totals.bytes))
        .collect();
    let unclassified = stack
        .outstanding_bytes
        .saturating_sub(reachability.classified().bytes);
    if unclassified > 0 {
        leaves.push((None, unclassified));
    }
    leaves
}

/// Stacks that still hold memory: a stack holding nothing would be a zero-width frame.
pub(super) fn holding_memory(report: &Report) -> impl Iterator<Item = &StackReport> {
    report
        .stacks
        .iter()
        .filter(|stack| stack.outstanding_bytes > 0)
}

/// The stack's frame names, outermost first. Inlined functions stay frames of their own,
/// below the function they were inlined into, as if they had been called.
pub(super) fn frame_names(stack: &StackReport) -> Vec<String> {
    if stack.frames.is_empty() {
        return vec![UNKNOWN_STACK.to_string()];
    }
    stack.frames.iter().rev().map(frame_name).collect()
}

/// "leak_slowly", or "libplugin.so+0x4f2a" when the module has no symbol for the address,
/// or "0x7ffd1000" when the address is in no known module.
pub fn frame_name(frame: &Frame) -> String {
    let name = match (&frame.function, &frame.module, frame.module_offset) {
        (Some(function), _, _) if !function.is_empty() => function.clone(),
        (_, Some(module), Some(offset)) => {
            let file = module.rsplit('/').next().unwrap_or(module);
            format!("{file}+{offset:#x}")
        }
        _ => format!("{:#x}", frame.address),
    };
    sanitize(&name)
}

/// `;` separates frames and a newline ends the line, so neither may appear inside a name
/// (C++ and Rust names can hold `;`, as in `[u8; 8]`). stackcollapse-perf.pl also maps
/// `;` to `:`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            ';' => ':',
            '\n' | '\r' => ' ',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::report::fixtures::{empty_report, sample_report, scanned_report};

    #[test]
    fn one_line_per_stack_outermost_first() {
        let folded = render(&sample_report());
        let lines: Vec<&str> = folded.lines().collect();
        assert_eq!(
            lines[0], "__libc_start_call_main;main;leak_slowly 10240",
            "{folded}"
        );
        // The inlined push_back sits above the function it was inlined into.
        assert!(lines[1].ends_with(
            "main;Cache<std::string, int>::insert(std::string const&);\
             std::vector<Entry>::push_back(Entry&&) 4096"
        ));
        assert_eq!(lines[2], "[unknown stack] 2048");
        assert_eq!(lines[3], "main;0x7ffd1000;libplugin.so+0x4f2a 1536");
        // The transient stack holds nothing and is left out.
        assert_eq!(lines[4], "main;enqueue_job 3000");
        assert_eq!(lines[5], "main;store_value 5120");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn a_scan_splits_each_stack_by_class() {
        let folded = render(&scanned_report());
        let lines: Vec<&str> = folded.lines().collect();
        assert_eq!(
            lines[..2],
            [
                "__libc_start_call_main;main;leak_slowly;[lost] 9600",
                "__libc_start_call_main;main;leak_slowly;[indirectly lost] 640",
            ],
            "{folded}"
        );
        assert!(lines[2].ends_with("push_back(Entry&&);[still reachable] 4096"));
        assert_eq!(lines[3], "[unknown stack];[interior pointers only] 1024");
        assert_eq!(lines[4], "[unknown stack];[still reachable] 1024");
        assert_eq!(lines[5], "main;0x7ffd1000;libplugin.so+0x4f2a;[lost] 1536");
        // 2000 bytes were classified; the other 1000 came after the scan.
        assert_eq!(lines[6], "main;enqueue_job;[still reachable] 2000");
        assert_eq!(lines[7], "main;enqueue_job 1000");
        assert_eq!(lines[8], "main;store_value 5120");
        assert_eq!(lines.len(), 9);
    }

    #[test]
    fn separators_inside_names_are_replaced() {
        let frame = Frame {
            function: Some("fill<[u8; 8]>\nnext".into()),
            ..Frame::default()
        };
        assert_eq!(frame_name(&frame), "fill<[u8: 8]> next");
    }

    #[test]
    fn empty_report_has_no_lines() {
        assert_eq!(render(&empty_report()), "");
    }

    #[test]
    fn snapshot() {
        insta::assert_snapshot!(render(&sample_report()));
    }
}
