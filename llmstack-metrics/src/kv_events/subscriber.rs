//! The subscriber: one task per engine of the endpoint set, started and stopped as
//! the set changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llmstack_core::kv::KvSink;
use llmstack_core::{Endpoint, EndpointId, EndpointSet, EndpointState};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::follow::{Ctx, run_engine};
use super::status::{KvSourceStatus, Registry};

/// Settings of the [`KvSubscriber`].
#[derive(Debug, Clone, PartialEq)]
pub struct KvEventsConfig {
    /// The engines' PUB port when they do not say (no `/kv_event_sources`, vLLM before
    /// 0.33): `tcp://{engine host}:{port}`, rank 0 only. `None` (the default): engines
    /// that do not say are not subscribed to.
    pub port: Option<u16>,
    /// The replay (ROUTER) port that goes with `port`.
    pub replay_port: Option<u16>,
    /// The topic prefix subscribed to; `""` (the default) receives every topic.
    pub topic: String,
    /// First wait before reconnecting after a failure (doubled per failure).
    pub backoff_min: Duration,
    /// Longest wait before reconnecting.
    pub backoff_max: Duration,
    /// Time between two discoveries of an engine that publishes no events.
    pub discovery_interval: Duration,
    /// Deadline of a `/kv_event_sources` request and of a ZMQ connection attempt.
    pub timeout: Duration,
    /// Deadline of a whole replay exchange.
    pub replay_timeout: Duration,
}

/// Subscribes to the KV-cache events of every engine in an endpoint set and feeds
/// them to a [`KvSink`] in sequence order. Dropping it stops every subscription.
///
/// Per engine (any not [`EndpointState::Unready`] when it appears; it keeps its
/// subscription through later unready spells):
/// - **Discovery.** `GET {base}/kv_event_sources` gives each data-parallel rank's PUB
///   and replay endpoints (a wildcard host means the engine's host). Without an answer,
///   [`KvEventsConfig::port`] is used if set. An engine that publishes nothing is
///   logged once and asked again every [`KvEventsConfig::discovery_interval`].
/// - **Sequence.** Batches are applied in order. A publisher seen for the first time
///   (or again after a restart) mid-stream is caught up from its replay buffer; a gap is
///   filled by replay; if it cannot be (no replay socket, the buffer is too short, the
///   replay fails), the sink is told to [`reset`](KvSink::reset) the source and
///   application continues. A sequence that goes back (an engine restart) resets too,
///   and so does a batch that does not decode.
/// - **Connection.** A lost or failed connection is retried with exponential backoff,
///   rediscovering first (the engine may have come back elsewhere).
/// - **Removal.** When the engine leaves the set (or its URL changes), its task is
///   stopped, then [`KvSink::remove`] is called: no batch of it is applied after.
///
/// A restarted publisher whose sequence has already passed the last one applied is
/// taken for the same publisher with a gap (vLLM's numbers carry no process identity).
#[derive(Debug)]
pub struct KvSubscriber {
    registry: Arc<Registry>,
    task: JoinHandle<()>,
}

/// An engine's task, aborted when dropped.
struct EngineTask {
    url: Uri,
    handle: JoinHandle<()>,
}

// === impl KvEventsConfig ===

impl Default for KvEventsConfig {
    fn default() -> Self {
        Self {
            port: None,
            replay_port: None,
            topic: String::new(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            discovery_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
            replay_timeout: Duration::from_secs(5),
        }
    }
}

// === impl KvSubscriber ===

impl KvSubscriber {
    /// Starts following the engines published on `endpoints`, delivering to `sink`.
    /// Needs a Tokio runtime. Each engine costs one task and one socket per rank
    /// (plus a short-lived one per replay).
    pub fn spawn<S: KvSink>(
        endpoints: watch::Receiver<EndpointSet>,
        sink: S,
        config: KvEventsConfig,
    ) -> Self {
        let registry = Arc::new(Registry::default());
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(3))
            .build(connector);
        let ctx = Arc::new(Ctx {
            config,
            sink: Arc::new(sink),
            registry: Arc::clone(&registry),
            client,
        });
        let task = tokio::spawn(supervise(endpoints, ctx));
        Self { registry, task }
    }

    /// Every publisher's status, ordered by engine and rank: one entry per discovered
    /// rank, or a rank-0 entry while the engine is being discovered or publishes
    /// nothing. Copies the table under a short lock.
    pub fn status(&self) -> Vec<KvSourceStatus> {
        self.registry.snapshot()
    }
}

impl Drop for KvSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows the endpoint set: starts, restarts and stops engine tasks.
async fn supervise(mut endpoints: watch::Receiver<EndpointSet>, ctx: Arc<Ctx>) {
    // Dropped with this task (the subscriber aborted it): each engine task is aborted.
    let mut engines: HashMap<EndpointId, EngineTask> = HashMap::new();
    loop {
        let current: HashMap<EndpointId, Arc<Endpoint>> = endpoints
            .borrow_and_update()
            .iter()
            .map(|ep| (ep.id.clone(), Arc::clone(ep)))
            .collect();
        let stale: Vec<EndpointId> = engines
            .iter()
            .filter(|(id, task)| current.get(*id).is_none_or(|ep| ep.url != task.url))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(task) = engines.remove(&id) {
                task.stop().await;
            }
            // After the task is gone, so no batch of it follows.
            ctx.sink.remove(&id);
            ctx.registry.retain(&id, |_| false);
        }
        for (id, ep) in current {
            if engines.contains_key(&id) || ep.state == EndpointState::Unready {
                continue;
            }
            ctx.registry.update(
                &llmstack_core::kv::KvSource {
                    endpoint: id.clone(),
                    dp_rank: 0,
                },
                |_| {},
            );
            let url = ep.url.clone();
            let handle = tokio::spawn(run_engine(Arc::clone(&ctx), ep));
            engines.insert(id, EngineTask { url, handle });
        }
        if endpoints.changed().await.is_err() {
            // The discovery side is gone: keep following the last set.
            std::future::pending::<()>().await;
        }
    }
}

// === impl EngineTask ===

impl EngineTask {
    /// Aborts the task and waits until it has stopped.
    async fn stop(mut self) {
        self.handle.abort();
        match (&mut self.handle).await {
            Err(e) if e.is_panic() => {
                tracing::error!(error = %e, "KV-event engine task panicked");
            }
            Ok(()) | Err(_) => {}
        }
    }
}

impl Drop for EngineTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
