//! `leaktrace diff OLD NEW`: what each stack gained or lost between two saved reports of the
//! same program, largest growth first (like `jeprof --base`).
//!
//! Stacks are matched by their symbolized frames (function names, or module+offset when
//! unsymbolized), not addresses, so reports of two runs of a program (different address
//! layouts) still match.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    export::report::text::frame_line,
    model::units::human_bytes,
    model::{Frame, Origin, Report, StackReport, Verdict},
};

/// One stack's change between the reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StackChange {
    pub origin: Origin,
    pub old_outstanding_bytes: u64,
    pub new_outstanding_bytes: u64,
    pub old_outstanding_allocs: u64,
    pub new_outstanding_allocs: u64,
    /// New minus old outstanding bytes.
    pub delta_bytes: i64,
    pub delta_allocs: i64,
    /// Verdict in the newer report (None: the stack is gone).
    pub verdict: Option<Verdict>,
    pub frames: Vec<Frame>,
}

/// Every matched or unmatched stack of the two reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diff {
    pub old_duration_s: f64,
    pub new_duration_s: f64,
    pub delta_bytes: i64,
    /// Largest growth first.
    pub changes: Vec<StackChange>,
}

/// How a frame is recognised across runs.
fn frame_identity(frame: &Frame) -> String {
    match (&frame.function, &frame.module, frame.module_offset) {
        (Some(function), _, _) => function.clone(),
        (None, Some(module), Some(offset)) => {
            format!(
                "{}+{offset:#x}",
                module.rsplit('/').next().unwrap_or(module)
            )
        }
        _ => format!("{:#x}", frame.address),
    }
}

fn stack_identity(stack: &StackReport) -> (Origin, Vec<String>) {
    (
        stack.origin,
        stack.frames.iter().map(frame_identity).collect(),
    )
}

pub fn diff(old: &Report, new: &Report) -> Diff {
    type Side<'a> = Option<&'a StackReport>;
    let mut matched: BTreeMap<(Origin, Vec<String>), (Side, Side)> = BTreeMap::new();
    for stack in &old.stacks {
        matched.entry(stack_identity(stack)).or_default().0 = Some(stack);
    }
    for stack in &new.stacks {
        matched.entry(stack_identity(stack)).or_default().1 = Some(stack);
    }
    let mut changes: Vec<StackChange> = matched
        .into_iter()
        .filter_map(|((origin, _), (before, after))| {
            let bytes = |side: Side| side.map_or(0, |s| s.outstanding_bytes);
            let allocs = |side: Side| side.map_or(0, |s| s.outstanding_allocs);
            let frames = after.or(before)?.frames.clone();
            Some(StackChange {
                origin,
                old_outstanding_bytes: bytes(before),
                new_outstanding_bytes: bytes(after),
                old_outstanding_allocs: allocs(before),
                new_outstanding_allocs: allocs(after),
                delta_bytes: bytes(after) as i64 - bytes(before) as i64,
                delta_allocs: allocs(after) as i64 - allocs(before) as i64,
                verdict: after.map(|s| s.verdict),
                frames,
            })
        })
        .collect();
    changes.sort_by(|a, b| {
        b.delta_bytes
            .cmp(&a.delta_bytes)
            .then(b.new_outstanding_bytes.cmp(&a.new_outstanding_bytes))
    });
    Diff {
        old_duration_s: old.duration_s,
        new_duration_s: new.duration_s,
        delta_bytes: new.outstanding_bytes() as i64 - old.outstanding_bytes() as i64,
        changes,
    }
}

fn signed_bytes(bytes: i64) -> String {
    if bytes >= 0 {
        format!("+{}", human_bytes(bytes as f64))
    } else {
        human_bytes(bytes as f64)
    }
}

