//! [`OutlierLayer`]: engines that keep failing are ejected for a while, then tried with
//! one request.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use llmstack_core::{Avoid, EndpointId, RouteFacts, UpstreamFailure};
use llmstack_metrics::names;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// When an engine is ejected and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an engine (0: never) [default: 5].
    pub consecutive_failures: u32,
    /// The first ejection's length; each ejection in a row doubles it [default: 5 s].
    pub base_ejection: Duration,
    /// The longest ejection [default: 120 s].
    pub max_ejection: Duration,
}

/// Ejects engines that fail requests in a row: a tower [`Layer`] producing [`Outlier`],
/// sharing one [`Outliers`] view (for `/engines` and metrics) across its services.
#[derive(Debug, Clone)]
pub struct OutlierLayer {
    outliers: Outliers,
}

/// Watches every answer: a failure is an engine that could not be reached or dropped
/// the request before answering ([`UpstreamFailure`]: connect, reset, deadline) or that
/// answered 5xx; anything else the engine answers is a success and resets its count.
/// After [`OutlierConfig::consecutive_failures`] failures in a row the engine is
/// ejected: requests carry it in their [`Avoid`] extension, so routing passes over it
/// while another engine serves the model (never leaving a model unserved), for
/// [`OutlierConfig::base_ejection`], doubled for each ejection in a row, up to
/// [`OutlierConfig::max_ejection`]. Then it is half-open: exactly one request at a time
/// may go there (the others still avoid it). If that trial succeeds the engine is back;
/// if it fails, ejected again for longer. Ejections are counted in
/// `llmstack_engine_ejections_total{engine}`.
///
/// Goes inside the retry layer and outside routing, so each attempt counts and a
/// retry's exclusions stay as they are.
#[derive(Clone)]
pub struct Outlier<S> {
    inner: S,
    outliers: Outliers,
}

/// The ejection state of every engine. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Outliers {
    shared: Arc<Shared>,
}

/// An engine's state as [`Outliers::state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineHealth {
    /// Serving; `failures` in a row so far.
    Healthy {
        /// Failures in a row.
        failures: u32,
    },
    /// Ejected for `remaining` more; the `ejections`-th in a row.
    Ejected {
        /// Time left.
        remaining: Duration,
        /// Ejections in a row.
        ejections: u32,
    },
    /// Half-open: the next request (one at a time) is its trial.
    HalfOpen {
        /// Ejections in a row.
        ejections: u32,
        /// Whether a trial request is under way.
        trial: bool,
    },
}

struct Shared {
    config: OutlierConfig,
    engines: Mutex<HashMap<EndpointId, Health, foldhash::fast::RandomState>>,
    /// Engines ejected or half-open: when 0, requests skip the lock on the way in.
    out: AtomicUsize,
    /// Engines with a failure on record (entries of `engines`): when 0, successes skip
    /// the lock on the way out.
    tracked: AtomicUsize,
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    ejections: u32,
    /// Set while ejected or half-open.
    until: Option<Instant>,
    /// A trial request is under way.
    trial: bool,
}

/// A half-open engine's trial, claimed by one request; released when dropped unless
/// the request went there and its outcome settled it.
struct Trial {
    outliers: Outliers,
    engine: EndpointId,
}

// === impl OutlierConfig ===

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(120),
        }
    }
}

// === impl OutlierLayer ===

impl OutlierLayer {
    /// A layer reporting to `outliers`.
    pub fn new(outliers: Outliers) -> Self {
        Self { outliers }
    }
}

impl<S> Layer<S> for OutlierLayer {
    type Service = Outlier<S>;

    fn layer(&self, inner: S) -> Outlier<S> {
        Outlier {
            inner,
            outliers: self.outliers.clone(),
        }
    }
}

// === impl Outlier ===

impl<S: fmt::Debug> fmt::Debug for Outlier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outlier")
            .field("inner", &self.inner)
            .field("config", &self.outliers.shared.config)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for Outlier<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = OutlierFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let enabled = self.outliers.shared.config.consecutive_failures > 0;
        let trial = if enabled && self.outliers.shared.out.load(Ordering::Relaxed) > 0 {
            let (avoid, trial) = self.outliers.avoid(Instant::now());
            if !avoid.is_empty() {
                match req.extensions_mut().get_mut::<Avoid>() {
                    Some(known) => known.0.extend(avoid),
                    None => {
                        req.extensions_mut().insert(Avoid(avoid));
                    }
                }
            }
            trial
        } else {
            None
        };
        OutlierFuture {
            inner: self.inner.call(req),
            outliers: enabled.then(|| self.outliers.clone()),
            trial,
        }
    }
}

pin_project! {
    /// The future of [`Outlier`].
    pub struct OutlierFuture<F> {
        #[pin]
        inner: F,
        outliers: Option<Outliers>,
        trial: Option<Trial>,
    }
}

