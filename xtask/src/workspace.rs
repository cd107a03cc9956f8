//! The workspace's paths and the commands every task runs: cargo at the root, a command
//! that must succeed, the leaktrace binary, the C targets of tests/targets.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level down).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A cargo command run at the workspace root.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

/// Runs `command`; an error unless it ran and succeeded.
pub fn run_checked(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// The leaktrace binary `cargo xtask build` produces.
pub fn leaktrace_bin() -> PathBuf {
    root().join("target/release/leaktrace")
}

/// Compiles a C file from tests/targets with the flags the targets use.
pub fn compile_c(source: &str, output: &Path) -> Result<()> {
    run_checked(
        Command::new("gcc")
            .args([
                "-O1",
                "-g",
                "-fno-omit-frame-pointer",
                "-fno-optimize-sibling-calls",
                "-pthread",
                "-o",
            ])
            .arg(output)
            .arg(root().join("tests/targets").join(source)),
    )
}
