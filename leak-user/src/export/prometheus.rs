//! `--prometheus ADDR`: the metrics of [`crate::export::metrics`] on `/metrics` in the Prometheus text
//! format, encoded by the prometheus-client crate from the last analysis at each scrape.
//! Names follow the OpenTelemetry-to-Prometheus rules: dots become underscores, the unit is
//! a suffix (`_bytes`, `_bytes_per_second`), counters end in `_total`. Served from a thread
//! of its own, so a slow scraper never holds up tracing.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    export::metrics::{INSTRUMENTS, Instrument, Kind, Point, Value},
    model::Target,
};

#[derive(Debug, thiserror::Error)]
#[error("cannot serve Prometheus metrics on {addr}: {reason}")]
pub struct PrometheusError {
    addr: String,
    reason: String,
}

/// "9464", ":9464" or "HOST:PORT"; a bare port binds loopback only.
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        format!(
            "'{text}' is not an address to listen on: use a port (9464) or HOST:PORT (0.0.0.0:9464)"
        )
    })
}

/// The Prometheus name of an instrument, before prometheus-client adds unit and `_total`.
fn base_name(instrument: &Instrument) -> String {
    instrument.name.replace('.', "_")
}

fn unit(instrument: &Instrument) -> Option<Unit> {
    match instrument.unit {
        "By" => Some(Unit::Bytes),
        "By/s" => Some(Unit::Other("bytes_per_second".into())),
        "s" => Some(Unit::Seconds),
        _ => None,
    }
}

fn labels(attributes: &[(&'static str, Value)]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Text(text) => text.clone(),
                Value::Int(number) => number.to_string(),
            };
            (key.replace('.', "_"), value)
        })
        .collect()
}

/// What scrapes see: the last points of each target. With several targets (`watch`), every
/// point also carries its target's `process_pid`, so their series stay apart.
#[derive(Debug, Default)]
pub struct Published {
    targets: std::collections::BTreeMap<u32, (Target, Vec<Point>)>,
    label_with_pid: bool,
}

impl Published {
    /// One target's points, replacing its last ones.
    pub fn set(&mut self, target: &Target, points: Vec<Point>) {
        self.targets.insert(target.pid, (target.clone(), points));
    }
}

/// Encodes the current points at each scrape.
#[derive(Debug)]
struct PointsCollector {
    published: Arc<Mutex<Published>>,
}

impl Collector for PointsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (targets, label_with_pid): (Vec<(Target, Vec<Point>)>, bool) =
            match self.published.lock() {
                Ok(published) => (
                    published.targets.values().cloned().collect(),
                    published.label_with_pid,
                ),
                Err(_) => return Ok(()),
            };
        if !targets.is_empty() {
            let mut family = encoder.encode_descriptor(
                "leaktrace_target_info",
                "The traced process: 1, with its identity as labels.",
                None,
                MetricType::Gauge,
            )?;
            for (target, _) in &targets {
                ConstGauge::new(1i64).encode(family.encode_family(&target_labels(target))?)?;
            }
        }
        for instrument in INSTRUMENTS {
            let mine: Vec<(u32, &Point)> = targets
                .iter()
                .flat_map(|(target, points)| points.iter().map(move |point| (target.pid, point)))
                .filter(|(_, point)| point.instrument == instrument)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let name = base_name(&instrument);
            let unit = unit(&instrument);
            let metric_type = match instrument.kind {
                Kind::Gauge => MetricType::Gauge,
                Kind::Counter => MetricType::Counter,
            };
            let mut family = encoder.encode_descriptor(
                &name,
                instrument.description,
                unit.as_ref(),
                metric_type,
            )?;
            for (pid, point) in mine {
                let mut labels = labels(&point.attributes);
                if label_with_pid {
                    labels.insert(0, ("process_pid".to_string(), pid.to_string()));
                }
                let metric = family.encode_family(&labels)?;
                match instrument.kind {
                    Kind::Gauge => ConstGauge::new(point.value).encode(metric)?,
                    Kind::Counter => ConstCounter::new(point.value as u64).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}

/// The text a scrape returns.
pub fn render(published: Arc<Mutex<Published>>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(PointsCollector { published }));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

fn target_labels(target: &Target) -> Vec<(String, String)> {
    vec![
        ("process_pid".into(), target.pid.to_string()),
        (
            "process_executable_name".into(),
            target.executable_name().to_string(),
        ),
    ]
}

/// A running /metrics endpoint.
pub struct Endpoint {
    published: Arc<Mutex<Published>>,
    pub local_addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
}

impl Endpoint {
    /// An endpoint for one target (`attach`, `run`).
    pub fn start(addr: SocketAddr) -> Result<Endpoint, PrometheusError> {
        Endpoint::serve(addr, false)
    }

    /// An endpoint for the targets of `watch`: see `publish_target` and `forget`.
    pub fn start_for_many(addr: SocketAddr) -> Result<Endpoint, PrometheusError> {
        Endpoint::serve(addr, true)
    }

    fn serve(addr: SocketAddr, label_with_pid: bool) -> Result<Endpoint, PrometheusError> {
        let error = |reason: String| PrometheusError {
            addr: addr.to_string(),
            reason,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("leaktrace-prometheus")
            .enable_all()
            .build()
            .map_err(|err| error(err.to_string()))?;
        // Bound here so a taken port is an error now; served on the endpoint's own runtime
        // (this may run inside the session's runtime, which must not block on another).
        let listener = std::net::TcpListener::bind(addr).map_err(|err| error(err.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|err| error(err.to_string()))?;
        let local_addr = listener
            .local_addr()
            .map_err(|err| error(err.to_string()))?;
        let published = Arc::new(Mutex::new(Published {
            targets: Default::default(),
            label_with_pid,
        }));
        let shared = published.clone();
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                log::warn!("cannot serve Prometheus metrics on {local_addr}");
                return;
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let published = shared.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), serve(stream, published))
                        .await;
                });
            }
        });
        Ok(Endpoint {
            published,
            local_addr,
            runtime,
        })
    }

    /// Replaces one target's points.
    pub fn publish_target(&self, target: &Target, points: Vec<Point>) {
        if let Ok(mut published) = self.published.lock() {
            published.set(target, points);
        }
    }

    /// Drops a target that is no longer watched.
    pub fn forget(&self, pid: u32) {
        if let Ok(mut published) = self.published.lock() {
            published.targets.remove(&pid);
        }
    }

    /// Stops serving (from a thread of its own: a tokio runtime cannot be shut down from
    /// inside another one).
    pub fn shutdown(self) {
        let runtime = self.runtime;
        let _ =
            std::thread::spawn(move || runtime.shutdown_timeout(Duration::from_millis(200))).join();
    }
}

