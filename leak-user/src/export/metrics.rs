//! The metrics leaktrace exports, as plain data: every instrument (name, unit, kind) and the
//! points one report gives them. The OpenTelemetry exporter (`otel`) and the Prometheus
//! endpoint (`prometheus`) both publish these points, so the two always agree. Pure: no I/O.
//!
//! Cardinality is bounded: only the first `max_stacks` stacks of a report (leaking first) get
//! their own series; the rest are summed under `leaktrace.stack.id="other"`.
use crate::model::{Reachability, Report, StackReport, Verdict, stack_id};

/// Whether a value only goes up (a total) or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// One exported metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instrument {
    /// OpenTelemetry name (Prometheus: dots become underscores, plus unit and `_total`).
    pub name: &'static str,
    /// UCUM unit, as OpenTelemetry wants it.
    pub unit: &'static str,
    pub kind: Kind,
    pub description: &'static str,
}

const fn gauge(name: &'static str, unit: &'static str, description: &'static str) -> Instrument {
    Instrument {
        name,
        unit,
        kind: Kind::Gauge,
        description,
    }
}

const fn counter(name: &'static str, unit: &'static str, description: &'static str) -> Instrument {
    Instrument {
        name,
        unit,
        kind: Kind::Counter,
        description,
    }
}

