//! The tower pair: [`RouteLayer`] wraps a forwarding service in [`Route`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use llmstack_core::{
    Avoid, BodyKind, EndpointSet, Error, Exclude, HeldUntilDone, RouteFacts, RouteRequest,
    RoutedTo, SeenModel, StatsReader, is_engine_control, openai_route, response_id,
};
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower_layer::Layer;
use tower_service::Service;

use crate::extract::{Extract, body_kind, split_pin};
use crate::responses::{Capture, DEFAULT_RESPONSES, ResponseOwners};
use crate::router::Learn;
use crate::{InFlightGuard, Routed, Router, Target};

/// Routes each request to an engine: a tower [`Layer`] producing [`Route`]. The one
/// place a request is routed, for the `llmstack-server` binary and for embedders.
///
/// Built from a [`Router`] and the live endpoint set (a `watch` channel that discovery,
/// or the embedder, updates); optionally the engines' scraped stats, a session key and
/// model aliases. When endpoints go away for good, call [`Router::retain`] on
/// [`RouteLayer::router`] so their counters and prefix-index shares are freed. The
/// layer has no health feedback of its own: an engine that fails fast looks idle, so
/// keep the endpoint set's readiness current and put a retry layer
/// (`llmstack-proxy`'s `RetryLayer`) outside it.
///
/// Its settings can change while it serves: [`RouteLayer::handle`] gives a
/// [`RouteHandle`] that swaps the router (a new policy), the session key or the
/// aliases for the requests that start afterwards; requests in flight finish with what
/// they started with.
#[derive(Clone)]
pub struct RouteLayer {
    /// The settings in force, shared by the [`Route`]s made from this layer and its
    /// handles. The builder methods start a new cell, so a clone made before them is
    /// not affected.
    cell: Arc<ArcSwap<Shared>>,
}

/// Changes the settings of a [`RouteLayer`] and of every [`Route`] made from it, for
/// the requests that start afterwards (requests in flight keep theirs). Cloning gives
/// another handle to the same settings.
#[derive(Clone)]
pub struct RouteHandle {
    cell: Arc<ArcSwap<Shared>>,
}

#[derive(Clone)]
struct Shared {
    router: Arc<Router>,
    endpoints: watch::Receiver<EndpointSet>,
    stats: Option<StatsReader>,
    extract: Extract,
    /// Which engine created each response (Responses API), per replica.
    responses: Arc<ResponseOwners>,
}

impl RouteLayer {
    /// Routes with `router` over the endpoints published on `endpoints`.
    pub fn new(router: impl Into<Arc<Router>>, endpoints: watch::Receiver<EndpointSet>) -> Self {
        let shared = Shared {
            router: router.into(),
            endpoints,
            stats: None,
            extract: Extract::default(),
            responses: Arc::new(ResponseOwners::new(DEFAULT_RESPONSES)),
        };
        Self {
            cell: Arc::new(ArcSwap::from_pointee(shared)),
        }
    }

    /// A new cell holding the current settings changed by `f`.
    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared::clone(&self.cell.load());
        f(&mut shared);
        self.cell = Arc::new(ArcSwap::from_pointee(shared));
        self
    }

    /// Reads engine load from these scraped stats.
    #[must_use]
    pub fn with_stats(self, stats: StatsReader) -> Self {
        self.edit(|s| s.stats = Some(stats))
    }

    /// Takes the session key from this header (else the OpenAI `user` body field).
    #[must_use]
    pub fn with_session_header(self, name: HeaderName) -> Self {
        self.edit(|s| s.extract.session_header = Some(name))
    }

    /// Takes the session key from the header named `key`, else the top-level body
    /// field of that name, else the OpenAI `user` field (production-stack's
    /// `--session-key`). A `key` that is not a valid header name is only read from
    /// the body.
    #[must_use]
    pub fn with_session_key(self, key: &str) -> Self {
        self.edit(|s| s.extract.set_session_key(Some(key)))
    }

    /// Model aliases (alias → model): a request naming an alias is routed, and
    /// forwarded, for the model, with only the model value of its body rewritten.
    #[must_use]
    pub fn with_aliases(self, aliases: BTreeMap<String, String>) -> Self {
        self.edit(|s| s.extract.aliases = aliases)
    }

    /// Remembers the engine of at most `capacity` responses (default 100,000), the
    /// oldest forgotten first; 0 remembers none.
    #[must_use]
    pub fn with_response_capacity(self, capacity: usize) -> Self {
        self.edit(|s| s.responses = Arc::new(ResponseOwners::new(capacity)))
    }

    /// The router in force (for its in-flight counters and index).
    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.cell.load().router)
    }

    /// A handle changing the settings of this layer and its [`Route`]s while they serve.
    pub fn handle(&self) -> RouteHandle {
        RouteHandle {
            cell: Arc::clone(&self.cell),
        }
    }
}

