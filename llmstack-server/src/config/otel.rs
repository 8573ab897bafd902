//! Where request spans go: `--otel-endpoint` (production-stack's `host:4317` is
//! OTLP/gRPC), `--otel-protocol`, `--otel-secure`.

use llmstack_core::SettingErrors;

/// Where request spans are exported (feature `otel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    /// The collector: a gRPC endpoint URL (`http://collector:4317`, `https://` with
    /// TLS) or an OTLP/HTTP base URL (spans go to `/v1/traces`).
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
    /// The protocol.
    pub protocol: OtelProtocol,
}

/// An OTLP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtelProtocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

/// The collector URL and protocol for `--otel-endpoint`, `--otel-protocol` and
/// `--otel-secure` (errors pushed to `errors`).
pub(super) fn otel_config(
    endpoint: &str,
    protocol: Option<&str>,
    secure: bool,
    errors: &mut SettingErrors,
) -> Option<(String, OtelProtocol)> {
    let schemed = endpoint.contains("://");
    let uri: Option<http::Uri> = if schemed {
        endpoint.parse().ok()
    } else {
        format!("http://{endpoint}").parse().ok()
    };
    let Some(uri) = uri.filter(|u| u.host().is_some()) else {
        errors.push(
            "otel-endpoint",
            format!("--otel-endpoint `{endpoint}` is not host:port or a URL"),
        );
        return None;
    };
    let protocol = match protocol {
        Some("grpc") => OtelProtocol::Grpc,
        Some("http/protobuf" | "http") => OtelProtocol::HttpProtobuf,
        Some(other) => {
            errors.push(
                "otel-protocol",
                format!("--otel-protocol `{other}` is not grpc or http/protobuf"),
            );
            return None;
        }
        None if !schemed || uri.port_u16() == Some(4317) => OtelProtocol::Grpc,
        None => OtelProtocol::HttpProtobuf,
    };
    let https = uri.scheme_str() == Some("https") || secure;
    match protocol {
        OtelProtocol::Grpc => {
            let authority = uri.authority().map_or(endpoint, |a| a.as_str());
            let scheme = if https { "https" } else { "http" };
            Some((format!("{scheme}://{authority}"), protocol))
        }
        OtelProtocol::HttpProtobuf if https => {
            errors.push(
                "otel-secure",
                "TLS is for OTLP/gRPC here (--otel-protocol grpc); OTLP/HTTP goes in plain text \
                 (to a collector beside the router)",
            );
            None
        }
        OtelProtocol::HttpProtobuf => Some((endpoint.to_owned(), protocol)),
    }
}
