//! [`Forward`]: the innermost service, sending a routed request to its engine.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use llmstack_core::{Endpoint, EndpointId, Error, RoutedTo, TimeoutPhase, UpstreamFailure};
use llmstack_metrics::names;
use tokio::time::Instant;
use tower_service::Service;

use crate::body::ForwardBody;
use crate::headers::strip_hop_by_hop;
use crate::pool::{Link, Pools};
use crate::{Counters, ProxyConfig};

/// Sends each request to the engine in its [`RoutedTo`] extension and streams the
/// answer back as a [`ForwardBody`].
///
/// - **Connections**: HTTP/1 connections from an idle pool per engine (reused only while
///   younger than 4 s, uvicorn's keep-alive is 5 s, and only to the engine's current
///   address), driven by the task of the request that uses them, so engine chunks and
///   client writes never cross tasks. A request that a reused connection could not even
///   write is sent again on a new connection to the same engine; nothing else is
///   retried here (that is [`Retry`](crate::Retry)'s business).
/// - **What goes out**: the request's method, path and query under the engine's base
///   URL, its headers without hop-by-hop ones and `Content-Length`, `Host` of the
///   engine, `Authorization` replaced by the engines' key when
///   [`ProxyConfig::engine_authorization`] is set, the body bytes as they are.
/// - **Deadlines**: connect ([`ProxyConfig::connect_timeout`]), response head
///   ([`ProxyConfig::first_byte_timeout`]), and between two body chunks
///   ([`ProxyConfig::idle_timeout`], enforced by the body). No total cap.
/// - **Failures** never fail the service: they are answered with the OpenAI error
///   response ([`Error::to_response`]: 502 for connect and protocol errors, 504 for
///   deadlines) carrying an [`UpstreamFailure`] extension, which says whether another
///   engine may be tried, and counted in `llmstack_upstream_errors_total{engine,kind}`.
///   A request without [`RoutedTo`] is a 500.
///
/// Always ready; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Forward {
    shared: Arc<Shared>,
}

struct Shared {
    pools: Arc<Pools>,
    config: ProxyConfig,
    counters: Arc<Counters>,
}

/// The future of [`Forward`].
pub type ForwardFuture =
    Pin<Box<dyn Future<Output = Result<Response<ForwardBody>, Infallible>> + Send>>;

// === impl Forward ===

impl Forward {
    /// A forwarder with these deadlines and a new connection pool.
    pub fn new(config: ProxyConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                pools: Arc::new(Pools::new(
                    config.connect_timeout,
                    config.max_idle_connections,
                )),
                config,
                counters: Arc::default(),
            }),
        }
    }

    /// Its event counts (shared with [`Retry`](crate::Retry) when given to it).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.shared.counters
    }

    /// Engine connections opened so far (requests beyond that reused one).
    pub fn connections_opened(&self) -> u64 {
        self.shared.pools.opened()
    }

    /// Drops the idle connections of engines for which `exists` is false (call it when
    /// discovery removes engines; connections to an engine's old address are never
    /// reused anyway).
    pub fn retain(&self, exists: impl FnMut(&EndpointId) -> bool) {
        self.shared.pools.retain(exists);
    }

    /// Closes idle connections older than the reuse limit, every second, forever:
    /// spawn it next to the forwarder so that after a burst no socket stays open that
    /// the engine already closed on its side.
    pub fn sweep_idle(&self) -> impl Future<Output = ()> + Send + 'static {
        let pools = Arc::clone(&self.shared.pools);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                pools.sweep();
            }
        }
    }
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("config", &self.shared.config)
            .field("counters", &self.shared.counters)
            .finish_non_exhaustive()
    }
}

impl Service<Request<Bytes>> for Forward {
    type Response = Response<ForwardBody>;
    type Error = Infallible;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { Ok(shared.forward(req).await) })
    }
}

// === impl Shared ===