/// Answers one HTTP/1.x request: GET /metrics, or 404.
async fn serve(
    mut stream: tokio::net::TcpStream,
    published: Arc<Mutex<Published>>,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, content_type, body) = if path == "/metrics" || path.starts_with("/metrics?") {
        (
            "200 OK",
            // What prometheus-client writes: OpenMetrics text (Prometheus asks for it).
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(published),
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "leaktrace serves /metrics\n".to_string(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{export::metrics, export::report::fixtures::sample_report};

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr("9464"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert_eq!(
            parse_listen_addr(":9464"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert_eq!(
            parse_listen_addr("0.0.0.0:80"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 80)))
        );
        assert!(parse_listen_addr("localhost").is_err());
    }

    #[test]
    fn text_format_names_units_and_labels() {
        let report = sample_report();
        let mut published = Published::default();
        published.set(&report.target, metrics::points(&report, 3, 4, 0));
        let text = render(Arc::new(Mutex::new(published)));
        insta::assert_snapshot!(text);
        assert!(
            text.contains("# TYPE process_memory_usage_bytes gauge"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE leaktrace_stack_allocations counter"),
            "{text}"
        );
        assert!(
            text.contains("leaktrace_stack_allocations_total{"),
            "{text}"
        );
        assert!(
            text.contains("code_function_name=\"leak_slowly\""),
            "{text}"
        );
        assert!(text.contains("leaktrace_stack_leaking{"), "{text}");
        assert!(
            text.contains("leaktrace_target_info{process_pid=\"42\""),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn several_targets_keep_their_series_apart() {
        let report = sample_report();
        let mut other = report.target.clone();
        other.pid = 43;
        let mut published = Published {
            label_with_pid: true,
            ..Published::default()
        };
        published.set(&report.target, metrics::points(&report, 3, 4, 0));
        published.set(&other, metrics::points(&report, 3, 4, 0));
        let text = render(Arc::new(Mutex::new(published)));
        for pid in [42, 43] {
            assert!(
                text.contains(&format!(
                    "process_memory_usage_bytes{{process_pid=\"{pid}\"}}"
                )),
                "{text}"
            );
            assert!(
                text.contains(&format!("leaktrace_target_info{{process_pid=\"{pid}\"")),
                "{text}"
            );
        }
        assert_eq!(text.matches("# TYPE process_memory_usage_bytes").count(), 1);
    }
}
