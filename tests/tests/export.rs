//! End-to-end export: leaktrace's OTLP output as received by oteltest's otelsink (gRPC and
//! HTTP), and its Prometheus endpoint as scraped by Debian's Prometheus with the shipped alert
//! rules. Receivers nobody here wrote; a real leaking target and a healthy one.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leaktrace_tests::{
    Background, Target, bpf_available, build_c, free_port, http_get, leaktrace_bin, leaktrace_with,
    otel_python, private_libc_dir, scratch_dir, tool_available, workspace_root,
};
use serde_json::Value;

/// What the sink received for one service.name.
#[derive(Default)]
struct Received {
    resource: BTreeMap<String, Value>,
    /// Metric name → (unit, data points).
    metrics: BTreeMap<String, (String, Vec<Value>)>,
    spans: Vec<Value>,
}

/// An OTLP attribute list as key → value (the JSON mapping's typed value, unwrapped).
fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_string();
            let value = kv["value"].as_object()?.values().next()?.clone();
            Some((key, value))
        })
        .collect()
}

fn text(value: Option<&Value>) -> &str {
    value.and_then(Value::as_str).unwrap_or("")
}

/// Reads the sink's JSON lines, grouped by the resource's service.name.
fn read_sink(path: &Path) -> BTreeMap<String, Received> {
    let mut by_service: BTreeMap<String, Received> = BTreeMap::new();
    let lines = std::fs::read_to_string(path).unwrap_or_default();
    for line in lines.lines() {
        let message: Value = serde_json::from_str(line).expect("sink line is JSON");
        let request = &message["request"];
        for (list, scopes_key) in [
            ("resourceMetrics", "scopeMetrics"),
            ("resourceSpans", "scopeSpans"),
        ] {
            for resource in request[list].as_array().into_iter().flatten() {
                let resource_attributes = attributes(&resource["resource"]["attributes"]);
                let service = text(resource_attributes.get("service.name")).to_string();
                let received = by_service.entry(service).or_default();
                received.resource = resource_attributes;
                for scope in resource[scopes_key].as_array().into_iter().flatten() {
                    for metric in scope["metrics"].as_array().into_iter().flatten() {
                        let name = text(metric.get("name")).to_string();
                        let unit = text(metric.get("unit")).to_string();
                        let data = metric
                            .get("gauge")
                            .or_else(|| metric.get("sum"))
                            .map(|data| data["dataPoints"].clone())
                            .unwrap_or_default();
                        let entry = received.metrics.entry(name).or_insert((unit, Vec::new()));
                        entry
                            .1
                            .extend(data.as_array().into_iter().flatten().cloned());
                    }
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        received.spans.push(span.clone());
                    }
                }
            }
        }
    }
    by_service
}

/// oteltest's otelsink writing what it receives to `received`, once it is ready; with its
/// gRPC and HTTP ports.
fn start_sink(received: &Path) -> (Background, u16, u16) {
    let (grpc_port, http_port) = (free_port(), free_port());
    let _ = std::fs::remove_file(received);
    let mut sink = Background::spawn(
        Command::new(otel_python())
            .arg(workspace_root().join("tests/otel/sink.py"))
            .arg(received)
            .arg(grpc_port.to_string())
            .arg(http_port.to_string())
            .stdout(Stdio::piped())
            // Its HTTP server logs every request.
            .stderr(Stdio::null()),
    );
    use std::io::BufRead;
    let stdout = sink.child.stdout.take().expect("piped");
    let mut line = String::new();
    let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    assert_eq!(line.trim(), "ready", "the sink did not start");
    (sink, grpc_port, http_port)
}

/// The expected metric names and their units.
const METRICS: [(&str, &str); 14] = [
    ("process.memory.usage", "By"),
    ("process.memory.virtual", "By"),
    ("leaktrace.process.memory.growth_rate", "By/s"),
    ("leaktrace.heap.outstanding", "By"),
    ("leaktrace.heap.growth_rate", "By/s"),
    ("leaktrace.stack.outstanding", "By"),
    ("leaktrace.stack.outstanding_allocations", "{allocation}"),
    ("leaktrace.stack.allocations", "{allocation}"),
    ("leaktrace.stack.frees", "{free}"),
    ("leaktrace.stack.growth_rate", "By/s"),
    ("leaktrace.stack.leaking", "1"),
    ("leaktrace.events.dropped", "{event}"),
    ("leaktrace.probes.attached", "{probe}"),
    ("leaktrace.symbolization.failures", "{failure}"),
];

