//! KV-event routing's moving parts for `--routing-logic kvaware`, composed: the KV
//! index (`llmstack-routing`), the subscriber that feeds it (`llmstack-metrics`) and the
//! tokenizers that follow discovery (`llmstack-tokenize`). Each is a library piece; this
//! module only starts them, keeps them alive with the server, and shows them in
//! `/engines` and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use llmstack_core::{BoxError, EndpointId, EndpointSet, StatsReader};
use llmstack_metrics::{KvSourceStatus, KvSubscriber};
use llmstack_routing::{KvIndex, Router};
use llmstack_tokenize::LiveTokenizers;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::KvConfig;

/// How often engines' scraped KV capacity is handed to the index.
const CAPACITY_INTERVAL: Duration = Duration::from_secs(1);

/// Where the running KV-event path is kept (none unless `kvaware`); the dynamic
/// configuration starts or stops it while serving.
pub(crate) type KvSlot = std::sync::RwLock<Option<KvParts>>;

/// The running KV-event path. Dropping it stops the subscriber and its tasks.
#[derive(Debug)]
pub(crate) struct KvParts {
    subscriber: KvSubscriber,
    follow: JoinHandle<()>,
    capacity: JoinHandle<()>,
}

/// What the KV index holds for one engine, summed over its data-parallel ranks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EngineBlocks {
    pub(crate) gpu: usize,
    /// Blocks only in a lower tier (CPU offload).
    pub(crate) cpu: usize,
    pub(crate) block_size: u32,
    pub(crate) orphans: u64,
}

impl KvParts {
    /// Loads the configured tokenizers (failing on one that does not load), gives
    /// `router` the KV index and the tokenizers, and starts following `endpoints`:
    /// their events, their models' tokenizers, their KV capacity from `stats`.
    pub(crate) async fn start(
        config: &KvConfig,
        router: Router,
        endpoints: watch::Receiver<EndpointSet>,
        stats: StatsReader,
    ) -> Result<(Router, Self), BoxError> {
        let sources = config.tokenizers.clone();
        let tokenizers =
            tokio::task::spawn_blocking(move || LiveTokenizers::load(&sources, None)).await??;
        let tokenizers = Arc::new(tokenizers);
        let index = Arc::new(KvIndex::new());
        let router = router.with_kv_index(Arc::clone(&index), Arc::clone(&tokenizers) as _);
        let subscriber =
            KvSubscriber::spawn(endpoints.clone(), Arc::clone(&index), config.events.clone());
        let follow = tokio::spawn(tokenizers.follow(endpoints));
        let capacity = tokio::spawn(index.follow_capacity(stats, CAPACITY_INTERVAL));
        Ok((
            router,
            Self {
                subscriber,
                follow,
                capacity,
            },
        ))
    }

    /// The tasks to abort if start-up fails later.
    pub(crate) fn abort_handles(&self) -> [AbortHandle; 2] {
        [self.follow.abort_handle(), self.capacity.abort_handle()]
    }

    /// Every publisher's status (one lock, copied).
    pub(crate) fn statuses(&self) -> Vec<KvSourceStatus> {
        self.subscriber.status()
    }
}

impl Drop for KvParts {
    fn drop(&mut self) {
        self.follow.abort();
        self.capacity.abort();
    }
}

/// What `index` holds per engine (one pass over its sources).
pub(crate) fn engine_blocks(index: &KvIndex) -> HashMap<EndpointId, EngineBlocks> {
    let mut engines: HashMap<EndpointId, EngineBlocks> = HashMap::new();
    for source in index.sources() {
        let e = engines.entry(source.source.endpoint).or_default();
        e.gpu += source.gpu_blocks;
        e.cpu += source.lower_blocks;
        e.orphans += source.orphans;
        e.block_size = e.block_size.max(source.block_size);
    }
    engines
}

/// `/engines`' view of engine `id`: its publishers' subscription state (from
/// `statuses`) and what the index holds for it (from `blocks`).
pub(crate) fn engine_json(
    id: &EndpointId,
    statuses: &[KvSourceStatus],
    blocks: &HashMap<EndpointId, EngineBlocks>,
) -> Value {
    let sources: Vec<Value> = statuses
        .iter()
        .filter(|s| s.source.endpoint == *id)
        .map(|s| {
            json!({
                "dp_rank": s.source.dp_rank,
                "publisher": s.publisher,
                "state": s.state.as_str(),
                "last_seq": s.last_seq,
                "batches": s.batches,
                "events": s.events,
                "gaps": s.gaps,
                "replays": s.replays,
                "resets": s.resets,
                "decode_errors": s.decode_errors,
                "lag_seconds": s.last_lag_seconds,
                "last_error": s.last_error,
            })
        })
        .collect();
    let b = blocks.get(id).copied().unwrap_or_default();
    json!({
        "sources": sources,
        "index": {"gpu_blocks": b.gpu, "cpu_blocks": b.cpu, "block_size": b.block_size, "orphans": b.orphans},
    })
}
