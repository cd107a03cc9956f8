//! Reports people and programs read: text (terminal), JSON (documented schema in
//! docs/report.schema.json), folded stacks (flame graph tools), an SVG flame graph and a pprof
//! profile. Each format reads only the model.
pub mod diff;
pub mod folded;
pub mod json;
pub mod pprof;
pub mod svg;
pub mod text;

use crate::model::Report;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For terminals and logs.
    Text,
    /// The layout documented in docs/report.schema.json.
    Json,
    /// Folded stacks of outstanding bytes, for flamegraph.pl and inferno.
    Folded,
    /// Interactive flame graph of outstanding bytes, leaking stacks in red.
    Svg,
    /// Gzipped pprof profile (in use and allocated bytes and objects), for `go tool pprof` and
    /// Grafana Pyroscope.
    Pprof,
}

impl Format {
    /// The usual file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Text => "txt",
            Format::Json => "json",
            Format::Folded => "folded",
            Format::Svg => "svg",
            Format::Pprof => "pb.gz",
        }
    }
}

/// Renders a report in a format, as the bytes to write. `color` applies to text only.
pub fn render(report: &Report, format: Format, color: bool) -> Vec<u8> {
    match format {
        Format::Text => text::render(report, color).into_bytes(),
        Format::Json => json::render(report).into_bytes(),
        Format::Folded => folded::render(report).into_bytes(),
        Format::Svg => svg::render(report),
        Format::Pprof => pprof::render(report),
    }
}

/// Reports shared by the format tests, so every format is checked on the same stacks.
#[cfg(test)]
pub mod fixtures {
    use std::collections::BTreeMap;

    use crate::model::{
        AllocatorInfo, ClassTotals, Frame, GoroutineReport, GoroutineSample, GoroutineSiteReport,
        LabelReport, Origin, ProbeInfo, ProcessReport, ProcessSample, ProgramLoad, REPORT_VERSION,
        Reachability, ReachabilityScan, Report, RuntimeInfo, Sample, ScopeFigures, ScopeReport,
        ScopeStackReport, StackReport, Suspect, Target, Verdict,
    };

    const DEMO: &str = "/usr/bin/demo";
    const DEMO_BASE: u64 = 0x55d0_c2a0_0000;

    fn demo_frame(function: &str, line: u32, module_offset: u64) -> Frame {
        Frame {
            function: Some(function.into()),
            file: Some("/src/demo.c".into()),
            line: Some(line),
            module: Some(DEMO.into()),
            address: DEMO_BASE + module_offset,
            module_offset: Some(module_offset),
            inlined: false,
        }
    }

    fn stack(
        verdict: Verdict,
        origin: Origin,
        outstanding: (u64, u64),
        frames: Vec<Frame>,
    ) -> StackReport {
        let (outstanding_bytes, outstanding_allocs) = outstanding;
        StackReport {
            verdict,
            origin,
            outstanding_bytes,
            outstanding_allocs,
            total_allocs: outstanding_allocs + 40,
            total_frees: 40,
            total_bytes: outstanding_bytes + 40 * 64,
            oldest_age_s: (outstanding_allocs > 0).then_some(9.8),
            growth_bytes_per_s: match verdict {
                Verdict::Leaking | Verdict::Suspect => 1024.0,
                Verdict::Growing => 300.0,
                _ => 0.0,
            },
            confidence: 0.9,
            growth_onset: matches!(
                verdict,
                Verdict::Leaking | Verdict::Suspect | Verdict::Growing
            )
            .then_some(0.4),
            r_squared: if verdict == Verdict::Stable {
                0.0
            } else {
                0.98
            },
            survival_fraction: outstanding_allocs as f64 / (outstanding_allocs + 40) as f64,
            reachability: None,
            held_by_c_runtime: None,
            suppressed_by: None,
            frames,
            series: (0..4)
                .map(|i| Sample {
                    at_s: i as f64 * 3.0,
                    outstanding_bytes: outstanding_bytes * i / 3,
                    outstanding_allocs: outstanding_allocs * i / 3,
                    total_allocs: 0,
                })
                .collect(),
            why: match verdict {
                Verdict::Leaking => "the baseline rose steadily since 0.4s and kept rising at \
                                     every analysis since, and what was allocated when it \
                                     began is still held"
                    .into(),
                Verdict::Suspect => "rising since 0.4s, not confirmed: meanwhile the program \
                                     freed 96 blocks allocated before tracing began, and this \
                                     stack gained 64: it may be replacing them (a leak once it \
                                     gains more than that)"
                    .into(),
                Verdict::Growing => "rising since 0.4s, but its old allocations are freed: it \
                                     turns over (a queue or a cache that keeps growing)"
                    .into(),
                _ => String::new(),
            },
            at_last_gc: None,
        }
    }