pub const PROCESS_MEMORY_USAGE: Instrument = gauge(
    "process.memory.usage",
    "By",
    "Resident memory of the traced process (VmRSS).",
);
pub const PROCESS_MEMORY_VIRTUAL: Instrument = gauge(
    "process.memory.virtual",
    "By",
    "Virtual memory of the traced process (VmSize).",
);
pub const PROCESS_MEMORY_LIMIT: Instrument = gauge(
    "leaktrace.process.memory.limit",
    "By",
    "Memory limit of the traced process's cgroup (memory.max), when it has one.",
);
pub const PROCESS_MEMORY_GROWTH: Instrument = gauge(
    "leaktrace.process.memory.growth_rate",
    "By/s",
    "Robust slope of the baseline of the resident memory.",
);
pub const HEAP_OUTSTANDING: Instrument = gauge(
    "leaktrace.heap.outstanding",
    "By",
    "Bytes the traced malloc-family calls hold (allocated while traced, not freed).",
);
pub const HEAP_GROWTH: Instrument = gauge(
    "leaktrace.heap.growth_rate",
    "By/s",
    "Robust slope of the baseline of the traced heap.",
);
pub const STACK_OUTSTANDING: Instrument = gauge(
    "leaktrace.stack.outstanding",
    "By",
    "Bytes a call stack allocated and has not freed.",
);
pub const STACK_OUTSTANDING_ALLOCATIONS: Instrument = gauge(
    "leaktrace.stack.outstanding_allocations",
    "{allocation}",
    "Allocations a call stack made and has not freed.",
);
pub const STACK_ALLOCATIONS: Instrument = counter(
    "leaktrace.stack.allocations",
    "{allocation}",
    "Allocations a call stack made while traced.",
);
pub const STACK_FREES: Instrument = counter(
    "leaktrace.stack.frees",
    "{free}",
    "Of a call stack's allocations, how many were freed.",
);
pub const STACK_GROWTH: Instrument = gauge(
    "leaktrace.stack.growth_rate",
    "By/s",
    "Robust slope of the baseline of a call stack's outstanding bytes.",
);
pub const STACK_LEAKING: Instrument = gauge(
    "leaktrace.stack.leaking",
    "1",
    "1 when the call stack's verdict is leaking, else 0.",
);
pub const STACK_SUSPECT: Instrument = gauge(
    "leaktrace.stack.suspect",
    "1",
    "1 when the call stack rises as a leak does but that is not confirmed yet (it is not \
     reported as leaking until it is), else 0.",
);
pub const STACK_REACHABILITY: Instrument = gauge(
    "leaktrace.stack.reachability",
    "By",
    "Bytes of a call stack's live blocks by what still points to them (leaktrace.reachability.class: lost, indirectly_lost, interior, reachable), as of the last reachability scan.",
);
pub const STACK_REACHABILITY_BLOCKS: Instrument = gauge(
    "leaktrace.stack.reachability.blocks",
    "{block}",
    "A call stack's live blocks by what still points to them, as of the last reachability scan.",
);
pub const REACHABILITY_PAUSE: Instrument = gauge(
    "leaktrace.reachability.pause",
    "s",
    "How long the target was stopped for the last reachability scan.",
);
pub const SCOPE_CALLS: Instrument = counter(
    "leaktrace.scope.calls",
    "{call}",
    "Calls of a --scope function (per label, when its calls are labelled).",
);
pub const SCOPE_ALLOCATED_PER_CALL: Instrument = gauge(
    "leaktrace.scope.allocated_per_call",
    "By",
    "Bytes allocated inside a call of a --scope function, on average.",
);
pub const SCOPE_RETAINED_PER_CALL: Instrument = gauge(
    "leaktrace.scope.retained_per_call",
    "By",
    "Bytes a call of a --scope function still held when it returned, on average.",
);
pub const SCOPE_RETAINED: Instrument = gauge(
    "leaktrace.scope.retained",
    "By",
    "Bytes allocated inside calls of a --scope function and not freed.",
);
pub const GO_GOROUTINE_COUNT: Instrument = gauge(
    "go.goroutine.count",
    "{goroutine}",
    "Goroutines alive in the traced Go program.",
);
pub const GOROUTINE_SITE_ALIVE: Instrument = gauge(
    "leaktrace.goroutine.site.count",
    "{goroutine}",
    "Goroutines alive that one go statement started.",
);
pub const GOROUTINE_SITE_GROWTH: Instrument = gauge(
    "leaktrace.goroutine.site.growth_rate",
    "{goroutine}/s",
    "Robust slope of the baseline of a go statement's goroutines alive.",
);
pub const GOROUTINE_SITE_LEAKING: Instrument = gauge(
    "leaktrace.goroutine.site.leaking",
    "1",
    "1 when a go statement's goroutines keep accumulating, else 0.",
);
pub const EVENTS_DROPPED: Instrument = counter(
    "leaktrace.events.dropped",
    "{event}",
    "Allocator events leaktrace lost, by reason.",
);
pub const PROBES_ATTACHED: Instrument = gauge(
    "leaktrace.probes.attached",
    "{probe}",
    "Probes leaktrace has in place.",
);
pub const PROBES_SINGLE_STEPPED: Instrument = gauge(
    "leaktrace.probes.single_stepped",
    "{probe}",
    "Allocator probes on an instruction the kernel must single-step (a second trap each call).",
);
pub const OVERHEAD_CPU_SHARE: Instrument = gauge(
    "leaktrace.overhead.cpu_share",
    "%",
    "Share of the target's CPU time spent in leaktrace's probe traps over the last second measured.",
);
pub const OVERHEAD_PROBES_OUT: Instrument = gauge(
    "leaktrace.overhead.allocation_probes_out",
    "1",
    "Part of the trace the allocation probes were out to keep --max-overhead (0 to 1).",
);
pub const PROGRAM_VERIFIED_INSTRUCTIONS: Instrument = gauge(
    "leaktrace.program.verified_instructions",
    "{instruction}",
    "Instructions the kernel's verifier processed to load each of leaktrace's programs (its limit is 1,000,000).",
);
pub const PROGRAM_LOAD_FAILURES: Instrument = counter(
    "leaktrace.program.load_failures",
    "{program}",
    "Kernel programs the kernel refused to load (watch: gear 1 then reads /proc only).",
);
pub const SYMBOLIZATION_FAILURES: Instrument = counter(
    "leaktrace.symbolization.failures",
    "{failure}",
    "Addresses leaktrace could not symbolize.",
);
pub const EXPORT_FAILURES: Instrument = counter(
    "leaktrace.export.failures",
    "{export}",
    "OTLP exports that failed after retries (their data is lost).",
);

/// The report event that counts programs the kernel refused (see PROGRAM_LOAD_FAILURES).
pub const PROGRAM_LOAD_FAILURES_EVENT: &str = "program_load_failures";

