//! [`AdmissionLayer`]: a bounded queue per model in front of saturated engines, with
//! strict priority between classes and FIFO within, and a waiting room for models
//! whose engines are not ready yet.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use llmstack_core::{EndpointSet, Error, HeldUntilDone, Priority, StatsReader, Tenant};
use llmstack_metrics::names;
use pin_project_lite::pin_project;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

mod model;
mod permit;

use permit::{Index, Permit, Place};

/// When requests wait, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Requests one engine may have at once before the model counts as saturated
    /// (0: no limit) [default: 0].
    pub max_in_flight_per_engine: usize,
    /// Requests waiting in one engine's own queue (its scraped `num_requests_waiting`)
    /// at which it counts as saturated (0: not read) [default: 0]. Needs
    /// [`AdmissionLayer::with_stats`].
    pub max_waiting_per_engine: usize,
    /// How long a request may wait for capacity, or for a first ready engine (the
    /// waiting room); zero: no waiting, an instant 503 [default: 0].
    pub queue_timeout: Duration,
    /// Requests waiting per model at most; beyond, an instant 503 [default: 1000].
    pub max_queue_length: usize,
    /// A request header that may set the priority class (`high`, `normal`, `low`),
    /// never above the key's tenant's [default: none].
    pub priority_header: Option<HeaderName>,
}

/// Admits requests while their model has capacity, queues them while it has none: a
/// tower [`Layer`] producing [`Admission`]. Off (every request passes) unless
/// [`AdmissionConfig::max_in_flight_per_engine`] or
/// [`AdmissionConfig::queue_timeout`] is set. Spawn [`AdmissionLayer::watch_endpoints`]
/// next to it so that engines becoming ready admit waiting requests.
#[derive(Clone)]
pub struct AdmissionLayer {
    shared: Arc<Shared>,
}

/// Holds each request of a model whose ready engines are all at
/// [`AdmissionConfig::max_in_flight_per_engine`], or which has no ready engine yet,
/// until capacity frees (a request of that model ends, an engine becomes ready) or its
/// deadline ([`AdmissionConfig::queue_timeout`]) passes.
///
/// - **Capacity**: ready engines serving the model × the per-engine limit, and (with
///   [`AdmissionConfig::max_waiting_per_engine`] and stats) room in the engines' own
///   queues as last scraped, less what was admitted since; a request
///   admitted holds a permit until its response body ends (the routing layer keeps it,
///   [`HeldUntilDone`]). The model is read from the body (JSON `model`, or the
///   multipart form's field), through `aliases`; a model no engine ever served is not
///   queued (routing answers 404).
/// - **Order**: strict priority between classes (the [`Tenant`]'s, or the allowed
///   header's when it is not higher), FIFO within one. A request arriving while others
///   wait queues behind them.
/// - **Refusals**: a full queue, or the deadline passed → 503 with `Retry-After`
///   ([`Error::NoCapacity`]); never a hang. A request whose client leaves is dropped
///   from the queue at once.
/// - **Metrics**: `llmstack_queue_wait_seconds{priority}` per admitted or refused
///   waiter, `llmstack_queue_rejected_total{reason}` (`full`, `timeout`), and
///   [`AdmissionLayer::depths`] for a `llmstack_queue_depth{model,priority}` gauge.
///
/// Per router replica: each replica queues its own requests against its own view of
/// in-flight work.
pub struct Admission<S> {
    inner: S,
    shared: Arc<Shared>,
}

struct Shared {
    config: AdmissionConfig,
    endpoints: watch::Receiver<EndpointSet>,
    stats: Option<StatsReader>,
    aliases: BTreeMap<String, String>,
    /// Per model some engine serves or served (a bounded set); kept when empty, so
    /// depths read 0 rather than vanish.
    models: Mutex<HashMap<Arc<str>, Queue, foldhash::fast::RandomState>>,
}

