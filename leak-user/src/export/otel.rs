//! OpenTelemetry export: the metrics of [`crate::export::metrics`] over OTLP (gRPC or HTTP/protobuf,
//! chosen and configured by the standard OTEL_* variables), one `memory.leak.analysis` span
//! per analysis window with a `memory.leak.suspect` event per leaking, suspect or growing
//! stack, and a `memory.leak.detected` span the moment a stack is first judged leaking (a
//! confirmed leak: a suspect never sends one).
//!
//! Export never runs on the tracing thread: the SDK's periodic reader and batch processor
//! have threads of their own, gRPC runs on a small runtime owned here, queues are bounded, and
//! failed exports are retried by the exporter, then counted and warned about.
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use opentelemetry::{
    KeyValue, Value as OtelValue,
    metrics::MeterProvider as _,
    trace::{Span as _, Tracer as _, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        PeriodicReader, SdkMeterProvider, Temporality, data::ResourceMetrics,
        exporter::PushMetricExporter,
    },
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};

use crate::{
    export::metrics::{self, Instrument, Kind, Point, Value},
    model::{Report, StackReport, Suspect, Target, Verdict},
};

/// Where and how often to export; everything else comes from the OTEL_* variables.
#[derive(Clone, Debug)]
pub struct OtlpOptions {
    /// Overrides OTEL_EXPORTER_OTLP_ENDPOINT.
    pub endpoint: Option<String>,
    /// Metric export interval when OTEL_METRIC_EXPORT_INTERVAL is not set.
    pub default_interval: Duration,
    /// Stacks with their own series; the rest are summed as "other".
    pub max_stacks: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OpenTelemetry export: {0} (check OTEL_EXPORTER_OTLP_* settings)")]
pub struct OtelError(String);

/// Counts failed exports and warns about them without flooding the log.
#[derive(Debug, Default)]
struct Failures {
    count: AtomicU64,
}

impl Failures {
    fn record(&self, what: &str, result: &OTelSdkResult) {
        if let Err(err) = result {
            let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
            if count == 1 || count.is_power_of_two() {
                log::warn!(
                    "OTLP {what} export failed ({count} so far; tracing goes on, that data is lost): {err}"
                );
            }
        }
    }
}

/// A metric exporter that counts its failures.
struct CountingMetricExporter<E> {
    inner: E,
    failures: Arc<Failures>,
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.failures.record("metric", &result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// A span exporter that counts its failures.
#[derive(Debug)]
struct CountingSpanExporter<E> {
    inner: E,
    failures: Arc<Failures>,
}

impl<E: SpanExporter> SpanExporter for CountingSpanExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.failures.record("span", &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The resource: OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES first, then the target.
pub fn resource(target: &Target) -> Resource {
    let executable = target.executable_name().to_string();
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("process.pid", i64::from(target.pid)),
        KeyValue::new("process.executable.name", executable.clone()),
        KeyValue::new("process.executable.path", target.exe.clone()),
        KeyValue::new("process.command_line", target.command_line.clone()),
        KeyValue::new("host.name", host_name()),
    ]);
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|attributes| attributes.contains("service.name="));
    if !named_by_env {
        builder = builder.with_service_name(executable);
    }
    builder.build()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

fn attribute(key: &'static str, value: &Value) -> KeyValue {
    match value {
        Value::Text(text) => KeyValue::new(key, text.clone()),
        Value::Int(number) => KeyValue::new(key, *number),
    }
}

fn attributes(point: &Point) -> Vec<KeyValue> {
    point
        .attributes
        .iter()
        .map(|(key, value)| attribute(key, value))
        .collect()
}

/// The OTLP exporters of one session.
pub struct Telemetry {
    meter_provider: SdkMeterProvider,
    tracer_provider: SdkTracerProvider,
    points: Arc<Mutex<Vec<Point>>>,
    failures: Arc<Failures>,
    options: OtlpOptions,
    leaking_seen: HashSet<String>,
    window_start: SystemTime,
    // Last: gRPC connections live on it and must go before it.
    runtime: tokio::runtime::Runtime,
}

impl Telemetry {
    pub fn start(options: OtlpOptions, target: &Target) -> Result<Telemetry, OtelError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("leaktrace-otlp")
            .enable_all()
            .build()
            .map_err(|err| OtelError(err.to_string()))?;
        // gRPC channels start their background tasks on the runtime they are built in.
        let _guard = runtime.enter();
        let failures = Arc::new(Failures::default());
        let resource = resource(target);

