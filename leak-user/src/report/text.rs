//! Text report for terminals and logs: the stacks that hold memory, largest first, each with
//! its verdict, size, growth and frames.
use std::fmt::Write as _;

use crate::{
    model::{Frame, Report, StackReport, Verdict},
    report::human_bytes,
};

const RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

pub fn render(report: &Report, color: bool) -> String {
    let paint = |code: &'static str| if color { code } else { "" };
    let reset = paint(RESET);
    let mut out = String::new();
    let leaking = report
        .stacks
        .iter()
        .filter(|stack| stack.verdict == Verdict::Leaking)
        .count();
    let held: u64 = report
        .stacks
        .iter()
        .map(|s| s.outstanding_bytes)
        .sum::<u64>()
        + report.omitted_outstanding_bytes;
    let _ = writeln!(
        out,
        "leaktrace: pid {} ({}) traced for {:.1}s: {} leaking stack{}, {} outstanding",
        report.target.pid,
        report.target.exe,
        report.duration_s,
        leaking,
        if leaking == 1 { "" } else { "s" },
        human_bytes(held as f64),
    );
    if let Some(exit) = &report.exited {
        let how = match (exit.code, exit.signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (_, Some(signal)) => format!("was killed by signal {signal}"),
            _ => "exited".to_string(),
        };
        let _ = writeln!(out, "the target {how}; memory below was never freed");
    }
    let dropped: Vec<String> = report
        .dropped
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    if dropped.is_empty() {
        let _ = writeln!(out, "dropped events: none");
    } else {
        let _ = writeln!(
            out,
            "{}dropped events: {}{reset}",
            paint(YELLOW),
            dropped.join(", ")
        );
    }
    if report.stacks.is_empty() {
        let _ = writeln!(out, "\nno allocations seen");
    }
    for (index, stack) in report.stacks.iter().enumerate() {
        let _ = writeln!(out);
        render_stack(&mut out, index + 1, stack, color);
    }
    if report.omitted_stacks > 0 {
        let _ = writeln!(
            out,
            "\n… {} more stack{} holding {} (raise --top to see them)",
            report.omitted_stacks,
            if report.omitted_stacks == 1 { "" } else { "s" },
            human_bytes(report.omitted_outstanding_bytes as f64)
        );
    }
    out
}

fn render_stack(out: &mut String, rank: usize, stack: &StackReport, color: bool) {
    let paint = |code: &'static str| if color { code } else { "" };
    let reset = paint(RESET);
    let verdict_color = match stack.verdict {
        Verdict::Leaking => paint(RED),
        Verdict::Stable => "",
        Verdict::Transient => paint(DIM),
    };
    let oldest = stack
        .oldest_age_s
        .map(|age| format!(", oldest {age:.1}s"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "#{rank} {verdict_color}{}{reset} {} in {} allocation{} ({}{}/s{oldest}), {} allocs / {} frees [{}]",
        stack.verdict.as_str().to_uppercase(),
        human_bytes(stack.outstanding_bytes as f64),
        stack.outstanding_allocs,
        if stack.outstanding_allocs == 1 {
            ""
        } else {
            "s"
        },
        if stack.growth_bytes_per_s >= 0.0 {
            "+"
        } else {
            ""
        },
        human_bytes(stack.growth_bytes_per_s),
        stack.total_allocs,
        stack.total_frees,
        stack.origin.as_str(),
    );
    if stack.frames.is_empty() {
        let _ = writeln!(
            out,
            "    [stack not recorded: see dropped stack_id_collision / stack_id_error]"
        );
    }
    for frame in &stack.frames {
        let _ = writeln!(out, "    {}", frame_line(frame));
    }
}

/// "leak_slowly (demo.c:42) in /usr/bin/demo", or "libfoo.so+0x1234" when unsymbolized.
pub fn frame_line(frame: &Frame) -> String {
    let module = frame.module.as_deref().unwrap_or("?");
    let inlined = if frame.inlined { " [inlined]" } else { "" };
    match &frame.function {
        Some(function) => {
            let location = match (&frame.file, frame.line) {
                (Some(file), Some(line)) => format!(" ({file}:{line})"),
                (Some(file), None) => format!(" ({file})"),
                _ => String::new(),
            };
            format!("{function}{location}{inlined} in {module}")
        }
        None => match frame.module_offset {
            Some(offset) => format!("{module}+{offset:#x}"),
            None => format!("{:#x}", frame.address),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lines() {
        let mut frame = Frame {
            function: Some("leak".into()),
            file: Some("demo.c".into()),
            line: Some(7),
            module: Some("/bin/demo".into()),
            address: 0x1000,
            module_offset: Some(0x10),
            inlined: false,
        };
        assert_eq!(frame_line(&frame), "leak (demo.c:7) in /bin/demo");
        frame.function = None;
        assert_eq!(frame_line(&frame), "/bin/demo+0x10");
        frame.module = None;
        frame.module_offset = None;
        assert_eq!(frame_line(&frame), "0x1000");
    }

    #[test]
    fn snapshot() {
        insta::assert_snapshot!(render(&crate::report::fixtures::sample_report(), false));
    }
}