/// The stacks that grew (at most `top`, 0 for all), then one line for those that shrank.
pub fn render_text(diff: &Diff, top: usize) -> String {
    let mut out = String::new();
    let grew: Vec<&StackChange> = diff.changes.iter().filter(|c| c.delta_bytes > 0).collect();
    let shrank: Vec<&StackChange> = diff.changes.iter().filter(|c| c.delta_bytes < 0).collect();
    let _ = writeln!(
        out,
        "leaktrace diff: outstanding {} overall; {} stack{} grew, {} shrank",
        signed_bytes(diff.delta_bytes),
        grew.len(),
        if grew.len() == 1 { "" } else { "s" },
        shrank.len()
    );
    let limit = if top == 0 { usize::MAX } else { top };
    for (rank, change) in grew.iter().take(limit).enumerate() {
        let verdict = change.verdict.map_or("gone", Verdict::as_str);
        let _ = writeln!(
            out,
            "\n#{} {} ({:+} allocations): {} → {} [{}, {}]",
            rank + 1,
            signed_bytes(change.delta_bytes),
            change.delta_allocs,
            human_bytes(change.old_outstanding_bytes as f64),
            human_bytes(change.new_outstanding_bytes as f64),
            verdict,
            change.origin.as_str()
        );
        for frame in &change.frames {
            let _ = writeln!(out, "    {}", frame_line(frame));
        }
    }
    if grew.len() > limit {
        let _ = writeln!(out, "\n… {} more grew (raise --top)", grew.len() - limit);
    }
    if !shrank.is_empty() {
        let freed: i64 = shrank.iter().map(|c| c.delta_bytes).sum();
        let _ = writeln!(
            out,
            "\n{} stack{} shrank by {} in total",
            shrank.len(),
            if shrank.len() == 1 { "" } else { "s" },
            human_bytes(-freed as f64)
        );
    }
    out
}

pub fn render_json(diff: &Diff) -> String {
    // Serializing plain data structs cannot fail.
    let mut text = serde_json::to_string_pretty(diff).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::model::Target;

    fn stack(function: &str, address: u64, bytes: u64, verdict: Verdict) -> StackReport {
        StackReport {
            verdict,
            origin: Origin::Heap,
            outstanding_bytes: bytes,
            outstanding_allocs: bytes / 16,
            total_allocs: bytes / 16,
            total_frees: 0,
            total_bytes: bytes,
            oldest_age_s: None,
            growth_bytes_per_s: 0.0,
            confidence: 1.0,
            growth_onset: None,
            r_squared: 0.0,
            survival_fraction: 1.0,
            reachability: None,
            held_by_c_runtime: None,
            suppressed_by: None,
            why: String::new(),
            at_last_gc: None,
            frames: vec![
                Frame {
                    function: Some(function.into()),
                    address,
                    ..Frame::default()
                },
                Frame {
                    function: Some("main".into()),
                    address: address + 0x100,
                    ..Frame::default()
                },
            ],
            series: Vec::new(),
        }
    }

    fn report(stacks: Vec<StackReport>) -> Report {
        let target = Target {
            pid: 1,
            exe: "/bin/demo".into(),
            command_line: String::new(),
            name: String::new(),
        };
        Report {
            duration_s: 10.0,
            unwind: "fp".into(),
            stacks,
            ..Report::empty(target, "attach")
        }
    }

    #[test]
    fn matches_stacks_by_function_across_address_layouts() {
        let old = report(vec![
            stack("leak", 0x1000, 1600, Verdict::Leaking),
            stack("cache", 0x2000, 3200, Verdict::Stable),
            stack("gone", 0x3000, 160, Verdict::Stable),
        ]);
        let new = report(vec![
            stack("leak", 0x7000, 16_000, Verdict::Leaking),
            stack("cache", 0x8000, 3200, Verdict::Stable),
            stack("fresh", 0x9000, 320, Verdict::Growing),
        ]);
        let diff = diff(&old, &new);
        let names: Vec<(&str, i64)> = diff
            .changes
            .iter()
            .map(|c| {
                (
                    c.frames[0].function.as_deref().unwrap_or("?"),
                    c.delta_bytes,
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("leak", 14_400),
                ("fresh", 320),
                ("cache", 0),
                ("gone", -160)
            ]
        );
        assert_eq!(diff.delta_bytes, 16_000 + 3200 + 320 - 1600 - 3200 - 160);
        assert_eq!(diff.changes[3].verdict, None);
        let text = render_text(&diff, 10);
        assert!(text.contains("2 stacks grew, 1 shrank"), "{text}");
        assert!(text.contains("#1 +14.06 KiB (+900 allocations)"), "{text}");
        assert!(text.contains("1 stack shrank by 160 B"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&diff)).expect("json");
        assert_eq!(json["changes"][0]["delta_bytes"], 14_400);
        assert_eq!(json["changes"][0]["verdict"], "leaking");
    }
}
