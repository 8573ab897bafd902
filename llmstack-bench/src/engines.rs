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
    }
    Ok(total)
}

impl EngineCounters {
    /// What happened between `self` (before) and `after`.
    pub fn delta(&self, after: &EngineCounters) -> EngineDelta {
        let queries = after.prefix_cache_queries - self.prefix_cache_queries;
        let hits = after.prefix_cache_hits - self.prefix_cache_hits;
        EngineDelta {
            prefix_cache_queries: queries,
            prefix_cache_hits: hits,
            prefix_cache_hit_rate: (queries > 0.0).then(|| hits / queries),
            preemptions: after.preemptions - self.preemptions,
        }
    }
}
