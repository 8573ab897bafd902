//! The tower pair: [`RouteLayer`] wraps a forwarding service in [`Route`].

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use llmstack_core::{Endpoint, EndpointSet, Error, RouteRequest, StatsReader};
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower_layer::Layer;
use tower_service::Service;

use crate::router::Learn;
use crate::{InFlightGuard, Router, Target};

/// The endpoint [`Route`] chose, in the request's extensions for the inner service.
#[derive(Debug, Clone)]
pub struct RoutedTo {
    /// Where to send the request.
    pub endpoint: Arc<Endpoint>,
    /// Prompt tokens the engine probably has cached.
    pub cached_tokens: u32,
}

/// Routes each request to an engine: a tower [`Layer`] producing [`Route`].
///
/// Built from a [`Router`] and the live endpoint set (a `watch` channel that discovery,
/// or the embedder, updates); optionally the engines' scraped stats and a session key.
/// When endpoints go away for good, call [`Router::retain`] on [`RouteLayer::router`]
/// so their counters and prefix-index shares are freed. The layer has no health
/// feedback of its own: an engine that fails fast looks idle, so keep the endpoint set's
/// readiness current (or retry in the inner service).
#[derive(Clone)]
pub struct RouteLayer {
    shared: Shared,
}

#[derive(Clone)]
struct Shared {
    router: Arc<Router>,
    endpoints: watch::Receiver<EndpointSet>,
    stats: Option<StatsReader>,
    session: Option<HeaderName>,
}

impl RouteLayer {
    /// Routes with `router` over the endpoints published on `endpoints`.
    pub fn new(router: impl Into<Arc<Router>>, endpoints: watch::Receiver<EndpointSet>) -> Self {
        Self {
            shared: Shared {
                router: router.into(),
                endpoints,
                stats: None,
                session: None,
            },
        }
    }

    /// Reads engine load from these scraped stats.
    #[must_use]
    pub fn with_stats(mut self, stats: StatsReader) -> Self {
        self.shared.stats = Some(stats);
        self
    }

    /// Takes the session key from this header (else the OpenAI `user` body field).
    #[must_use]
    pub fn with_session_header(mut self, name: HeaderName) -> Self {
        self.shared.session = Some(name);
        self
    }

    /// The router (for its in-flight counters and index).
    pub fn router(&self) -> &Router {
        &self.shared.router
    }
}

impl fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteLayer")
            .field("router", &self.shared.router)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            shared: Arc::new(self.shared.clone()),
        }
    }
}

/// Chooses an engine for each request, puts the choice in its extensions
/// ([`RoutedTo`]) and calls the inner service, which forwards the request there.
///
/// Takes the request with its whole body (a router must read the model from it). The
/// request is counted in flight on the engine from the choice until the response body
/// ends, fails or is dropped, or until the inner service fails: the guard travels in
/// [`RouteBody`]. Routing errors (bad body, unknown model, no ready engine) become
/// responses with vLLM's OpenAI error body and status, without calling the inner
/// service. It picks once: retrying elsewhere is the inner service's business.
pub struct Route<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Route<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Route<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("inner", &self.inner)
            .field("policy", &self.shared.router.policy_name())
            .finish()
    }
}

impl<S, B> Service<Request<Bytes>> for Route<S>
where
    S: Service<Request<Bytes>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    type Response = Response<RouteBody<B>>;
    type Error = S::Error;
    type Future = RouteFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let shared = &self.shared;
        let routed = {
            let body = req.body();
            RouteRequest::from_json(body, None).and_then(|mut route| {
                if let Some(key) = shared
                    .session
                    .as_ref()
                    .and_then(|h| req.headers().get(h))
                    .and_then(|v| v.to_str().ok())
                {
                    route.set_session_key(Cow::Owned(key.to_owned()));
                }
                let set = shared.endpoints.borrow().clone();
                let stats = shared.stats.as_ref().map(StatsReader::snapshot);
                shared
                    .router
                    .route(&set, stats.as_ref(), &route, &Target::default())
            })
        };
        match routed {
            Ok(mut routed) => {
                let learn = routed.take_learn();
                req.extensions_mut().insert(RoutedTo {
                    endpoint: routed.endpoint,
                    cached_tokens: routed.cached_tokens,
                });
                RouteFuture {
                    state: FutureState::Called {
                        future: self.inner.call(req),
                        guard: Some(routed.guard),
                        learn: learn.map(|l| (Arc::clone(&self.shared.router), l)),
                    },
                }
            }
            Err(e) => RouteFuture {
                state: FutureState::Failed {
                    response: Some(error_response(&e)),
                },
            },
        }
    }
}

