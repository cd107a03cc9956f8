//! `watch --config FILE`: the TOML settings turned into flags, then parsed and checked as the
//! binary does. Whatever the file says, the outcome is settings or one error line.
#![no_main]

use clap::{CommandFactory, Parser};
use leaktrace::cli::{self, Cli, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let command = Cli::command();
    let Some(watch) = command.find_subcommand("watch") else {
        return;
    };
    let Ok(flags) = cli::config_flags(text, watch, |_| false) else {
        return;
    };
    let args = ["leaktrace", "watch"]
        .into_iter()
        .map(String::from)
        .chain(flags);
    let Ok(parsed) = Cli::try_parse_from(args) else {
        return;
    };
    if let Command::Watch { watch, common } = parsed.command {
        if common.check().is_ok() {
            let _ = watch.options(&common);
        }
    }
});
