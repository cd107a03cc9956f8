//! Tests of the pprof report: decoded with prost and, independently, with protoc.
use std::{
    io::Read,
    process::{Command, Stdio},
};

use flate2::read::GzDecoder;
use prost::Message;

use super::*;
use crate::export::report::fixtures::{empty_report, sample_report, scanned_report};

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut plain)
        .expect("gzip data");
    plain
}

fn decode(bytes: &[u8]) -> Profile {
    Profile::decode(gunzip(bytes).as_slice()).expect("a profile.proto message")
}

/// Each sample's functions (or hex address when there are none), innermost first.
fn stacks(profile: &Profile) -> Vec<Vec<String>> {
    let function_name = |id: u64| {
        let function = profile.function.iter().find(|f| f.id == id);
        profile.string_table[function.expect("function id").name as usize].clone()
    };
    let location_names = |id: &u64| {
        let location = profile.location.iter().find(|l| l.id == *id);
        let location = location.expect("location id");
        if location.line.is_empty() {
            return vec![format!("{:#x}", location.address)];
        }
        location
            .line
            .iter()
            .map(|line| function_name(line.function_id))
            .collect()
    };
    profile
        .sample
        .iter()
        .map(|sample| sample.location_id.iter().flat_map(location_names).collect())
        .collect()
}