impl Shared {
    async fn forward(&self, req: Request<Bytes>) -> Response<ForwardBody> {
        let Some(routed) = req.extensions().get::<RoutedTo>() else {
            return Error::Unrouted.to_response().map(ForwardBody::full);
        };
        let endpoint = Arc::clone(&routed.endpoint);
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::CONTENT_LENGTH);
        if let Some(key) = &self.config.engine_authorization {
            parts.headers.insert(header::AUTHORIZATION, key.clone());
        }
        #[cfg(feature = "otel")]
        crate::otel::inject_current(&mut parts.headers);
        let path_and_query = parts.uri.path_and_query().cloned();
        let path_and_query = path_and_query.as_ref().map_or("/", |pq| pq.as_str());
        let sent = match outgoing(&endpoint, parts, path_and_query, body) {
            Ok(req) => self.send(&endpoint, req).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok((resp, link)) => {
                let (mut head, body) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                let sse = head
                    .headers
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let body = ForwardBody::upstream(
                    body,
                    link,
                    Arc::clone(&self.pools),
                    endpoint.id.clone(),
                    self.config.idle_timeout,
                    Arc::clone(&self.counters),
                    sse,
                );
                Response::from_parts(head, body)
            }
            Err(e) => {
                metrics::counter!(names::UPSTREAM_ERRORS, "engine" => endpoint.id.to_string(), "kind" => e.label())
                    .increment(1);
                tracing::warn!(endpoint = %endpoint.id, error = %e, "engine request failed");
                let mut resp = e.to_response().map(ForwardBody::full);
                resp.extensions_mut()
                    .insert(UpstreamFailure::of(endpoint.id.clone(), &e));
                resp
            }
        }
    }

    /// Sends `req` to `endpoint` and waits for the response head (within the
    /// first-byte deadline), classifying failures. A request that a reused idle
    /// connection could not even write (the engine had closed it) is sent once more on
    /// a new connection.
    async fn send(
        &self,
        endpoint: &Endpoint,
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Link), Error> {
        let deadline = Instant::now() + self.config.first_byte_timeout;
        let attempt = async {
            let mut link = self.pools.link(endpoint).await?;
            let (e, unsent) = match link.exchange(req).await {
                Ok(resp) => return Ok((resp, link)),
                Err(failed) => failed,
            };
            // Only a request hyper gives back unwritten goes to the same engine again;
            // one that was written may have been received, so it takes the retry
            // layer's path, which never returns to this engine.
            let (Some(req), true) = (unsent, link.reused) else {
                return Err(Error::Upstream {
                    endpoint: endpoint.id.clone(),
                    source: e.into(),
                });
            };
            let mut link = self.pools.connect(endpoint).await?;
            match link.exchange(req).await {
                Ok(resp) => Ok((resp, link)),
                Err((e, _)) => Err(Error::Upstream {
                    endpoint: endpoint.id.clone(),
                    source: e.into(),
                }),
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => {
                if let Err(Error::Timeout { .. }) = &result {
                    self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                result
            }
            Err(_) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::Timeout {
                    endpoint: endpoint.id.clone(),
                    phase: TimeoutPhase::FirstByte,
                })
            }
        }
    }
}

/// The request for `endpoint`: origin-form target `path_and_query` under the
/// endpoint's path prefix, `Host` of the endpoint, the client's end-to-end headers, the
/// original bytes.
fn outgoing(
    endpoint: &Endpoint,
    mut parts: http::request::Parts,
    path_and_query: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, Error> {
    let target = endpoint.path_for(path_and_query).map(Uri::from);
    parts.uri = target.map_err(|e| Error::Upstream {
        endpoint: endpoint.id.clone(),
        source: e.into(),
    })?;
    if let Some(host) = endpoint
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, host);
    }
    parts.extensions = http::Extensions::new();
    // Engines get HTTP/1.1 whatever the client spoke (the connection is ours, pooled).
    parts.version = http::Version::HTTP_11;
    Ok(Request::from_parts(parts, Full::new(body)))
}
