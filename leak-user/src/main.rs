use std::{io::Write, path::Path, process::ExitCode, time::Duration};

use clap::Parser;
use leaktrace::{
    cli::{self, Cli, Command, Common, DiffFormat, WatchFlags},
    export::report::{self, Format},
    model::exit::Status,
    modes::session,
    probe::unwind_tables::Unwind,
};

fn status(status: Status) -> ExitCode {
    ExitCode::from(status.code())
}

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // LEAKTRACE_LOG_TIME=1 stamps each log line with the time (where start-up time goes).
    let stamps =
        std::env::var_os("LEAKTRACE_LOG_TIME").map(|_| env_logger::TimestampPrecision::Millis);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(cli.log_filter()))
        .format_timestamp(stamps)
        .init();
    if let Err(code) = check_before_start(&cli) {
        return code;
    }
    drop_privileges_at_start(&cli);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("leaktrace: could not start: {err}");
            return status(Status::Internal);
        }
    };
    match cli.command {
        Command::Attach {
            pid,
            duration,
            common,
        } => attach(&runtime, pid, duration, common),
        Command::Run {
            common,
            command,
            error_exitcode,
            trace_children,
        } => run(&runtime, common, &command, error_exitcode, trace_children),
        Command::Watch {
            watch: flags,
            common,
        } => watch(&runtime, flags, common),
        Command::Report {
            file,
            format,
            output,
        } => finish_offline(
            report::json::read(&file)
                .map(|saved| report::render(&saved, format, output.is_none() && stdout_is_tty())),
            output.as_deref(),
        ),
        Command::Programs { unwind, format } => programs(unwind, format),
        Command::Diff {
            old,
            new,
            format,
            top,
            output,
        } => diff(&old, &new, format, top, output.as_deref()),
    }
}

/// The command line, with the config file's settings before it (see cli::with_config_file).
fn parse_command_line() -> Result<Cli, ExitCode> {
    let args: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let args = match cli::with_config_file(args) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("leaktrace: {message}");
            return Err(status(Status::Usage));
        }
    };
    Ok(Cli::parse_from(args))
}

/// Flags that cannot work together, and binary output to a terminal: refused before start.
fn check_before_start(cli: &Cli) -> Result<(), ExitCode> {
    if let Command::Attach { common, .. }
    | Command::Run { common, .. }
    | Command::Watch { common, .. } = &cli.command
        && let Err(message) = common.check()
    {
        eprintln!("leaktrace: {message}");
        return Err(status(Status::Usage));
    }
    let binary_to_terminal = match &cli.command {
        Command::Attach { common, .. } | Command::Run { common, .. } => {
            common.format == Format::Pprof && common.output.is_none()
        }
        Command::Report { format, output, .. } => *format == Format::Pprof && output.is_none(),
        Command::Diff { .. } | Command::Watch { .. } | Command::Programs { .. } => false,
    };
    if binary_to_terminal && stdout_is_tty() {
        eprintln!("leaktrace: --format pprof is binary: write it to a file with -o FILE.pb.gz");
        return Err(status(Status::Usage));
    }
    Ok(())
}

/// Least privilege, while leaktrace is one thread: what each command keeps (see
/// probe/privileges.rs). `run` as another user keeps its sets until its command is started,
/// which inherits them.
fn drop_privileges_at_start(cli: &Cli) {
    let needs = match &cli.command {
        Command::Attach { common, .. } => Some(common.privilege_needs()),
        Command::Run { common, .. } if is_root() => Some(common.privilege_needs()),
        Command::Watch { watch, common } => Some(leaktrace::probe::privileges::Needs::new(
            [watch.report_dir.clone()],
            common.export.prometheus,
        )),
        _ => None,
    };
    if let Some(needs) = needs {
        leaktrace::probe::privileges::drop_to(needs.at_start(), "at start", &[]);
    }
}

