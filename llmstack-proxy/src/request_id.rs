//! [`RequestIdLayer`]: every request has an id, a span, and its id on the response.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::headers::{REQUEST_ID, request_id};

/// Gives each request an `X-Request-Id` (the client's when it is a sane token of at
/// most 128 visible characters, else 32 random hex digits), sets it on the request
/// (so the engine sees it) and on the response, and runs the request in a
/// `debug`-level `request` span carrying the id, which logs one `answered` line with
/// the status and the time to the response head. Prompts and headers are never logged.
/// With the `otel` feature, the span continues the client's W3C `traceparent`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

/// See [`RequestIdLayer`].
#[derive(Clone)]
pub struct RequestId<S> {
    inner: S,
}

/// The future of [`RequestId`].
pub type RequestIdFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

impl<S: fmt::Debug> fmt::Debug for RequestId<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestId")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = RequestIdFuture<Response<RB>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let id = request_id(req.headers());
        req.headers_mut().insert(REQUEST_ID.clone(), id.clone());
        // Debug level only: at the default level a request logs nothing. Every event
        // logged while handling the request carries the id.
        let span = tracing::debug_span!("request", id = ?id, method = %req.method(), path = %req.uri().path());
        #[cfg(feature = "otel")]
        crate::otel::adopt_parent(&span, req.headers());
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(async move {
            let mut resp = future.instrument(span.clone()).await?;
            span.in_scope(|| {
                tracing::debug!(
                    status = resp.status().as_u16(),
                    head_ms = start.elapsed().as_secs_f64() * 1e3,
                    "answered"
                );
            });
            resp.headers_mut().insert(REQUEST_ID.clone(), id);
            Ok(resp)
        })
    }
}