/// The OpenAI error response for a routing error.
fn error_response<B>(err: &Error) -> Response<RouteBody<B>> {
    let body = serde_json::to_vec(&err.body()).unwrap_or_default();
    let mut resp = Response::new(RouteBody {
        state: BodyState::Full {
            data: Some(Bytes::from(body)),
        },
    });
    *resp.status_mut() =
        StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pin_project! {
    /// The future of [`Route`].
    pub struct RouteFuture<F, B> {
        #[pin]
        state: FutureState<F, B>,
    }
}

pin_project! {
    #[project = FutureStateProj]
    enum FutureState<F, B> {
        // Routing failed: the error response, taken when polled.
        Failed { response: Option<Response<RouteBody<B>>> },
        // The inner service was called; the guard moves into the response body, and
        // the prefix index learns the prompt if the engine accepts it.
        Called {
            #[pin] future: F,
            guard: Option<InFlightGuard>,
            learn: Option<(Arc<Router>, Learn)>,
        },
    }
}

impl<F, B, E> Future for RouteFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<RouteBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            FutureStateProj::Failed { response } => match response.take() {
                Some(resp) => Poll::Ready(Ok(resp)),
                None => Poll::Pending, // polled after completion
            },
            FutureStateProj::Called {
                future,
                guard,
                learn,
            } => {
                let resp = match ready!(future.poll(cx)) {
                    Ok(resp) => resp,
                    Err(e) => {
                        drop(guard.take()); // the request is over
                        return Poll::Ready(Err(e));
                    }
                };
                if resp.status().is_success()
                    && let Some((router, learn)) = learn.take()
                {
                    router.learn(learn);
                }
                Poll::Ready(Ok(resp.map(|body| RouteBody {
                    state: BodyState::Upstream {
                        body,
                        guard: guard.take(),
                    },
                })))
            }
        }
    }
}

impl<F, B> fmt::Debug for RouteFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body from [`Route`]: the engine's, holding the request's in-flight
    /// guard until it ends, fails or is dropped; or a routing error's JSON.
    pub struct RouteBody<B> {
        #[pin]
        state: BodyState<B>,
    }
}