    /// Seven stacks: leaking with a libc frame, stable with a C++ function inlined into its
    /// caller, stable with no recorded frames, leaking mmap through an unsymbolized library and
    /// an address in no module, transient holding nothing, growing, suspect; and a process
    /// series.
    pub fn sample_report() -> Report {
        let inlined_at = 0x2010;
        let libc_start = Frame {
            function: Some("__libc_start_call_main".into()),
            file: Some("../sysdeps/nptl/libc_start_call_main.h".into()),
            line: Some(58),
            module: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
            address: 0x7f3e_1c22_9d90,
            module_offset: Some(0x29d90),
            inlined: false,
        };
        let stacks = vec![
            StackReport {
                total_allocs: 160,
                total_frees: 0,
                total_bytes: 10240,
                ..stack(
                    Verdict::Leaking,
                    Origin::Heap,
                    (10240, 160),
                    vec![
                        demo_frame("leak_slowly", 42, 0x1234),
                        demo_frame("main", 88, 0x1400),
                        libc_start,
                    ],
                )
            },
            stack(
                Verdict::Stable,
                Origin::Heap,
                (4096, 1),
                vec![
                    Frame {
                        file: Some("/usr/include/c++/12/bits/stl_vector.h".into()),
                        inlined: true,
                        ..demo_frame("std::vector<Entry>::push_back(Entry&&)", 1287, inlined_at)
                    },
                    Frame {
                        file: Some("/src/cache.cpp".into()),
                        ..demo_frame(
                            "Cache<std::string, int>::insert(std::string const&)",
                            31,
                            inlined_at,
                        )
                    },
                    demo_frame("main", 90, 0x1410),
                ],
            ),
            stack(Verdict::Stable, Origin::Heap, (2048, 2), Vec::new()),
            stack(
                Verdict::Leaking,
                Origin::Mmap,
                (1536, 3),
                vec![
                    Frame {
                        module: Some("/opt/plugins/libplugin.so".into()),
                        address: 0x7f3e_1c60_4f2a,
                        module_offset: Some(0x4f2a),
                        ..Frame::default()
                    },
                    Frame {
                        address: 0x7ffd_1000,
                        ..Frame::default()
                    },
                    demo_frame("main", 95, 0x1420),
                ],
            ),
            stack(
                Verdict::Transient,
                Origin::Heap,
                (0, 0),
                vec![
                    demo_frame("parse_request", 60, 0x1300),
                    demo_frame("main", 97, 0x1430),
                ],
            ),
            stack(
                Verdict::Growing,
                Origin::Heap,
                (3000, 15),
                vec![
                    demo_frame("enqueue_job", 70, 0x1500),
                    demo_frame("main", 92, 0x1418),
                ],
            ),
            stack(
                Verdict::Suspect,
                Origin::Heap,
                (5120, 64),
                vec![
                    demo_frame("store_value", 80, 0x1600),
                    demo_frame("main", 94, 0x1428),
                ],
            ),
        ];
        Report {
            version: REPORT_VERSION,
            target: Target {
                pid: 42,
                exe: DEMO.into(),
                command_line: "demo --leak".into(),
                name: String::new(),
            },
            mode: "attach".into(),
            duration_s: 10.0,
            sample_rate: 1,
            unwind: "fp".into(),
            allocators: vec![AllocatorInfo {
                allocator: "glibc".into(),
                module: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                functions: vec!["malloc".into(), "free".into()],
                probes: vec![
                    ProbeInfo {
                        function: "malloc".into(),
                        offset: 0,
                        instruction: "push %r12".into(),
                        emulated: true,
                        covered_by: None,
                    },
                    ProbeInfo {
                        function: "free".into(),
                        offset: 3,
                        instruction: "je 0x98fb8".into(),
                        emulated: true,
                        covered_by: None,
                    },
                ],
            }],
            programs: vec![ProgramLoad {
                program: "alloc_return".into(),
                verified_instructions: 11087,
                load_ms: 8.1,
            }],
            cost: None,
            exited: None,
            dropped: BTreeMap::from([("stack_id_collision".to_string(), 0)]),
            events: BTreeMap::from([("allocations".to_string(), 160)]),
            omitted_stacks: 2,
            omitted_outstanding_bytes: 300,
            process: Some(ProcessReport {
                rss_growth_bytes_per_s: 1400.0,
                rss_rising: true,
                rss_growth_onset: Some(1.0),
                heap_growth_bytes_per_s: 1324.0,
                memory_limit_bytes: Some(256 << 20),
                samples: (0..3)
                    .map(|i| ProcessSample {
                        at_s: i as f64 * 5.0,
                        rss_bytes: (4 << 20) + i * 7000,
                        anon_bytes: (1 << 20) + i * 7000,
                        swap_bytes: 0,
                        virtual_bytes: (40 << 20) + i * 7000,
                        pss_bytes: Some((3 << 20) + i * 7000),
                        heap_bytes: 6000 + i * 6620,
                    })
                    .collect(),
            }),
            reachability_scan: None,
            leak_summary: None,
            stacks,
            scopes: Vec::new(),
            suspects: Vec::new(),
            runtimes: Vec::new(),
            goroutines: None,
            forked_by: None,
            children: Vec::new(),
        }
    }

