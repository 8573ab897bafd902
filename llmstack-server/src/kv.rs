//! KV-event routing's moving parts for `--routing-logic kvaware`, composed: the KV
//! index (`llmstack-routing`), the subscriber that feeds it (`llmstack-metrics`) and the
//! tokenizers that follow discovery (`llmstack-tokenize`). Each is a library piece; this
//! module only starts them and keeps them alive with the server.

use std::sync::Arc;
use std::time::Duration;

use llmstack_core::{BoxError, EndpointId, EndpointSet, StatsReader};
use llmstack_metrics::{KvSourceState, KvSourceStatus, KvSubscriber};
use llmstack_routing::{KvIndex, Router};
use llmstack_tokenize::LiveTokenizers;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::KvConfig;

/// How often engines' scraped KV capacity is handed to the index.
const CAPACITY_INTERVAL: Duration = Duration::from_secs(1);

/// The running KV-event path. Dropping it stops the subscriber and its tasks.
#[derive(Debug)]
pub(crate) struct KvParts {
    subscriber: KvSubscriber,
    index: Arc<KvIndex>,
    follow: JoinHandle<()>,
    capacity: JoinHandle<()>,
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
        let capacity = tokio::spawn(capacity(Arc::clone(&index), stats));
        Ok((
            router,
            Self {
                subscriber,
                index,
                follow,
                capacity,
            },
        ))
    }

    /// The tasks to abort if start-up fails later.
    pub(crate) fn abort_handles(&self) -> [AbortHandle; 2] {
        [self.follow.abort_handle(), self.capacity.abort_handle()]
    }

    /// `/engines`' view of one engine: its publishers' subscription state and what the
    /// index holds for it.
    pub(crate) fn engine_json(&self, id: &EndpointId, statuses: &[KvSourceStatus]) -> Value {
        let sources: Vec<Value> = statuses
            .iter()
            .filter(|s| s.source.endpoint == *id)
            .map(|s| {
                json!({
                    "dp_rank": s.source.dp_rank,
                    "publisher": s.publisher,
                    "state": state_name(s.state),
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
        let (mut gpu, mut lower, mut orphans, mut block_size) = (0, 0, 0, 0);
        for blocks in self.index.sources() {
            if blocks.source.endpoint == *id {
                gpu += blocks.gpu_blocks;
                lower += blocks.lower_blocks;
                orphans += blocks.orphans;
                block_size = block_size.max(blocks.block_size);
            }
        }
        json!({
            "sources": sources,
            "index": {"gpu_blocks": gpu, "cpu_blocks": lower, "block_size": block_size, "orphans": orphans},
        })
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

/// The name `/engines` shows for a subscription state.
pub(crate) fn state_name(state: KvSourceState) -> &'static str {
    match state {
        KvSourceState::Discovering => "discovering",
        KvSourceState::Unavailable => "unavailable",
        KvSourceState::Connecting => "connecting",
        KvSourceState::Connected => "connected",
        KvSourceState::Backoff => "backoff",
    }
}

/// Hands each engine's scraped `num_gpu_blocks` to the index (its bound per engine).
async fn capacity(index: Arc<KvIndex>, stats: StatsReader) {
    let mut tick = tokio::time::interval(CAPACITY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = stats.snapshot();
        for (id, engine) in snapshot.iter() {
            if let Some(blocks) = engine.num_gpu_blocks {
                index.set_capacity(id, blocks);
            }
        }
    }
}
