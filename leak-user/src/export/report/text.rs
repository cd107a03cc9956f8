//! Text report for terminals and logs: the leaking stacks first with the numbers behind the
//! verdict and their frames, then growing ones, then the rest in one line each; the process
//! memory trend in one line. Colour only when asked (a terminal).
use std::fmt::Write as _;

use crate::{
    model::units::human_bytes,
    model::{
        Frame, ProcessReport, Reachability, Report, ScopeFigures, ScopeStackReport, StackReport,
        Verdict,
    },
};

const RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[33m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

struct Painter {
    color: bool,
}

impl Painter {
    fn paint(&self, code: &'static str, text: &str) -> String {
        if self.color && !code.is_empty() {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    fn verdict(&self, verdict: Verdict) -> String {
        let code = match verdict {
            Verdict::Leaking => RED,
            Verdict::Suspect | Verdict::Growing => YELLOW,
            Verdict::Reachable | Verdict::Stable => "",
            Verdict::Transient => DIM,
        };
        self.paint(code, verdict.as_str())
    }
}

fn plural(count: u64, word: &str) -> String {
    format!("{count} {word}{}", if count == 1 { "" } else { "s" })
}

/// " since 3.0s" for a growth onset, or nothing.
fn since(onset: Option<f64>) -> String {
    onset
        .map(|onset| format!(" since {onset:.1}s"))
        .unwrap_or_default()
}

fn rate(bytes_per_s: f64) -> String {
    let sign = if bytes_per_s >= 0.0 { "+" } else { "" };
    format!("{sign}{}/s", human_bytes(bytes_per_s))
}

pub fn render(report: &Report, color: bool) -> String {
    let painter = Painter { color };
    let mut out = String::new();
    render_headline(&mut out, report, &painter);
    render_allocators(&mut out, report, &painter);
    render_cost(&mut out, report);
    render_context(&mut out, report, &painter);
    render_stacks(&mut out, report, &painter);
    render_goroutines(&mut out, report, &painter);
    render_scopes(&mut out, report, &painter);
    // Each forked child apart, as valgrind reports each process.
    for child in &report.children {
        out.push('\n');
        out.push_str(&render(child, color));
    }
    out
}

/// The first line: the target, how long, the verdict counts, what is held.
fn render_headline(out: &mut String, report: &Report, painter: &Painter) {
    let count = |verdict: Verdict| report.count(verdict) as u64;
    let (leaking, growing) = (count(Verdict::Leaking), count(Verdict::Growing));
    let suspect = count(Verdict::Suspect);
    let others = report.stacks.len() as u64 - leaking - suspect - growing + report.omitted_stacks;
    let suspects = if suspect > 0 {
        format!("{} (not confirmed), ", plural(suspect, "suspect stack"))
    } else {
        String::new()
    };
    let held = report.outstanding_bytes();
    let forked = report
        .forked_by
        .map(|parent| format!(", a child forked by pid {parent}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "leaktrace: pid {} ({}{forked}) traced for {:.1}s: {}, {suspects}{}, {}; {} outstanding",
        report.target.pid,
        report.target.describe(),
        report.duration_s,
        painter.paint(
            if leaking > 0 { RED } else { "" },
            &plural(leaking, "leaking stack")
        ),
        plural(growing, "growing stack"),
        plural(others, "other stack"),
        human_bytes(held as f64),
    );
}

/// The allocators probed, and the probes that are single-stepped.
fn render_allocators(out: &mut String, report: &Report, painter: &Painter) {
    if !report.allocators.is_empty() {
        let found: Vec<String> = report
            .allocators
            .iter()
            .map(|found| {
                let file = found.module.rsplit('/').next().unwrap_or(&found.module);
                format!(
                    "{} in {file} ({})",
                    found.allocator,
                    plural(found.functions.len() as u64, "function")
                )
            })
            .collect();
        let _ = writeln!(out, "allocators: {}", found.join(", "));
        let stepped: Vec<String> = report
            .allocators
            .iter()
            .flat_map(|found| {
                let file = found.module.rsplit('/').next().unwrap_or(&found.module);
                found.single_stepped().map(move |probe| {
                    format!(
                        "{} in {file} (+{:#x}: {})",
                        probe.function, probe.offset, probe.instruction
                    )
                })
            })
            .collect();
        if !stepped.is_empty() {
            let _ = writeln!(
                out,
                "{}: {} single-stepped (each call of it pays a second trap, several µs): {}",
                painter.paint(RED, "warning"),
                plural(stepped.len() as u64, "probe"),
                stepped.join(", ")
            );
        }
    }
}

/// What the probes cost the target, and what the --max-overhead budget did.
fn render_cost(out: &mut String, report: &Report) {
    if let Some(cost) = &report.cost {
        let mut line = format!(
            "cost: {:.1}% of the target's CPU in leaktrace's probes, {:.1}% of a core ({:.0} traps/s at {:.0} ns each; peak {:.1}%)",
            cost.cpu_share_percent,
            cost.core_percent,
            cost.traps_per_s,
            cost.trap.emulated_ns,
            cost.peak_cpu_share_percent
        );
        if let Some(budget) = cost.budget_percent {
            line += &format!("; budget {budget}%");
            if cost.allocation_probes_out_fraction > 0.0 {
                line += &format!(
                    ": allocation probes out {:.0}% of the time, allocations made then are not counted",
                    cost.allocation_probes_out_fraction * 100.0
                );
            }
        }
        let _ = writeln!(out, "{line}");
        for action in &cost.actions {
            let _ = writeln!(out, "  budget: {action}");
        }
    }
}

/// The lines that say how to read the stacks: runtimes, sampling, the process's memory, the
/// reachability scan, how the target ended, dropped events.
fn render_context(out: &mut String, report: &Report, painter: &Painter) {
    for runtime in &report.runtimes {
        match (&runtime.perf_map, &runtime.hint) {
            (Some(map), _) => {
                let _ = writeln!(out, "{}: JIT code named from {map}", runtime.runtime);
            }
            (None, Some(hint)) => {
                let _ = writeln!(out, "{}: {hint}", runtime.runtime);
            }
            (None, None) => {}
        }
        if let Some(heap) = &runtime.heap {
            let _ = writeln!(out, "{} heap: {heap}", runtime.runtime);
        }
    }
    if report.sample_rate > 1 {
        let _ = writeln!(
            out,
            "sampled one heap allocation in {}: heap counts and bytes are estimates, scaled by {}",
            report.sample_rate, report.sample_rate
        );
    }
    if let Some(process) = &report.process {
        let _ = writeln!(out, "{}", process_line(process));
    }
    if let Some(scan) = &report.reachability_scan {
        let _ = writeln!(
            out,
            "reachability: {} live blocks classified, {} read, target stopped {:.1} ms{}",
            scan.blocks,
            human_bytes(scan.scanned_bytes as f64),
            scan.paused_ms,
            if scan.truncated {
                " (cut at --scan-limit: blocks not reached by then count as lost)"
            } else {
                ""
            }
        );
    }
    if let Some(exit) = &report.exited {
        let how = match (exit.code, exit.signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (_, Some(signal)) => format!("was killed by signal {signal}"),
            _ => "exited".to_string(),
        };
        let _ = writeln!(out, "the target {how}; memory below was never freed");
    } else if report.forked_by.is_some() {
        let _ = writeln!(
            out,
            "still running when the command ended (let go untraced): memory below is held so far"
        );
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
            "{}",
            painter.paint(YELLOW, &format!("dropped events: {}", dropped.join(", ")))
        );
    }
    if report.stacks.is_empty() && report.omitted_stacks == 0 {
        let _ = writeln!(out, "\nno allocations seen");
    }
}

/// The stacks: a section per verdict that needs attention, then what the C runtime holds,
/// what is suppressed, and the rest a line each.
fn render_stacks(out: &mut String, report: &Report, painter: &Painter) {
    let sections = [
        (
            Verdict::Leaking,
            if report.exited.is_some() {
                "LEAKING: lost or never freed when the target exited, or the baseline kept rising"
            } else {
                "LEAKING: confirmed: the baseline kept rising across analyses and old allocations stay unfreed, or a scan found blocks lost"
            },
        ),
        (
            Verdict::Suspect,
            "SUSPECT: rising as a leak does, not confirmed yet (each says why); not reported or exported as leaking",
        ),
        (
            Verdict::Growing,
            "GROWING: rising, but not lost: its old allocations are freed, or all of it is still pointed to (each says which)",
        ),
        (
            Verdict::Reachable,
            "STILL REACHABLE: never freed, but still pointed to when the target exited",
        ),
    ];
    let mut rank = 0;
    for (verdict, title) in sections {
        let stacks: Vec<&StackReport> = report
            .stacks
            .iter()
            .filter(|s| s.verdict == verdict && !excused(s))
            .collect();
        if stacks.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{}", painter.paint(BOLD, title));
        for stack in stacks {
            rank += 1;
            render_detailed(out, rank, stack, painter);
        }
    }
    let rest: Vec<&StackReport> = report
        .stacks
        .iter()
        .filter(|s| {
            !excused(s)
                && !matches!(
                    s.verdict,
                    Verdict::Leaking | Verdict::Suspect | Verdict::Growing | Verdict::Reachable
                )
        })
        .collect();
    let runtime: Vec<&StackReport> = report
        .stacks
        .iter()
        .filter(|s| s.held_by_c_runtime.is_some())
        .collect();
    if !runtime.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            painter.paint(
                BOLD,
                "HELD BY THE C RUNTIME: its own caches, not the program's leaks"
            )
        );
        for stack in runtime {
            rank += 1;
            let what = stack.held_by_c_runtime.as_deref().unwrap_or_default();
            render_brief(out, rank, None, stack, Some(what));
        }
    }
    let suppressed: Vec<&StackReport> = report
        .stacks
        .iter()
        .filter(|s| s.held_by_c_runtime.is_none() && s.suppressed_by.is_some())
        .collect();
    if !suppressed.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            painter.paint(BOLD, "SUPPRESSED: known and accepted (--suppressions)")
        );
        for stack in suppressed {
            rank += 1;
            let by = format!("by {}", stack.suppressed_by.as_deref().unwrap_or_default());
            render_brief(out, rank, None, stack, Some(&by));
        }
    }
    if !rest.is_empty() {
        let _ = writeln!(out, "\n{}", painter.paint(BOLD, "OTHER STACKS"));
        for stack in rest {
            rank += 1;
            let verdict = format!("{:<9}", painter.verdict(stack.verdict));
            render_brief(out, rank, Some(&verdict), stack, None);
        }
    }
    if report.omitted_stacks > 0 {
        let _ = writeln!(
            out,
            "\n… {} more stack{} holding {} (raise --top, or lower --min-age, to see them)",
            report.omitted_stacks,
            if report.omitted_stacks == 1 { "" } else { "s" },
            human_bytes(report.omitted_outstanding_bytes as f64)
        );
    }
}