/// Every instrument, in the order they are published.
pub const INSTRUMENTS: [Instrument; 33] = [
    PROCESS_MEMORY_USAGE,
    PROCESS_MEMORY_VIRTUAL,
    PROCESS_MEMORY_LIMIT,
    PROCESS_MEMORY_GROWTH,
    HEAP_OUTSTANDING,
    HEAP_GROWTH,
    STACK_OUTSTANDING,
    STACK_OUTSTANDING_ALLOCATIONS,
    STACK_ALLOCATIONS,
    STACK_FREES,
    STACK_GROWTH,
    STACK_LEAKING,
    STACK_SUSPECT,
    STACK_REACHABILITY,
    STACK_REACHABILITY_BLOCKS,
    REACHABILITY_PAUSE,
    SCOPE_CALLS,
    SCOPE_ALLOCATED_PER_CALL,
    SCOPE_RETAINED_PER_CALL,
    SCOPE_RETAINED,
    GO_GOROUTINE_COUNT,
    GOROUTINE_SITE_ALIVE,
    GOROUTINE_SITE_GROWTH,
    GOROUTINE_SITE_LEAKING,
    EVENTS_DROPPED,
    PROBES_ATTACHED,
    PROBES_SINGLE_STEPPED,
    OVERHEAD_CPU_SHARE,
    OVERHEAD_PROBES_OUT,
    PROGRAM_VERIFIED_INSTRUCTIONS,
    PROGRAM_LOAD_FAILURES,
    SYMBOLIZATION_FAILURES,
    EXPORT_FAILURES,
];

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
}

/// One value of one instrument with its attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub instrument: Instrument,
    pub attributes: Vec<(&'static str, Value)>,
    pub value: f64,
}

/// The id shown for the stacks summed together beyond `max_stacks`.
pub const OTHER_STACKS: &str = "other";

/// The attributes that name a stack: its id, verdict and origin, and its top frame's
/// function, file and line (semantic conventions `code.*`).
pub fn stack_attributes(stack: &StackReport) -> Vec<(&'static str, Value)> {
    let mut attributes = vec![
        ("leaktrace.stack.id", Value::Text(stack_id(stack))),
        (
            "leaktrace.verdict",
            Value::Text(stack.verdict.as_str().into()),
        ),
        (
            "leaktrace.origin",
            Value::Text(stack.origin.as_str().into()),
        ),
    ];
    if let Some(top) = stack.frames.first() {
        attributes.push((
            "code.function.name",
            Value::Text(top.function.clone().unwrap_or_else(|| top.identity())),
        ));
        if let Some(file) = &top.file {
            attributes.push(("code.file.path", Value::Text(file.clone())));
        }
        if let Some(line) = top.line {
            attributes.push(("code.line.number", Value::Int(i64::from(line))));
        }
    }
    attributes
}

/// The points of one report. `probes_attached` and `export_failures` come from the session.
pub fn points(
    report: &Report,
    max_stacks: usize,
    probes_attached: u64,
    export_failures: u64,
) -> Vec<Point> {
    let mut points = Vec::new();
    let mut push = |instrument: Instrument, attributes: Vec<(&'static str, Value)>, value: f64| {
        points.push(Point {
            instrument,
            attributes,
            value,
        })
    };
    process_points(report, &mut push);
    stack_points(report, max_stacks, &mut push);
    if let Some(scan) = &report.reachability_scan {
        push(REACHABILITY_PAUSE, Vec::new(), scan.paused_ms / 1e3);
    }
    scope_points(report, &mut push);
    goroutine_points(report, max_stacks, &mut push);
    agent_points(report, probes_attached, export_failures, &mut push);
    points
}

