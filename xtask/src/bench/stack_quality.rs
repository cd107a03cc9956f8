//! Stack quality: of the allocations a target keeps, how many stacks name the function that
//! made them and every caller up to main, by language, build (with or without frame
//! pointers) and way of walking stacks (`--unwind fp`, `hybrid`, `dwarf`).
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Result;

use crate::workspace::{leaktrace_bin, root, run_checked};

/// What a target's kept allocations should show: the functions that made them (one of
/// `made_by`), and for the whole chain each of `callers` and one of `one_of`.
struct Chain {
    made_by: &'static [&'static str],
    callers: &'static [&'static str],
    one_of: &'static [&'static str],
}

/// The stack_chain targets: main → handle_request → parse_body or log_line (which store
/// through store_record).
const STACK_CHAIN: Chain = Chain {
    made_by: &["store_record", "parse_body", "log_line"],
    callers: &["main", "handle_request"],
    one_of: &["parse_body", "log_line"],
};

/// through_libraries.cpp: main → leak_everything → one leak_via_… function, whose library
/// call (strdup, asprintf, getline, fopen, std::string's reserve) allocates.
const THROUGH_LIBRARIES: Chain = Chain {
    made_by: &[
        "leak_via_strdup",
        "leak_via_asprintf",
        "leak_via_getline",
        "leak_via_fopen",
        "leak_via_string",
    ],
    callers: &["main", "leak_everything"],
    one_of: &["leak_everything"],
};

/// Whether a symbolized frame name is `function` (plain, C++ with parameters, Rust path).
fn frame_is(name: &str, function: &str) -> bool {
    name == function
        || name.starts_with(&format!("{function}("))
        || name.ends_with(&format!("::{function}"))
}

/// Of the allocations a target keeps, how many have a stack with the program function that
/// made them, and how many also every caller up to main.
fn chain_shares(binary: &Path, name: &str, unwind: &str, chain: &Chain) -> Result<(u64, u64)> {
    let report_path = root().join(format!("target/xtask/{name}_{unwind}.json"));
    run_checked(
        Command::new(leaktrace_bin())
            .args([
                "run", "--unwind", unwind, "--top", "0", "--format", "json", "--output",
            ])
            .arg(&report_path)
            .arg("--")
            .arg(binary),
    )?;
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    let (mut with_caller, mut complete) = (0u64, 0u64);
    for stack in report["stacks"].as_array().into_iter().flatten() {
        let allocs = stack["outstanding_allocs"].as_u64().unwrap_or(0);
        let names: Vec<&str> = stack["frames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|frame| frame["function"].as_str())
            .collect();
        let has = |function: &str| names.iter().any(|name| frame_is(name, function));
        if chain.made_by.iter().any(|function| has(function)) {
            with_caller += allocs;
            if chain.callers.iter().all(|function| has(function))
                && chain.one_of.iter().any(|function| has(function))
            {
                complete += allocs;
            }
        }
    }
    Ok((with_caller, complete))
}

/// The stack_chain builds: language and compiler, frame pointers or not, allocations the
/// program keeps, and the compiler with its frame-pointer flag.
const BUILDS: [(&str, &str, u64, &[&str]); 6] = [
    (
        "C, gcc -O2",
        "with frame pointers",
        100,
        &["gcc", "-fno-omit-frame-pointer"],
    ),
    (
        "C, gcc -O2",
        "without (gcc's default)",
        100,
        &["gcc", "-fomit-frame-pointer"],
    ),
    (
        "C++, g++ -O2",
        "with frame pointers",
        200,
        &["g++", "-fno-omit-frame-pointer"],
    ),
    (
        "C++, g++ -O2",
        "without (g++'s default)",
        200,
        &["g++", "-fomit-frame-pointer"],
    ),
    (
        "Rust, rustc -C opt-level=3",
        "with frame pointers",
        100,
        &["rustc", "-Cforce-frame-pointers=yes"],
    ),
    (
        "Rust, rustc -C opt-level=3",
        "without (rustc's default)",
        100,
        &["rustc"],
    ),
];

/// Stack quality with and without frame pointers, walked both ways: see `chain_shares`.
pub fn stack_quality() -> Result<String> {
    let out_dir = root().join("target/xtask");
    let targets = root().join("tests/targets");
    let mut table = String::from(
        "| target | build | allocations kept | `--unwind fp`: stack has the allocating function / every caller up to main | `--unwind hybrid`: the same | `--unwind dwarf`: the same |\n|---|---|---|---|---|---|\n",
    );
    let mut row = |what: &str,
                   build: &str,
                   binary: &Path,
                   name: &str,
                   expected: u64,
                   chain: &Chain|
     -> Result<()> {
        let mut cells = Vec::new();
        for unwind in ["fp", "hybrid", "dwarf"] {
            let (with_caller, complete) = chain_shares(binary, name, unwind, chain)?;
            let share = |n: u64| format!("{:.0}%", 100.0 * n as f64 / expected as f64);
            cells.push(format!("{} / {}", share(with_caller), share(complete)));
        }
        let _ = writeln!(
            table,
            "| {what} | {build} | {expected} | {} | {} | {} |",
            cells[0], cells[1], cells[2]
        );
        Ok(())
    };
    for (index, (what, build, expected, command)) in BUILDS.iter().enumerate() {
        let binary = out_dir.join(format!("stack_chain_{index}"));
        let mut compile = Command::new(command[0]);
        match command[0] {
            "rustc" => {
                compile
                    .args(["-C", "opt-level=3", "-g", "--edition", "2021"])
                    .args(&command[1..])
                    .arg(targets.join("stack_chain.rs"));
            }
            compiler => {
                compile
                    .args(["-O2", "-g"])
                    .args(&command[1..])
                    .arg(targets.join(if compiler == "g++" {
                        "stack_chain.cpp"
                    } else {
                        "stack_chain.c"
                    }));
            }
        }
        run_checked(compile.arg("-o").arg(&binary))?;
        row(
            what,
            build,
            &binary,
            &format!("stack_chain_{index}"),
            *expected,
            &STACK_CHAIN,
        )?;
    }
    // A program with frame pointers whose allocations happen inside glibc and libstdc++,
    // built without them (Debian's).
    let binary = out_dir.join("through_libraries");
    run_checked(
        Command::new("g++")
            .args(["-O2", "-g", "-fno-omit-frame-pointer"])
            .arg(targets.join("through_libraries.cpp"))
            .arg("-o")
            .arg(&binary),
    )?;
    row(
        "C++, g++ -O2, allocating in glibc and libstdc++ (strdup, asprintf, getline, fopen, std::string)",
        "with frame pointers; the libraries without",
        &binary,
        "through_libraries",
        250,
        &THROUGH_LIBRARIES,
    )?;
    println!("{table}");
    Ok(table)
}
