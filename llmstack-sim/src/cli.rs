//! The `llmstack-sim` command line: vLLM's flag names where vLLM has the knob, plus
//! `--engines`, `--profile`, `--speedup` and fault flags. An optional TOML file
//! (`--config`) describes engines one by one.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde::Deserialize;

use crate::config::{ApiKey, ContextOverflow, EngineConfig, FaultConfig, LoraModule};
use crate::hash::HashAlgo;
use crate::kv_events::{KvEventsConfig, KvEventsLayout};
use crate::metrics::MetricsCompat;
use crate::profile::LatencyProfile;
use crate::server::SimCluster;
use crate::tokenizer::Tokenizer;

/// Simulated vLLM engines (OpenAI API, /metrics, KV events) for tests and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "llmstack-sim", version, about)]
pub struct Args {
    /// TOML file with `[[engine]]` tables (fields as the flags, snake_case); flags give
    /// the defaults each table overrides.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port of the first engine; engine i listens on port + i (0: free ports).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Number of independent engines (scheduler, cache and metrics each).
    #[arg(long, default_value_t = 1)]
    pub engines: usize,
    /// Model served; repeat to give engines different models (assigned round-robin).
    #[arg(long = "model", default_value = "meta-llama/Llama-3.1-8B-Instruct")]
    pub models: Vec<String>,
    /// Directory with the model's Hugging Face `tokenizer.json` and `tokenizer_config.json`
    /// (chat template): prompts are tokenized and chats rendered with them, as vLLM and
    /// the router do, so KV-event token ids and block hashes match the router's. Default:
    /// the built-in pseudo-tokenizer.
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,
    /// Names accepted for the model (the first is reported), as vLLM's flag.
    #[arg(long = "served-model-name", num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// LoRA adapters, `name=path` (repeatable).
    #[arg(long = "lora-modules", num_args = 1..)]
    pub lora_modules: Vec<LoraModule>,
    /// Enable LoRA (implied by --lora-modules); allows runtime adapter loading.
    #[arg(long)]
    pub enable_lora: bool,
    /// Distinct adapters per batch.
    #[arg(long, default_value_t = 1)]
    pub max_loras: usize,
    /// Latency profile: llama3-8b-h100 (calibrated) or instant (no model time).
    #[arg(long, default_value = "llama3-8b-h100")]
    pub profile: String,
    /// TOML file of extra `[[profile]]` tables.
    #[arg(long)]
    pub profile_file: Option<PathBuf>,
    /// Divide every simulated duration by this factor.
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,
    /// Context length (default: the profile's, lowered to fit the KV cache).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Tokens per KV block.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// KV blocks.
    #[arg(long = "num-gpu-blocks-override")]
    pub num_gpu_blocks: Option<usize>,
    /// Largest running batch.
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Token budget per step.
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Disable the prefix cache.
    #[arg(long)]
    pub no_enable_prefix_caching: bool,
    /// Block hash: sha256 (pickle, vLLM's default) or sha256_cbor.
    #[arg(long, default_value = "sha256")]
    pub prefix_caching_hash_algo: HashAlgo,
    /// Fill usage.prompt_tokens_details.cached_tokens.
    #[arg(long)]
    pub enable_prompt_tokens_details: bool,
    /// Metric names: v1 (vLLM ≥ 0.10) or v0 (gpu_cache_usage_perc…).
    #[arg(long, default_value = "v1")]
    pub metrics_compat: MetricsCompat,
    /// vLLM's --kv-events-config JSON (enable_kv_cache_events, endpoint, replay_endpoint, topic, buffer_steps, max_queue_size).
    #[arg(long)]
    pub kv_events_config: Option<String>,
    /// Publish KV events at this ZMQ endpoint (`*` binds; a host connects), port offset by engine index.
    #[arg(long)]
    pub kv_events_endpoint: Option<String>,
    /// ROUTER endpoint answering replay requests.
    #[arg(long)]
    pub kv_events_replay_endpoint: Option<String>,
    /// Topic frame of KV-event messages.
    #[arg(long)]
    pub kv_events_topic: Option<String>,
    /// Event encoding: map (vLLM ≥ 0.24) or array (≤ 0.23).
    #[arg(long, default_value = "map")]
    pub kv_events_layout: KvEventsLayout,
    /// Answer 503 when more requests are queued or running.
    #[arg(long)]
    pub max_num_queued_reqs: Option<usize>,
    /// Over-long requests: clamp max_tokens (0.33) or reject (≤ 0.20).
    #[arg(long, default_value = "clamp")]
    pub context_overflow: ContextOverflow,
    /// Mean answer length when the model stops by itself (no ignore_eos).
    #[arg(long, default_value_t = 128)]
    pub mean_output_tokens: usize,
    /// Seed of generated text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// /load reports requests in flight.
    #[arg(long)]
    pub enable_server_load_tracking: bool,
    /// Answers carry x-request-id (the request's, else a new id).
    #[arg(long)]
    pub enable_request_id_headers: bool,
    /// Seconds before an idle keep-alive connection is closed (vLLM's
    /// VLLM_HTTP_TIMEOUT_KEEP_ALIVE).
    #[arg(long, default_value_t = 5.0)]
    pub http_keep_alive_timeout: f64,
    /// Require `Authorization: Bearer <key>` on /v1, /v2, /inference and /cohere paths
    /// (401 otherwise); repeatable or comma separated, empty values ignored, every engine.
    #[arg(
        long = "api-key",
        env = "VLLM_API_KEY",
        hide_env_values = true,
        num_args = 1..,
        value_delimiter = ','
    )]
    pub api_key: Vec<ApiKey>,
    /// Fault: fraction of inference requests answered with --fault-error-status.
    #[arg(long, default_value_t = 0.0)]
    pub fault_error_rate: f64,
    /// Fault: status of injected errors (500, 503, 429).
    #[arg(long)]
    pub fault_error_status: Option<u16>,
    /// Fault: fraction of inference requests never answered.
    #[arg(long, default_value_t = 0.0)]
    pub fault_hang_rate: f64,
    /// Fault: close streams after this many SSE chunks.
    #[arg(long)]
    pub fault_close_after_chunks: Option<u32>,
    /// Fault: delay before a request reaches the engine, ms.
    #[arg(long, default_value_t = 0)]
    pub fault_first_token_delay_ms: u64,
    /// Fault: /health answers 503.
    #[arg(long)]
    pub fault_unhealthy: bool,
}

