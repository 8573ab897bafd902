//! [`RetryLayer`]: a request that failed before its engine answered goes to another one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use llmstack_core::{EndpointId, Exclude, RouteFacts, UpstreamFailure};
use llmstack_metrics::{count_decision, names};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::Counters;

/// Retries requests whose engine failed before answering, on other engines: a tower
/// [`Layer`] producing [`Retry`]. Goes outside the routing layer, which reads the
/// [`Exclude`] list this layer keeps, so a retry never returns to an engine that failed
/// the request.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    attempts: u32,
    counters: Option<Arc<Counters>>,
}

/// Sends the request to the inner service (routing, then forwarding) and, while the
/// answer is an error response whose [`UpstreamFailure`] is retryable (the engine
/// refused the connection, or dropped it before the response head: no answer reached
/// the router, though a dropped request may have been generated) or an engine's own
/// 503 or 429 (it turned the request down),
/// and fewer than `attempts` other engines were tried, sends it again with that engine
/// added to [`Exclude`]. Nothing is retried once a response body has started: a 2xx
/// head belongs to its engine.
///
/// When no other engine is left, the client gets the last engine failure (502/504),
/// not "no engine ready". Each retry is counted in `llmstack_retries_total{engine,reason}`
/// and, with [`RetryLayer::counting`], in [`Counters::retries`]. Costs one copy of the
/// request head per request (the body is shared).
pub struct Retry<S> {
    inner: S,
    attempts: u32,
    counters: Option<Arc<Counters>>,
}

// === impl RetryLayer ===

impl RetryLayer {
    /// At most `attempts` other engines after the first one (0: no retries).
    pub fn new(attempts: u32) -> Self {
        Self {
            attempts,
            counters: None,
        }
    }

    /// Also counts retries in `counters` (e.g. the forwarder's [`Counters`]).
    #[must_use]
    pub fn counting(mut self, counters: Arc<Counters>) -> Self {
        self.counters = Some(counters);
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            attempts: self.attempts,
            counters: self.counters.clone(),
        }
    }
}

// === impl Retry ===

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            attempts: self.attempts,
            counters: self.counters.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl<S, B> Service<Request<Bytes>> for Retry<S>
where
    S: Service<Request<Bytes>, Response = Response<B>> + Clone,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = RetryFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        // The readied service takes the first attempt; a clone takes the others.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (head, body, future) = if self.attempts == 0 {
            (None, Bytes::new(), inner.call(req))
        } else {
            let (parts, body) = req.into_parts();
            let head = Head::from(&parts);
            let future = inner.call(Request::from_parts(parts, body.clone()));
            (Some(head), body, future)
        };
        RetryFuture {
            state: State::Called { future },
            inner,
            head,
            body,
            excluded: Vec::new(),
            attempts: self.attempts,
            counters: self.counters.clone(),
            failed: None,
        }
    }
}

