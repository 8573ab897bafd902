//! W3C trace context (feature `otel`): taken from clients, passed on to engines.

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes the client's trace context (if its headers carry one) the parent of `span`.
pub(crate) fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = ?e, "trace context not adopted");
    }
}

/// Writes the current span's trace context into `headers` (`traceparent`, `tracestate`),
/// replacing the client's, so the engine's spans hang under the router's.
pub(crate) fn inject_current(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}