/// One model's admitted requests and waiters.
#[derive(Default)]
struct Queue {
    in_flight: usize,
    /// The stats snapshot the waiting headroom was last read from (its address), and
    /// requests admitted since: the engines' queues do not show them yet.
    snapshot: usize,
    admitted_since_scrape: usize,
    /// Waiters per class, highest first.
    waiting: [VecDeque<Waiter>; 3],
    next: u64,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<Permit>,
}

// === impl AdmissionConfig ===

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_in_flight_per_engine: 0,
            max_waiting_per_engine: 0,
            queue_timeout: Duration::ZERO,
            max_queue_length: 1000,
            priority_header: None,
        }
    }
}

impl AdmissionConfig {
    /// Whether any request can be held (a limit or a waiting time is set).
    pub fn enabled(&self) -> bool {
        self.max_in_flight_per_engine > 0
            || self.max_waiting_per_engine > 0
            || !self.queue_timeout.is_zero()
    }
}

// === impl AdmissionLayer ===

impl AdmissionLayer {
    /// Admission over the engines published on `endpoints`.
    pub fn new(config: AdmissionConfig, endpoints: watch::Receiver<EndpointSet>) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                endpoints,
                stats: None,
                aliases: BTreeMap::new(),
                models: Mutex::default(),
            }),
        }
    }

    /// Model aliases (alias → model), as the routing layer has them.
    #[must_use]
    pub fn with_aliases(mut self, aliases: BTreeMap<String, String>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.aliases = aliases;
        }
        self
    }

    /// Reads engine saturation from these scraped stats
    /// ([`AdmissionConfig::max_waiting_per_engine`]).
    #[must_use]
    pub fn with_stats(mut self, stats: StatsReader) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.stats = Some(stats);
        }
        self
    }

    /// Requests waiting now, by model and class (for a gauge).
    pub fn depths(&self) -> Vec<(Arc<str>, Priority, usize)> {
        let models = self.shared.lock();
        let mut out = Vec::new();
        for (model, q) in models.iter() {
            for (class, waiting) in Priority::ALL.into_iter().zip(&q.waiting) {
                out.push((Arc::clone(model), class, waiting.len()));
            }
        }
        out
    }

    /// Admits waiting requests whenever the endpoint set changes (an engine became
    /// ready, or more serve a model) or new engine stats arrive, forever: spawn it next
    /// to the layer.
    pub fn watch_endpoints(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        let mut endpoints = shared.endpoints.clone();
        let mut stats = shared.stats.clone();
        async move {
            loop {
                let changed = match stats.as_mut() {
                    Some(stats) => tokio::select! {
                        e = endpoints.changed() => e.is_ok(),
                        s = stats.changed() => s,
                    },
                    None => endpoints.changed().await.is_ok(),
                };
                if !changed {
                    return;
                }
                let mut models = shared.lock();
                let names: Vec<Arc<str>> = models.keys().cloned().collect();
                for model in names {
                    shared.grant(&mut models, &model);
                }
            }
        }
    }
}

impl fmt::Debug for AdmissionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

// === impl Admission ===

impl<S: Clone> Clone for Admission<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Admission<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S, RB> Service<Request<Bytes>> for Admission<S>
where
    S: Service<Request<Bytes>, Response = Response<RB>> + Clone,
    RB: From<Bytes>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = AdmissionFuture<S, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let shared = &self.shared;
        let Some(model) = shared
            .config
            .enabled()
            .then(|| shared.model_of(&req))
            .flatten()
        else {
            return AdmissionFuture::called(self.inner.call(req));
        };
        let class = shared.class(&req);
        let mut models = shared.lock();
        let queue = models.entry(Arc::clone(&model)).or_default();
        let nobody_waits = queue.waiting.iter().all(VecDeque::is_empty);
        if nobody_waits && shared.admits(&model, queue) {
            queue.in_flight += 1;
            queue.admitted_since_scrape += 1;
            drop(models);
            let permit = Permit {
                shared: Arc::clone(shared),
                model,
                armed: true,
            };
            req.extensions_mut().insert(HeldUntilDone(Arc::new(permit)));
            return AdmissionFuture::called(self.inner.call(req));
        }
        let waiting: usize = queue.waiting.iter().map(VecDeque::len).sum();
        let timeout = shared.config.queue_timeout;
        if timeout.is_zero() || waiting >= shared.config.max_queue_length {
            drop(models);
            let reason = if timeout.is_zero() {
                "saturated"
            } else {
                "full"
            };
            metrics::counter!(names::QUEUE_REJECTED, "reason" => reason).increment(1);
            let e = Error::NoCapacity {
                model: model.to_string(),
                waited: Duration::ZERO,
                retry_after: Duration::from_secs(1),
            };
            return AdmissionFuture::refused(e.to_response().map(RB::from));
        }
        let (grant, granted) = oneshot::channel();
        let id = queue.next;
        queue.next += 1;
        queue.waiting[class.index()].push_back(Waiter { id, grant });
        drop(models);
        let clone = self.inner.clone();
        AdmissionFuture {
            state: State::Waiting {
                granted,
                deadline: Box::pin(tokio::time::sleep(timeout)),
                permit: None,
                place: Some(Place {
                    shared: Arc::clone(shared),
                    model,
                    class: class.index(),
                    id,
                }),
                req: Some(req),
                inner: std::mem::replace(&mut self.inner, clone),
                since: Instant::now(),
                class,
            },
        }
    }
}