fn check_service(service: &str, received: &Received, pid: &str) {
    let resource = &received.resource;
    assert_eq!(
        text(resource.get("process.executable.name")),
        "leaky_service"
    );
    assert_eq!(text(resource.get("process.pid")), pid, "{resource:?}");
    assert_eq!(text(resource.get("deployment.environment")), "e2e");
    assert!(!text(resource.get("host.name")).is_empty());

    for (name, unit) in METRICS {
        let (got_unit, points) = received
            .metrics
            .get(name)
            .unwrap_or_else(|| panic!("{service}: no {name} among {:?}", received.metrics.keys()));
        assert_eq!(got_unit, unit, "{service}: unit of {name}");
        assert!(!points.is_empty(), "{service}: {name} has no points");
    }
    // The leak has its own series, named by its top frame, and it holds memory.
    let (_, outstanding) = &received.metrics["leaktrace.stack.outstanding"];
    let leak = outstanding
        .iter()
        .rev()
        .find(|point| {
            let attributes = attributes(&point["attributes"]);
            text(attributes.get("code.function.name")) == "cache_insert"
                && text(attributes.get("leaktrace.verdict")) == "leaking"
        })
        .unwrap_or_else(|| panic!("{service}: no leaking cache_insert series: {outstanding:?}"));
    let leak_attributes = attributes(&leak["attributes"]);
    assert!(text(leak_attributes.get("code.file.path")).ends_with("leaky_service.c"));
    assert!(
        text(leak_attributes.get("code.line.number"))
            .parse::<u32>()
            .is_ok()
    );
    assert_eq!(text(leak_attributes.get("leaktrace.stack.id")).len(), 16);
    assert!(leak["asDouble"].as_f64().unwrap_or(0.0) >= 4096.0, "{leak}");

    // One analysis span per window, suspects as events, and the leak announced at once.
    let named = |name: &str| -> Vec<&Value> {
        received
            .spans
            .iter()
            .filter(|span| span["name"] == name)
            .collect()
    };
    assert!(
        named("memory.leak.analysis").len() >= 2,
        "{service}: analysis spans"
    );
    // Each stack newly judged leaking is announced once, the cache among them.
    let announced: Vec<String> = named("memory.leak.detected")
        .iter()
        .flat_map(|span| span["events"].as_array().into_iter().flatten())
        .map(|event| text(attributes(&event["attributes"]).get("leaktrace.stack.id")).to_string())
        .collect();
    let distinct: BTreeSet<&String> = announced.iter().collect();
    assert_eq!(
        distinct.len(),
        announced.len(),
        "{service}: announced twice: {announced:?}"
    );
    let events: Vec<&Value> = received
        .spans
        .iter()
        .flat_map(|span| span["events"].as_array().into_iter().flatten())
        .filter(|event| event["name"] == "memory.leak.suspect")
        .collect();
    let cache_events: Vec<_> = events
        .iter()
        .map(|event| attributes(&event["attributes"]))
        .filter(|attributes| text(attributes.get("code.function.name")) == "cache_insert")
        .collect();
    // A suspect in the first windows (not confirmed yet), then leaking.
    let verdicts: Vec<&str> = cache_events
        .iter()
        .map(|attributes| text(attributes.get("leaktrace.verdict")))
        .collect();
    assert!(
        verdicts
            .iter()
            .all(|verdict| ["suspect", "leaking"].contains(verdict)),
        "{service}: {verdicts:?}"
    );
    let leak_event = cache_events
        .iter()
        .find(|attributes| text(attributes.get("leaktrace.verdict")) == "leaking")
        .unwrap_or_else(|| panic!("{service}: no leaking event for cache_insert: {verdicts:?}"));
    assert!(
        announced.contains(&text(leak_event.get("leaktrace.stack.id")).to_string()),
        "{service}: the cache's leak was not announced"
    );
    let frames = leak_event["leaktrace.frames"]["values"]
        .as_array()
        .expect("frames are a string array");
    assert!(
        text(frames[0].get("stringValue")).starts_with("cache_insert ("),
        "{frames:?}"
    );
    for key in [
        "leaktrace.outstanding_bytes",
        "leaktrace.growth_bytes_per_s",
        "leaktrace.growth_onset_s",
        "leaktrace.oldest_age_s",
        "leaktrace.confidence",
    ] {
        assert!(leak_event.contains_key(key), "{service}: event lacks {key}");
    }
}

