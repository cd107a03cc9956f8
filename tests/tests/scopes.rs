//! End-to-end: --scope attributes allocations to the calls of request handlers
//! (tests/targets/scope_handlers.c), per handler and per label, and names the scope calls
//! that go with a leak.
use leaktrace_tests::{
    Target, bpf_available, build_c, build_c_variant, leaktrace, leaktrace_then, scratch_dir,
};
use serde_json::Value;

fn scope<'a>(report: &'a Value, function: &str) -> &'a Value {
    report["scopes"]
        .as_array()
        .and_then(|scopes| scopes.iter().find(|scope| scope["function"] == function))
        .unwrap_or_else(|| panic!("no scope {function} in {:#}", report["scopes"]))
}

fn label<'a>(scope: &'a Value, label: &str) -> &'a Value {
    scope["labels"]
        .as_array()
        .and_then(|labels| labels.iter().find(|entry| entry["label"] == label))
        .unwrap_or_else(|| panic!("no label {label} in {scope:#}"))
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// Three handlers; only handle_put keeps memory, and only for route "/cache": leaktrace
/// names that handler and label, with the stack that keeps it, and the others keep nothing.
#[test]
fn names_the_handler_and_label_that_keep_memory() {
    if !bpf_available("names_the_handler_and_label_that_keep_memory") {
        return;
    }
    let program = build_c("scope_handlers.c", &["-fno-omit-frame-pointer"]);
    let target = Target::start(&program, &["routes"]);
    let pid = target.pid();
    let traced = leaktrace(
        "scope_routes",
        &[
            "attach",
            "--pid",
            &pid,
            "--scope",
            "handle_get:arg0=str",
            "--scope",
            "handle_put:arg0=str",
            "--scope",
            "handle_delete",
            "--scope-retain-after",
            "1s",
            "-i",
            "1s",
            "-d",
            "5s",
        ],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let report = &traced.report;

    let put = scope(report, "handle_put");
    assert_eq!(put["label_argument"], "arg0=str");
    let cache = label(put, "/cache");
    let session = label(put, "/session");
    assert!(number(&cache["calls"]) > 500.0, "{cache:#}");
    assert!(number(&session["calls"]) > 500.0, "{session:#}");
    // Each /cache call allocates a 512-byte buffer (freed) and a 200-byte record (kept).
    assert_eq!(
        number(&cache["allocated_bytes_per_call"]),
        712.0,
        "{cache:#}"
    );
    assert_eq!(
        number(&cache["retained_bytes_per_call"]),
        200.0,
        "{cache:#}"
    );
    assert_eq!(
        number(&cache["retained_later_bytes_per_call"]),
        200.0,
        "{cache:#}"
    );
    let calls = number(&cache["calls"]) as u64;
    let retained = number(&cache["retained_bytes"]) as u64;
    // Calls still running when the final report was read may not have kept theirs yet.
    assert!(
        retained <= calls * 200 && retained + 2 * 200 >= calls * 200,
        "{calls} calls, {retained} bytes retained"
    );
    let kept_by = &cache["top_stacks"][0];
    let frames: Vec<&str> = kept_by["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(frames.first(), Some(&"remember_entry"), "{kept_by:#}");
    assert!(frames.contains(&"handle_put"), "{frames:?}");
    assert_eq!(number(&session["allocated_bytes_per_call"]), 512.0);
    assert_eq!(
        number(&session["retained_bytes_per_call"]),
        0.0,
        "{session:#}"
    );
    assert_eq!(number(&session["retained_bytes"]), 0.0, "{session:#}");
    assert!(session["top_stacks"].as_array().is_some_and(Vec::is_empty));

    let get = scope(report, "handle_get");
    let users = label(get, "/users");
    assert_eq!(number(&users["allocated_bytes_per_call"]), 1024.0);
    assert_eq!(number(&users["retained_bytes_per_call"]), 0.0);
    assert_eq!(number(&get["retained_bytes"]), 0.0, "{get:#}");
    let delete = scope(report, "handle_delete");
    assert!(delete["labels"].is_null(), "no label argument: {delete:#}");
    assert_eq!(number(&delete["allocated_bytes_per_call"]), 64.0);
    assert_eq!(number(&delete["retained_bytes"]), 0.0, "{delete:#}");
    // Nothing of the scopes was lost (calls in flight when the probes went in, or runs of
    // another tracer's programs on the same CPU, may be: other tests run alongside).
    for counter in [
        "scope_calls_full",
        "scope_too_deep",
        "scope_labels_full",
        "scope_events_lost",
        "alloc_map_full",
    ] {
        assert_eq!(report["dropped"][counter], 0, "{:#}", report["dropped"]);
    }
    // The text report says the same.
    let text = std::process::Command::new(leaktrace_tests::leaktrace_bin())
        .args([
            "report",
            scratch_dir()
                .join("scope_routes.json")
                .to_str()
                .expect("utf-8"),
        ])
        .output()
        .expect("leaktrace report");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("SCOPES: what each call keeps"), "{text}");
    assert!(text.contains("[/cache]"), "{text}");
}

/// A leak that starts when a new kind of request appears: the report's suspect is that
/// handler and label, with the reasons.
#[test]
fn a_leak_that_starts_with_a_new_request_kind_names_it() {
    if !bpf_available("a_leak_that_starts_with_a_new_request_kind_names_it") {
        return;
    }
    let program = build_c("scope_handlers.c", &["-fno-omit-frame-pointer"]);
    let go = scratch_dir().join("scope_phases.go");
    let _ = std::fs::remove_file(&go);
    let target = Target::start(&program, &["phases", go.to_str().expect("utf-8")]);
    let pid = target.pid();
    let traced = leaktrace_then(
        "scope_phases",
        &[
            "attach",
            "--pid",
            &pid,
            "--scope",
            "handle_request:arg0=str",
            "-i",
            "1s",
            "-d",
            "14s",
        ],
        || {
            let go = go.clone();
            // Four seconds of the old kinds only, then /upload appears.
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(4));
                std::fs::write(go, b"go").expect("tell the target to go");
            });
        },
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let report = &traced.report;
    let leak = traced.expect_stack_at("stash_upload");
    assert_eq!(leak["verdict"], "leaking", "{leak:#}");
    let suspects = report["suspects"].as_array().expect("suspects");
    let first = &suspects[0];
    assert_eq!(first["function"], "handle_request", "{suspects:#?}");
    assert_eq!(first["label"], "/upload", "{suspects:#?}");
    assert_eq!(first["stack_function"], "stash_upload");
    assert!(number(&first["share"]) > 0.95, "{first:#}");
    let reasons: Vec<&str> = first["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        reasons
            .iter()
            .any(|reason| reason.starts_with("its calls hold 100%")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|reason| reason.contains("new since the growth began")),
        "{reasons:?}"
    );
    // The old kinds are not suspects.
    assert!(
        suspects.iter().all(|suspect| suspect["label"] == "/upload"),
        "{suspects:#?}"
    );
    let upload = label(scope(report, "handle_request"), "/upload");
    assert!(number(&upload["first_call_s"]) > 3.0, "{upload:#}");
    assert_eq!(number(&upload["retained_bytes_per_call"]), 512.0);
    for old in ["/a", "/b"] {
        let entry = label(scope(report, "handle_request"), old);
        assert_eq!(number(&entry["retained_bytes"]), 0.0, "{entry:#}");
    }
}