/// A Go program's goroutines per creation site: leaking sites with their stack, the rest a
/// line each.
fn render_goroutines(out: &mut String, report: &Report, painter: &Painter) {
    let Some(goroutines) = &report.goroutines else {
        return;
    };
    let _ = writeln!(
        out,
        "\n{}",
        painter.paint(
            BOLD,
            &format!(
                "GOROUTINES: {} alive ({} started, {} ended while traced), by the go statement that started them",
                goroutines.alive, goroutines.created, goroutines.exited
            )
        )
    );
    for (index, site) in goroutines.sites.iter().enumerate() {
        let place = match (&site.site.function, &site.site.file, site.site.line) {
            (Some(function), Some(file), Some(line)) => format!("{function} ({file}:{line})"),
            _ => frame_line(&site.site),
        };
        let _ = writeln!(
            out,
            "#{:<3} {:<9} {:>6} alive, started at {place}",
            index + 1,
            painter.verdict(site.verdict),
            site.alive,
        );
        if site.verdict != Verdict::Leaking {
            continue;
        }
        let _ = writeln!(
            out,
            "    growth {:+.1} goroutines/s, confidence {:.2}; {} alive at the start, {} started and {} ended since",
            site.growth_per_s, site.confidence, site.alive_at_start, site.created, site.exited
        );
        for frame in site.stack.iter().skip(1) {
            let _ = writeln!(out, "      called from {}", frame_line(frame));
        }
    }
    if goroutines.omitted_sites > 0 {
        let _ = writeln!(
            out,
            "… {} more creation site{} with {} goroutines alive (raise --top to see them)",
            goroutines.omitted_sites,
            if goroutines.omitted_sites == 1 {
                ""
            } else {
                "s"
            },
            goroutines.omitted_alive
        );
    }
}

