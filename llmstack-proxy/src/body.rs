//! The forwarder's response body: an engine's body passed through frame by frame, or
//! an error's JSON.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use llmstack_core::{BoxError, EndpointId, Error, TimeoutPhase};
use tokio::time::{Instant, Sleep};

use llmstack_metrics::names;

use crate::Counters;
use crate::pool::{Link, Pools};

/// The body of every response [`Forward`](crate::Forward) gives.
///
/// An engine's body is polled only when the client's connection asks for more, so a
/// slow client slows its engine (no buffering in between); engine chunks that arrived
/// together are handed on as one frame (at most 64 KiB). Dropping it (the client went
/// away) drops the engine request, which makes vLLM abort it. Between two chunks the
/// engine has the idle deadline; when it fails mid-body, an SSE stream that stopped
/// between two events ends with an error event and `[DONE]`, anything else with a body
/// error (the client's connection is cut, so a partial answer never looks whole).
#[derive(Debug)]
pub struct ForwardBody {
    kind: Kind,
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "proxied responses are the common case; boxing would allocate for each"
)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Upstream),
}

#[derive(Debug)]
struct Upstream {
    body: Incoming,
    /// The engine connection, driven from here; back to the pool after a clean end.
    link: Option<Link>,
    pools: Arc<Pools>,
    endpoint: EndpointId,
    idle: Duration,
    last: Instant,
    /// Created on the first wait only: most non-streamed bodies never wait.
    timer: Option<Pin<Box<Sleep>>>,
    counters: Arc<Counters>,
    /// An SSE stream can be ended with an error event when the engine fails.
    sse: bool,
    /// Whether everything sent so far ends on an SSE event boundary.
    at_boundary: bool,
    /// The closing error event, once the engine failed.
    tail: Option<Bytes>,
    /// Data read but not yet handed to the client connection.
    batch: Batch,
    /// What the engine sent after the gathered data (handed on after it).
    after_batch: Option<After>,
    done: bool,
}

/// What ended a batch.
#[derive(Debug)]
enum After {
    Trailers(Frame<Bytes>),
    Error(BoxError),
    End,
}

/// Engine chunks gathered into one client write (no copy for a single chunk).
#[derive(Debug, Default)]
struct Batch {
    first: Option<Bytes>,
    more: BytesMut,
}

/// Largest batch of engine chunks merged into one frame.
const MAX_BATCH: usize = 64 * 1024;

// === impl ForwardBody ===

impl ForwardBody {
    /// A body of known bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    /// An engine's body, held to `idle` between chunks.
    pub(crate) fn upstream(
        body: Incoming,
        link: Link,
        pools: Arc<Pools>,
        endpoint: EndpointId,
        idle: Duration,
        counters: Arc<Counters>,
        sse: bool,
    ) -> Self {
        Self {
            kind: Kind::Upstream(Upstream {
                body,
                link: Some(link),
                pools,
                endpoint,
                idle,
                last: Instant::now(),
                timer: None,
                counters,
                sse,
                at_boundary: true,
                tail: None,
                batch: Batch::default(),
                after_batch: None,
                done: false,
            }),
        }
    }
}

