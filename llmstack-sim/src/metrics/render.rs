//! Renders the engine's `/metrics` body from what it recorded.
//!
//! Every family vLLM 0.33 exports, in its order, with the V0 names where
//! `--metrics-compat v0` asks for them.

use std::fmt::Write as _;

use super::exposition::{Expo, ExpositionInfo, MetricsCompat};
use super::format::{escape_label, format_float};
use super::recording::{EngineMetrics, SleepState};
use crate::finish::FinishReason;

/// Renders the engine's `/metrics` body.
pub(crate) fn render(m: &EngineMetrics, info: &ExpositionInfo) -> String {
    let mut e = Expo {
        out: String::with_capacity(48 * 1024),
        info,
        engine_label: info.compat == MetricsCompat::V1,
    };
    let v0 = info.compat == MetricsCompat::V0;
    cache_config(&mut e);
    e.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        m.running as f64,
    );
    e.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        m.waiting as f64,
    );
    if v0 {
        e.gauge(
            "vllm:num_requests_swapped",
            "Number of requests swapped to CPU.",
            0.0,
        );
        e.gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            m.kv_usage,
        );
        e.gauge(
            "vllm:cpu_cache_usage_perc",
            "CPU KV-cache usage. 1 means 100 percent usage.",
            0.0,
        );
        e.counter(
            "vllm:gpu_prefix_cache_queries",
            "GPU prefix cache queries, in terms of number of queried tokens.",
            &[(&[], m.prefix_cache_queries)],
        );
        e.counter(
            "vllm:gpu_prefix_cache_hits",
            "GPU prefix cache hits, in terms of number of cached tokens.",
            &[(&[], m.prefix_cache_hits)],
        );
    } else {
        let capacity = m.waiting.saturating_sub(m.waiting_deferred);
        e.header(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
            "gauge",
        );
        e.sample(
            "vllm:num_requests_waiting_by_reason",
            &[("reason", "capacity")],
            capacity as f64,
        );
        e.sample(
            "vllm:num_requests_waiting_by_reason",
            &[("reason", "deferred")],
            m.waiting_deferred as f64,
        );
        e.header(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            "gauge",
        );
        for (label, state) in [
            ("awake", SleepState::Awake),
            ("weights_offloaded", SleepState::Level1),
            ("discard_all", SleepState::Level2),
        ] {
            e.sample(
                "vllm:engine_sleep_state",
                &[("sleep_state", label)],
                f64::from(u8::from(m.sleep == state)),
            );
        }
        e.gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            m.kv_usage,
        );
        e.counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            &[(&[], m.prefix_cache_queries)],
        );
        e.counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            &[(&[], m.prefix_cache_hits)],
        );
    }
    e.counter(
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        &[(&[], m.num_preemptions)],
    );
    e.counter(
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        &[(&[], m.prompt_tokens)],
    );
    if !v0 {
        let compute = m.prompt_tokens.saturating_sub(m.prompt_tokens_cached);
        e.counter(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            &[
                (&[("source", "local_compute")], compute),
                (&[("source", "local_cache_hit")], m.prompt_tokens_cached),
                (&[("source", "external_kv_transfer")], 0),
            ],
        );
        e.counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local + external).",
            &[(&[], m.prompt_tokens_cached)],
        );
    }
    e.counter(
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        &[(&[], m.generation_tokens)],
    );
    let reasons: Vec<(&[(&str, &str)], u64)> = FinishReason::ALL
        .iter()
        .map(|r| (reason_labels(*r), m.finished(*r)))
        .collect();
    e.counter(
        "vllm:request_success",
        "Count of successfully processed requests.",
        &reasons,
    );
    if info.admission_control {
        // Counted by the API server, not an engine core: no `engine` label in vLLM.
        let engine_label = std::mem::replace(&mut e.engine_label, false);
        e.counter(
            "vllm:admission_rejections",
            "Requests rejected by admission control.",
            &[(&[("reason", "max_num_queued_reqs")], m.admission_rejections)],
        );
        e.engine_label = engine_label;
    }
    e.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &m.ttft,
    );
    if v0 {
        e.histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            &m.itl,
        );
    } else {
        e.histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            &m.itl,
        );
        e.histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            &m.tpot,
        );
    }
    e.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &m.e2e,
    );
    e.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        &m.queue_time,
    );
    e.histogram(
        "vllm:request_inference_time_seconds",
        "Histogram of time spent in RUNNING phase for request.",
        &m.inference_time,
    );
    e.histogram(
        "vllm:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        &m.prefill_time,
    );
    e.histogram(
        "vllm:request_decode_time_seconds",
        "Histogram of time spent in DECODE phase for request.",
        &m.decode_time,
    );
    e.histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        &m.prompt_hist,
    );
    e.histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        &m.generation_hist,
    );
    e.histogram(
        "vllm:request_max_num_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
        &m.max_generation_hist,
    );
    e.histogram(
        "vllm:request_params_max_tokens",
        "Histogram of the max_tokens request parameter.",
        &m.max_tokens_hist,
    );
    e.histogram(
        "vllm:request_params_n",
        "Histogram of the n request parameter.",
        &m.n_hist,
    );
    if !v0 {
        e.histogram(
            "vllm:request_num_preemptions",
            "Number of preemptions per finished request.",
            &m.preemptions_hist,
        );
        e.histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            &m.kv_computed_hist,
        );
    }
    e.histogram(
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        &m.iteration_hist,
    );
    if let Some(max_loras) = info.max_loras {
        lora_info(&mut e, m, max_loras);
    }
    e.out
}