        let (metric_exporter, span_exporter) = build_exporters(options.endpoint.as_deref())
            .map_err(|err| OtelError(err.to_string()))?;

        let mut reader = PeriodicReader::builder(CountingMetricExporter {
            inner: metric_exporter,
            failures: failures.clone(),
        });
        if std::env::var("OTEL_METRIC_EXPORT_INTERVAL").is_err() {
            reader = reader.with_interval(options.default_interval);
        }
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(reader.build())
            .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(CountingSpanExporter {
                inner: span_exporter,
                failures: failures.clone(),
            })
            .build();

        let points: Arc<Mutex<Vec<Point>>> = Arc::default();
        let meter = meter_provider.meter("leaktrace");
        for instrument in metrics::INSTRUMENTS {
            register(&meter, instrument, points.clone(), failures.clone());
        }
        Ok(Telemetry {
            meter_provider,
            tracer_provider,
            points,
            failures,
            options,
            leaking_seen: HashSet::new(),
            window_start: SystemTime::now(),
            runtime,
        })
    }

    /// OTLP exports that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.count.load(Ordering::Relaxed)
    }

    /// Publishes one analysis: the metric points, the window's span with its suspects, and
    /// an immediate span for every stack newly judged leaking.
    pub fn publish(&mut self, report: &Report, probes_attached: u64) {
        let points = metrics::points(
            report,
            self.options.max_stacks,
            probes_attached,
            self.failures(),
        );
        if let Ok(mut shared) = self.points.lock() {
            *shared = points;
        }
        let tracer = self.tracer_provider.tracer("leaktrace");
        let now = SystemTime::now();
        let mut span = tracer
            .span_builder("memory.leak.analysis")
            .with_start_time(self.window_start)
            .with_attributes(window_attributes(report))
            .start(&tracer);
        let mut newly_leaking = Vec::new();
        for stack in report
            .stacks
            .iter()
            .filter(|stack| metrics::is_suspect(stack))
        {
            span.add_event("memory.leak.suspect", suspect_attributes(stack));
            let id = crate::model::stack_id(stack);
            if stack.verdict == Verdict::Leaking && self.leaking_seen.insert(id) {
                newly_leaking.push(stack);
            }
        }
        for suspect in &report.suspects {
            span.add_event(
                "memory.leak.scope_suspect",
                scope_suspect_attributes(suspect),
            );
        }
        span.end_with_timestamp(now);
        self.window_start = now;
        if newly_leaking.is_empty() {
            return;
        }
        for stack in newly_leaking {
            let mut detected = tracer
                .span_builder("memory.leak.detected")
                .with_attributes(window_attributes(report))
                .start(&tracer);
            detected.add_event("memory.leak.suspect", suspect_attributes(stack));
            detected.end();
        }
        // News of a leak does not wait for the batch delay, and the session does not wait
        // on the receiver either.
        let provider = self.tracer_provider.clone();
        self.runtime.spawn_blocking(move || {
            let _ = provider.force_flush();
        });
    }