pin_project! {
    #[project = BodyStateProj]
    enum BodyState<B> {
        // A routing error's body, taken by the first poll.
        Full { data: Option<Bytes> },
        // The inner service's body and the guard released when it ends.
        Upstream { #[pin] body: B, guard: Option<InFlightGuard> },
    }
}

impl<B: Body<Data = Bytes>> Body for RouteBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().state.project() {
            BodyStateProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyStateProj::Upstream { body, guard } => {
                let frame = ready!(body.poll_frame(cx));
                match &frame {
                    Some(Ok(f)) if f.is_data() => {
                        if let Some(g) = guard.as_mut() {
                            g.first_byte();
                        }
                    }
                    Some(Ok(_)) => {}
                    // End or failure: the request is over.
                    None | Some(Err(_)) => drop(guard.take()),
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Full { data } => data.is_none(),
            BodyState::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            BodyState::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl<B> fmt::Debug for RouteBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            BodyState::Full { .. } => f.write_str("RouteBody::Full"),
            BodyState::Upstream { guard, .. } => f
                .debug_struct("RouteBody::Upstream")
                .field("guard", guard)
                .finish_non_exhaustive(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use llmstack_core::{EndpointState, Update};

    use super::*;
    use crate::LeastLoaded;

    /// The inner service: answers with the routed endpoint's id, counting calls. (A
    /// stand-in for a forwarder: these tests are about the layer's bookkeeping.)
    #[derive(Clone)]
    struct Echo(Arc<AtomicUsize>);

    impl Service<Request<Bytes>> for Echo {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<Bytes>) -> Self::Future {
            self.0.fetch_add(1, Ordering::Relaxed);
            let to = req
                .extensions()
                .get::<RoutedTo>()
                .map(|r| r.endpoint.id.to_string());
            std::future::ready(Ok(Response::new(Full::new(Bytes::from(
                to.unwrap_or_default(),
            )))))
        }
    }

    fn layer() -> (RouteLayer, watch::Sender<EndpointSet>) {
        let mut set = EndpointSet::default();
        set.apply(Update::Reset(
            (1..=2)
                .map(|i| {
                    Endpoint::new(format!("http://127.0.0.1:{i}").parse().unwrap())
                        .with_model("m")
                        .with_state(EndpointState::Ready)
                })
                .collect(),
        ));
        let (tx, rx) = watch::channel(set);
        (RouteLayer::new(Router::new(LeastLoaded), rx), tx)
    }

    fn request(body: &'static str) -> Request<Bytes> {
        Request::new(Bytes::from_static(body.as_bytes()))
    }

    #[tokio::test]
    async fn the_guard_lives_until_the_body_ends_or_is_dropped() {
        let (layer, _tx) = layer();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut route = layer.layer(Echo(Arc::clone(&calls)));
        let in_flight = layer.router().in_flight().clone();

        let a = route.call(request(r#"{"model":"m"}"#)).await.unwrap();
        let b = route.call(request(r#"{"model":"m"}"#)).await.unwrap();
        assert_eq!(in_flight.total(), 2);
        let a = a.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(in_flight.total(), 1, "a's body ended");
        let b = b.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(in_flight.total(), 0, "b's body ended");
        assert_ne!(
            a, b,
            "least loaded: the second request went to the other engine"
        );
        let c = route.call(request(r#"{"model":"m"}"#)).await.unwrap();
        assert_eq!(in_flight.total(), 1);
        drop(c);
        assert_eq!(in_flight.total(), 0, "c's body was dropped unread");
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    /// Answers with `status`.
    #[derive(Clone)]
    struct Status(u16);

    impl Service<Request<Bytes>> for Status {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Bytes>) -> Self::Future {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::from_u16(self.0).unwrap();
            std::future::ready(Ok(resp))
        }
    }

    #[tokio::test]
    async fn the_prefix_index_learns_only_accepted_requests() {
        let (_, tx) = layer();
        let router = Router::new(crate::PrefixAware::default())
            .with_prefix_index(crate::PrefixConfig::default());
        let layer = RouteLayer::new(router, tx.subscribe());
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "a long shared question ".repeat(100)
        );
        let body: &'static str = Box::leak(body.into_boxed_str());
        let indexed = || layer.router().with_index(crate::PrefixIndex::len).unwrap();
        let mut refused = layer.layer(Status(503));
        drop(refused.call(request(body)).await.unwrap());
        assert_eq!(indexed(), 0, "a refused request teaches nothing");
        let mut ok = layer.layer(Status(200));
        drop(ok.call(request(body)).await.unwrap());
        assert!(indexed() > 0);
    }

    #[tokio::test]
    async fn routing_errors_answer_without_calling_the_inner_service() {
        let (layer, tx) = layer();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut route = layer.layer(Echo(Arc::clone(&calls)));
        for (body, status) in [
            (r#"{"model":"nope"}"#, 404),
            ("not json", 400),
            (r#"{"prompt":"no model"}"#, 400),
        ] {
            let resp = route.call(request(body)).await.unwrap();
            assert_eq!(resp.status(), status, "{body}");
            let json: serde_json::Value =
                serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            assert_eq!(json["error"]["code"], status, "{json}");
        }
        // Every engine gone: the model is known, none ready.
        tx.send_modify(|set| {
            set.apply(Update::Reset(vec![]));
        });
        let resp = route.call(request(r#"{"model":"m"}"#)).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        assert_eq!(layer.router().in_flight().total(), 0);
    }
}
