//! OpenTelemetry (feature `otel`): spans reach an OTLP collector, over gRPC (with
//! production-stack's `--otel-endpoint host:4317`) and over HTTP, under the client's
//! trace, and the engine receives the router's span as its parent.
//!
//! The collectors are stand-ins, because no OpenTelemetry Collector is installable on this
//! machine: over gRPC, the official generated `TraceService` server (opentelemetry-proto)
//! on tonic's server; over HTTP, a receiver that decodes the protobuf bodies it is sent
//! with the official types. The "engine" records the request headers it receives (the
//! simulator does not expose them). All speak real HTTP/2 or HTTP/1.1 on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::mpsc;

use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: every POST body, decoded, goes to the channel.
async fn collector() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        tx.send(ExportTraceServiceRequest::decode(body).unwrap())
                            .ok();
                        let mut resp = http::Response::new(Full::new(Bytes::new()));
                        resp.headers_mut()
                            .insert("content-type", "application/x-protobuf".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                    .ok();
            });
        }
    });
    (url, rx)
}

/// An "engine" on a thread: answers /health and /v1/models, records the headers of
/// every other request and answers it with `{}`.
fn recording_engine() -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut head = String::new();
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        head.push_str(&line);
                        line.clear();
                    }
                    if head.is_empty() {
                        return;
                    }
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    let answer = if head.starts_with("GET /v1/models") {
                        r#"{"object":"list","data":[{"id":"m","object":"model"}]}"#
                    } else {
                        if !head.starts_with("GET ") {
                            tx.send(head.clone()).ok();
                        }
                        "{}"
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if stream.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

/// The OTLP/gRPC collector: each export request goes to the channel.
struct GrpcCollector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.send(request.into_inner()).ok();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A gRPC collector on a loopback port: its `host:port`.
async fn grpc_collector() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(GrpcCollector(tx)))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    (addr.to_string(), rx)
}

#[tokio::test]
async fn spans_are_exported_over_http_under_the_client_trace_and_passed_on() {
    let (collector_url, spans) = collector().await;
    exported_and_passed_on(&collector_url, spans).await;
}

#[tokio::test]
async fn spans_are_exported_over_grpc_to_a_production_stack_endpoint() {
    let (host_port, spans) = grpc_collector().await;
    exported_and_passed_on(&host_port, spans).await;
}

/// Starts the router exporting to `endpoint`, sends a request under a client trace and
/// checks the engine's traceparent and the span the collector gets on `spans`.
async fn exported_and_passed_on(
    endpoint: &str,
    mut spans: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let (engine_url, heads) = recording_engine();
    let (mut child, url) = crate::binary::start_with_env(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--static-backends",
            &engine_url,
            "--static-models",
            "m",
            "--otel-endpoint",
            endpoint,
            "--otel-service-name",
            "router-under-test",
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&c, &format!("{url}/ready")).await.status == 200
        })
        .await
    );
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let a = send(
        &c,
        http::Method::POST,
        &format!("{url}/v1/completions"),
        &[
            ("content-type", "application/json"),
            ("traceparent", &traceparent),
        ],
        r#"{"model":"m","prompt":"x"}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());

    // The engine got a traceparent in the same trace, with the router's span as parent.
    let head = heads.recv_timeout(Duration::from_secs(5)).unwrap();
    let sent = head
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent in {head}"));
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[1], TRACE, "same trace");
    assert_ne!(parts[2], PARENT, "the router's own span is the parent");

    // The router's span reaches the collector, child of the client's span.
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(req) = spans.recv().await {
            for rs in &req.resource_spans {
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        // Readiness polls made spans too: find this request's.
                        if span.name == "request" && hex(&span.trace_id) == TRACE {
                            return Some((rs.clone(), span.clone()));
                        }
                    }
                }
            }
        }
        None
    })
    .await
    .expect("a span within 15 s (batch export)")
    .unwrap();
    let (resource, span) = found;
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(
        hex(&span.span_id),
        parts[2],
        "the span the engine was told about"
    );
    let service = resource
        .resource
        .unwrap()
        .attributes
        .into_iter()
        .find(|kv| kv.key == "service.name")
        .unwrap();
    assert!(format!("{:?}", service.value).contains("router-under-test"));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