    /// A span per scope call that still held at least --scope-span-threshold when it
    /// returned, with what its scope's calls keep as events.
    pub fn publish_scope_calls(&self, calls: &[ScopeCallSpan]) {
        let tracer = self.tracer_provider.tracer("leaktrace");
        for call in calls {
            let mut attributes = vec![
                KeyValue::new("code.function.name", call.function.clone()),
                KeyValue::new("thread.id", i64::from(call.tid)),
                KeyValue::new("memory.allocated_bytes", call.allocated_bytes as i64),
                KeyValue::new("memory.retained_bytes", call.retained_bytes as i64),
            ];
            if let Some(label) = &call.label {
                attributes.push(KeyValue::new("leaktrace.scope.label", label.clone()));
            }
            let mut span = tracer
                .span_builder("memory.scope.call")
                .with_start_time(call.start)
                .with_attributes(attributes)
                .start(&tracer);
            for (bytes, frames) in &call.retaining_stacks {
                let frames: Vec<opentelemetry::StringValue> =
                    frames.iter().cloned().map(Into::into).collect();
                span.add_event(
                    "memory.scope.retaining_stack",
                    vec![
                        KeyValue::new("memory.retained_bytes", *bytes as i64),
                        KeyValue::new("leaktrace.frames", OtelValue::Array(frames.into())),
                    ],
                );
            }
            span.end_with_timestamp(call.end);
        }
    }

    /// Exports what is pending and stops (bounded by the exporters' timeouts). Runs on a
    /// thread of its own: a tokio runtime cannot be shut down from inside another one.
    pub fn shutdown(self) {
        let Telemetry {
            meter_provider,
            tracer_provider,
            runtime,
            ..
        } = self;
        let stopping = std::thread::spawn(move || {
            let _ = tracer_provider.force_flush();
            let _ = meter_provider.force_flush();
            let _ = meter_provider.shutdown();
            let _ = tracer_provider.shutdown();
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        let _ = stopping.join();
    }
}

/// The OTLP exporters. Without an endpoint from the command line, the standard variables
/// decide everything (protocol, endpoint, headers, TLS, timeout). With one, the transport
/// still follows OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf by default, as the spec says).
fn build_exporters(
    endpoint: Option<&str>,
) -> Result<
    (
        opentelemetry_otlp::MetricExporter,
        opentelemetry_otlp::SpanExporter,
    ),
    opentelemetry_otlp::ExporterBuildError,
> {
    use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};

    let Some(endpoint) = endpoint else {
        return Ok((
            MetricExporter::builder().build()?,
            SpanExporter::builder().build()?,
        ));
    };
    let grpc = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").is_ok_and(|p| p.trim() == "grpc");
    if grpc {
        Ok((
            MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?,
            SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?,
        ))
    } else {
        // Over HTTP the signal's path follows the base endpoint, as for
        // OTEL_EXPORTER_OTLP_ENDPOINT.
        let base = endpoint.trim_end_matches('/');
        Ok((
            MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}/v1/metrics"))
                .build()?,
            SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}/v1/traces"))
                .build()?,
        ))
    }
}

/// One observable instrument reading the shared points (and the live failure count).
fn register(
    meter: &opentelemetry::metrics::Meter,
    instrument: Instrument,
    points: Arc<Mutex<Vec<Point>>>,
    failures: Arc<Failures>,
) {
    let matching = move || -> Vec<(f64, Vec<KeyValue>)> {
        let Ok(points) = points.lock() else {
            return Vec::new();
        };
        points
            .iter()
            .filter(|point| point.instrument == instrument)
            .map(|point| {
                let value = if instrument == metrics::EXPORT_FAILURES {
                    failures.count.load(Ordering::Relaxed) as f64
                } else {
                    point.value
                };
                (value, attributes(point))
            })
            .collect()
    };
    match instrument.kind {
        Kind::Gauge => {
            meter
                .f64_observable_gauge(instrument.name)
                .with_unit(instrument.unit)
                .with_description(instrument.description)
                .with_callback(move |observer| {
                    for (value, attributes) in matching() {
                        observer.observe(value, &attributes);
                    }
                })
                .build();
        }
        Kind::Counter => {
            meter
                .u64_observable_counter(instrument.name)
                .with_unit(instrument.unit)
                .with_description(instrument.description)
                .with_callback(move |observer| {
                    for (value, attributes) in matching() {
                        observer.observe(value as u64, &attributes);
                    }
                })
                .build();
        }
    }
}