/// The process's memory, as the last sample saw it.
fn process_points(
    report: &Report,
    push: &mut impl FnMut(Instrument, Vec<(&'static str, Value)>, f64),
) {
    if let Some(process) = &report.process
        && let Some(last) = process.samples.last()
    {
        push(PROCESS_MEMORY_USAGE, Vec::new(), last.rss_bytes as f64);
        push(
            PROCESS_MEMORY_VIRTUAL,
            Vec::new(),
            last.virtual_bytes as f64,
        );
        if let Some(limit) = process.memory_limit_bytes {
            push(PROCESS_MEMORY_LIMIT, Vec::new(), limit as f64);
        }
        push(
            PROCESS_MEMORY_GROWTH,
            Vec::new(),
            process.rss_growth_bytes_per_s,
        );
        push(HEAP_OUTSTANDING, Vec::new(), last.heap_bytes as f64);
        push(HEAP_GROWTH, Vec::new(), process.heap_growth_bytes_per_s);
    }
}

/// The first `max_stacks` stacks one by one, the rest summed as "other".
fn stack_points(
    report: &Report,
    max_stacks: usize,
    push: &mut impl FnMut(Instrument, Vec<(&'static str, Value)>, f64),
) {
    let (own, rest) = report.stacks.split_at(report.stacks.len().min(max_stacks));
    for stack in own {
        let attributes = stack_attributes(stack);
        push(
            STACK_OUTSTANDING,
            attributes.clone(),
            stack.outstanding_bytes as f64,
        );
        push(
            STACK_OUTSTANDING_ALLOCATIONS,
            attributes.clone(),
            stack.outstanding_allocs as f64,
        );
        push(
            STACK_ALLOCATIONS,
            attributes.clone(),
            stack.total_allocs as f64,
        );
        push(STACK_FREES, attributes.clone(), stack.total_frees as f64);
        push(STACK_GROWTH, attributes.clone(), stack.growth_bytes_per_s);
        let leaking = if stack.verdict == Verdict::Leaking {
            1.0
        } else {
            0.0
        };
        push(STACK_LEAKING, attributes.clone(), leaking);
        let suspect = f64::from(u8::from(stack.verdict == Verdict::Suspect));
        push(STACK_SUSPECT, attributes.clone(), suspect);
        if let Some(reachability) = &stack.reachability {
            push_reachability(push, &attributes, reachability);
        }
    }
    if !rest.is_empty() || report.omitted_stacks > 0 {
        let other = || vec![("leaktrace.stack.id", Value::Text(OTHER_STACKS.into()))];
        let sum = |field: fn(&StackReport) -> u64| rest.iter().map(field).sum::<u64>() as f64;
        push(
            STACK_OUTSTANDING,
            other(),
            sum(|s| s.outstanding_bytes) + report.omitted_outstanding_bytes as f64,
        );
        push(
            STACK_OUTSTANDING_ALLOCATIONS,
            other(),
            sum(|s| s.outstanding_allocs),
        );
        push(STACK_ALLOCATIONS, other(), sum(|s| s.total_allocs));
        push(STACK_FREES, other(), sum(|s| s.total_frees));
        if report.reachability_scan.is_some() {
            let mut reachability = Reachability::default();
            for stack in rest {
                reachability.add(&stack.reachability.unwrap_or_default());
            }
            push_reachability(push, &other(), &reachability);
        }
    }
}

/// Each --scope function and each of its labels.
fn scope_points(
    report: &Report,
    push: &mut impl FnMut(Instrument, Vec<(&'static str, Value)>, f64),
) {
    for scope in &report.scopes {
        let mut groups = vec![(None, &scope.figures)];
        groups.extend(
            scope
                .labels
                .iter()
                .map(|label| (Some(&label.label), &label.figures)),
        );
        for (label, figures) in groups {
            let mut attributes = vec![("code.function.name", Value::Text(scope.function.clone()))];
            // The function's own series has no label; each label's has it.
            if let Some(label) = label {
                attributes.push(("leaktrace.scope.label", Value::Text(label.clone())));
            }
            push(SCOPE_CALLS, attributes.clone(), figures.calls as f64);
            push(
                SCOPE_ALLOCATED_PER_CALL,
                attributes.clone(),
                figures.allocated_bytes_per_call,
            );
            push(
                SCOPE_RETAINED_PER_CALL,
                attributes.clone(),
                figures.retained_bytes_per_call,
            );
            push(SCOPE_RETAINED, attributes, figures.retained_bytes as f64);
        }
    }
}

/// Goroutines, alive in all and per creation site.
fn goroutine_points(
    report: &Report,
    max_stacks: usize,
    push: &mut impl FnMut(Instrument, Vec<(&'static str, Value)>, f64),
) {
    if let Some(goroutines) = &report.goroutines {
        push(GO_GOROUTINE_COUNT, Vec::new(), goroutines.alive as f64);
        let (own, rest) = goroutines
            .sites
            .split_at(goroutines.sites.len().min(max_stacks));
        for site in own {
            let frame = &site.site;
            let mut attributes = vec![
                (
                    "leaktrace.verdict",
                    Value::Text(site.verdict.as_str().into()),
                ),
                (
                    "code.function.name",
                    Value::Text(frame.function.clone().unwrap_or_else(|| frame.identity())),
                ),
            ];
            if let Some(file) = &frame.file {
                attributes.push(("code.file.path", Value::Text(file.clone())));
            }
            if let Some(line) = frame.line {
                attributes.push(("code.line.number", Value::Int(i64::from(line))));
            }
            push(GOROUTINE_SITE_ALIVE, attributes.clone(), site.alive as f64);
            push(GOROUTINE_SITE_GROWTH, attributes.clone(), site.growth_per_s);
            let leaking = f64::from(u8::from(site.verdict == Verdict::Leaking));
            push(GOROUTINE_SITE_LEAKING, attributes, leaking);
        }
        if !rest.is_empty() || goroutines.omitted_sites > 0 {
            let alive = rest.iter().map(|site| site.alive).sum::<u64>() + goroutines.omitted_alive;
            push(
                GOROUTINE_SITE_ALIVE,
                vec![("code.function.name", Value::Text(OTHER_STACKS.into()))],
                alive as f64,
            );
        }
    }
}

/// leaktrace's own health: dropped events, probes, overhead, programs, failures.
fn agent_points(
    report: &Report,
    probes_attached: u64,
    export_failures: u64,
    push: &mut impl FnMut(Instrument, Vec<(&'static str, Value)>, f64),
) {
    for (reason, count) in &report.dropped {
        push(
            EVENTS_DROPPED,
            vec![("reason", Value::Text(reason.clone()))],
            *count as f64,
        );
    }
    push(PROBES_ATTACHED, Vec::new(), probes_attached as f64);
    let single_stepped = report
        .allocators
        .iter()
        .map(|found| found.single_stepped().count())
        .sum::<usize>();
    push(PROBES_SINGLE_STEPPED, Vec::new(), single_stepped as f64);
    if let Some(cost) = &report.cost {
        push(OVERHEAD_CPU_SHARE, Vec::new(), cost.cpu_share_percent);
        push(
            OVERHEAD_PROBES_OUT,
            Vec::new(),
            cost.allocation_probes_out_fraction,
        );
    }
    for program in &report.programs {
        push(
            PROGRAM_VERIFIED_INSTRUCTIONS,
            vec![("leaktrace.program", Value::Text(program.program.clone()))],
            f64::from(program.verified_instructions),
        );
    }
    let load_failures = report
        .events
        .get(PROGRAM_LOAD_FAILURES_EVENT)
        .copied()
        .unwrap_or(0);
    push(PROGRAM_LOAD_FAILURES, Vec::new(), load_failures as f64);
    let failures = report
        .events
        .get("symbolization_failures")
        .copied()
        .unwrap_or(0);
    push(SYMBOLIZATION_FAILURES, Vec::new(), failures as f64);
    push(EXPORT_FAILURES, Vec::new(), export_failures as f64);
}

/// A stack's bytes and blocks of each reachability class: four series each, whatever the
/// classes hold, so a class that empties reads 0 rather than vanishing.
fn push_reachability(
    push: &mut impl FnMut(Instrument, Vec<(&'static str, Value)>, f64),
    attributes: &[(&'static str, Value)],
    reachability: &Reachability,
) {
    for (class, _, totals) in reachability.classes() {
        let mut attributes = attributes.to_vec();
        attributes.push(("leaktrace.reachability.class", Value::Text(class.into())));
        push(STACK_REACHABILITY, attributes.clone(), totals.bytes as f64);
        push(STACK_REACHABILITY_BLOCKS, attributes, totals.blocks as f64);
    }
}

/// Whether a stack is worth a span event: leaking, suspect or growing.
pub fn is_suspect(stack: &StackReport) -> bool {
    matches!(
        stack.verdict,
        Verdict::Leaking | Verdict::Suspect | Verdict::Growing
    )
}

/// A stack's frames as lines ("function (file:line) in module"), innermost first, for span
/// events.
pub fn frame_lines(stack: &StackReport) -> Vec<String> {
    stack
        .frames
        .iter()
        .map(|frame| {
            let place = match (&frame.file, frame.line) {
                (Some(file), Some(line)) => format!(" ({file}:{line})"),
                _ => String::new(),
            };
            let module = frame
                .module
                .as_deref()
                .map(|module| format!(" in {module}"))
                .unwrap_or_default();
            format!("{}{place}{module}", frame.identity())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::report::fixtures::{sample_report, scanned_report};

    fn values_of(points: &[Point], instrument: Instrument) -> Vec<&Point> {
        points
            .iter()
            .filter(|point| point.instrument == instrument)
            .collect()
    }

    #[test]
    fn every_instrument_has_a_unique_name_and_a_unit() {
        let mut names: Vec<&str> = INSTRUMENTS.iter().map(|i| i.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), INSTRUMENTS.len());
        assert!(INSTRUMENTS.iter().all(|i| !i.unit.is_empty()));
    }

    #[test]
    fn top_stacks_get_their_own_series_and_the_rest_is_other() {
        let report = sample_report();
        let points = points(&report, 2, 5, 1);
        let outstanding = values_of(&points, STACK_OUTSTANDING);
        assert_eq!(outstanding.len(), 3, "two stacks and other");
        assert_eq!(outstanding[0].value, 10240.0);
        let other = outstanding[2];
        assert_eq!(
            other.attributes,
            vec![("leaktrace.stack.id", Value::Text(OTHER_STACKS.into()))]
        );
        // Stacks 3.. of the report plus what the report itself left out.
        let rest: u64 = report.stacks[2..].iter().map(|s| s.outstanding_bytes).sum();
        assert_eq!(
            other.value,
            (rest + report.omitted_outstanding_bytes) as f64
        );

        let leak = &outstanding[0].attributes;
        assert!(leak.contains(&("code.function.name", Value::Text("leak_slowly".into()))));
        assert!(leak.contains(&("code.file.path", Value::Text("/src/demo.c".into()))));
        assert!(leak.contains(&("code.line.number", Value::Int(42))));
        assert!(leak.contains(&("leaktrace.verdict", Value::Text("leaking".into()))));
        let leaking = values_of(&points, STACK_LEAKING);
        assert_eq!(
            leaking.iter().map(|p| p.value).collect::<Vec<_>>(),
            vec![1.0, 0.0]
        );
        assert_eq!(values_of(&points, PROBES_ATTACHED)[0].value, 5.0);
        assert_eq!(values_of(&points, EXPORT_FAILURES)[0].value, 1.0);
        assert_eq!(
            values_of(&points, EVENTS_DROPPED)[0].attributes,
            vec![("reason", Value::Text("stack_id_collision".into()))]
        );
        let rss = values_of(&points, PROCESS_MEMORY_USAGE);
        assert_eq!(rss[0].value, ((4 << 20) + 14000) as f64);
    }

    #[test]
    fn reachability_is_a_series_per_class_and_the_pause_in_seconds() {
        let points = points(&scanned_report(), 2, 5, 0);
        let class_of = |point: &Point| {
            point
                .attributes
                .iter()
                .find(|(key, _)| *key == "leaktrace.reachability.class")
                .map(|(_, value)| value.clone())
        };
        let bytes = values_of(&points, STACK_REACHABILITY);
        // Two stacks of their own and "other", four classes each.
        assert_eq!(bytes.len(), 12);
        assert_eq!(class_of(bytes[0]), Some(Value::Text("lost".into())));
        assert_eq!(bytes[0].value, 9600.0);
        assert_eq!(bytes[1].value, 640.0);
        assert_eq!(bytes[7].value, 4096.0);
        let other: Vec<f64> = bytes[8..].iter().map(|point| point.value).collect();
        // Stacks 3..: interior 1024, reachable 1024 + 2000, lost 1536.
        assert_eq!(other, [1536.0, 0.0, 1024.0, 3024.0]);
        assert_eq!(
            bytes[8].attributes[0],
            ("leaktrace.stack.id", Value::Text(OTHER_STACKS.into()))
        );
        let blocks = values_of(&points, STACK_REACHABILITY_BLOCKS);
        assert_eq!(blocks[0].value, 150.0);
        assert_eq!(values_of(&points, REACHABILITY_PAUSE)[0].value, 0.0125);
        // Without a scan, no reachability series at all.
        let unscanned = super::points(&sample_report(), 2, 5, 0);
        assert!(values_of(&unscanned, STACK_REACHABILITY).is_empty());
        assert!(values_of(&unscanned, REACHABILITY_PAUSE).is_empty());
    }

    #[test]
    fn scopes_are_series_per_function_and_label() {
        let points = points(&crate::export::report::fixtures::scoped_report(), 2, 5, 0);
        let retained = values_of(&points, SCOPE_RETAINED);
        // The function, and its two labels.
        assert_eq!(retained.len(), 3);
        assert_eq!(
            retained[0].attributes,
            vec![("code.function.name", Value::Text("handle_request".into()))]
        );
        assert_eq!(retained[1].value, 10240.0);
        assert!(
            retained[1]
                .attributes
                .contains(&("leaktrace.scope.label", Value::Text("/upload".into())))
        );
        assert_eq!(values_of(&points, SCOPE_CALLS)[2].value, 400.0);
        assert!(values_of(&super::points(&sample_report(), 2, 5, 0), SCOPE_CALLS).is_empty());
    }

    #[test]
    fn stack_ids_are_stable_across_address_layouts() {
        let report = sample_report();
        let mut moved = report.stacks[0].clone();
        for frame in &mut moved.frames {
            frame.address += 0x1000_0000;
        }
        assert_eq!(stack_id(&report.stacks[0]), stack_id(&moved));
        assert_ne!(stack_id(&report.stacks[0]), stack_id(&report.stacks[1]));
        assert_eq!(stack_id(&report.stacks[0]).len(), 16);
    }

    #[test]
    fn suspects_and_their_frames() {
        let report = sample_report();
        let suspects: Vec<&StackReport> = report.stacks.iter().filter(|s| is_suspect(s)).collect();
        // Leaking, leaking, growing and suspect.
        assert_eq!(suspects.len(), 4);
        assert_eq!(
            frame_lines(suspects[0])[0],
            "leak_slowly (/src/demo.c:42) in /usr/bin/demo"
        );
        assert_eq!(suspects[3].verdict, Verdict::Suspect);
    }

    #[test]
    fn goroutines_are_a_total_and_series_per_creation_site() {
        let report = crate::export::report::fixtures::go_report();
        let points = points(&report, 1, 0, 0);
        let total = values_of(&points, GO_GOROUTINE_COUNT);
        assert_eq!(total.len(), 1);
        assert_eq!(total[0].value, 212.0);
        assert!(total[0].attributes.is_empty());
        let sites = values_of(&points, GOROUTINE_SITE_ALIVE);
        assert_eq!(sites.len(), 2, "one site of its own, the other under other");
        assert_eq!(sites[0].value, 200.0);
        assert!(sites[0].attributes.contains(&(
            "code.function.name",
            Value::Text("main.handleSubscribe".into())
        )));
        assert!(
            sites[0]
                .attributes
                .contains(&("code.line.number", Value::Int(23)))
        );
        assert_eq!(sites[1].value, 12.0);
        assert_eq!(
            sites[1].attributes,
            vec![("code.function.name", Value::Text(OTHER_STACKS.into()))]
        );
        let leaking = values_of(&points, GOROUTINE_SITE_LEAKING);
        assert_eq!(leaking.len(), 1);
        assert_eq!(leaking[0].value, 1.0);
    }
}