/// The --scope functions, and the suspects for the growth.
fn render_scopes(out: &mut String, report: &Report, painter: &Painter) {
    if !report.suspects.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            painter.paint(BOLD, "SUSPECTS: scope calls that go with the growth")
        );
        for suspect in &report.suspects {
            let label = suspect
                .label
                .as_ref()
                .map(|label| format!(" [{label}]"))
                .unwrap_or_default();
            let what = match &suspect.stack_function {
                Some(function) => format!("leaking stack at {function}"),
                None => "the process's memory".to_string(),
            };
            let _ = writeln!(
                out,
                "{}{label}: {:.0}% of {what}",
                painter.paint(RED, &suspect.function),
                suspect.share * 100.0
            );
            for reason in &suspect.reasons {
                let _ = writeln!(out, "    - {reason}");
            }
        }
    }
    if report.scopes.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{}",
        painter.paint(BOLD, "SCOPES: what each call keeps")
    );
    for scope in &report.scopes {
        let argument = scope
            .label_argument
            .as_ref()
            .map(|argument| format!(" (by {argument})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}{argument}: {}",
            scope.function,
            scope_line(&scope.figures)
        );
        // Where the name is not one symbol of that name: what was probed for it.
        let plain = scope.probed.len() == 1
            && scope.probed[0].starts_with(&format!("{} in ", scope.function));
        if !scope.probed.is_empty() && !plain {
            let _ = writeln!(out, "    probed: {}", scope.probed.join(", "));
        }
        let keeps = |out: &mut String, indent: &str, stack: &ScopeStackReport| {
            let _ = writeln!(
                out,
                "{indent}keeps {} from {}",
                human_bytes(stack.retained_bytes as f64),
                stack.frames.join(" ← ")
            );
        };
        for stack in &scope.figures.top_stacks {
            keeps(out, "    ", stack);
        }
        for label in &scope.labels {
            let _ = writeln!(out, "  [{}] {}", label.label, scope_line(&label.figures));
            if let Some(stack) = label.figures.top_stacks.first() {
                keeps(out, "      ", stack);
            }
        }
    }
}

