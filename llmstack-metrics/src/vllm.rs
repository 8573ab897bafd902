//! The vLLM series the router reads, with the names older vLLM releases used.
//!
//! Each lookup tries the current name first and falls back to the old one (vllm.md §4.5):
//! `gpu_cache_usage_perc` was renamed in 0.10 and removed in 0.12, the `gpu_prefix_cache_*`
//! counters likewise.

/// Requests in the running batch.
pub const RUNNING: &[&str] = &["vllm:num_requests_running"];
/// Requests waiting (including preempted ones).
pub const WAITING: &[&str] = &["vllm:num_requests_waiting"];
/// KV-cache usage, 0..1.
pub const KV_CACHE_USAGE: &[&str] = &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"];
/// Prefix-cache lookups, in tokens (counter).
pub const PREFIX_CACHE_QUERIES: &[&str] = &[
    "vllm:prefix_cache_queries_total",
    "vllm:gpu_prefix_cache_queries_total",
    "vllm:gpu_prefix_cache_queries",
];
/// Prefix-cache hits, in tokens (counter).
pub const PREFIX_CACHE_HITS: &[&str] = &[
    "vllm:prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_hits",
];
/// Preemptions (counter).
pub const PREEMPTIONS: &[&str] = &["vllm:num_preemptions_total", "vllm:num_preemptions"];
/// Cache configuration: `block_size` and `num_gpu_blocks` labels.
pub const CACHE_CONFIG_INFO: &str = "vllm:cache_config_info";
/// LoRA adapters running and waiting: the series with the largest value is current.
pub const LORA_REQUESTS_INFO: &str = "vllm:lora_requests_info";
