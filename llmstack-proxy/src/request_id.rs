//! [`RequestIdLayer`]: every request has an id, a span, and its id on the response.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;
use tracing::instrument::Instrumented;

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

pin_project! {
    /// The future of [`RequestId`].
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        id: Option<HeaderValue>,
        start: Instant,
    }
}

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
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

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
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        RequestIdFuture {
            inner: inner.instrument(span),
            id: Some(id),
            start,
        }
    }
}

impl<F, RB, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut resp = ready!(this.inner.as_mut().poll(cx))?;
        let span = this.inner.span();
        if !span.is_disabled() {
            span.in_scope(|| {
                tracing::debug!(
                    status = resp.status().as_u16(),
                    head_ms = this.start.elapsed().as_secs_f64() * 1e3,
                    "answered"
                );
            });
        }
        if let Some(id) = this.id.take() {
            resp.headers_mut().insert(REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(resp))
    }
}

impl<F> fmt::Debug for RequestIdFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestIdFuture").finish_non_exhaustive()
    }
}
