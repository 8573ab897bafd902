//! The engine's `/metrics`: vLLM 0.33's series with their exact names, types, labels,
//! histogram buckets and number formatting (prometheus_client's Go-style floats), or the
//! old V0 names with `--metrics-compat v0`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tokio::time::Instant;

use crate::scheduler::{FinishReason, FinishedSeq};

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const ITERATION_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
const N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
const PREEMPTION_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0];

/// vLLM's `build_1_2_5_buckets(max)`: 1, 2, 5, 10, 20, 50, … up to `max`.
fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut exp = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            let v: f64 = m * exp;
            if v > max as f64 {
                return out;
            }
            out.push(v);
        }
        exp *= 10.0;
    }
}

/// A Prometheus histogram with fixed upper bounds.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    bounds: Vec<f64>,
    /// Non-cumulative counts; the last slot is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Observations so far.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Sum of observations.
    #[cfg(test)]
    pub(crate) fn sum(&self) -> f64 {
        self.sum
    }
}

/// Which metric names to expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsCompat {
    /// vLLM V1 names (0.10+), labels `engine` and `model_name`.
    #[default]
    V1,
    /// The old V0 names (`vllm:gpu_cache_usage_perc`, …), label `model_name` only.
    V0,
}

impl std::str::FromStr for MetricsCompat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(Self::V1),
            "v0" => Ok(Self::V0),
            other => Err(format!("unknown metrics compat {other:?} (v1, v0)")),
        }
    }
}

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
    tpot: Histogram,
    pub(crate) e2e: Histogram,
    pub(crate) queue_time: Histogram,
    prefill_time: Histogram,
    decode_time: Histogram,
    inference_time: Histogram,
    prompt_hist: Histogram,
    generation_hist: Histogram,
    max_tokens_hist: Histogram,
    max_generation_hist: Histogram,
    pub(crate) n_hist: Histogram,
    preemptions_hist: Histogram,
    kv_computed_hist: Histogram,
    iteration_hist: Histogram,
    /// `lora_requests_info`: (running, waiting) → last Unix time seen.
    lora_info: BTreeMap<(String, String), f64>,
}

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

fn reason_index(r: FinishReason) -> usize {
    FinishReason::ALL.iter().position(|&x| x == r).unwrap_or(0)
}

/// Static facts of the engine the exposition needs.
#[derive(Debug, Clone)]
pub(crate) struct ExpositionInfo {
    pub(crate) model_name: String,
    pub(crate) engine: String,
    pub(crate) compat: MetricsCompat,
    pub(crate) block_size: usize,
    pub(crate) num_gpu_blocks: usize,
    pub(crate) enable_prefix_caching: bool,
    pub(crate) hash_algo: &'static str,
    pub(crate) gpu_memory_utilization: f64,
    /// `Some(max_loras)` when LoRA is enabled.
    pub(crate) max_loras: Option<usize>,
    pub(crate) admission_control: bool,
    /// Unix time the series were created (engine start).
    pub(crate) created: f64,
}

/// prometheus_client's `floatToGoString`: Python `repr`, switched to exponent notation
/// when more than six digits precede the decimal point.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let s = py_repr(v);
    if v > 0.0
        && !s.contains('e')
        && let Some(dot) = s.find('.')
        && dot > 6
    {
        let mantissa = format!("{}.{}{}", &s[..1], &s[1..dot], &s[dot + 1..]);
        let mantissa = mantissa.trim_end_matches(['0', '.']);
        return format!("{mantissa}e+0{}", dot - 1);
    }
    s
}

/// Python's `repr(float)`: shortest round-trip digits, positional for exponents in
/// `-4..16`, else `d.ddde±XX`.
fn py_repr(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{v:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Builds the text exposition, one family at a time.
struct Expo<'a> {
    out: String,
    info: &'a ExpositionInfo,
    /// Whether samples carry the `engine` label (V1 names; not on every family).
    engine_label: bool,
}

impl<'a> Expo<'a> {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; `extra` labels are merged with `engine`/`model_name` in name order.
    fn sample(&mut self, name: &str, extra: &[(&str, &str)], value: f64) {
        let mut labels: Vec<(&str, String)> =
            extra.iter().map(|(k, v)| (*k, escape_label(v))).collect();
        labels.push(("model_name", escape_label(&self.info.model_name)));
        if self.engine_label {
            labels.push(("engine", escape_label(&self.info.engine)));
        }
        labels.sort_by(|a, b| a.0.cmp(b.0));
        self.out.push_str(name);
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{v}\"");
        }
        let _ = writeln!(self.out, "}} {}", format_float(value));
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        self.sample(name, &[], value);
    }

    /// A counter family `name_total` plus its `name_created` gauge family.
    fn counter(&mut self, base: &str, help: &str, series: &[(&[(&str, &str)], u64)]) {
        let total = format!("{base}_total");
        self.header(&total, help, "counter");
        for (labels, v) in series {
            self.sample(&total, labels, *v as f64);
        }
        let created = format!("{base}_created");
        self.header(&created, help, "gauge");
        for (labels, _) in series {
            self.sample(&created, labels, self.info.created);
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        let mut cum = 0;
        for (i, c) in h.counts.iter().enumerate() {
            cum += c;
            let le = h
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| format_float(*b));
            self.sample(&bucket, &[("le", &le)], cum as f64);
        }
        self.sample(&format!("{name}_count"), &[], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        let created = format!("{name}_created");
        self.header(&created, help, "gauge");
        self.sample(&created, &[], self.info.created);
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_prometheus_client() {
        assert_eq!(format_float(12.0), "12.0");
        assert_eq!(format_float(0.2734), "0.2734");
        assert_eq!(format_float(183_552.0), "183552.0");
        assert_eq!(format_float(1_795_481_992.456), "1.795481992456e+09");
        assert_eq!(format_float(1_795_481_990.123), "1.795481990123e+09");
        assert_eq!(format_float(1_234_567.0), "1.234567e+06");
        assert_eq!(format_float(1e10), "1e+010");
        assert_eq!(format_float(0.0), "0.0");
        assert_eq!(format_float(5e-5), "5e-05");
        assert_eq!(format_float(0.001), "0.001");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(-3.5), "-3.5");
        assert_eq!(format_float(1e16), "1e+16");
    }

    #[test]
    fn one_two_five_buckets() {
        let b = buckets_1_2_5(131_072);
        assert_eq!(&b[..4], &[1.0, 2.0, 5.0, 10.0]);
        assert_eq!(*b.last().unwrap(), 100_000.0);
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.1);
        h.observe(0.5);
        h.observe(7.0);
        assert_eq!(h.counts, vec![1, 1, 1]);
        assert_eq!(h.count(), 3);
        assert!((h.sum() - 7.6).abs() < 1e-12);
    }
}