/// "120 calls, 4.00 KiB allocated per call, 1.00 KiB held at return, 1.00 KiB 5s later;
/// holds 120.00 KiB (+1.00 KiB/s since 3.0s)".
fn scope_line(figures: &ScopeFigures) -> String {
    let later = figures
        .retained_later_bytes_per_call
        .map(|later| {
            format!(
                ", {} {:.0}s later",
                human_bytes(later),
                figures.retained_later_after_s
            )
        })
        .unwrap_or_default();
    let growth = if figures.retained_growth_bytes_per_s > 0.0 {
        format!(
            " ({}{})",
            rate(figures.retained_growth_bytes_per_s),
            since(figures.retained_growth_onset)
        )
    } else {
        String::new()
    };
    format!(
        "{}, {} allocated per call, {} held at return{later}; holds {}{growth}",
        plural(figures.calls, "call"),
        human_bytes(figures.allocated_bytes_per_call),
        human_bytes(figures.retained_bytes_per_call),
        human_bytes(figures.retained_bytes as f64),
    )
}

/// "reachability: 200 B lost (1 block), 300 B indirectly lost (1 block)": the classes that
/// hold something, worst first.
fn reachability_line(reachability: &Reachability) -> String {
    let parts: Vec<String> = reachability
        .classes()
        .iter()
        .filter(|(_, _, totals)| totals.blocks > 0)
        .map(|(_, name, totals)| {
            format!(
                "{} {name} ({})",
                human_bytes(totals.bytes as f64),
                plural(totals.blocks, "block")
            )
        })
        .collect();
    if parts.is_empty() {
        "reachability: no live blocks".to_string()
    } else {
        format!("reachability: {}", parts.join(", "))
    }
}

