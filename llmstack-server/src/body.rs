//! The response body: a local answer, or an engine's body passed through frame by frame.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use llmstack_core::{BoxError, EndpointId, Error, TimeoutPhase};
use llmstack_routing::InFlightGuard;
use tokio::time::{Instant, Sleep};

use crate::state::Counters;

/// Every response the router sends.
///
/// An engine's body is polled only when the client's connection asks for more, so a
/// slow client slows its engine (no buffering in between); dropping it (the client went
/// away) drops the engine request, which makes vLLM abort it. The request's in-flight
/// guard lives here until the body ends, fails or is dropped.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Upstream),
}

#[derive(Debug)]
struct Upstream {
    body: Incoming,
    endpoint: EndpointId,
    idle: Duration,
    last: Instant,
    /// Created on the first wait only: most non-streamed bodies never wait.
    timer: Option<Pin<Box<Sleep>>>,
    guard: Option<InFlightGuard>,
    counters: Arc<Counters>,
    /// An SSE stream can be ended with an error event when the engine fails.
    sse: bool,
    /// Whether everything sent so far ends on an SSE event boundary.
    at_boundary: bool,
    /// The closing error event, once the engine failed.
    tail: Option<Bytes>,
    done: bool,
}

// === impl ProxyBody ===

impl ProxyBody {
    /// A body of known bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    /// An engine's body, held to `idle` between chunks, keeping `guard` until it ends.
    pub(crate) fn upstream(
        body: Incoming,
        endpoint: EndpointId,
        idle: Duration,
        guard: InFlightGuard,
        counters: Arc<Counters>,
        sse: bool,
    ) -> Self {
        Self {
            kind: Kind::Upstream(Upstream {
                body,
                endpoint,
                idle,
                last: Instant::now(),
                timer: None,
                guard: Some(guard),
                counters,
                sse,
                at_boundary: true,
                tail: None,
                done: false,
            }),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up) => up.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(up) => up.tail.is_none() && (up.done || up.body.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(up) if up.done || up.tail.is_some() => SizeHint::default(),
            Kind::Upstream(up) => up.body.size_hint(),
        }
    }
}

// === impl Upstream ===

impl Upstream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(tail) = self.tail.take() {
            return Poll::Ready(Some(Ok(Frame::data(tail))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref()
                        && !data.is_empty()
                    {
                        self.at_boundary = data.ends_with(b"\n\n");
                    }
                    self.last = Instant::now();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => return self.fail(e.into()),
                Poll::Ready(None) => {
                    self.done = true;
                    self.guard = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            let deadline = self.last + self.idle;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= self.last + self.idle {
                let timeout = Error::Timeout {
                    endpoint: self.endpoint.clone(),
                    phase: TimeoutPhase::Idle,
                };
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                return self.fail(timeout.into());
            }
            // A frame arrived meanwhile: poll the body again with a fresh deadline.
        }
    }

    /// The engine failed mid-body: end this client's response, count it, release the
    /// in-flight guard. An SSE stream that stopped on an event boundary gets a closing
    /// error event and `[DONE]`, so SSE clients end cleanly; anything else is cut (the
    /// connection is closed without the final chunk), so the client knows it is short.
    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.guard = None;
        self.counters.broken_streams.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(endpoint = %self.endpoint, %error, "engine response broke off");
        if self.sse && self.at_boundary {
            let body = Error::Upstream {
                endpoint: self.endpoint.clone(),
                source: error,
            }
            .body();
            let json = serde_json::to_string(&body).unwrap_or_default();
            let event = format!("data: {json}\n\ndata: [DONE]\n\n");
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
        }
        Poll::Ready(Some(Err(error)))
    }
}
