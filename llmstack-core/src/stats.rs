//! Engine load and cache state, as scraped, and the snapshot routing reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::EndpointId;

/// One engine's state from its last successful `/metrics` scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineStats {
    /// Requests in the running batch (`vllm:num_requests_running`, summed over ranks).
    pub running: f64,
    /// Requests waiting, preempted ones included (`vllm:num_requests_waiting`).
    pub waiting: f64,
    /// Fraction 0..1 of KV blocks held by requests (`vllm:kv_cache_usage_perc`, or the
    /// old `vllm:gpu_cache_usage_perc`; the mean over data-parallel ranks).
    pub kv_cache_usage: f64,
    /// Prompt tokens looked up in the prefix cache so far (counter).
    pub prefix_cache_queries: f64,
    /// Prompt tokens found in the prefix cache so far (counter).
    pub prefix_cache_hits: f64,
    /// Hits / queries over the last scrape interval; `None` when nothing was looked up in
    /// it (or this is the first scrape).
    pub prefix_cache_hit_rate: Option<f64>,
    /// KV blocks of the engine (`num_gpu_blocks` label of `vllm:cache_config_info`).
    pub num_gpu_blocks: Option<u64>,
    /// Tokens per KV block (`block_size` label of `vllm:cache_config_info`).
    pub block_size: Option<u32>,
    /// LoRA adapters in the running batch (current `vllm:lora_requests_info`).
    pub lora_running: Vec<String>,
    /// LoRA adapters with waiting requests.
    pub lora_waiting: Vec<String>,
    /// Per served model (`model_name` label): running and waiting requests.
    pub models: HashMap<String, ModelLoad>,
    /// When the scrape that produced this finished.
    pub scraped_at: Instant,
}

/// Running and waiting requests of one model on one engine.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelLoad {
    /// Requests in the running batch.
    pub running: f64,
    /// Requests waiting.
    pub waiting: f64,
}

/// The stats of every engine, as of one moment: immutable, shared by reference.
///
/// Entries older than three scrape intervals are stale: [`StatsSnapshot::get`] treats
/// them as unknown, never as zero load.
#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    engines: HashMap<EndpointId, EngineStats>,
    interval: Duration,
}

/// Reads the latest [`StatsSnapshot`]: a cheap handle over a `watch` channel.
#[derive(Debug, Clone)]
pub struct StatsReader(watch::Receiver<Arc<StatsSnapshot>>);

// === impl StatsSnapshot ===

impl StatsSnapshot {
    /// An empty snapshot for scrapes every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            engines: HashMap::new(),
            interval,
        }
    }

    /// A snapshot with these engines.
    pub fn with_engines(interval: Duration, engines: HashMap<EndpointId, EngineStats>) -> Self {
        Self { engines, interval }
    }

    /// The engine's stats if they are fresh (at most three intervals old at `now`).
    pub fn get_at(&self, id: &EndpointId, now: Instant) -> Option<&EngineStats> {
        self.engines
            .get(id)
            .filter(|s| now.saturating_duration_since(s.scraped_at) <= self.interval * 3)
    }

    /// [`StatsSnapshot::get_at`] now.
    pub fn get(&self, id: &EndpointId) -> Option<&EngineStats> {
        self.get_at(id, Instant::now())
    }

    /// Every engine with stats, fresh or not.
    pub fn iter(&self) -> impl Iterator<Item = (&EndpointId, &EngineStats)> {
        self.engines.iter()
    }

    /// The scrape interval the staleness rule is based on.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

// === impl StatsReader ===

impl StatsReader {
    /// A reader over `rx`.
    pub fn new(rx: watch::Receiver<Arc<StatsSnapshot>>) -> Self {
        Self(rx)
    }

    /// The latest snapshot (the channel's lock is released before returning).
    pub fn snapshot(&self) -> Arc<StatsSnapshot> {
        Arc::clone(&self.0.borrow())
    }

    /// Waits for the next snapshot; false once the scraper is gone.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(at: Instant) -> EngineStats {
        EngineStats {
            running: 1.0,
            waiting: 0.0,
            kv_cache_usage: 0.5,
            prefix_cache_queries: 0.0,
            prefix_cache_hits: 0.0,
            prefix_cache_hit_rate: None,
            num_gpu_blocks: None,
            block_size: None,
            lora_running: vec![],
            lora_waiting: vec![],
            models: HashMap::new(),
            scraped_at: at,
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn stale_stats_are_unknown() {
        let id = EndpointId::new("e");
        let snap = StatsSnapshot::with_engines(
            Duration::from_secs(1),
            HashMap::from([(id.clone(), stats(Instant::now()))]),
        );
        assert!(snap.get(&id).is_some());
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(snap.get(&id).is_some());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(snap.get(&id).is_none(), "older than 3 intervals");
        assert_eq!(snap.iter().count(), 1);
    }
}