/// "process: private 8.00 MiB → 12.00 MiB, rising +400.00 KiB/s since 3.0s; RSS … (shared
/// and file-backed …); traced heap …": the trend is judged on private memory (resident
/// anonymous plus swap), shared memory and file pages are shown apart.
fn process_line(process: &ProcessReport) -> String {
    let (Some(first), Some(last)) = (process.samples.first(), process.samples.last()) else {
        return "process: memory not readable".to_string();
    };
    let trend = if process.rss_rising {
        format!(
            "rising {}{}",
            rate(process.rss_growth_bytes_per_s),
            since(process.rss_growth_onset)
        )
    } else {
        "no steady rise".to_string()
    };
    let private = |sample: &crate::model::ProcessSample| {
        sample.anon_bytes.saturating_add(sample.swap_bytes) as f64
    };
    format!(
        "process: private (anonymous + swap) {} → {}, {trend}; RSS {} → {} ({} shared and file-backed); traced heap {} ({})",
        human_bytes(private(first)),
        human_bytes(private(last)),
        human_bytes(first.rss_bytes as f64),
        human_bytes(last.rss_bytes as f64),
        human_bytes(last.rss_bytes.saturating_sub(last.anon_bytes) as f64),
        human_bytes(last.heap_bytes as f64),
        rate(process.heap_growth_bytes_per_s),
    )
}

/// Listed apart from the verdicts: the C runtime's own memory, or accepted by a suppression.
fn excused(stack: &StackReport) -> bool {
    stack.held_by_c_runtime.is_some() || stack.suppressed_by.is_some()
}

/// One line for a stack listed briefly: rank, `label` (its verdict), bytes, allocations,
/// and its first frame after `note` (what of the C runtime's it is).
fn render_brief(
    out: &mut String,
    rank: usize,
    label: Option<&str>,
    stack: &StackReport,
    note: Option<&str>,
) {
    let site = stack
        .frames
        .first()
        .map_or_else(|| "[stack not recorded]".to_string(), frame_line);
    let _ = writeln!(
        out,
        "#{rank:<3} {}{:>10} in {:<18} {}{site}",
        label.map_or_else(String::new, |label| format!("{label} ")),
        human_bytes(stack.outstanding_bytes as f64),
        plural(stack.outstanding_allocs, "allocation"),
        note.map_or_else(String::new, |note| format!("{note}: ")),
    );
}

