//! [`ReadBodyLayer`]: the whole request body, bounded, before anything routes on it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use llmstack_core::{BoxError, Error};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

/// Reads each request's whole body (at most `max` bytes, within an optional deadline)
/// and hands the inner service a `Request<Bytes>`: a tower [`Layer`] producing
/// [`ReadBody`]. A router must read the model from the body before it can choose an
/// engine, and the bytes are then forwarded as they are.
#[derive(Debug, Clone, Copy)]
pub struct ReadBodyLayer {
    max: usize,
    timeout: Option<Duration>,
}

/// See [`ReadBodyLayer`]. A body over the limit (by its `Content-Length`, before
/// anything is read, or as it arrives) is answered with a 413, one that cannot be read
/// (the client's connection broke) with a 400, one not complete within the deadline
/// (counted from the call, that is from the request head) with a 408, all with the
/// OpenAI error body and without calling the inner service. The deadline's timer is
/// only started when the body is not already there at the first read.
#[derive(Clone)]
pub struct ReadBody<S> {
    inner: S,
    max: usize,
    timeout: Option<Duration>,
}

pin_project! {
    /// The future of [`ReadBody`].
    pub struct ReadBodyFuture<S, B, F, RB>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, B, F, RB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F, RB>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        // Reading the body; then the inner service is called with it.
        Reading {
            #[pin]
            collect: Collect<Limited<B>>,
            head: Option<(http::request::Parts, S)>,
            max: usize,
            // The deadline and its length, and its timer once the body had to be
            // waited for.
            deadline: Option<(Instant, Duration)>,
            #[pin]
            timer: Option<Sleep>,
        },
        // The inner service's future.
        Called { #[pin] future: F },
        // Answered without the inner service (413, 400).
        Answered { response: Option<Response<RB>> },
    }
}

// === impl ReadBodyLayer ===

impl ReadBodyLayer {
    /// Bodies of at most `max` bytes, with no deadline.
    pub fn new(max: usize) -> Self {
        Self { max, timeout: None }
    }

    /// Answers 408 to a request whose body is not complete `timeout` after its head
    /// (a client trickling its body, or stopping mid-body, holds nothing longer).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<S> Layer<S> for ReadBodyLayer {
    type Service = ReadBody<S>;

    fn layer(&self, inner: S) -> ReadBody<S> {
        ReadBody {
            inner,
            max: self.max,
            timeout: self.timeout,
        }
    }
}

// === impl ReadBody ===

impl<S: fmt::Debug> fmt::Debug for ReadBody<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadBody")
            .field("inner", &self.inner)
            .field("max", &self.max)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for ReadBody<S>
where
    S: Service<Request<Bytes>, Response = Response<RB>> + Clone,
    B: Body,
    B::Error: Into<BoxError>,
    RB: From<Bytes>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ReadBodyFuture<S, B, S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The readied service takes the request once its body is read.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max;
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let state = if declared.is_some_and(|len| len > max as u64) {
            State::Answered {
                response: Some(answer(&Error::BodyTooLarge { limit: max })),
            }
        } else {
            State::Reading {
                collect: Limited::new(body, max).collect(),
                head: Some((parts, inner)),
                max,
                deadline: self.timeout.map(|t| (Instant::now() + t, t)),
                timer: None,
            }
        };
        ReadBodyFuture { state }
    }
}

/// An error answer, without the inner service.
fn answer<RB: From<Bytes>>(e: &Error) -> Response<RB> {
    e.to_response().map(RB::from)
}

impl<S, B, RB> Future for ReadBodyFuture<S, B, S::Future, RB>
where
    S: Service<Request<Bytes>, Response = Response<RB>>,
    B: Body,
    B::Error: Into<BoxError>,
    RB: From<Bytes>,
{
    type Output = Result<Response<RB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Reading {
                    collect,
                    head,
                    max,
                    deadline,
                    mut timer,
                } => match collect.poll(cx) {
                    Poll::Pending => {
                        let Some((at, after)) = *deadline else {
                            return Poll::Pending;
                        };
                        if timer.is_none() {
                            timer.set(Some(tokio::time::sleep_until(at)));
                        }
                        if let Some(t) = timer.as_pin_mut() {
                            ready!(t.poll(cx));
                        }
                        State::Answered {
                            response: Some(answer(&Error::BodyTimeout { after })),
                        }
                    }
                    Poll::Ready(read) => {
                        let Some((parts, mut inner)) = head.take() else {
                            return Poll::Pending; // polled after completion
                        };
                        match read {
                            Ok(collected) => State::Called {
                                future: inner
                                    .call(Request::from_parts(parts, collected.to_bytes())),
                            },
                            Err(e) if e.is::<LengthLimitError>() => State::Answered {
                                response: Some(answer(&Error::BodyTooLarge { limit: *max })),
                            },
                            Err(e) => State::Answered {
                                response: Some(answer(&Error::bad_request(
                                    format!("Could not read the request body: {e}"),
                                    None,
                                ))),
                            },
                        }
                    }
                },
                StateProj::Called { future } => return future.poll(cx),
                StateProj::Answered { response } => {
                    return match response.take() {
                        Some(resp) => Poll::Ready(Ok(resp)),
                        None => Poll::Pending, // polled after completion
                    };
                }
            };
            state.set(next);
        }
    }
}

impl<S, B, F, RB> fmt::Debug for ReadBodyFuture<S, B, F, RB>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadBodyFuture").finish_non_exhaustive()
    }
}
