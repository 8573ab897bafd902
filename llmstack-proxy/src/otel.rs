//! W3C trace context (feature `otel`): taken from clients, passed on to engines.

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes the client's trace context (if its headers carry one) the parent of `span`.
/// Nothing to do (and nothing paid) when the span is disabled: no OpenTelemetry layer
/// is installed and the log level is above debug.
pub(crate) fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = ?e, "trace context not adopted");
    }
}

/// Writes the current span's trace context into `headers` (`traceparent`, `tracestate`),
/// replacing the client's, so the engine's spans hang under the router's. Without an
/// enabled request span the client's headers pass as they are.
pub(crate) fn inject_current(headers: &mut HeaderMap) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}