pin_project! {
    /// The future of [`Admission`].
    pub struct AdmissionFuture<S, RB>
    where
        S: Service<Request<Bytes>, Response = Response<RB>>,
    {
        #[pin]
        state: State<S, RB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, RB>
    where
        S: Service<Request<Bytes>, Response = Response<RB>>,
    {
        Called { #[pin] future: S::Future },
        Refused { response: Option<Response<RB>> },
        Waiting {
            granted: oneshot::Receiver<Permit>,
            // The place, once granted (kept while the inner service gets ready).
            permit: Option<Permit>,
            deadline: Pin<Box<Sleep>>,
            place: Option<Place>,
            req: Option<Request<Bytes>>,
            inner: S,
            since: Instant,
            class: Priority,
        },
    }
}

impl<S, RB> AdmissionFuture<S, RB>
where
    S: Service<Request<Bytes>, Response = Response<RB>>,
{
    fn called(future: S::Future) -> Self {
        Self {
            state: State::Called { future },
        }
    }

    fn refused(response: Response<RB>) -> Self {
        Self {
            state: State::Refused {
                response: Some(response),
            },
        }
    }
}

impl<S, RB> Future for AdmissionFuture<S, RB>
where
    S: Service<Request<Bytes>, Response = Response<RB>>,
    RB: From<Bytes>,
{
    type Output = Result<Response<RB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Called { future } => return future.poll(cx),
                StateProj::Refused { response } => {
                    return match response.take() {
                        Some(resp) => Poll::Ready(Ok(resp)),
                        None => Poll::Pending, // polled after completion
                    };
                }
                StateProj::Waiting {
                    granted,
                    permit,
                    deadline,
                    place,
                    req,
                    inner,
                    since,
                    class,
                } => {
                    if permit.is_none() {
                        let waited = since.elapsed();
                        let got = match Pin::new(granted).poll(cx) {
                            Poll::Ready(Ok(got)) => Some(got),
                            // The queue went away: cannot happen while the layer lives.
                            Poll::Ready(Err(_)) => None,
                            Poll::Pending => {
                                ready!(deadline.as_mut().poll(cx));
                                None
                            }
                        };
                        metrics::histogram!(names::QUEUE_WAIT, "priority" => class.as_str())
                            .record(waited.as_secs_f64());
                        let model = place.as_ref().map(|p| p.model.to_string());
                        // Out of the queue either way (a grant already took it out).
                        drop(place.take());
                        match got {
                            Some(got) => *permit = Some(got),
                            None => {
                                metrics::counter!(names::QUEUE_REJECTED, "reason" => "timeout")
                                    .increment(1);
                                let e = Error::NoCapacity {
                                    model: model.unwrap_or_default(),
                                    waited,
                                    retry_after: Duration::from_secs(1),
                                };
                                this.state.set(State::Refused {
                                    response: Some(e.to_response().map(RB::from)),
                                });
                                continue;
                            }
                        }
                    }
                    ready!(inner.poll_ready(cx))?;
                    match (permit.take(), req.take()) {
                        (Some(got), Some(mut req)) => {
                            req.extensions_mut().insert(HeldUntilDone(Arc::new(got)));
                            State::Called {
                                future: inner.call(req),
                            }
                        }
                        // Polled after completion.
                        _ => return Poll::Pending,
                    }
                }
            };
            this.state.set(next);
        }
    }
}

