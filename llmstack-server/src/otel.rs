//! OpenTelemetry (feature `otel`): request spans exported over OTLP/gRPC (TLS with the
//! system's roots for an `https://` endpoint) or OTLP/HTTP. (The W3C trace context is
//! taken from clients and passed on to engines by `llmstack-proxy`.)

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;

use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::{OtelConfig, OtelProtocol};

/// Flushes and stops the exporter when dropped (call [`OtelGuard::shutdown`] from async
/// code to do it without blocking a runtime thread).
#[derive(Debug)]
pub struct OtelGuard(Option<SdkTracerProvider>);

/// The tracing layer exporting spans as `config` says (for OTLP/HTTP, to
/// `<endpoint>/v1/traces`), named `config.service_name`. Must be called inside a Tokio
/// runtime (the batch exporter runs on it).
pub fn layer<S>(
    config: &OtelConfig,
) -> Result<(impl Layer<S>, OtelGuard), opentelemetry_otlp::ExporterBuildError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let exporter = match config.protocol {
        OtelProtocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(Duration::from_secs(10))
                .with_endpoint(config.endpoint.clone());
            if config.endpoint.starts_with("https://") {
                builder = builder.with_tls_config(ClientTlsConfig::new().with_enabled_roots());
            }
            builder.build()?
        }
        OtelProtocol::HttpProtobuf => {
            let url = format!("{}/v1/traces", config.endpoint.trim_end_matches('/'));
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(
                    opentelemetry_http::hyper::HyperClient::with_default_connector(
                        Duration::from_secs(10),
                        None,
                    ),
                )
                .with_endpoint(url)
                .build()?
        }
    };
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("llmstack-server");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("llmstack_server", tracing::Level::DEBUG)
                .with_target("llmstack_proxy", tracing::Level::DEBUG),
        );
    Ok((layer, OtelGuard(Some(provider))))
}

impl OtelGuard {
    /// Exports what is buffered and stops the exporter, off the runtime's threads.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.0.take() {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "OpenTelemetry shutdown");
            }
        }
    }
}
