use std::process::ExitCode;

use clap::Parser;
use leaktrace::{
    cli::{Cli, Command},
    session,
};

/// Exit status when the attached target ended during tracing (the report is still written).
const EXIT_TARGET_EXITED: u8 = 3;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("leaktrace: could not start: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Attach {
            pid,
            duration,
            common,
        } => match runtime.block_on(session::attach(pid, common.options(duration))) {
            Ok(outcome) => {
                if outcome.report.exited.is_some() {
                    eprintln!(
                        "leaktrace: process {pid} exited during tracing; the report shows what was seen until then"
                    );
                    ExitCode::from(EXIT_TARGET_EXITED)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(err) => {
                eprintln!("leaktrace: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Run { common, command } => {
            match runtime.block_on(session::run(&command, common.options(None))) {
                Ok(outcome) => match outcome.exit {
                    Some(exit) => match (exit.code, exit.signal) {
                        (Some(code), _) => ExitCode::from(code as u8),
                        (_, Some(signal)) => ExitCode::from(128u8.wrapping_add(signal as u8)),
                        _ => ExitCode::FAILURE,
                    },
                    None => ExitCode::SUCCESS,
                },
                Err(err) => {
                    eprintln!("leaktrace: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
