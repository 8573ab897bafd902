//! From an exposition to the [`EngineStats`] a router uses.

use std::collections::HashMap;

use llmstack_core::{EngineStats, ModelLoad};
use tokio::time::Instant;

use crate::parse::{Sample, parse};
use crate::vllm;

/// The stats in one `/metrics` text, scraped at `now`.
///
/// Gauges and counters are summed over data-parallel ranks (`engine` label) and models;
/// KV-cache usage is their mean. Each series is read under its current vLLM name, else its
/// old one. `previous` (the last scrape of the same engine) gives the prefix-cache hit
/// rate over the interval; a counter that went down (engine restart) gives `None`.
pub fn engine_stats(text: &str, previous: Option<&EngineStats>, now: Instant) -> EngineStats {
    let samples: Vec<Sample<'_>> = parse(text)
        .filter(|s| s.name.starts_with("vllm:"))
        .collect();
    let pick = |names: &[&str]| -> Vec<&Sample<'_>> {
        names
            .iter()
            .map(|n| samples.iter().filter(|s| s.name == *n).collect::<Vec<_>>())
            .find(|v| !v.is_empty())
            .unwrap_or_default()
    };
    let sum = |names: &[&str]| {
        pick(names)
            .iter()
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .sum::<f64>()
    };
    let running = pick(vllm::RUNNING);
    let waiting = pick(vllm::WAITING);
    let mut models: HashMap<String, ModelLoad> = HashMap::new();
    for s in &running {
        if let Some(m) = s.label("model_name") {
            models.entry(m.to_owned()).or_default().running += s.value;
        }
    }
    for s in &waiting {
        if let Some(m) = s.label("model_name") {
            models.entry(m.to_owned()).or_default().waiting += s.value;
        }
    }
    let usage = pick(vllm::KV_CACHE_USAGE);
    let kv_cache_usage = if usage.is_empty() {
        0.0
    } else {
        usage.iter().map(|s| s.value).sum::<f64>() / usage.len() as f64
    };
    let queries = sum(vllm::PREFIX_CACHE_QUERIES);
    let hits = sum(vllm::PREFIX_CACHE_HITS);
    let prefix_cache_hit_rate = previous.and_then(|p| {
        let (dq, dh) = (queries - p.prefix_cache_queries, hits - p.prefix_cache_hits);
        let rate = dh / dq;
        // Counters that sum to infinity give inf/inf: no rate rather than NaN.
        (dq > 0.0 && dh >= 0.0 && rate.is_finite()).then(|| rate.clamp(0.0, 1.0))
    });
    let config: Vec<&Sample<'_>> = samples
        .iter()
        .filter(|s| s.name == vllm::CACHE_CONFIG_INFO)
        .collect();
    let num_gpu_blocks = config
        .iter()
        .filter_map(|s| s.label("num_gpu_blocks")?.parse::<u64>().ok())
        .reduce(u64::saturating_add);
    let block_size = config
        .iter()
        .find_map(|s| s.label("block_size")?.parse::<u32>().ok());
    // Every combination seen stays exported; the current one has the latest timestamp.
    let lora = samples
        .iter()
        .filter(|s| s.name == vllm::LORA_REQUESTS_INFO)
        .max_by(|a, b| a.value.total_cmp(&b.value));
    let adapters = |key: &str| -> Vec<String> {
        lora.and_then(|s| s.label(key))
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    EngineStats {
        running: running.iter().map(|s| s.value).sum(),
        waiting: waiting.iter().map(|s| s.value).sum(),
        kv_cache_usage,
        prefix_cache_queries: queries,
        prefix_cache_hits: hits,
        prefix_cache_hit_rate,
        num_gpu_blocks,
        block_size,
        lora_running: adapters("running_lora_adapters"),
        lora_waiting: adapters("waiting_lora_adapters"),
        models,
        scraped_at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = include_str!("../tests/fixtures/vllm-0.33.txt");
    const V0: &str = include_str!("../tests/fixtures/vllm-0.8-v0.txt");

    #[test]
    fn current_names() {
        let s = engine_stats(V1, None, Instant::now());
        assert_eq!((s.running, s.waiting), (3.0, 2.0));
        assert!((s.kv_cache_usage - 0.2734).abs() < 1e-9);
        assert_eq!(
            (s.prefix_cache_queries, s.prefix_cache_hits),
            (18000.0, 9600.0)
        );
        assert_eq!(s.prefix_cache_hit_rate, None, "first scrape");
        assert_eq!((s.num_gpu_blocks, s.block_size), (Some(27341), Some(16)));
        assert_eq!(s.lora_running, ["sql-lora"]);
        assert_eq!(s.lora_waiting, ["sql-lora", "chat-lora"]);
        let m = s.models["meta-llama/Llama-3.1-8B-Instruct"];
        assert_eq!((m.running, m.waiting), (3.0, 2.0));
    }

    #[test]
    fn old_names_and_hit_rate_over_the_interval() {
        let first = engine_stats(V0, None, Instant::now());
        assert!(
            (first.kv_cache_usage - 0.5).abs() < 1e-9,
            "gpu_cache_usage_perc"
        );
        assert_eq!(
            (first.prefix_cache_queries, first.prefix_cache_hits),
            (1000.0, 250.0)
        );
        let later = V0
            .replace(
                "gpu_prefix_cache_queries_total{model_name=\"m\"} 1000.0",
                "gpu_prefix_cache_queries_total{model_name=\"m\"} 1400.0",
            )
            .replace(
                "gpu_prefix_cache_hits_total{model_name=\"m\"} 250.0",
                "gpu_prefix_cache_hits_total{model_name=\"m\"} 550.0",
            );
        let second = engine_stats(&later, Some(&first), Instant::now());
        assert_eq!(second.prefix_cache_hit_rate, Some(0.75));
        // A restarted engine (counters back to 0) has no rate for that interval.
        let third = engine_stats(V0, Some(&second), Instant::now());
        assert_eq!(third.prefix_cache_hit_rate, None);
    }

    #[test]
    fn data_parallel_ranks_add_up() {
        let text = "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2.0\nvllm:num_requests_running{engine=\"1\",model_name=\"m\"} 5.0\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.2\nvllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.4\n";
        let s = engine_stats(text, None, Instant::now());
        assert_eq!(s.running, 7.0);
        assert!((s.kv_cache_usage - 0.3).abs() < 1e-9);
        assert_eq!(s.models["m"].running, 7.0);
    }
}
