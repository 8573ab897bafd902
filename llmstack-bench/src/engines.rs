//! The engines' own view of a run: their `/metrics` counters before and after.

use llmstack_metrics::{parse, vllm};
use serde::Serialize;

use crate::{Client, GetError};

/// Counters summed over the engines at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineCounters {
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: f64,
    /// Prompt tokens found there.
    pub prefix_cache_hits: f64,
    /// Preemptions.
    pub preemptions: f64,
    /// Seconds requests waited in the engines' queues (`vllm:request_queue_time_seconds`'
    /// sum), and how many requests that covers (its count).
    pub queue_seconds: f64,
    /// Requests in `queue_seconds`.
    pub queued_requests: f64,
    /// Seconds from first scheduled to first token
    /// (`vllm:request_prefill_time_seconds`' sum).
    pub prefill_seconds: f64,
    /// Requests in `prefill_seconds`.
    pub prefilled_requests: f64,
}

/// What the engines counted during a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct EngineDelta {
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: f64,
    /// Prompt tokens found there.
    pub prefix_cache_hits: f64,
    /// Hits / queries (`None` when nothing was looked up).
    pub prefix_cache_hit_rate: Option<f64>,
    /// Preemptions.
    pub preemptions: f64,
    /// Mean time a request waited in an engine's queue, ms (`None`: the engines export
    /// no queue-time histogram, or no request finished).
    #[serde(default)]
    pub queue_ms_mean: Option<f64>,
    /// Mean time from a request's first scheduling to its first token, ms: its prefill,
    /// chunks and the batch it shared included.
    #[serde(default)]
    pub prefill_ms_mean: Option<f64>,
}

/// Sums the counters of every engine's `/metrics` (current vLLM names, else the old
/// ones). Fails with the first engine that does not answer.
pub async fn engine_counters(
    client: &Client,
    engines: &[String],
) -> Result<EngineCounters, GetError> {
    let mut total = EngineCounters::default();
    for url in engines {
        let text = client
            .get_text(&format!("{}/metrics", url.trim_end_matches('/')))
            .await?;
        let samples: Vec<_> = parse(&text).collect();
        let sum = |names: &[&str]| {
            names
                .iter()
                .map(|n| {
                    samples
                        .iter()
                        .filter(|s| s.name == *n)
                        .map(|s| s.value)
                        .sum::<f64>()
                })
                .find(|v| *v > 0.0)
                .unwrap_or(0.0)
        };
        total.prefix_cache_queries += sum(vllm::PREFIX_CACHE_QUERIES);
        total.prefix_cache_hits += sum(vllm::PREFIX_CACHE_HITS);
        total.preemptions += sum(vllm::PREEMPTIONS);
        total.queue_seconds += sum(&["vllm:request_queue_time_seconds_sum"]);
        total.queued_requests += sum(&["vllm:request_queue_time_seconds_count"]);
        total.prefill_seconds += sum(&["vllm:request_prefill_time_seconds_sum"]);
        total.prefilled_requests += sum(&["vllm:request_prefill_time_seconds_count"]);
    }
    Ok(total)
}

impl EngineCounters {
    /// What happened between `self` (before) and `after`.
    pub fn delta(&self, after: &EngineCounters) -> EngineDelta {
        let queries = after.prefix_cache_queries - self.prefix_cache_queries;
        let hits = after.prefix_cache_hits - self.prefix_cache_hits;
        let mean_ms = |sum: f64, count: f64| (count > 0.0).then(|| sum / count * 1e3);
        EngineDelta {
            prefix_cache_queries: queries,
            prefix_cache_hits: hits,
            prefix_cache_hit_rate: (queries > 0.0).then(|| hits / queries),
            preemptions: after.preemptions - self.preemptions,
            queue_ms_mean: mean_ms(
                after.queue_seconds - self.queue_seconds,
                after.queued_requests - self.queued_requests,
            ),
            prefill_ms_mean: mean_ms(
                after.prefill_seconds - self.prefill_seconds,
                after.prefilled_requests - self.prefilled_requests,
            ),
        }
    }
}