/// The figures of an analysis window.
fn window_attributes(report: &Report) -> Vec<KeyValue> {
    let count = |verdict: Verdict| report.count(verdict) as i64;
    let outstanding = report.outstanding_bytes();
    let mut attributes = vec![
        KeyValue::new("process.pid", i64::from(report.target.pid)),
        KeyValue::new("leaktrace.duration_s", report.duration_s),
        KeyValue::new("leaktrace.stacks.leaking", count(Verdict::Leaking)),
        KeyValue::new("leaktrace.stacks.suspect", count(Verdict::Suspect)),
        KeyValue::new("leaktrace.stacks.growing", count(Verdict::Growing)),
        KeyValue::new("leaktrace.outstanding_bytes", outstanding as i64),
        KeyValue::new(
            "leaktrace.events.dropped",
            report.dropped.values().sum::<u64>() as i64,
        ),
    ];
    if let Some(process) = &report.process
        && let Some(last) = process.samples.last()
    {
        attributes.push(KeyValue::new("process.memory.usage", last.rss_bytes as i64));
        attributes.push(KeyValue::new(
            "leaktrace.process.memory.growth_rate",
            process.rss_growth_bytes_per_s,
        ));
    }
    attributes
}

/// One scope call that kept memory, for its span.
#[derive(Clone, Debug)]
pub struct ScopeCallSpan {
    pub function: String,
    pub label: Option<String>,
    pub tid: u32,
    pub start: SystemTime,
    pub end: SystemTime,
    pub allocated_bytes: u64,
    pub retained_bytes: u64,
    /// What its scope (and label) keeps, by stack: (bytes, frames innermost first).
    pub retaining_stacks: Vec<(u64, Vec<String>)>,
}

/// What a scope suspect's span event carries.
fn scope_suspect_attributes(suspect: &Suspect) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("code.function.name", suspect.function.clone()),
        KeyValue::new("leaktrace.suspect.share", suspect.share),
    ];
    if let Some(label) = &suspect.label {
        attributes.push(KeyValue::new("leaktrace.scope.label", label.clone()));
    }
    if let Some(id) = &suspect.stack_id {
        attributes.push(KeyValue::new("leaktrace.stack.id", id.clone()));
    }
    let reasons: Vec<opentelemetry::StringValue> =
        suspect.reasons.iter().cloned().map(Into::into).collect();
    attributes.push(KeyValue::new(
        "leaktrace.suspect.reasons",
        OtelValue::Array(reasons.into()),
    ));
    attributes
}

/// What a suspect stack's span event carries.
fn suspect_attributes(stack: &StackReport) -> Vec<KeyValue> {
    let mut attributes: Vec<KeyValue> = metrics::stack_attributes(stack)
        .iter()
        .map(|(key, value)| attribute(key, value))
        .collect();
    attributes.extend([
        KeyValue::new(
            "leaktrace.outstanding_bytes",
            stack.outstanding_bytes as i64,
        ),
        KeyValue::new(
            "leaktrace.outstanding_allocations",
            stack.outstanding_allocs as i64,
        ),
        KeyValue::new("leaktrace.growth_bytes_per_s", stack.growth_bytes_per_s),
        KeyValue::new("leaktrace.confidence", stack.confidence),
    ]);
    if !stack.why.is_empty() {
        attributes.push(KeyValue::new("leaktrace.why", stack.why.clone()));
    }
    if let Some(onset) = stack.growth_onset {
        attributes.push(KeyValue::new("leaktrace.growth_onset_s", onset));
    }
    if let Some(age) = stack.oldest_age_s {
        attributes.push(KeyValue::new("leaktrace.oldest_age_s", age));
    }
    if let Some(reachability) = &stack.reachability {
        for (class, _, totals) in reachability.classes() {
            attributes.push(KeyValue::new(
                format!("leaktrace.reachability.{class}_bytes"),
                totals.bytes as i64,
            ));
        }
    }
    let frames: Vec<opentelemetry::StringValue> = metrics::frame_lines(stack)
        .into_iter()
        .map(Into::into)
        .collect();
    attributes.push(KeyValue::new(
        "leaktrace.frames",
        OtelValue::Array(frames.into()),
    ));
    attributes
}