fn render_detailed(out: &mut String, rank: usize, stack: &StackReport, painter: &Painter) {
    let _ = writeln!(
        out,
        "#{rank} {} {} in {} [{}]",
        painter.verdict(stack.verdict),
        human_bytes(stack.outstanding_bytes as f64),
        plural(stack.outstanding_allocs, "allocation"),
        stack.origin.as_str(),
    );
    let since = since(stack.growth_onset);
    let oldest = stack
        .oldest_age_s
        .map(|age| format!(", oldest {age:.1}s"))
        .unwrap_or_default();
    // Too few samples for a trend (a short run): say so rather than print a zero rate.
    let growth = if stack.series.len() < 4 {
        "too short a history for a trend".to_string()
    } else {
        format!(
            "growth {}{since} (r² {:.2})",
            rate(stack.growth_bytes_per_s),
            stack.r_squared
        )
    };
    let _ = writeln!(
        out,
        "    {growth}{oldest}, {:.0}% of {} still live, confidence {:.2}",
        stack.survival_fraction * 100.0,
        plural(stack.total_allocs, "allocation"),
        stack.confidence,
    );
    if !stack.why.is_empty() {
        let _ = writeln!(out, "    why: {}", stack.why);
    }
    if let Some(at_gc) = &stack.at_last_gc {
        let _ = writeln!(
            out,
            "    at the last GC: {} in {} (Go's heap profile, as pprof -inuse_space gives it)",
            human_bytes(at_gc.bytes as f64),
            plural(at_gc.objects, "object"),
        );
    }
    if let Some(reachability) = &stack.reachability {
        let _ = writeln!(out, "    {}", reachability_line(reachability));
    }
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
        insta::assert_snapshot!(render(
            &crate::export::report::fixtures::sample_report(),
            false
        ));
    }

    #[test]
    fn the_c_runtimes_memory_and_reachable_stacks_have_their_sections() {
        let mut report = crate::export::report::fixtures::sample_report();
        report.stacks[0].verdict = Verdict::Reachable;
        report.stacks[1].verdict = Verdict::Stable;
        report.stacks[1].held_by_c_runtime = Some("thread stacks".into());
        let text = render(&report, false);
        let reachable = text
            .find("STILL REACHABLE: never freed, but still pointed to")
            .expect("a reachable section");
        let runtime = text
            .find("HELD BY THE C RUNTIME: its own caches")
            .expect("a C runtime section");
        assert!(reachable < runtime, "{text}");
        let line = text[runtime..].lines().nth(1).expect("a line");
        assert!(line.starts_with('#'), "{line}");
        assert!(
            line.contains(" in ") && line.contains("thread stacks: "),
            "{line}"
        );
        // Listed once, in its own section.
        assert_eq!(text.matches("thread stacks").count(), 1, "{text}");
    }

    #[test]
    fn each_forked_child_follows_with_its_own_header() {
        let mut report = crate::export::report::fixtures::sample_report();
        let mut ended = crate::export::report::fixtures::sample_report();
        ended.target.pid = 4243;
        ended.forked_by = Some(report.target.pid);
        let mut running = ended.clone();
        running.target.pid = 4244;
        running.exited = None;
        report.children = vec![ended, running];
        let text = render(&report, false);
        let parent = report.target.pid;
        let headers: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("leaktrace: pid "))
            .collect();
        assert_eq!(headers.len(), 3, "{text}");
        assert!(!headers[0].contains("forked"), "{}", headers[0]);
        assert!(
            headers[1].starts_with("leaktrace: pid 4243 ("),
            "{}",
            headers[1]
        );
        assert!(
            headers[1].contains(&format!(", a child forked by pid {parent})")),
            "{}",
            headers[1]
        );
        let last = &text[text.find("leaktrace: pid 4244").expect("the running child")..];
        assert!(
            last.contains("still running when the command ended"),
            "{last}"
        );
    }

    #[test]
    fn goroutine_sites_are_listed_leaking_first_with_their_stack() {
        let text = render(&crate::export::report::fixtures::go_report(), false);
        let start = text.find("GOROUTINES: 212 alive").expect("section");
        let section = &text[start..];
        assert!(
            section.contains(
                "#1   leaking      200 alive, started at main.handleSubscribe (server.go:23)"
            ),
            "{section}"
        );
        assert!(section.contains("growth +19.5 goroutines/s"), "{section}");
        assert!(
            section.contains("      called from main.serve (server.go:51) in /srv/server"),
            "{section}"
        );
        assert!(
            section.contains(
                "#2   stable        12 alive, started at main.startWorkers (server.go:80)"
            ),
            "{section}"
        );
    }

    #[test]
    fn scopes_and_suspects_are_listed() {
        let text = render(&crate::export::report::fixtures::scoped_report(), false);
        let suspects = text
            .split("SUSPECTS: scope calls that go with the growth\n")
            .nth(1)
            .expect("a suspects section");
        assert!(
            suspects
                .starts_with("handle_request [/upload]: 100% of leaking stack at leak_slowly\n"),
            "{text}"
        );
        assert!(suspects.contains("    - its calls hold 100% of this stack's live memory"));
        let scopes = text
            .split("SCOPES: what each call keeps\n")
            .nth(1)
            .expect("a scopes section");
        let lines: Vec<&str> = scopes.lines().collect();
        assert_eq!(
            lines[0],
            "handle_request (by arg0=str): 420 calls, 768 B allocated per call, \
             24 B held at return, 24 B 5s later; holds 10.00 KiB (+1.00 KiB/s since 0.5s)"
        );
        assert_eq!(
            lines[1],
            "    keeps 10.00 KiB from leak_slowly ← handle_request ← main"
        );
        assert!(lines[2].starts_with("  [/upload] 20 calls"), "{scopes}");
        assert!(lines[4].starts_with("  [/get] 400 calls"), "{scopes}");
        assert!(lines[4].ends_with("holds 0 B"), "{scopes}");
    }
}