#[test]
fn otlp_over_grpc_and_http_reaches_otelsink() {
    let test = "otlp_over_grpc_and_http_reaches_otelsink";
    if !bpf_available(test) || !tool_available(test, &otel_python()) {
        return;
    }
    let received_path = scratch_dir().join("otlp-sink.jsonl");
    let (sink, grpc_port, http_port) = start_sink(&received_path);
    let service = build_c("leaky_service.c", &[]);
    let target = Target::start(&service, &[]);
    let grpc_endpoint = format!("http://127.0.0.1:{grpc_port}");
    let http_endpoint = format!("http://127.0.0.1:{http_port}");
    for (protocol, endpoint, name) in [
        ("grpc", grpc_endpoint.as_str(), "leaky-grpc"),
        ("http/protobuf", http_endpoint.as_str(), "leaky-http"),
    ] {
        let traced = leaktrace_with(
            name,
            &[
                "attach",
                "--pid",
                &target.pid(),
                "--duration",
                "4s",
                "--interval",
                "1s",
            ],
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
                ("OTEL_SERVICE_NAME", name),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e"),
            ],
            || {},
        );
        assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
        assert!(
            !traced.stderr().contains("export failed"),
            "{protocol}: {}",
            traced.stderr()
        );
    }
    // The sink writes as it receives; give the last batch a moment.
    std::thread::sleep(Duration::from_millis(500));
    drop(sink);
    let by_service = read_sink(&received_path);
    for service in ["leaky-grpc", "leaky-http"] {
        let received = by_service
            .get(service)
            .unwrap_or_else(|| panic!("nothing from {service}: {:?}", by_service.keys()));
        check_service(service, received, &target.pid());
    }
}

/// A receiver that is down costs a warning and a count, never the session.
#[test]
fn otlp_receiver_down_does_not_stall_tracing() {
    if !bpf_available("otlp_receiver_down_does_not_stall_tracing") {
        return;
    }
    let service = build_c("leaky_service.c", &[]);
    let target = Target::start(&service, &[]);
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let traced = leaktrace_with(
        "otlp-down",
        &[
            "attach",
            "--pid",
            &target.pid(),
            "--duration",
            "3s",
            "--interval",
            "1s",
            "--otlp",
            &nowhere,
        ],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "500")],
        || {},
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        traced.stderr().contains("export failed"),
        "{}",
        traced.stderr()
    );
    // The report itself is complete.
    assert_eq!(traced.expect_stack_at("cache_insert")["verdict"], "leaking");
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    let promtool = Path::new("/usr/bin/promtool");
    if !tool_available("shipped_alert_rules_pass_promtool", promtool) {
        return;
    }
    let rules = workspace_root().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "leaktrace-rules.yml"],
        vec!["test", "rules", "leaktrace-rules.test.yml"],
    ] {
        let out = Command::new(promtool)
            .args(&args)
            .current_dir(&rules)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The shipped rules with windows short enough for a test.
fn short_window_rules() -> String {
    let shipped =
        std::fs::read_to_string(workspace_root().join("deploy/prometheus/leaktrace-rules.yml"))
            .expect("shipped rules");
    let short = shipped
        .replace("[30m]", "[15s]")
        .replace("for: 1h", "for: 5s")
        .replace("for: 10m", "for: 3s")
        .replace("for: 5m", "for: 3s");
    assert_ne!(
        short, shipped,
        "the rules' windows changed: update this test"
    );
    short
}

/// Alerts Prometheus reports: (alertname, job, state).
fn alerts(prometheus_port: u16) -> BTreeSet<(String, String, String)> {
    let Some(body) = http_get(prometheus_port, "/api/v1/alerts") else {
        return BTreeSet::new();
    };
    let value: Value = serde_json::from_str(&body).unwrap_or_default();
    value["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|alert| {
            (
                text(alert["labels"].get("alertname")).to_string(),
                text(alert["labels"].get("job")).to_string(),
                text(alert.get("state")).to_string(),
            )
        })
        .collect()
}