impl RouteHandle {
    /// The router in force.
    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.cell.load().router)
    }

    /// Routes the requests that start from now on with `router` (a new policy or
    /// index). To keep counting the requests in flight on the old one, build it with
    /// [`Router::with_in_flight`] from the old router's [`Router::in_flight`].
    pub fn set_router(&self, router: impl Into<Arc<Router>>) {
        let router = router.into();
        self.cell.rcu(|s| {
            let mut s = Shared::clone(s);
            s.router = Arc::clone(&router);
            s
        });
    }

    /// Sets (or, with `None`, removes) the session key, as
    /// [`RouteLayer::with_session_key`].
    pub fn set_session_key(&self, key: Option<&str>) {
        self.cell.rcu(|s| {
            let mut s = Shared::clone(s);
            s.extract.set_session_key(key);
            s
        });
    }

    /// Replaces the model aliases, as [`RouteLayer::with_aliases`].
    pub fn set_aliases(&self, aliases: &BTreeMap<String, String>) {
        self.cell.rcu(|s| {
            let mut s = Shared::clone(s);
            s.extract.aliases.clone_from(aliases);
            s
        });
    }
}

impl fmt::Debug for RouteHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteHandle")
            .field("router", &self.cell.load().router)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteLayer")
            .field("router", &self.cell.load().router)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            cell: Arc::clone(&self.cell),
        }
    }
}

/// Chooses an engine for each request, puts the choice in its extensions
/// ([`RoutedTo`]) and calls the inner service, which forwards the request there.
///
/// Takes the request with its whole body (a router must read the model from it) and
/// reads it once (`extract.rs`): the model from the JSON body, or from the form of the
/// multipart audio routes; the session key; an alias, whose body is rewritten; `?id=`
/// pinning, which is taken off the query sent on. The routes that name no model
/// ([`BodyKind::Addressed`]) go to one engine: engine control (`/sleep`, `/wake_up`,
/// `/is_sleeping`) to the `?id=` engine (400 without one), `GET /v1/responses/{id}`
/// and its cancel route to the engine that created the response (learned from the
/// answers to `POST /v1/responses` this layer forwarded; 404 for an id it did not see,
/// unless `?id=` names the engine), others to `?id=` or the ready engine with the
/// fewest requests in flight. A `previous_response_id` follow-up goes to the engine of
/// that response while it serves the model. Engines in the request's
/// [`Exclude`] extension are never chosen; those in its [`Avoid`] extension only when
/// no other candidate is left. The request is counted in flight on the
/// engine from the choice until the response body ends, fails or is dropped, or until
/// the inner service fails: the guard travels in [`RouteBody`]. A 2xx response head
/// teaches the prefix index the prompt. Routing errors (bad body, unknown model, no
/// ready engine) become responses with vLLM's OpenAI error body and status
/// ([`Error::to_response`]), without calling the inner service. Every response carries
/// [`RouteFacts`] (model, policy, reason, engine) for the layers outside. It picks
/// once: retrying elsewhere is an outer layer's business. A [`HeldUntilDone`] in the
/// request's extensions is kept in the response body like the guard.
pub struct Route<S> {
    inner: S,
    cell: Arc<ArcSwap<Shared>>,
}

