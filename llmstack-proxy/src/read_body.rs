//! [`ReadBodyLayer`]: the whole request body, bounded, before anything routes on it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use llmstack_core::{BoxError, Error};
use tower_layer::Layer;
use tower_service::Service;

/// Reads each request's whole body (at most `max` bytes) and hands the inner service a
/// `Request<Bytes>`: a tower [`Layer`] producing [`ReadBody`]. A router must read the
/// model from the body before it can choose an engine, and the bytes are then
/// forwarded as they are.
#[derive(Debug, Clone, Copy)]
pub struct ReadBodyLayer {
    max: usize,
}

/// See [`ReadBodyLayer`]. A body over the limit (by its `Content-Length`, before
/// anything is read, or as it arrives) is answered with a 413, one that cannot be read
/// (the client's connection broke) with a 400, both with the OpenAI error body and
/// without calling the inner service.
#[derive(Clone)]
pub struct ReadBody<S> {
    inner: S,
    max: usize,
}

/// The future of [`ReadBody`].
pub type ReadBodyFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

// === impl ReadBodyLayer ===

impl ReadBodyLayer {
    /// Bodies of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for ReadBodyLayer {
    type Service = ReadBody<S>;

    fn layer(&self, inner: S) -> ReadBody<S> {
        ReadBody {
            inner,
            max: self.max,
        }
    }
}

// === impl ReadBody ===

impl<S: fmt::Debug> fmt::Debug for ReadBody<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadBody")
            .field("inner", &self.inner)
            .field("max", &self.max)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for ReadBody<S>
where
    S: Service<Request<Bytes>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: From<Bytes> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ReadBodyFuture<Response<RB>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let failed = |e: Error| Ok(e.to_response().map(RB::from));
            if declared.is_some_and(|len| len > max as u64) {
                return failed(Error::BodyTooLarge { limit: max });
            }
            let bytes = match Limited::new(body, max).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<LengthLimitError>() => {
                    return failed(Error::BodyTooLarge { limit: max });
                }
                Err(e) => {
                    return failed(Error::bad_request(
                        format!("Could not read the request body: {e}"),
                        None,
                    ));
                }
            };
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}