/// A scope that names no function of the target, a bad label, too many scopes: one clear
/// line each, and no target started.
#[test]
fn bad_scopes_get_one_clear_line() {
    let program = build_c("scope_handlers.c", &["-fno-omit-frame-pointer"]);
    let program = program.to_str().expect("utf-8");
    let many: Vec<String> = (0..17)
        .flat_map(|i| ["--scope".into(), format!("f{i}")])
        .collect();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--scope".into(), "no_such_handler".into()],
            "--scope no_such_handler: no module of the target defines a function of that name",
        ),
        (
            vec!["--scope".into(), "handle_gett".into()],
            "closest: handle_get",
        ),
        (
            vec!["--scope".into(), "handle_get:arg7=str".into()],
            "the label is argN=str or argN=int",
        ),
        (
            vec!["--scope".into(), "handle_get:arg1=float".into()],
            "the label is argN=str or argN=int",
        ),
        (many, "at most 16 functions can be scopes"),
        (
            vec![
                "--scope".into(),
                "handle_get".into(),
                "--scope".into(),
                "handle_get:arg0=str".into(),
            ],
            "--scope handle_get is given twice",
        ),
    ];
    for (flags, expected) in cases {
        let out = std::process::Command::new(leaktrace_tests::leaktrace_bin())
            .arg("run")
            .args(&flags)
            .args(["--", program, "routes"])
            .output()
            .expect("run leaktrace");
        assert_ne!(out.status.code(), Some(0), "{flags:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with("For more information"))
            .collect();
        assert_eq!(lines.len(), 1, "{flags:?}: {stderr}");
    }
}