impl<S: Clone> Clone for Route<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cell: Arc::clone(&self.cell),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Route<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("inner", &self.inner)
            .field("policy", &self.cell.load().router.policy_name())
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

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let shared = self.cell.load();
        let policy = shared.router.policy_name();
        let held = parts.extensions.remove::<HeldUntilDone>();
        // `POST /v1/responses`: its id is learned from the answer. `/sleep` and
        // `/wake_up`: the engine leaves or rejoins routing once it agrees.
        let (creates_response, sleeps) = match parts.uri.path() {
            "/v1/responses" => (true, None),
            "/sleep" => (false, Some(true)),
            "/wake_up" => (false, Some(false)),
            _ => (false, None),
        };
        match shared.decide(&mut parts, body) {
            Ok(Decided {
                mut routed,
                body,
                model,
            }) => {
                let reason = routed.reason;
                let facts = RouteFacts {
                    model,
                    policy,
                    reason,
                    engine: Some(routed.endpoint.id.clone()),
                    predicted_cached_tokens: shared
                        .router
                        .predicts_cache()
                        .then_some(routed.cached_tokens),
                };
                let learn = routed.take_learn();
                let capture = creates_response.then(|| {
                    Box::new(Capture::new(
                        Arc::clone(&shared.responses),
                        routed.endpoint.id.clone(),
                    ))
                });
                let sleeps = sleeps.map(|asleep| {
                    let id = routed.endpoint.id.clone();
                    Box::new((asleep, id, Arc::clone(&shared.router)))
                });
                parts.extensions.insert(RoutedTo {
                    endpoint: routed.endpoint,
                    cached_tokens: routed.cached_tokens,
                });
                RouteFuture {
                    state: FutureState::Called {
                        future: self.inner.call(Request::from_parts(parts, body)),
                        guard: Some(routed.guard),
                        held,
                        learn: learn.map(|l| (Arc::clone(&shared.router), l)),
                        facts: Some(facts),
                        capture,
                        sleeps,
                    },
                }
            }
            Err((e, model)) => {
                let mut response = e.to_response().map(RouteBody::from);
                response.extensions_mut().insert(RouteFacts {
                    model,
                    policy,
                    reason: e.label(),
                    engine: None,
                    predicted_cached_tokens: None,
                });
                RouteFuture {
                    state: FutureState::Failed {
                        response: Some(response),
                    },
                }
            }
        }
    }
}

/// A routing decision and the body to forward (rewritten for an alias).
struct Decided {
    routed: Routed,
    body: Bytes,
    /// The model, when some engine serves or served it.
    model: Option<Arc<str>>,
}

/// A routing error, and the model when some engine serves it.
type Failed = (Error, Option<Arc<str>>);

// === impl Shared ===

impl Shared {
    /// Reads the request and routes it; on failure, the error and the model (when known).
    fn decide(&self, parts: &mut Parts, body: Bytes) -> Result<Decided, Failed> {
        let set = self.endpoints.borrow().clone();
        let kind = body_kind(parts);
        if kind == BodyKind::Addressed {
            return self.address(&set, parts, body);
        }
        let route = self
            .extract
            .route_request(parts, kind, &body)
            .map_err(|e| (e, None))?;
        let Some(spliced) = self.extract.alias_body(kind, &body, &route) else {
            let (routed, model) = self.pick(&set, parts, &route)?;
            drop(route);
            return Ok(Decided {
                routed,
                body,
                model,
            });
        };
        drop(route);
        let route = self
            .extract
            .route_request(parts, kind, &spliced)
            .map_err(|e| (e, None))?;
        let (routed, model) = self.pick(&set, parts, &route)?;
        drop(route);
        Ok(Decided {
            routed,
            body: spliced,
            model,
        })
    }

    /// Routes a request that names no model (see [`Route`]).
    fn address(
        &self,
        set: &EndpointSet,
        parts: &mut Parts,
        body: Bytes,
    ) -> Result<Decided, Failed> {
        let failed = |e| (e, None);
        let route = openai_route(parts.uri.path()).map_or("", |(r, _)| r);
        let id = match strip_pin(parts).map_err(failed)? {
            Some(id) => Some(id),
            None if is_engine_control(route) => {
                return Err(failed(Error::bad_request(
                    format!(
                        "`{route}` controls one engine: name it with `?id=<engine id>` (see /engines)."
                    ),
                    Some("id"),
                )));
            }
            None => match response_id(parts.uri.path()) {
                Some(rid) => match self.responses.owner(rid) {
                    Some(engine) => Some(engine.as_str().to_owned()),
                    None => {
                        return Err(failed(Error::ResponseNotFound { id: rid.to_owned() }));
                    }
                },
                None => None,
            },
        };
        let routed = self
            .router
            .address(set, id.as_deref(), route)
            .map_err(failed)?;
        Ok(Decided {
            routed,
            body,
            model: None,
        })
    }