    /// A Go program's report: one goroutine site leaking, one stable.
    pub fn go_report() -> Report {
        let frame = |function: &str, line: u32, address: u64| Frame {
            function: Some(function.into()),
            file: Some("server.go".into()),
            line: Some(line),
            module: Some("/srv/server".into()),
            address,
            module_offset: Some(address - 0x400000),
            inlined: false,
        };
        let mut report = sample_report();
        report.runtimes = vec![RuntimeInfo {
            runtime: "go".into(),
            version: Some("go1.19.8".into()),
            perf_map: None,
            hint: None,
            heap: None,
        }];
        report.goroutines = Some(GoroutineReport {
            alive: 212,
            created: 400,
            exited: 200,
            omitted_sites: 0,
            omitted_alive: 0,
            sites: vec![
                GoroutineSiteReport {
                    verdict: Verdict::Leaking,
                    confidence: 0.9,
                    site: frame("main.handleSubscribe", 23, 0x401000),
                    stack: vec![
                        frame("main.handleSubscribe", 23, 0x401000),
                        frame("main.serve", 51, 0x402000),
                    ],
                    alive: 200,
                    alive_at_start: 0,
                    created: 200,
                    exited: 0,
                    growth_per_s: 19.5,
                    series: vec![
                        GoroutineSample {
                            at_s: 0.0,
                            alive: 0,
                        },
                        GoroutineSample {
                            at_s: 10.0,
                            alive: 200,
                        },
                    ],
                },
                GoroutineSiteReport {
                    verdict: Verdict::Stable,
                    confidence: 0.8,
                    site: frame("main.startWorkers", 80, 0x403000),
                    stack: Vec::new(),
                    alive: 12,
                    alive_at_start: 12,
                    created: 200,
                    exited: 200,
                    growth_per_s: 0.0,
                    series: vec![GoroutineSample {
                        at_s: 0.0,
                        alive: 12,
                    }],
                },
            ],
        });
        report
    }