#[test]
fn prometheus_scrapes_and_fires_the_leak_alerts_only_for_the_leak() {
    let test = "prometheus_scrapes_and_fires_the_leak_alerts_only_for_the_leak";
    if !bpf_available(test) || !tool_available(test, Path::new("/usr/bin/prometheus")) {
        return;
    }
    let service = build_c("leaky_service.c", &[]);
    let leaky = Target::start(&service, &[]);
    let healthy = Target::start(&service, &["--healthy"]);
    let (leaky_port, healthy_port, prometheus_port) = (free_port(), free_port(), free_port());
    let serve = |target: &Target, port: u16, name: &str| {
        Background::spawn(
            Command::new(leaktrace_bin())
                .args(["attach", "--pid", &target.pid(), "--duration", "120s"])
                .args(["--interval", "1s", "--format", "json", "--output"])
                .arg(scratch_dir().join(format!("{name}.json")))
                .args(["--prometheus", &format!("127.0.0.1:{port}")])
                .env("LD_LIBRARY_PATH", private_libc_dir())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let _leaky_trace = serve(&leaky, leaky_port, "prometheus-leaky");
    let _healthy_trace = serve(&healthy, healthy_port, "prometheus-healthy");

    let dir = scratch_dir().join("prometheus");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    std::fs::write(dir.join("rules.yml"), short_window_rules()).expect("rules");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\n\
             scrape_configs:\n\
             \x20 - job_name: leaky\n    static_configs:\n      - targets: ['127.0.0.1:{leaky_port}']\n\
             \x20 - job_name: healthy\n    static_configs:\n      - targets: ['127.0.0.1:{healthy_port}']\n"
        ),
    )
    .expect("config");
    let _prometheus = Background::spawn(
        Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );

    let wanted = [
        ("LeaktraceStackLeaking", "leaky"),
        ("MemoryGrowthSustained", "leaky"),
    ];
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = BTreeSet::new();
    while Instant::now() < deadline {
        seen = alerts(prometheus_port);
        let firing = |name: &str, job: &str| {
            seen.contains(&(name.to_string(), job.to_string(), "firing".to_string()))
        };
        if wanted.iter().all(|(name, job)| firing(name, job)) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    for (name, job) in wanted {
        assert!(
            seen.contains(&(name.to_string(), job.to_string(), "firing".to_string())),
            "{name} not firing for {job}: {seen:?}"
        );
    }
    assert!(
        !seen.iter().any(|(_, job, _)| job == "healthy"),
        "the healthy service raised alerts: {seen:?}"
    );
    // What Prometheus scraped is what leaktrace serves.
    let metrics = http_get(leaky_port, "/metrics").expect("leaktrace serves /metrics");
    let leak_line = metrics
        .lines()
        .find(|line| {
            line.starts_with("leaktrace_stack_leaking{")
                && line.contains("code_function_name=\"cache_insert\"")
        })
        .unwrap_or_else(|| panic!("no leaking cache_insert in:\n{metrics}"));
    assert!(
        leak_line.ends_with(" 1.0") || leak_line.ends_with(" 1"),
        "{leak_line}"
    );
    let query = http_get(
        prometheus_port,
        "/api/v1/query?query=leaktrace_stack_leaking%7Bjob%3D%22healthy%22%7D%3D%3D1",
    )
    .expect("query");
    let result: Value = serde_json::from_str(&query).expect("json");
    assert_eq!(
        result["data"]["result"].as_array().map(Vec::len),
        Some(0),
        "{query}"
    );
}

/// Bad export flags get one clear line before anything is traced.
#[test]
fn bad_export_flags_get_one_clear_line() {
    let out = Command::new(leaktrace_bin())
        .args(["attach", "--pid", "1", "--prometheus", "nowhere"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // clap's format: the error on the first line, then a pointer to --help.
    let first = stderr.lines().next().unwrap_or("");
    assert!(first.contains("not an address to listen on"), "{stderr}");
}

/// --scope over OTLP: per-scope metrics by function and label, a span for each call that
/// kept at least --scope-span-threshold, and the suspect as an event of the analysis span.
#[test]
fn scope_metrics_spans_and_suspects_reach_otelsink() {
    let test = "scope_metrics_spans_and_suspects_reach_otelsink";
    if !bpf_available(test) || !tool_available(test, &otel_python()) {
        return;
    }
    let received_path = scratch_dir().join("otlp-scope-sink.jsonl");
    let (sink, _, http_port) = start_sink(&received_path);
    let handlers = build_c("scope_handlers.c", &["-fno-omit-frame-pointer"]);
    let target = Target::start(&handlers, &["routes"]);
    let endpoint = format!("http://127.0.0.1:{http_port}");
    let traced = leaktrace_with(
        "scope-otlp",
        &[
            "attach",
            "--pid",
            &target.pid(),
            "--scope",
            "handle_put:arg0=str",
            "--scope-span-threshold",
            "150",
            "--duration",
            "4s",
            "--interval",
            "1s",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ("OTEL_SERVICE_NAME", "scope-otlp"),
        ],
        || {},
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    std::thread::sleep(Duration::from_millis(500));
    drop(sink);
    let by_service = read_sink(&received_path);
    let received = by_service
        .get("scope-otlp")
        .unwrap_or_else(|| panic!("nothing from scope-otlp: {:?}", by_service.keys()));

    let (unit, retained) = &received.metrics["leaktrace.scope.retained"];
    assert_eq!(unit, "By");
    let latest = |label: &str| {
        retained
            .iter()
            .rev()
            .find(|point| {
                let attributes = attributes(&point["attributes"]);
                text(attributes.get("code.function.name")) == "handle_put"
                    && text(attributes.get("leaktrace.scope.label")) == label
            })
            .and_then(|point| point["asDouble"].as_f64())
            .unwrap_or_else(|| panic!("no {label} series: {retained:?}"))
    };
    assert!(latest("/cache") >= 200.0, "{retained:?}");
    assert_eq!(latest("/session"), 0.0);
    assert!(received.metrics.contains_key("leaktrace.scope.calls"));

    // Each /cache call keeps 200 bytes, above the threshold; /session calls keep nothing.
    let calls: Vec<BTreeMap<String, Value>> = received
        .spans
        .iter()
        .filter(|span| span["name"] == "memory.scope.call")
        .map(|span| attributes(&span["attributes"]))
        .collect();
    assert!(!calls.is_empty(), "no memory.scope.call spans");
    for call in &calls {
        assert_eq!(
            text(call.get("leaktrace.scope.label")),
            "/cache",
            "{call:?}"
        );
        assert_eq!(text(call.get("code.function.name")), "handle_put");
        assert_eq!(text(call.get("memory.retained_bytes")), "200", "{call:?}");
        assert_eq!(text(call.get("memory.allocated_bytes")), "712", "{call:?}");
    }
    let with_stack = received.spans.iter().any(|span| {
        span["name"] == "memory.scope.call"
            && span["events"].as_array().is_some_and(|events| {
                events
                    .iter()
                    .any(|event| event["name"] == "memory.scope.retaining_stack")
            })
    });
    assert!(with_stack, "no retaining stack on any call span");
    let suspect = received
        .spans
        .iter()
        .filter(|span| span["name"] == "memory.leak.analysis")
        .flat_map(|span| span["events"].as_array().cloned().unwrap_or_default())
        .filter(|event| event["name"] == "memory.leak.scope_suspect")
        .map(|event| attributes(&event["attributes"]))
        .next_back()
        .expect("a scope suspect event");
    assert_eq!(text(suspect.get("leaktrace.scope.label")), "/cache");
    assert_eq!(text(suspect.get("code.function.name")), "handle_put");
}