pin_project! {
    /// The future of [`Retry`].
    pub struct RetryFuture<S, B>
    where
        S: Service<Request<Bytes>, Response = Response<B>>,
    {
        #[pin]
        state: State<S::Future>,
        inner: S,
        // The request head and body, for another attempt (`None`: no retries).
        head: Option<Head>,
        body: Bytes,
        excluded: Vec<EndpointId>,
        attempts: u32,
        counters: Option<Arc<Counters>>,
        // The last engine failure, while another engine is tried.
        failed: Option<Response<B>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is under way.
        Called { #[pin] future: F },
        // Another engine is to be tried once the service is ready.
        Again,
    }
}

impl<S, B> Future for RetryFuture<S, B>
where
    S: Service<Request<Bytes>, Response = Response<B>>,
{
    type Output = Result<Response<B>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let resp = ready!(future.poll(cx))?;
                    if let Some(failed) = this.failed.take() {
                        let none_left = resp
                            .extensions()
                            .get::<RouteFacts>()
                            .filter(|f| f.engine.is_none() && f.reason == NO_READY_ENDPOINT);
                        if let Some(facts) = none_left {
                            // Every engine was tried: the last engine failure is the answer.
                            count_decision(facts);
                            return Poll::Ready(Ok(failed));
                        }
                    }
                    let Some((endpoint, kind)) = retryable(&resp) else {
                        return Poll::Ready(Ok(resp));
                    };
                    if this.head.is_none() || this.excluded.len() >= *this.attempts as usize {
                        return Poll::Ready(Ok(resp));
                    }
                    metrics::counter!(names::RETRIES, "engine" => endpoint.to_string(), "reason" => kind)
                        .increment(1);
                    if let Some(c) = this.counters.as_ref() {
                        c.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(%endpoint, kind, "engine failed or refused before answering; trying another");
                    this.excluded.push(endpoint.clone());
                    if let Some(facts) = resp.extensions().get::<RouteFacts>() {
                        count_decision(facts);
                    }
                    *this.failed = Some(resp);
                    this.state.set(State::Again);
                }
                StateProj::Again => {
                    ready!(this.inner.poll_ready(cx))?;
                    let Some(head) = this.head.as_ref() else {
                        return Poll::Pending; // unreachable: no retry without a head
                    };
                    let mut retry = head.request(this.body.clone());
                    retry
                        .extensions_mut()
                        .insert(Exclude(this.excluded.clone()));
                    let future = this.inner.call(retry);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for RetryFuture<S, B>
where
    S: Service<Request<Bytes>, Response = Response<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryFuture")
            .field("excluded", &self.excluded)
            .finish_non_exhaustive()
    }
}

/// The engine and the reason, when `resp` may be tried on another engine: a retryable
/// [`UpstreamFailure`], or an engine's own 503 or 429 (overloaded, or its queue full:
/// it has not started on the request; only the response head has arrived).
fn retryable<B>(resp: &Response<B>) -> Option<(&EndpointId, &'static str)> {
    if let Some(failure) = resp.extensions().get::<UpstreamFailure>() {
        return failure
            .retryable
            .then_some((&failure.endpoint, failure.kind));
    }
    let kind = match resp.status().as_u16() {
        503 => "status_503",
        429 => "status_429",
        _ => return None,
    };
    let engine = resp.extensions().get::<RouteFacts>()?.engine.as_ref()?;
    Some((engine, kind))
}

/// [`Error::label`](llmstack_core::Error::label) of `NoReadyEndpoint`: the routing
/// layer found no candidate left.
const NO_READY_ENDPOINT: &str = "no_ready_endpoint";

/// The request head, kept to build each retry.
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

impl Head {
    fn from(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
        }
    }

    fn request(&self, body: Bytes) -> Request<Bytes> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        req
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Ready;
    use std::sync::Mutex;

    use llmstack_core::{Endpoint, Error, RoutedTo};

    use super::*;

    /// What an outer layer put on the request.
    #[derive(Debug, Clone, PartialEq)]
    struct Tenant(&'static str);

    /// What one attempt carried: the outer layer's extension, the engines excluded,
    /// whether an earlier routing decision was on it.
    type Attempt = (Option<Tenant>, Vec<EndpointId>, bool);

    /// A hand-written inner service, to see exactly what each attempt carries (the
    /// real stack's retries, through routing and forwarding to `llmstack-sim` engines,
    /// are tested in `llmstack-server`'s `tests/it/failures.rs` and `routing.rs`): the
    /// first attempt fails as `Forward` does when the engine refuses the connection,
    /// the second answers 200.
    #[derive(Clone, Default)]
    struct Inner {
        seen: Arc<Mutex<Vec<Attempt>>>,
    }

    impl Service<Request<Bytes>> for Inner {
        type Response = Response<Bytes>;
        type Error = Infallible;
        type Future = Ready<Result<Response<Bytes>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
            let mut seen = self.seen.lock().unwrap();
            seen.push((
                req.extensions().get::<Tenant>().cloned(),
                req.extensions()
                    .get::<Exclude>()
                    .map_or_else(Vec::new, |e| e.0.clone()),
                req.extensions().get::<RoutedTo>().is_some(),
            ));
            if seen.len() > 1 {
                return std::future::ready(Ok(Response::new(Bytes::from_static(b"ok"))));
            }
            let engine = Arc::new(Endpoint::new(http::Uri::from_static("http://127.0.0.1:1")));
            let id = engine.id.clone();
            req.extensions_mut().insert(RoutedTo {
                endpoint: engine,
                cached_tokens: 0,
            });
            let err = Error::Connect {
                endpoint: id.clone(),
                source: "refused".into(),
            };
            let mut resp = err.to_response();
            resp.extensions_mut().insert(UpstreamFailure::of(id, &err));
            std::future::ready(Ok(resp))
        }
    }

    #[tokio::test]
    async fn a_retry_carries_the_requests_extensions_and_excludes_the_failed_engine() {
        let inner = Inner::default();
        let mut retry = RetryLayer::new(2).layer(inner.clone());
        let mut req = Request::new(Bytes::from_static(b"{}"));
        req.extensions_mut().insert(Tenant("acme"));
        let resp = retry.call(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let seen = inner.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], (Some(Tenant("acme")), vec![], false));
        let failed = Endpoint::new(http::Uri::from_static("http://127.0.0.1:1")).id;
        // The second attempt: the outer layer's extension, the failed engine
        // excluded, and not the first attempt's routing decision.
        assert_eq!(seen[1], (Some(Tenant("acme")), vec![failed], false));
    }

    #[tokio::test]
    async fn without_retries_the_failure_is_the_answer() {
        let inner = Inner::default();
        let mut retry = RetryLayer::new(0).layer(inner.clone());
        let resp = retry.call(Request::new(Bytes::new())).await.unwrap();
        assert_eq!(resp.status(), 502);
        assert!(resp.extensions().get::<UpstreamFailure>().is_some());
        assert_eq!(inner.seen.lock().unwrap().len(), 1);
    }
}