#[test]
fn decodes_to_values_stacks_labels_and_mappings() {
    let report = sample_report();
    let profile = decode(&render(&report));
    assert_eq!(profile, super::profile(&report));
    let text = |index: i64| profile.string_table[index as usize].as_str();
    assert_eq!(profile.string_table[0], "");
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (text(t.r#type), text(t.unit)))
        .collect();
    assert_eq!(types, SAMPLE_TYPES);
    assert_eq!(text(profile.default_sample_type), "inuse_space");
    assert_eq!(profile.duration_nanos, 10_000_000_000);

    let values: Vec<&[i64]> = profile.sample.iter().map(|s| &s.value[..]).collect();
    assert_eq!(
        values,
        [
            &[10240, 160, 10240, 160][..],
            &[4096, 1, 6656, 41],
            &[2048, 2, 4608, 42],
            &[1536, 3, 4096, 43],
            // Transient stacks hold nothing but their allocations count.
            &[0, 0, 2560, 40],
            &[3000, 15, 5560, 55],
            &[5120, 64, 7680, 104],
        ]
    );
    let stacks = stacks(&profile);
    assert_eq!(stacks[0], ["leak_slowly", "main", "__libc_start_call_main"]);
    assert_eq!(
        stacks[1],
        [
            "std::vector<Entry>::push_back(Entry&&)",
            "Cache<std::string, int>::insert(std::string const&)",
            "main"
        ]
    );
    // The inlined call and its caller are one location: one return address.
    assert_eq!(profile.sample[1].location_id.len(), 2);
    assert_eq!(stacks[2], ["[unknown stack]"]);
    assert_eq!(stacks[3], ["0x7f3e1c604f2a", "0x7ffd1000", "main"]);

    let labels: Vec<Vec<(&str, &str)>> = profile
        .sample
        .iter()
        .map(|s| s.label.iter().map(|l| (text(l.key), text(l.str))).collect())
        .collect();
    assert_eq!(labels[0], [("verdict", "leaking"), ("origin", "heap")]);
    assert_eq!(labels[3], [("verdict", "leaking"), ("origin", "mmap")]);
    assert_eq!(labels[4], [("verdict", "transient"), ("origin", "heap")]);

    let mapping = |file: &str| {
        let found = profile.mapping.iter().find(|m| text(m.filename) == file);
        found.unwrap_or_else(|| panic!("no mapping for {file}"))
    };
    let demo = mapping("/usr/bin/demo");
    assert!(demo.has_functions && demo.has_filenames && demo.has_line_numbers);
    assert_eq!(demo.memory_start, 0x55d0_c2a0_0000);
    assert_eq!(demo.memory_limit, 0x55d0_c2a0_2011);
    let plugin = mapping("/opt/plugins/libplugin.so");
    assert!(!plugin.has_functions && !plugin.has_filenames && !plugin.has_line_numbers);
    assert_eq!(profile.mapping.len(), 3);
}

#[test]
fn a_scan_adds_a_sample_type_per_class() {
    let profile = decode(&render(&scanned_report()));
    let text = |index: i64| profile.string_table[index as usize].as_str();
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (text(t.r#type), text(t.unit)))
        .collect();
    assert_eq!(types[..4], SAMPLE_TYPES);
    assert_eq!(types[4..], REACHABILITY_SAMPLE_TYPES);
    // lost, indirectly lost, interior, reachable: bytes and blocks of each.
    let classes: Vec<&[i64]> = profile.sample.iter().map(|s| &s.value[4..]).collect();
    assert_eq!(classes[0], [9600, 150, 640, 10, 0, 0, 0, 0]);
    assert_eq!(classes[1], [0, 0, 0, 0, 0, 0, 4096, 1]);
    assert_eq!(classes[2], [0, 0, 0, 0, 1024, 1, 1024, 1]);
    assert_eq!(classes[5], [0, 0, 0, 0, 0, 0, 2000, 10]);
    assert!(
        profile
            .comment
            .iter()
            .any(|&c| text(c).starts_with("reachability: 177 blocks classified")),
    );
}

#[test]
fn the_same_report_gives_the_same_bytes() {
    assert_eq!(render(&sample_report()), render(&sample_report()));
}

#[test]
fn empty_report_is_a_profile_with_no_samples() {
    let profile = decode(&render(&empty_report()));
    assert!(profile.sample.is_empty());
    assert_eq!(profile.sample_type.len(), SAMPLE_TYPES.len());
}

/// protoc's text form of a profile, decoded with leak-user/tests/profile.proto: a decoder
/// that shares nothing with the structs above. None (the test skips) when protoc is not
/// installed, unless CI or LEAKTRACE_REQUIRE_BPF=1 say every test must run.
fn protoc_decode(profile: &[u8]) -> Option<String> {
    let spawned = Command::new("protoc")
        .arg(concat!(
            "--proto_path=",
            env!("CARGO_MANIFEST_DIR"),
            "/tests"
        ))
        .arg("--decode=perftools.profiles.Profile")
        .arg("profile.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut protoc = match spawned {
        Ok(protoc) => protoc,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let required = std::env::var("LEAKTRACE_REQUIRE_BPF").is_ok_and(|v| v == "1")
                || std::env::var_os("CI").is_some();
            assert!(
                !required,
                "protoc is not installed but CI/LEAKTRACE_REQUIRE_BPF=1 requires this \
                 test: run `cargo xtask setup` or `apt-get install protobuf-compiler`"
            );
            eprintln!("skipped: protoc not installed (apt-get install protobuf-compiler)");
            return None;
        }
        Err(err) => panic!("running protoc: {err}"),
    };
    // protoc reads all input before it writes, so writing first cannot deadlock.
    let mut stdin = protoc.stdin.take().expect("protoc stdin");
    std::io::Write::write_all(&mut stdin, profile).expect("write to protoc");
    drop(stdin);
    let output = protoc.wait_with_output().expect("protoc ran");
    assert!(
        output.status.success(),
        "protoc could not decode the profile: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).expect("UTF-8 text"))
}

/// The `key: value` fields directly inside each top-level `name { … }` block.
fn blocks<'a>(text: &'a str, name: &str) -> Vec<Vec<(&'a str, &'a str)>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<(&str, &str)>> = None;
    for line in text.lines() {
        if line == format!("{name} {{") {
            current = Some(Vec::new());
        } else if line == "}" {
            blocks.extend(current.take());
        } else if let Some(fields) = current.as_mut()
            && let Some(field) = line.strip_prefix("  ")
            && !field.starts_with(' ')
            && let Some((key, value)) = field.split_once(": ")
        {
            fields.push((key, value));
        }
    }
    blocks
}

#[test]
fn protoc_decodes_it_independently() {
    let report = sample_report();
    let Some(text) = protoc_decode(&gunzip(&render(&report))) else {
        return;
    };
    let strings: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("string_table: \""))
        .map(|rest| rest.trim_end_matches('"'))
        .collect();
    assert_eq!(strings[0], "");
    let string = |index: &str| strings[index.parse::<usize>().expect("string index")];
    let field = |block: &[(&str, &str)], key: &str| -> Vec<String> {
        block
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .collect()
    };

    let types: Vec<(&str, &str)> = blocks(&text, "sample_type")
        .iter()
        .map(|t| (string(&field(t, "type")[0]), string(&field(t, "unit")[0])))
        .collect();
    assert_eq!(types, SAMPLE_TYPES);
    let default_type = text
        .lines()
        .find_map(|line| line.strip_prefix("default_sample_type: "))
        .expect("default_sample_type");
    assert_eq!(string(default_type), "inuse_space");

    let values: Vec<Vec<String>> = blocks(&text, "sample")
        .iter()
        .map(|sample| field(sample, "value"))
        .collect();
    let expected: Vec<Vec<String>> = report
        .stacks
        .iter()
        .map(|s| {
            [
                s.outstanding_bytes,
                s.outstanding_allocs,
                s.total_bytes,
                s.total_allocs,
            ]
            .iter()
            .map(u64::to_string)
            .collect()
        })
        .collect();
    assert_eq!(values, expected);

    let functions: Vec<&str> = blocks(&text, "function")
        .iter()
        .map(|function| string(&field(function, "name")[0]))
        .collect();
    for name in [
        "leak_slowly",
        "main",
        "__libc_start_call_main",
        "std::vector<Entry>::push_back(Entry&&)",
        "Cache<std::string, int>::insert(std::string const&)",
        "[unknown stack]",
        "parse_request",
    ] {
        assert!(
            functions.contains(&name),
            "{name} missing from {functions:?}"
        );
    }
}

#[test]
fn snapshot() {
    // Beside the other formats' snapshots, not in a folder of its own under pprof/.
    insta::with_settings!({ snapshot_path => "../snapshots" }, {
        insta::assert_debug_snapshot!(decode(&render(&sample_report())));
    });
}
