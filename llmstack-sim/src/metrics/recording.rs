//! The counters, gauges and histograms one engine records for `/metrics`.
//!
//! The engine's step loop updates them; the exposition reads them.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::histogram::{
    Histogram, ITERATION_BUCKETS, ITL_BUCKETS, LATENCY_BUCKETS, N_BUCKETS, PREEMPTION_BUCKETS,
    TTFT_BUCKETS, buckets_1_2_5,
};
use crate::finish::{FinishReason, FinishedSeq};

/// Sleep state for `vllm:engine_sleep_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SleepState {
    #[default]
    Awake,
    /// Level 0: scheduling paused, memory kept.
    Paused,
    /// Level 1 (weights offloaded).
    Level1,
    /// Level 2 (weights discarded).
    Level2,
}

/// Counters, gauges and histograms of one engine, updated by its step loop.
#[derive(Debug, Clone)]
pub(crate) struct EngineMetrics {
    pub(crate) running: usize,
    pub(crate) waiting: usize,
    pub(crate) waiting_deferred: usize,
    pub(crate) kv_usage: f64,
    pub(crate) sleep: SleepState,
    pub(crate) prefix_cache_queries: u64,
    pub(crate) prefix_cache_hits: u64,
    pub(crate) num_preemptions: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) prompt_tokens_cached: u64,
    pub(crate) generation_tokens: u64,
    pub(crate) admission_rejections: u64,
    success: [u64; 5],
    pub(crate) ttft: Histogram,
    pub(crate) itl: Histogram,
    pub(super) tpot: Histogram,
    pub(crate) e2e: Histogram,
    pub(crate) queue_time: Histogram,
    pub(super) prefill_time: Histogram,
    pub(super) decode_time: Histogram,
    pub(super) inference_time: Histogram,
    pub(super) prompt_hist: Histogram,
    pub(super) generation_hist: Histogram,
    pub(super) max_tokens_hist: Histogram,
    pub(super) max_generation_hist: Histogram,
    pub(crate) n_hist: Histogram,
    pub(super) preemptions_hist: Histogram,
    pub(super) kv_computed_hist: Histogram,
    pub(super) iteration_hist: Histogram,
    /// `lora_requests_info`: (running, waiting) → last Unix time seen.
    pub(super) lora_info: BTreeMap<(String, String), f64>,
}

// === impl EngineMetrics ===

impl EngineMetrics {
    pub(crate) fn new(max_model_len: usize) -> Self {
        let tokens = buckets_1_2_5(max_model_len);
        Self {
            running: 0,
            waiting: 0,
            waiting_deferred: 0,
            kv_usage: 0.0,
            sleep: SleepState::Awake,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            num_preemptions: 0,
            prompt_tokens: 0,
            prompt_tokens_cached: 0,
            generation_tokens: 0,
            admission_rejections: 0,
            success: [0; 5],
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            tpot: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(LATENCY_BUCKETS),
            queue_time: Histogram::new(LATENCY_BUCKETS),
            prefill_time: Histogram::new(LATENCY_BUCKETS),
            decode_time: Histogram::new(LATENCY_BUCKETS),
            inference_time: Histogram::new(LATENCY_BUCKETS),
            prompt_hist: Histogram::new(&tokens),
            generation_hist: Histogram::new(&tokens),
            max_tokens_hist: Histogram::new(&tokens),
            max_generation_hist: Histogram::new(&tokens),
            n_hist: Histogram::new(N_BUCKETS),
            preemptions_hist: Histogram::new(PREEMPTION_BUCKETS),
            kv_computed_hist: Histogram::new(&tokens),
            iteration_hist: Histogram::new(ITERATION_BUCKETS),
            lora_info: BTreeMap::new(),
        }
    }

    /// Finished requests by reason.
    pub(crate) fn finished(&self, reason: FinishReason) -> u64 {
        self.success[reason_index(reason)]
    }

    pub(crate) fn observe_iteration_tokens(&mut self, n: usize) {
        if n > 0 {
            self.iteration_hist.observe(n as f64);
        }
    }

    pub(crate) fn record_finished(&mut self, f: &FinishedSeq) {
        self.success[reason_index(f.reason)] += 1;
        let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
        self.e2e.observe(secs(f.arrival, f.now));
        if let Some(sched) = f.first_scheduled {
            let last = f.last_token.unwrap_or(f.now);
            self.inference_time.observe(secs(sched, last));
            if let Some(first) = f.first_token {
                self.prefill_time.observe(secs(sched, first));
            }
        }
        if let (Some(first), Some(last)) = (f.first_token, f.last_token) {
            self.decode_time.observe(secs(first, last));
            if f.generation_tokens > 1 {
                self.tpot
                    .observe(secs(first, last) / (f.generation_tokens - 1) as f64);
            }
        }
        self.prompt_hist.observe(f.prompt_tokens as f64);
        self.generation_hist.observe(f.generation_tokens as f64);
        self.max_tokens_hist.observe(f.max_tokens as f64);
        self.max_generation_hist.observe(f.generation_tokens as f64);
        self.kv_computed_hist
            .observe(f.prompt_tokens.saturating_sub(f.cached_tokens) as f64);
        self.preemptions_hist.observe(f64::from(f.preemptions));
    }

    /// Sets the current LoRA combination's timestamp (vLLM keeps old combinations; we cap
    /// them at 256 so a long run cannot grow the exposition without bound).
    pub(crate) fn set_lora_info(&mut self, running: String, waiting: String, unix_now: f64) {
        self.lora_info.insert((running, waiting), unix_now);
        if self.lora_info.len() > 256
            && let Some(oldest) = self
                .lora_info
                .iter()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k.clone())
        {
            self.lora_info.remove(&oldest);
        }
    }
}

/// Index of `r` in the per-reason counters (vLLM's label order).
fn reason_index(r: FinishReason) -> usize {
    FinishReason::ALL.iter().position(|&x| x == r).unwrap_or(0)
}