    fn pick(
        &self,
        set: &EndpointSet,
        parts: &mut Parts,
        route: &RouteRequest<'_>,
    ) -> Result<(Routed, Option<Arc<str>>), Failed> {
        let model: Option<Arc<str>> = route.model().and_then(|m| set.seen_model(m)).cloned();
        if let (Some(slot), Some(model)) = (parts.extensions.get::<SeenModel>(), &model) {
            slot.set(Arc::clone(model));
        }
        let failed = |e| (e, model.clone());
        let mut pinned = strip_pin(parts).map_err(failed)?;
        // A follow-up of a response goes where the response lives.
        if pinned.is_none()
            && let Some(previous) = route.previous_response_id()
        {
            // (While it serves the model: else the policy picks, and that engine
            // answers for the response it does not hold.)
            let model = route.model().unwrap_or_default();
            pinned = self
                .responses
                .owner(previous)
                .filter(|id| set.candidates(model).iter().any(|ep| ep.id == *id))
                .map(|id| id.as_str().to_owned());
        }
        let exclude = parts.extensions.get::<Exclude>().map_or(&[][..], |e| &e.0);
        let avoid = parts.extensions.get::<Avoid>().map_or(&[][..], |e| &e.0);
        let target = Target {
            pinned: pinned.as_deref(),
            exclude,
            avoid,
        };
        let stats = self.stats.as_ref().map(StatsReader::snapshot);
        let routed = self
            .router
            .route(set, stats.as_ref(), route, &target)
            .map_err(failed)?;
        Ok((routed, model))
    }
}

/// Takes `?id=` pinning off the request's query (see `split_pin`): the pinned id.
fn strip_pin(parts: &mut Parts) -> Result<Option<String>, Error> {
    let (pinned, upstream) = split_pin(parts)?;
    if let Some(path_and_query) = upstream {
        let invalid = || Error::bad_request("The request target is not valid.", None);
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(path_and_query.parse().map_err(|_| invalid())?);
        parts.uri = Uri::from_parts(uri).map_err(|_| invalid())?;
    }
    Ok(pinned)
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
            held: Option<HeldUntilDone>,
            learn: Option<(Arc<Router>, Learn)>,
            facts: Option<RouteFacts>,
            // POST /v1/responses: reads the response id from the body.
            capture: Option<Box<Capture>>,
            // POST /sleep (true) or /wake_up (false) on this engine, marked in this
            // router once the engine agrees.
            sleeps: Option<Box<(bool, llmstack_core::EndpointId, Arc<Router>)>>,
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
                held,
                learn,
                facts,
                capture,
                sleeps,
            } => {
                let mut resp = match ready!(future.poll(cx)) {
                    Ok(resp) => resp,
                    Err(e) => {
                        drop(guard.take()); // the request is over
                        drop(held.take());
                        return Poll::Ready(Err(e));
                    }
                };
                let success = resp.status().is_success();
                if success && let Some((router, learn)) = learn.take() {
                    router.learn(learn);
                }
                if success && let Some(marks) = sleeps.take() {
                    let (asleep, id, router) = *marks;
                    router.set_asleep(&id, asleep);
                }
                let capture = capture.take().filter(|_| success);
                if let Some(facts) = facts.take() {
                    resp.extensions_mut().insert(facts);
                }
                Poll::Ready(Ok(resp.map(|body| RouteBody {
                    state: BodyState::Upstream {
                        body,
                        guard: guard.take(),
                        held: held.take(),
                        capture,
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
        // The inner service's body, and the guard and what an outer layer holds
        // (HeldUntilDone), released when it ends.
        // A created response's id is read on the way (`capture`).
        Upstream {
            #[pin] body: B,
            guard: Option<InFlightGuard>,
            held: Option<HeldUntilDone>,
            capture: Option<Box<Capture>>,
        },
    }
}

impl<B> From<Bytes> for RouteBody<B> {
    /// A body of known bytes (an error response's).
    fn from(data: Bytes) -> Self {
        Self {
            state: BodyState::Full { data: Some(data) },
        }
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
            BodyStateProj::Upstream {
                body,
                guard,
                held,
                capture,
            } => {
                let frame = ready!(body.poll_frame(cx));
                match &frame {
                    Some(Ok(f)) if f.is_data() => {
                        if let Some(g) = guard.as_mut() {
                            g.first_byte();
                        }
                        if let (Some(c), Some(data)) = (capture.as_mut(), f.data_ref())
                            && c.feed(data)
                        {
                            *capture = None;
                        }
                    }
                    Some(Ok(_)) => {}
                    // End or failure: the request is over.
                    None | Some(Err(_)) => {
                        drop(guard.take());
                        drop(held.take());
                        drop(capture.take());
                    }
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
mod tests;