/// --scope by the names users write (tests/targets/scope_names.cpp, g++ -O2): a static
/// handler g++ kept only as a clone (`.constprop`, `.isra`) is found by its plain name, and
/// a C++ method by its demangled name, every overload of it; each call's allocated and
/// retained bytes are right, and the report lists what was probed.
#[test]
fn scopes_by_the_names_users_write() {
    if !bpf_available("scopes_by_the_names_users_write") {
        return;
    }
    let program = build_c_variant("scope_names.cpp", "scope_names", "g++", &["-O2"], &[]);
    // The handler has no symbol of its own name, only clones of it.
    let nm = std::process::Command::new("nm")
        .arg(&program)
        .output()
        .expect("run nm");
    let symbols = String::from_utf8_lossy(&nm.stdout);
    let clones: Vec<&str> = symbols
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|name| name.contains("qz_ingest_record"))
        .collect();
    assert!(
        !clones.is_empty() && clones.iter().all(|name| name.contains('.')),
        "{clones:?}"
    );
    let target = Target::start(&program, &[]);
    let pid = target.pid();
    let traced = leaktrace(
        "scope_names",
        &[
            "attach",
            "--pid",
            &pid,
            "--scope",
            "qz_ingest_record",
            "--scope",
            "ingest::Parser::parse",
            "-i",
            "1s",
            "-d",
            "3s",
        ],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let report = &traced.report;
    let ingest = scope(report, "qz_ingest_record");
    assert!(number(&ingest["calls"]) > 500.0, "{ingest:#}");
    assert_eq!(
        number(&ingest["allocated_bytes_per_call"]),
        384.0,
        "{ingest:#}"
    );
    assert_eq!(
        number(&ingest["retained_bytes_per_call"]),
        128.0,
        "{ingest:#}"
    );
    let probed: Vec<&str> = ingest["probed"]
        .as_array()
        .expect("probed")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !probed.is_empty()
            && probed
                .iter()
                .all(|symbol| clones.iter().any(|clone| symbol.starts_with(clone))),
        "{probed:?} of {clones:?}"
    );
    let parse = scope(report, "ingest::Parser::parse");
    assert!(number(&parse["calls"]) > 500.0, "{parse:#}");
    assert_eq!(
        number(&parse["allocated_bytes_per_call"]),
        192.0,
        "{parse:#}"
    );
    assert_eq!(
        number(&parse["retained_bytes_per_call"]),
        128.0,
        "{parse:#}"
    );
    // Both overloads: parse(const char*) and parse(long).
    let overloads = parse["probed"].as_array().expect("probed");
    assert_eq!(overloads.len(), 2, "{parse:#}");
}