/// `leaktrace attach`: its report is written by the session; the status says how it ended.
fn attach(
    runtime: &tokio::runtime::Runtime,
    pid: u32,
    duration: Option<Duration>,
    common: Common,
) -> ExitCode {
    match runtime.block_on(session::attach(
        pid,
        session::Options {
            reachability: common.reachability(false),
            max_overhead: common.max_overhead(Some(leaktrace::cli::DEFAULT_MAX_OVERHEAD)),
            ..common.options(duration)
        },
    )) {
        Ok(outcome) => {
            if outcome.report.exited.is_some() {
                eprintln!(
                    "leaktrace: process {pid} exited during tracing; the report shows what was seen until then"
                );
                status(Status::TargetExited)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("leaktrace: {err}");
            status(err.status())
        }
    }
}

/// `leaktrace run`: the command's status, or --error-exitcode's when it leaked.
fn run(
    runtime: &tokio::runtime::Runtime,
    common: Common,
    command: &[String],
    error_exitcode: Option<u8>,
    trace_children: bool,
) -> ExitCode {
    let options = session::Options {
        reachability: common.reachability(true),
        trace_children,
        ..common.options(None)
    };
    match runtime.block_on(session::run(command, options)) {
        Ok(outcome) => {
            // One line for the command, one for each forked child, as valgrind
            // ends each process with its own summary.
            let mut any_leak = false;
            for report in std::iter::once(&outcome.report).chain(&outcome.report.children) {
                let Some(summary) = &report.leak_summary else {
                    continue;
                };
                any_leak |= summary.any_leak();
                match report.forked_by {
                    Some(_) => {
                        eprintln!("leaktrace: child {}: {}", report.target.pid, summary.line())
                    }
                    None => eprintln!("leaktrace: {}", summary.line()),
                }
            }
            match error_exitcode {
                Some(code) if any_leak => ExitCode::from(code),
                _ => match outcome.exit {
                    Some(exit) => match (exit.code, exit.signal) {
                        (Some(code), _) => ExitCode::from(code as u8),
                        (_, Some(signal)) => ExitCode::from(128u8.wrapping_add(signal as u8)),
                        _ => status(Status::Internal),
                    },
                    None => ExitCode::SUCCESS,
                },
            }
        }
        Err(err) => {
            eprintln!("leaktrace: {err}");
            status(err.status())
        }
    }
}

/// `leaktrace watch`, until it is stopped.
fn watch(runtime: &tokio::runtime::Runtime, watch: WatchFlags, common: Common) -> ExitCode {
    let options = match watch.options(&common) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("leaktrace: {message}");
            return status(Status::Usage);
        }
    };
    match runtime.block_on(leaktrace::modes::watch::watch(options)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("leaktrace: {err}");
            status(err.status())
        }
    }
}

/// `leaktrace diff`: what grew between two saved reports.
fn diff(old: &Path, new: &Path, format: DiffFormat, top: usize, output: Option<&Path>) -> ExitCode {
    finish_offline(
        report::json::read(old).and_then(|old| {
            let new = report::json::read(new)?;
            let diff = report::diff::diff(&old, &new);
            Ok(match format {
                DiffFormat::Text => report::diff::render_text(&diff, top),
                DiffFormat::Json => report::diff::render_json(&diff),
            }
            .into_bytes())
        }),
        output,
    )
}

/// `leaktrace programs`: each kernel program's verification, in each way of walking stacks.
fn programs(unwind: Option<Unwind>, format: DiffFormat) -> ExitCode {
    use leaktrace::probe::attach::{VERIFIER_BUDGET, VERIFIER_LIMIT, verify_programs};
    let modes = match unwind {
        Some(Unwind::Auto) | None => vec![Unwind::Fp, Unwind::Dwarf],
        Some(mode) => vec![mode],
    };
    let mut rows = Vec::new();
    for mode in modes {
        match verify_programs(std::process::id(), mode) {
            Ok(loads) => {
                let mode = if mode.uses_tables() { "dwarf" } else { "fp" };
                rows.extend(loads.into_iter().map(|load| (mode, load)));
            }
            Err(err) => {
                eprintln!("leaktrace: the kernel refused a program ({mode:?} stacks): {err}");
                return status(err.status());
            }
        }
    }
    let text = match format {
        DiffFormat::Json => {
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|(mode, load)| {
                    serde_json::json!({
                        "unwind": mode,
                        "program": load.program,
                        "verified_instructions": load.verified_instructions,
                        "load_ms": load.load_ms,
                    })
                })
                .collect();
            serde_json::Value::Array(list).to_string() + "\n"
        }
        DiffFormat::Text => {
            let mut text = format!(
                "{:<30} {:<6} {:>9} {:>9} {:>9}\n",
                "program", "unwind", "verified", "of limit", "load ms"
            );
            for (mode, load) in &rows {
                text += &format!(
                    "{:<30} {:<6} {:>9} {:>8.1}% {:>9.1}\n",
                    load.program,
                    mode,
                    load.verified_instructions,
                    f64::from(load.verified_instructions) * 100.0 / f64::from(VERIFIER_LIMIT),
                    load.load_ms
                );
            }
            text
        }
    };
    print!("{text}");
    let over: Vec<String> = rows
        .iter()
        .filter(|(_, load)| load.verified_instructions > VERIFIER_BUDGET)
        .map(|(mode, load)| format!("{} ({mode})", load.program))
        .collect();
    if over.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "leaktrace: over the budget of {VERIFIER_BUDGET} verified instructions: {}",
            over.join(", ")
        );
        status(Status::Internal)
    }
}

fn stdout_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

/// Writes the output of `report` or `diff`, or its one-line error.
fn finish_offline(rendered: Result<Vec<u8>, String>, output: Option<&Path>) -> ExitCode {
    let bytes = match rendered {
        Ok(text) => text,
        Err(message) => {
            eprintln!("leaktrace: {message}");
            return status(Status::BadReport);
        }
    };
    let written = match output {
        Some(path) => std::fs::write(path, &bytes)
            .map_err(|err| format!("could not write {}: {err}", path.display())),
        None => std::io::stdout()
            .lock()
            .write_all(&bytes)
            .map_err(|err| format!("could not write to stdout: {err}")),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("leaktrace: {message}");
            status(Status::CannotWrite)
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
