//! The oracle of the exposition targets: the samples [`parse`](llmstack_metrics::parse)
//! returns, owned, and the stats [`engine_stats`] must make of them.

use std::collections::HashMap;

use llmstack_core::EngineStats;
use llmstack_metrics::{Sample, engine_stats, vllm};
use proptest::prelude::*;
use tokio::time::Instant;

use crate::same;

/// A sample as [`parse`](llmstack_metrics::parse) returns it, owned.
#[derive(Debug, Clone)]
pub(crate) struct Owned {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

impl Owned {
    pub(crate) fn of(s: &Sample<'_>) -> Self {
        Self {
            name: s.name.to_owned(),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            value: s.value,
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The stats of these samples, read the way the router documents it.
pub(crate) fn check_stats(
    samples: &[Owned],
    text: &str,
    previous: Option<&EngineStats>,
) -> Result<(), TestCaseError> {
    let vllm: Vec<&Owned> = samples
        .iter()
        .filter(|s| s.name.starts_with("vllm:"))
        .collect();
    let config: Vec<&&Owned> = vllm
        .iter()
        .filter(|s| s.name == vllm::CACHE_CONFIG_INFO)
        .collect();
    let blocks: Vec<u64> = config
        .iter()
        .filter_map(|s| s.label("num_gpu_blocks")?.parse().ok())
        .collect();
    // The sum of the engine's blocks over data-parallel ranks (saturating at u64::MAX).
    let blocks = Some(blocks.iter().copied().reduce(u64::saturating_add));
    let stats = engine_stats(text, previous, Instant::now());
    let pick = |names: &[&str]| -> Vec<&Owned> {
        names
            .iter()
            .map(|n| {
                vllm.iter()
                    .copied()
                    .filter(|s| s.name == *n)
                    .collect::<Vec<_>>()
            })
            .find(|v| !v.is_empty())
            .unwrap_or_default()
    };
    let running = pick(vllm::RUNNING);
    let waiting = pick(vllm::WAITING);
    let want = running.iter().map(|s| s.value).sum::<f64>();
    prop_assert!(
        same(stats.running, want),
        "running {} != {want}",
        stats.running
    );
    let want = waiting.iter().map(|s| s.value).sum::<f64>();
    prop_assert!(
        same(stats.waiting, want),
        "waiting {} != {want}",
        stats.waiting
    );
    let mut models: HashMap<&str, (f64, f64)> = HashMap::new();
    for s in &running {
        if let Some(m) = s.label("model_name") {
            models.entry(m).or_default().0 += s.value;
        }
    }
    for s in &waiting {
        if let Some(m) = s.label("model_name") {
            models.entry(m).or_default().1 += s.value;
        }
    }
    prop_assert_eq!(stats.models.len(), models.len());
    for (m, (r, w)) in models {
        let got = stats.models.get(m);
        prop_assert!(got.is_some(), "model {m:?} missing");
        let got = got.copied().unwrap_or_default();
        prop_assert!(
            same(got.running, r) && same(got.waiting, w),
            "model {m:?}: {got:?}"
        );
    }
    let usage = pick(vllm::KV_CACHE_USAGE);
    let want = if usage.is_empty() {
        0.0
    } else {
        usage.iter().map(|s| s.value).sum::<f64>() / usage.len() as f64
    };
    prop_assert!(same(stats.kv_cache_usage, want));
    let counter = |names: &[&str]| {
        pick(names)
            .iter()
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .sum::<f64>()
    };
    prop_assert!(same(
        stats.prefix_cache_queries,
        counter(vllm::PREFIX_CACHE_QUERIES)
    ));
    prop_assert!(same(
        stats.prefix_cache_hits,
        counter(vllm::PREFIX_CACHE_HITS)
    ));
    if let Some(rate) = stats.prefix_cache_hit_rate {
        prop_assert!(
            (0.0..=1.0).contains(&rate),
            "hit rate {rate} (queries {}, hits {}, previous {previous:?})",
            stats.prefix_cache_queries,
            stats.prefix_cache_hits
        );
    }
    if previous.is_none() {
        prop_assert_eq!(stats.prefix_cache_hit_rate, None);
    }
    prop_assert_eq!(stats.num_gpu_blocks, blocks.flatten());
    let want = config
        .iter()
        .find_map(|s| s.label("block_size")?.parse::<u32>().ok());
    prop_assert_eq!(stats.block_size, want);
    let lora = vllm
        .iter()
        .filter(|s| s.name == vllm::LORA_REQUESTS_INFO)
        .max_by(|a, b| a.value.total_cmp(&b.value));
    for (got, key) in [
        (&stats.lora_running, "running_lora_adapters"),
        (&stats.lora_waiting, "waiting_lora_adapters"),
    ] {
        let want: Vec<&str> = lora
            .and_then(|s| s.label(key))
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        prop_assert_eq!(got, &want);
        prop_assert!(got.iter().all(|a| !a.is_empty() && a.trim() == a));
    }
    Ok(())
}