    /// The sample report after a reachability scan: the leaking heap stack is lost (some
    /// of it indirectly), the stable ones still reachable or only pointed into, the leaking
    /// mmap stack lost, and the growing stack reachable, with 1000 bytes allocated after the
    /// scan.
    pub fn scanned_report() -> Report {
        let classes = |lost: (u64, u64), indirect: (u64, u64), interior, reachable| {
            let totals = |(bytes, blocks)| ClassTotals { bytes, blocks };
            Reachability {
                lost: totals(lost),
                indirectly_lost: totals(indirect),
                interior: totals(interior),
                reachable: totals(reachable),
            }
        };
        let mut report = sample_report();
        let none = (0, 0);
        let scanned = [
            classes((9600, 150), (640, 10), none, none),
            classes(none, none, none, (4096, 1)),
            classes(none, none, (1024, 1), (1024, 1)),
            classes((1536, 3), none, none, none),
            classes(none, none, none, none),
            classes(none, none, none, (2000, 10)),
        ];
        for (stack, reachability) in report.stacks.iter_mut().zip(scanned) {
            stack.reachability = Some(reachability);
        }
        report.reachability_scan = Some(ReachabilityScan {
            paused_ms: 12.5,
            scanned_bytes: 8 << 20,
            blocks: 177,
            truncated: false,
        });
        report
    }

    /// The sample report traced with --scope handle_request:arg0=str: its /upload calls
    /// keep what the leaking stack holds, and are its suspect.
    pub fn scoped_report() -> Report {
        let mut report = sample_report();
        let leak = &report.stacks[0];
        let leak_id = crate::model::stack_id(leak);
        let figures = |calls, retained: u64, first| ScopeFigures {
            calls,
            allocated_bytes_per_call: 768.0,
            retained_bytes_per_call: retained as f64 / calls as f64,
            retained_later_bytes_per_call: Some(retained as f64 / calls as f64),
            retained_later_after_s: 5.0,
            retained_bytes: retained,
            retained_blocks: retained / 512,
            retained_growth_bytes_per_s: retained as f64 / 10.0,
            retained_growth_onset: (retained > 0).then_some(0.5),
            first_call_s: Some(first),
            top_stacks: if retained > 0 {
                vec![ScopeStackReport {
                    stack_id: leak_id.clone(),
                    retained_bytes: retained,
                    retained_blocks: retained / 512,
                    frames: vec!["leak_slowly".into(), "handle_request".into(), "main".into()],
                }]
            } else {
                Vec::new()
            },
        };
        let upload = figures(20, 10240, 0.4);
        let get = figures(400, 0, 0.1);
        let mut all = figures(420, 10240, 0.1);
        all.allocated_bytes_per_call = 768.0;
        report.scopes = vec![ScopeReport {
            probed: Vec::new(),
            function: "handle_request".into(),
            label_argument: Some("arg0=str".into()),
            figures: all,
            labels: vec![
                LabelReport {
                    label: "/upload".into(),
                    figures: upload,
                },
                LabelReport {
                    label: "/get".into(),
                    figures: get,
                },
            ],
        }];
        report.suspects = vec![Suspect {
            function: "handle_request".into(),
            label: Some("/upload".into()),
            stack_id: Some(leak_id),
            stack_function: Some("leak_slowly".into()),
            share: 1.0,
            reasons: vec![
                "its calls hold 100% of this stack's live memory (10.00 KiB)".into(),
                "first called at 0.4s: new since the growth began (0.4s)".into(),
            ],
        }];
        report
    }

    /// The same target with nothing allocated.
    pub fn empty_report() -> Report {
        Report {
            stacks: Vec::new(),
            process: None,
            reachability_scan: None,
            leak_summary: None,
            omitted_stacks: 0,
            omitted_outstanding_bytes: 0,
            ..sample_report()
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::units::human_bytes;

    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(human_bytes(640.0), "640 B");
        assert_eq!(human_bytes(1536.0), "1.50 KiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0), "3.00 MiB");
        assert_eq!(human_bytes(-2048.0), "-2.00 KiB");
    }
}