impl<S, RB> fmt::Debug for AdmissionFuture<S, RB>
where
    S: Service<Request<Bytes>, Response = Response<RB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionFuture").finish_non_exhaustive()
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Queue, foldhash::fast::RandomState>> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The model `req` is admitted under: its body's model (through the aliases), when
    /// some engine serves or served it.
    fn model_of(&self, req: &Request<Bytes>) -> Option<Arc<str>> {
        let named = model::named(req)?;
        let name = self
            .aliases
            .get(named.as_ref())
            .map_or(named.as_ref(), String::as_str);
        self.endpoints.borrow().seen_model(name).cloned()
    }

    /// The request's class: its tenant's, lowered (never raised) by the allowed header.
    fn class(&self, req: &Request<Bytes>) -> Priority {
        let tenant = req.extensions().get::<Tenant>().map(|t| t.priority);
        let asked = self
            .config
            .priority_header
            .as_ref()
            .and_then(|h| req.headers().get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Priority>().ok());
        match (tenant, asked) {
            (Some(t), Some(a)) => t.max(a),
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => Priority::Normal,
        }
    }

    /// Whether `model` may have one more request in flight now: a ready engine, fewer
    /// than the per-engine limit times the ready engines, and room in the engines' own
    /// queues (scraped) beyond what was admitted since the last scrape.
    fn admits(&self, model: &str, queue: &mut Queue) -> bool {
        let set = self.endpoints.borrow();
        let ready = set.candidates(model);
        if ready.is_empty() {
            return false;
        }
        let per = self.config.max_in_flight_per_engine;
        if per > 0 && queue.in_flight >= ready.len().saturating_mul(per) {
            return false;
        }
        let (max_waiting, Some(stats)) = (self.config.max_waiting_per_engine, &self.stats) else {
            return true;
        };
        if max_waiting == 0 {
            return true;
        }
        let snapshot = stats.snapshot();
        let at = Arc::as_ptr(&snapshot) as usize;
        if queue.snapshot != at {
            queue.snapshot = at;
            queue.admitted_since_scrape = 0;
        }
        let now = Instant::now();
        // Room in each engine's queue; an engine without fresh stats counts as empty.
        let room: usize = ready
            .iter()
            .map(|ep| {
                let waiting = snapshot
                    .get_at(&ep.id, now)
                    .map_or(0.0, |s| s.waiting.max(0.0));
                (max_waiting as f64 - waiting).max(0.0) as usize
            })
            .sum();
        queue.admitted_since_scrape < room
    }

    /// Hands free places of `model` to its waiters, highest class first.
    fn grant(
        self: &Arc<Self>,
        models: &mut HashMap<Arc<str>, Queue, foldhash::fast::RandomState>,
        model: &Arc<str>,
    ) {
        let Some(queue) = models.get_mut(model) else {
            return;
        };
        while queue.waiting.iter().any(|w| !w.is_empty()) && self.admits(model, queue) {
            let Some(waiter) = queue.waiting.iter_mut().find_map(VecDeque::pop_front) else {
                break;
            };
            queue.in_flight += 1;
            queue.admitted_since_scrape += 1;
            let permit = Permit {
                shared: Arc::clone(self),
                model: Arc::clone(model),
                armed: true,
            };
            if let Err(mut unwanted) = waiter.grant.send(permit) {
                // The waiter left meanwhile: the place is free again (given back here,
                // not by the permit's drop, which would take the lock held now).
                unwanted.armed = false;
                queue.in_flight -= 1;
                queue.admitted_since_scrape = queue.admitted_since_scrape.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests;