impl<F, RB, E> Future for OutlierFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx))?;
        let trial = this.trial.take();
        if let Some(outliers) = this.outliers.take() {
            let engine = resp
                .extensions()
                .get::<RouteFacts>()
                .and_then(|f| f.engine.as_ref());
            let failure = resp.extensions().get::<UpstreamFailure>();
            let engine = failure.map(|f| &f.endpoint).or(engine);
            if let Some(engine) = engine {
                let failed = failure.is_some() || resp.status().is_server_error();
                outliers.record(engine, failed, Instant::now());
            }
        }
        drop(trial);
        Poll::Ready(Ok(resp))
    }
}

impl<F> fmt::Debug for OutlierFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlierFuture").finish_non_exhaustive()
    }
}

// === impl Outliers ===

impl Outliers {
    /// No engine ejected yet.
    pub fn new(config: OutlierConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                engines: Mutex::default(),
                out: AtomicUsize::new(0),
                tracked: AtomicUsize::new(0),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &OutlierConfig {
        &self.shared.config
    }

    /// `engine`'s state now; `None` while it has no failure on record (serving).
    pub fn state(&self, engine: &EndpointId) -> Option<EngineHealth> {
        let now = Instant::now();
        let engines = self.lock();
        let h = engines.get(engine)?;
        Some(match h.until {
            None => EngineHealth::Healthy {
                failures: h.failures,
            },
            Some(until) if until > now => EngineHealth::Ejected {
                remaining: until - now,
                ejections: h.ejections,
            },
            Some(_) => EngineHealth::HalfOpen {
                ejections: h.ejections,
                trial: h.trial,
            },
        })
    }

    /// Forgets engines for which `exists` is false (call it when discovery removes
    /// engines).
    pub fn retain(&self, mut exists: impl FnMut(&EndpointId) -> bool) {
        let mut engines = self.lock();
        engines.retain(|id, _| exists(id));
        let out = engines.values().filter(|h| h.until.is_some()).count();
        self.shared.out.store(out, Ordering::Relaxed);
        self.shared.tracked.store(engines.len(), Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<EndpointId, Health, foldhash::fast::RandomState>> {
        self.shared
            .engines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The engines a request should pass over at `now`, and the half-open engine whose
    /// trial it claimed (the request does not avoid that one).
    fn avoid(&self, now: Instant) -> (Vec<EndpointId>, Option<Trial>) {
        let mut engines = self.lock();
        let mut avoid = Vec::new();
        let mut trial = None;
        for (id, h) in engines.iter_mut() {
            match h.until {
                None => {}
                Some(until) if until <= now && !h.trial && trial.is_none() => {
                    h.trial = true;
                    trial = Some(Trial {
                        outliers: self.clone(),
                        engine: id.clone(),
                    });
                }
                Some(_) => avoid.push(id.clone()),
            }
        }
        (avoid, trial)
    }

    /// Counts an answer of `engine`: a failure, or a success.
    fn record(&self, engine: &EndpointId, failed: bool, now: Instant) {
        // The common case: a success while no engine has a failure on record.
        if !failed && self.shared.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let config = &self.shared.config;
        let mut engines = self.lock();
        if let Some(h) = engines.get(engine)
            && h.until.is_some_and(|until| until > now)
        {
            return; // ejected: an answer to a request sent before the ejection
        }
        if !failed {
            // Healthy again: nothing on record.
            if let Some(h) = engines.remove(engine) {
                if h.until.is_some() {
                    tracing::info!(%engine, "engine back after its trial request");
                    self.shared.out.fetch_sub(1, Ordering::Relaxed);
                }
                self.shared.tracked.store(engines.len(), Ordering::Relaxed);
            }
            return;
        }
        if !engines.contains_key(engine) {
            engines.insert(engine.clone(), Health::default());
            self.shared.tracked.store(engines.len(), Ordering::Relaxed);
        }
        let Some(h) = engines.get_mut(engine) else {
            return;
        };
        h.failures = h.failures.saturating_add(1);
        if h.until.is_none() && h.failures < config.consecutive_failures {
            return;
        }
        // Healthy and over the threshold, or half-open and the trial failed.
        if h.until.is_none() {
            self.shared.out.fetch_add(1, Ordering::Relaxed);
        }
        let factor = 1u32.checked_shl(h.ejections).unwrap_or(u32::MAX);
        let length = config
            .base_ejection
            .saturating_mul(factor)
            .min(config.max_ejection);
        h.ejections = h.ejections.saturating_add(1);
        h.until = Some(now + length);
        h.trial = false;
        metrics::counter!(names::ENGINE_EJECTIONS, "engine" => engine.to_string()).increment(1);
        tracing::warn!(%engine, failures = h.failures, ejected_for = ?length, "engine ejected");
    }
}

impl fmt::Debug for Outliers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outliers")
            .field("config", &self.shared.config)
            .field("out", &self.shared.out.load(Ordering::Relaxed))
            .finish()
    }
}

// === impl Trial ===

impl Drop for Trial {
    fn drop(&mut self) {
        // The trial's request went elsewhere, or left: the next request may try.
        if let Some(h) = self.outliers.lock().get_mut(&self.engine) {
            h.trial = false;
        }
    }
}

#[cfg(test)]
mod tests;