/// One `[[engine]]` table of `--config`: any field overrides the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineTable {
    model: Option<String>,
    tokenizer: Option<PathBuf>,
    served_model_name: Option<Vec<String>>,
    lora_modules: Option<Vec<LoraModule>>,
    enable_lora: Option<bool>,
    max_loras: Option<usize>,
    profile: Option<String>,
    speedup: Option<f64>,
    max_model_len: Option<usize>,
    block_size: Option<usize>,
    num_gpu_blocks_override: Option<usize>,
    max_num_seqs: Option<usize>,
    max_num_batched_tokens: Option<usize>,
    enable_prefix_caching: Option<bool>,
    metrics_compat: Option<MetricsCompat>,
    mean_output_tokens: Option<usize>,
    faults: Option<FaultConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    host: Option<IpAddr>,
    port: Option<u16>,
    #[serde(default)]
    engine: Vec<EngineTable>,
}

impl Args {
    /// The engine configurations these arguments describe, with host and first port.
    pub fn engine_configs(&self) -> Result<(IpAddr, u16, Vec<EngineConfig>), String> {
        let mut profiles = LatencyProfile::builtin();
        if let Some(path) = &self.profile_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            profiles.extend(
                LatencyProfile::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?,
            );
        }
        let profile = |name: &str| {
            profiles
                .iter()
                .rev()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
                    format!("unknown profile {name:?} (known: {})", known.join(", "))
                })
        };
        let kv_events = self.kv_events()?;
        // Each directory is loaded once and shared by the engines using it.
        let mut loaded: Vec<(PathBuf, Tokenizer)> = Vec::new();
        let mut tokenizer = |dir: &PathBuf, what: &str| -> Result<Tokenizer, String> {
            if let Some((_, t)) = loaded.iter().find(|(d, _)| d == dir) {
                return Ok(t.clone());
            }
            let t =
                Tokenizer::from_dir(dir).map_err(|e| format!("{what} {}: {e}", dir.display()))?;
            loaded.push((dir.clone(), t.clone()));
            Ok(t)
        };
        let base = EngineConfig {
            model: self.models.first().cloned().unwrap_or_default(),
            tokenizer: match &self.tokenizer {
                Some(dir) => tokenizer(dir, "--tokenizer")?,
                None => Tokenizer::pseudo(),
            },
            served_model_names: self.served_model_name.clone(),
            lora_modules: self.lora_modules.clone(),
            enable_lora: self.enable_lora || !self.lora_modules.is_empty(),
            max_loras: self.max_loras,
            profile: profile(&self.profile)?,
            speedup: self.speedup,
            max_model_len: self.max_model_len,
            block_size: self.block_size,
            num_gpu_blocks: self.num_gpu_blocks,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            enable_prefix_caching: !self.no_enable_prefix_caching,
            hash_algo: self.prefix_caching_hash_algo,
            hash_seed: std::env::var("PYTHONHASHSEED").unwrap_or_else(|_| "vllm-none-hash".into()),
            enable_prompt_tokens_details: self.enable_prompt_tokens_details,
            metrics_compat: self.metrics_compat,
            kv_events,
            max_num_queued_reqs: self.max_num_queued_reqs,
            context_overflow: self.context_overflow,
            mean_output_tokens: self.mean_output_tokens,
            seed: self.seed,
            enable_server_load_tracking: self.enable_server_load_tracking,
            enable_request_id_headers: self.enable_request_id_headers,
            keep_alive_timeout: std::time::Duration::try_from_secs_f64(
                self.http_keep_alive_timeout,
            )
            .map_err(|e| format!("--http-keep-alive-timeout: {e}"))?,
            // As vLLM, empty keys (e.g. `VLLM_API_KEY=""`) are dropped.
            api_keys: self
                .api_key
                .iter()
                .filter(|k| !k.expose().is_empty())
                .cloned()
                .collect(),
            faults: FaultConfig {
                error_rate: self.fault_error_rate,
                error_status: self.fault_error_status,
                hang_rate: self.fault_hang_rate,
                close_after_chunks: self.fault_close_after_chunks,
                first_token_delay_ms: self.fault_first_token_delay_ms,
                unhealthy: self.fault_unhealthy,
            },
        };
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                toml::from_str::<ConfigFile>(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => ConfigFile::default(),
        };
        let host = file.host.unwrap_or(self.host);
        let port = file.port.unwrap_or(self.port);
        let configs: Vec<EngineConfig> = if file.engine.is_empty() {
            if self.engines == 0 {
                return Err("--engines must be at least 1".into());
            }
            (0..self.engines)
                .map(|i| EngineConfig {
                    model: self.models[i % self.models.len()].clone(),
                    ..base.clone()
                })
                .collect()
        } else {
            let mut out = Vec::new();
            for t in file.engine {
                let mut c = base.clone();
                if let Some(v) = t.model {
                    c.model = v
                }
                if let Some(v) = t.tokenizer {
                    c.tokenizer = tokenizer(&v, "tokenizer")?
                }
                if let Some(v) = t.served_model_name {
                    c.served_model_names = v
                }
                if let Some(v) = t.lora_modules {
                    c.enable_lora |= !v.is_empty();
                    c.lora_modules = v
                }
                if let Some(v) = t.enable_lora {
                    c.enable_lora = v
                }
                if let Some(v) = t.max_loras {
                    c.max_loras = v
                }
                if let Some(v) = t.profile {
                    c.profile = profile(&v)?
                }
                if let Some(v) = t.speedup {
                    c.speedup = v
                }
                if let Some(v) = t.max_model_len {
                    c.max_model_len = Some(v)
                }
                if let Some(v) = t.block_size {
                    c.block_size = Some(v)
                }
                if let Some(v) = t.num_gpu_blocks_override {
                    c.num_gpu_blocks = Some(v)
                }
                if let Some(v) = t.max_num_seqs {
                    c.max_num_seqs = Some(v)
                }
                if let Some(v) = t.max_num_batched_tokens {
                    c.max_num_batched_tokens = Some(v)
                }
                if let Some(v) = t.enable_prefix_caching {
                    c.enable_prefix_caching = v
                }
                if let Some(v) = t.metrics_compat {
                    c.metrics_compat = v
                }
                if let Some(v) = t.mean_output_tokens {
                    c.mean_output_tokens = v
                }
                if let Some(v) = t.faults {
                    c.faults = v
                }
                out.push(c);
            }
            out
        };
        for (i, c) in configs.iter().enumerate() {
            c.validate().map_err(|e| format!("engine {i}: {e}"))?;
        }
        Ok((host, port, configs))
    }

    fn kv_events(&self) -> Result<Option<KvEventsConfig>, String> {
        let mut cfg = match &self.kv_events_config {
            Some(json) => {
                #[derive(Deserialize)]
                struct VllmKv {
                    #[serde(default)]
                    enable_kv_cache_events: bool,
                    #[serde(flatten)]
                    rest: KvEventsConfig,
                }
                let v: VllmKv =
                    serde_json::from_str(json).map_err(|e| format!("--kv-events-config: {e}"))?;
                v.enable_kv_cache_events.then_some(v.rest)
            }
            None => None,
        };
        if let Some(ep) = &self.kv_events_endpoint {
            cfg.get_or_insert_with(KvEventsConfig::default).endpoint = ep.clone();
        }
        if let Some(c) = &mut cfg {
            if let Some(r) = &self.kv_events_replay_endpoint {
                c.replay_endpoint = Some(r.clone());
            }
            if let Some(t) = &self.kv_events_topic {
                c.topic = t.clone();
            }
            c.layout = self.kv_events_layout;
        }
        Ok(cfg)
    }
}

/// Runs the simulator until Ctrl-C / SIGTERM. Prints one JSON line with the engines'
/// addresses on stdout once they listen (handy with `--port 0`).
pub fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (host, port, configs) = match args.engine_configs() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("llmstack-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("llmstack-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let cluster = match SimCluster::start(configs, host, port).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("llmstack-sim: {e}");
                return ExitCode::FAILURE;
            }
        };
        let engines: Vec<serde_json::Value> = cluster
            .engines()
            .iter()
            .enumerate()
            .map(|(i, e)| {
                serde_json::json!({
                    "index": i, "url": e.base_url(), "model": e.config().primary_name(),
                    "profile": e.config().profile.name, "kv_events": e.kv_events_endpoint(),
                    "kv_events_replay": e.kv_events_replay_endpoint(),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "engines": engines }));
        shutdown_signal().await;
        tracing::info!("shutting down");
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests;
