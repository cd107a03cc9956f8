//! Gear 2: precise windows, opened when a target's baseline keeps rising (or on demand),
//! closed after --escalate-for with their reports written, and the exports of every target.
use super::*;

impl Watcher {
    pub(super) fn open_window(&mut self, pid: u32, reason: String) {
        let options = self.options.precise.clone();
        let cooldown = self.options.cooldown;
        let Some(watched) = self.targets.get_mut(&pid) else {
            return;
        };
        match Window::open(pid, options) {
            Ok(window) => {
                log_event(
                    "window_opened",
                    &[
                        ("pid", pid.to_string()),
                        ("exe", watched.target.exe.clone()),
                        ("reason", reason.clone()),
                        ("for", format!("{:?}", self.options.escalate_for)),
                    ],
                );
                watched.window = Some(OpenWindow {
                    window,
                    opened: Instant::now(),
                    opened_at: SystemTime::now(),
                    reason,
                    faults_at_open: watched
                        .gear1
                        .as_ref()
                        .map(|gear1| gear1.growth.counts())
                        .unwrap_or_default(),
                });
                self.summary.windows += 1;
            }
            Err(err) => {
                // Not retried before the cool-down: a process without a known allocator
                // would otherwise be retried every second.
                watched.cooldown_until = Some(Instant::now() + cooldown);
                log_event(
                    "window_failed",
                    &[
                        ("pid", pid.to_string()),
                        ("exe", watched.target.exe.clone()),
                        ("reason", err.to_string()),
                    ],
                );
            }
        }
    }

    /// Every sample interval: the open windows read their maps; those due are closed.
    pub(super) fn tick_windows(&mut self) {
        let escalate_for = self.options.escalate_for;
        let mut due = Vec::new();
        for (pid, watched) in &mut self.targets {
            let Some(open) = &mut watched.window else {
                continue;
            };
            if let Err(err) = open.window.tick() {
                log::warn!("pid {pid}: {err}");
            }
            if open.opened.elapsed() >= escalate_for || open.window.stopped() {
                due.push(*pid);
            }
        }
        for pid in due {
            let exited = !procfs::is_alive(pid);
            self.close_window(pid, exited);
        }
    }

    /// Ends a window: its report and gear 1's growth attribution go to the report folder,
    /// the exporters get the report, and the cool-down starts.
    pub(super) fn close_window(&mut self, pid: u32, exited: bool) {
        let cooldown = self.options.cooldown;
        let report_dir = self.options.report_dir.clone();
        let Some(watched) = self.targets.get_mut(&pid) else {
            return;
        };
        let Some(open) = watched.window.take() else {
            return;
        };
        watched.cooldown_until = Some(Instant::now() + cooldown);
        let stem = format!(
            "{}-{pid}-{}",
            sanitized(watched.target.executable_name()),
            file_stamp(open.opened_at)
        );
        let mut report = match open.window.close(exited) {
            Ok(report) => report,
            Err(err) => {
                log_event(
                    "window_failed",
                    &[("pid", pid.to_string()), ("reason", err.to_string())],
                );
                return;
            }
        };
        report
            .events
            .insert("watch_window".into(), self.summary.windows);
        let mut written = Vec::new();
        let mut failures = Vec::new();
        let mut write = |name: String, bytes: Vec<u8>| {
            let path = report_dir.join(name);
            match write_atomically(&path, &bytes) {
                Ok(()) => written.push(path.display().to_string()),
                Err(err) => failures.push(format!("{}: {err}", path.display())),
            }
        };
        write(
            format!("{stem}.json"),
            report::render(&report, Format::Json, false),
        );
        write(
            format!("{stem}.txt"),
            report::render(&report, Format::Text, false),
        );
        if let Some(gear1) = &mut watched.gear1 {
            gear1.refresh(pid);
            gear1.find_trampolines(pid);
            let since_start = gear1.growth.since(&FaultCounts::new());
            let in_window = gear1.growth.since(&open.faults_at_open);
            let growth_report = touched_report(
                &watched.target,
                watched.since.elapsed().as_secs_f64(),
                &since_start,
                gear1,
            );
            write(
                format!("{stem}.growth.txt"),
                growth_text(&growth_report, &in_window, gear1, &open.reason).into_bytes(),
            );
            write(
                format!("{stem}.growth.folded"),
                report::render(&growth_report, Format::Folded, false),
            );
            write(
                format!("{stem}.growth.svg"),
                report::render(&growth_report, Format::Svg, false),
            );
        }
        self.summary.reports_written += written.len() as u64;
        let leaking: Vec<String> = report
            .stacks
            .iter()
            .filter(|stack| stack.verdict == Verdict::Leaking)
            .take(3)
            .map(|stack| {
                stack
                    .frames
                    .first()
                    .map_or_else(|| crate::model::stack_id(stack), |frame| frame.identity())
            })
            .collect();
        log_event(
            "window_closed",
            &[
                ("pid", pid.to_string()),
                ("exe", watched.target.exe.clone()),
                ("leaking_stacks", report.count(Verdict::Leaking).to_string()),
                ("top", leaking.join(", ")),
                ("report", format!("{}/{stem}.txt", report_dir.display())),
                ("files", written.len().to_string()),
            ],
        );
        for failure in failures {
            log_event(
                "report_not_written",
                &[("pid", pid.to_string()), ("reason", failure)],
            );
        }
        watched.last_stacks = report.stacks.clone();
        publish(
            &watched.target,
            watched.telemetry.as_mut(),
            self.endpoint.as_ref(),
            &Publication {
                report: &report,
                export_top: self.options.export_top,
                probes_attached: 0,
                scope_calls: &[],
            },
        );
    }

    /// Every interval: each target's memory (and its last window's stacks) to the exporters.
    pub(super) fn export(&mut self) {
        let export_top = self.options.export_top;
        for watched in self.targets.values_mut() {
            if watched.telemetry.is_none() && self.endpoint.is_none() {
                continue;
            }
            let report = gear1_report(watched);
            publish(
                &watched.target,
                watched.telemetry.as_mut(),
                self.endpoint.as_ref(),
                &Publication {
                    report: &report,
                    export_top,
                    probes_attached: 0,
                    scope_calls: &[],
                },
            );
        }
    }
}
