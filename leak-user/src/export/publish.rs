//! One path for live exports, taken by `attach` and `run` sessions and by `watch` alike: a
//! report of one target goes to its OTLP exporters (metrics, span events, scope-call spans)
//! and to the Prometheus endpoint's /metrics, with the same figures in both.
use crate::{
    export::{
        metrics,
        otel::{ScopeCallSpan, Telemetry},
        prometheus::Endpoint,
    },
    model::{Report, Target},
};

/// What one publication carries besides the report.
pub struct Publication<'a> {
    pub report: &'a Report,
    /// Stacks exported (--export-top), at least those the report lists.
    pub export_top: usize,
    /// Probes in place, for the `leaktrace.probes.attached` gauge (0 in watch's gear 1).
    pub probes_attached: u64,
    /// Scope calls that returned holding memory since the last publication (--scope).
    pub scope_calls: &'a [ScopeCallSpan],
}

/// Hands `publication` about `target` to the exporters it has: its OTLP exporters, and the
/// endpoint (shared by every target in `watch`).
pub fn publish(
    target: &Target,
    mut telemetry: Option<&mut Telemetry>,
    endpoint: Option<&Endpoint>,
    publication: &Publication<'_>,
) {
    if let Some(telemetry) = telemetry.as_deref_mut() {
        telemetry.publish(publication.report, publication.probes_attached);
        if !publication.scope_calls.is_empty() {
            telemetry.publish_scope_calls(publication.scope_calls);
        }
    }
    if let Some(endpoint) = endpoint {
        // What the OTLP exporters failed to send so far.
        let failures = telemetry.map_or(0, |telemetry| telemetry.failures());
        endpoint.publish_target(
            target,
            metrics::points(
                publication.report,
                publication.export_top,
                publication.probes_attached,
                failures,
            ),
        );
    }
}