impl From<Bytes> for ForwardBody {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

impl Body for ForwardBody {
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
            Kind::Upstream(up) => {
                up.tail.is_none()
                    && up.batch.is_empty()
                    && up.after_batch.is_none()
                    && (up.done || up.body.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(up)
                if up.done
                    || up.tail.is_some()
                    || up.after_batch.is_some()
                    || !up.batch.is_empty() =>
            {
                SizeHint::default()
            }
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
        if self.after_batch.is_some() {
            return self.poll_after(cx);
        }
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            // The connection reads the engine's socket and decodes the next chunk into
            // the body; both register this task's waker.
            if let Some(link) = &mut self.link {
                link.drive(cx);
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        self.at_boundary = data.ends_with(b"\n\n");
                        self.batch.push(data);
                        if self.body.is_end_stream() {
                            // The last bytes of a sized body: hyper will not poll again,
                            // so release the engine connection now.
                            self.finish(cx);
                            return self.flush();
                        }
                        if self.batch.len() >= MAX_BATCH {
                            return self.flush();
                        }
                    }
                    Err(trailers) => return self.then(After::Trailers(trailers), cx),
                },
                Poll::Ready(Some(Err(e))) => return self.then(After::Error(e.into()), cx),
                Poll::Ready(None) => return self.then(After::End, cx),
                // Everything the engine's socket held is gathered: one write.
                Poll::Pending if !self.batch.is_empty() => return self.flush(),
                Poll::Pending => {
                    let deadline = self.last + self.idle;
                    let timer = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    ready!(timer.as_mut().poll(cx));
                    // The timer keeps its first deadline while data flows (no reset per
                    // chunk); when it fires, either the engine really went quiet or the
                    // deadline moves to `idle` after the last data.
                    if Instant::now() >= deadline {
                        let timeout = Error::Timeout {
                            endpoint: self.endpoint.clone(),
                            phase: TimeoutPhase::Idle,
                        };
                        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        return self.fail(timeout.into());
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Sends the gathered data now and `next` on the following poll (or at once when
    /// nothing is gathered).
    fn then(
        &mut self,
        next: After,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.after_batch = Some(next);
        if self.batch.is_empty() {
            return self.poll_after(cx);
        }
        self.flush()
    }

    fn poll_after(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.after_batch.take() {
            Some(After::Trailers(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(After::Error(e)) => self.fail(e),
            Some(After::End) | None => self.end(cx),
        }
    }

    fn flush(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.last = Instant::now();
        Poll::Ready(Some(Ok(Frame::data(self.batch.take()))))
    }

    /// The engine's response ended cleanly: its connection can serve another request.
    fn end(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finish(cx);
        Poll::Ready(None)
    }

    fn finish(&mut self, cx: &mut Context<'_>) {
        self.done = true;
        if let Some(link) = self.link.take() {
            self.pools.checkin(&self.endpoint, link, cx);
        }
    }

    /// The engine failed mid-body: end this client's response and count it (in
    /// `llmstack_upstream_errors_total{kind}`: `broken`, or `idle_timeout` for the idle
    /// deadline). An SSE stream that stopped on an event boundary gets a closing
    /// error event and `[DONE]`, so SSE clients end cleanly; anything else is cut (the
    /// connection is closed without the final chunk), so the client knows it is short.
    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.link = None;
        self.counters.broken_streams.fetch_add(1, Ordering::Relaxed);
        let kind = match error.downcast_ref::<Error>() {
            Some(Error::Timeout {
                phase: TimeoutPhase::Idle,
                ..
            }) => "idle_timeout",
            Some(ours) => ours.label(),
            None => "broken",
        };
        metrics::counter!(names::UPSTREAM_ERRORS, "engine" => self.endpoint.to_string(), "kind" => kind)
            .increment(1);
        tracing::warn!(endpoint = %self.endpoint, %error, "engine response broke off");
        if self.sse && self.at_boundary {
            let error = match error.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(source) => Error::Broken {
                    endpoint: self.endpoint.clone(),
                    source,
                },
            };
            let json = serde_json::to_string(&error.body()).unwrap_or_default();
            let event = format!("data: {json}\n\ndata: [DONE]\n\n");
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
        }
        Poll::Ready(Some(Err(error)))
    }
}

// === impl Batch ===

impl Batch {
    fn push(&mut self, data: Bytes) {
        if self.more.is_empty() {
            match self.first.take() {
                None => {
                    self.first = Some(data);
                    return;
                }
                Some(first) => self.more.extend_from_slice(&first),
            }
        }
        self.more.extend_from_slice(&data);
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.more.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.more.is_empty()
    }

    fn take(&mut self) -> Bytes {
        match self.first.take() {
            Some(first) => first,
            None => self.more.split().freeze(),
        }
    }
}