fn reason_labels(r: FinishReason) -> &'static [(&'static str, &'static str)] {
    match r {
        FinishReason::Stop => &[("finished_reason", "stop")],
        FinishReason::Length => &[("finished_reason", "length")],
        FinishReason::Abort => &[("finished_reason", "abort")],
        FinishReason::Error => &[("finished_reason", "error")],
        FinishReason::Repetition => &[("finished_reason", "repetition")],
    }
}

fn cache_config(e: &mut Expo<'_>) {
    let i = e.info;
    let name = "vllm:cache_config_info";
    e.header(name, "Information of the LLMEngine CacheConfig", "gauge");
    let block_size = i.block_size.to_string();
    let gpu_blocks = i.num_gpu_blocks.to_string();
    let util = format_float(i.gpu_memory_utilization);
    let kv_tokens = (i.block_size * i.num_gpu_blocks).to_string();
    let labels: Vec<(&str, &str)> = vec![
        ("block_size", &block_size),
        ("cache_dtype", "auto"),
        (
            "enable_prefix_caching",
            if i.enable_prefix_caching {
                "True"
            } else {
                "False"
            },
        ),
        ("gpu_memory_utilization", &util),
        ("kv_cache_size_tokens", &kv_tokens),
        ("num_cpu_blocks", "None"),
        ("num_gpu_blocks", &gpu_blocks),
        ("prefix_caching_hash_algo", i.hash_algo),
        ("sliding_window", "None"),
    ];
    // cache_config_info carries `engine` but not `model_name` in vLLM.
    let mut all: Vec<(&str, String)> = labels.iter().map(|(k, v)| (*k, escape_label(v))).collect();
    if i.compat == MetricsCompat::V1 {
        all.push(("engine", escape_label(&i.engine)));
    }
    all.sort_by(|a, b| a.0.cmp(b.0));
    let body: Vec<String> = all.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let _ = writeln!(e.out, "{name}{{{}}} 1.0", body.join(","));
}

fn lora_info(e: &mut Expo<'_>, m: &EngineMetrics, max_loras: usize) {
    let name = "vllm:lora_requests_info";
    e.header(name, "Running stats on lora requests.", "gauge");
    let max = max_loras.to_string();
    for ((running, waiting), ts) in &m.lora_info {
        let _ = writeln!(
            e.out,
            "{name}{{max_lora=\"{max}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} {}",
            escape_label(running),
            escape_label(waiting),
            format_float(*ts)
        );
    }
}
