//! Configuration of simulated engines: vLLM's knobs (same names where vLLM has them), the
//! latency profile, and fault injection.

use serde::{Deserialize, Serialize};

use crate::hash::HashAlgo;
use crate::kv_events::KvEventsConfig;
use crate::metrics::MetricsCompat;
use crate::profile::LatencyProfile;
use crate::tokenizer::Tokenizer;

/// A LoRA adapter served by an engine (`--lora-modules name=path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoraModule {
    /// The adapter's model name.
    pub name: String,
    /// Its path (the card's `root`).
    pub path: String,
}

impl std::str::FromStr for LoraModule {
    type Err = String;
    /// `name=path`, or vLLM's JSON form `{"name":…,"path":…}`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim_start().starts_with('{') {
            return serde_json::from_str(s).map_err(|e| format!("invalid LoRA module JSON: {e}"));
        }
        match s.split_once('=') {
            Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(Self {
                name: name.into(),
                path: path.into(),
            }),
            _ => Err(format!("invalid LoRA module {s:?}: expected name=path")),
        }
    }
}

/// A key the engine accepts as `Authorization: Bearer <key>` (`--api-key`).
///
/// Holds the key exactly as given (no trimming). Its `Debug` form is
/// `ApiKey(<redacted>)`, so configurations can be logged without leaking keys; there is
/// deliberately no `Display`. Read the key with [`ApiKey::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps `key` unchanged.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself (e.g. for a client's `Authorization: Bearer` header). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    /// Prints `ApiKey(<redacted>)`, never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl From<String> for ApiKey {
    /// Wraps the key unchanged.
    fn from(key: String) -> Self {
        Self(key)
    }
}

impl From<&str> for ApiKey {
    /// Wraps the key unchanged.
    fn from(key: &str) -> Self {
        Self(key.to_owned())
    }
}

impl std::str::FromStr for ApiKey {
    type Err = std::convert::Infallible;
    /// Any string is a key (emptiness is checked by [`EngineConfig::validate`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// What happens when prompt + `max_tokens` exceeds `max_model_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextOverflow {
    /// vLLM 0.33: clamp `max_tokens` silently.
    #[default]
    Clamp,
    /// vLLM ≤ 0.20: answer 400.
    Reject,
}

impl std::str::FromStr for ContextOverflow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "clamp" => Ok(Self::Clamp),
            "reject" => Ok(Self::Reject),
            other => Err(format!(
                "unknown context overflow mode {other:?} (clamp, reject)"
            )),
        }
    }
}

/// Faults injected into an engine's answers (flags, `POST /sim/faults`, or the handle).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Fraction (0–1) of inference requests answered with `error_status`.
    pub error_rate: f64,
    /// Status for injected errors: 500, 503 or 429 (default 503).
    pub error_status: Option<u16>,
    /// Fraction (0–1) of inference requests accepted and never answered.
    pub hang_rate: f64,
    /// Cut the connection after this many SSE events of a stream.
    pub close_after_chunks: Option<u32>,
    /// Extra delay before a request reaches the engine (raises TTFT), ms.
    pub first_token_delay_ms: u64,
    /// Answer `/health` and `/ping` with 503 (the engine looks dead to probes).
    pub unhealthy: bool,
}

impl FaultConfig {
    /// Checks rates and status codes.
    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in [
            ("error_rate", self.error_rate),
            ("hang_rate", self.hang_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be within 0..=1, got {r}"));
            }
        }
        match self.error_status {
            None | Some(500 | 503 | 429) => Ok(()),
            Some(s) => Err(format!("error_status must be 500, 503 or 429, got {s}")),
        }
    }
}

/// Everything one simulated engine is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// `--model`: the model path or HF id (the cards' `root`).
    pub model: String,
    /// `--tokenizer DIR`: the model's Hugging Face tokenizer files, or (the default) the
    /// built-in pseudo-tokenizer.
    pub tokenizer: Tokenizer,
    /// `--served-model-name`: names accepted in requests; the first is reported.
    /// Empty means `[model]`.
    pub served_model_names: Vec<String>,
    /// `--lora-modules`.
    pub lora_modules: Vec<LoraModule>,
    /// `--enable-lora` (implied by `lora_modules`): LoRA serving and runtime
    /// `/v1/load_lora_adapter`.
    pub enable_lora: bool,
    /// `--max-loras`: distinct adapters per batch.
    pub max_loras: usize,
    /// Step-time model and engine shape.
    pub profile: LatencyProfile,
    /// Every simulated duration is divided by this.
    pub speedup: f64,
    /// Overrides of the profile's shape.
    pub max_model_len: Option<usize>,
    /// `--block-size`.
    pub block_size: Option<usize>,
    /// `--num-gpu-blocks-override`.
    pub num_gpu_blocks: Option<usize>,
    /// `--max-num-seqs`.
    pub max_num_seqs: Option<usize>,
    /// `--max-num-batched-tokens`.
    pub max_num_batched_tokens: Option<usize>,
    /// `--enable-prefix-caching` (default on).
    pub enable_prefix_caching: bool,
    /// `--prefix-caching-hash-algo`.
    pub hash_algo: HashAlgo,
    /// Seed of `NONE_HASH` (`PYTHONHASHSEED`, else `"vllm-none-hash"`).
    pub hash_seed: String,
    /// `--enable-prompt-tokens-details`: fill `usage.prompt_tokens_details.cached_tokens`.
    pub enable_prompt_tokens_details: bool,
    /// Metric names.
    pub metrics_compat: MetricsCompat,
    /// KV-event publishing.
    pub kv_events: Option<KvEventsConfig>,
    /// `--max-num-queued-reqs`: above this many queued + running requests, answer 503.
    pub max_num_queued_reqs: Option<usize>,
    /// Clamp or reject over-long requests.
    pub context_overflow: ContextOverflow,
    /// Mean length of answers when the model stops on its own (without `ignore_eos`).
    pub mean_output_tokens: usize,
    /// Seed of generated text and answer lengths.
    pub seed: u64,
    /// `--enable-server-load-tracking`: `/load` reports in-flight requests.
    pub enable_server_load_tracking: bool,
    /// `--enable-request-id-headers`: every answer carries `x-request-id` (the
    /// request's, else a new id).
    pub enable_request_id_headers: bool,
    /// Idle keep-alive connections are closed after this long (uvicorn's
    /// `VLLM_HTTP_TIMEOUT_KEEP_ALIVE`, 5 s), as pooled clients must expect.
    pub keep_alive_timeout: std::time::Duration,
    /// `--api-key` (or `VLLM_API_KEY`): the keys accepted as `Authorization: Bearer
    /// <key>` on every path starting `/v1`, `/v2`, `/inference` or `/cohere` (any other
    /// path, and any `OPTIONS` request, is never checked); a missing or wrong key gets 401
    /// `{"error":"Unauthorized"}`. Empty (the default): no authentication. Keys are
    /// redacted in `Debug` output.
    pub api_keys: Vec<ApiKey>,
    /// Faults at start.
    pub faults: FaultConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            model: "meta-llama/Llama-3.1-8B-Instruct".into(),
            tokenizer: Tokenizer::pseudo(),
            served_model_names: Vec::new(),
            lora_modules: Vec::new(),
            enable_lora: false,
            max_loras: 1,
            profile: LatencyProfile::llama3_8b_h100(),
            speedup: 1.0,
            max_model_len: None,
            block_size: None,
            num_gpu_blocks: None,
            max_num_seqs: None,
            max_num_batched_tokens: None,
            enable_prefix_caching: true,
            hash_algo: HashAlgo::Sha256,
            hash_seed: "vllm-none-hash".into(),
            enable_prompt_tokens_details: false,
            metrics_compat: MetricsCompat::V1,
            kv_events: None,
            max_num_queued_reqs: None,
            context_overflow: ContextOverflow::Clamp,
            mean_output_tokens: 128,
            seed: 0,
            enable_server_load_tracking: false,
            enable_request_id_headers: false,
            keep_alive_timeout: std::time::Duration::from_secs(5),
            api_keys: Vec::new(),
            faults: FaultConfig::default(),
        }
    }
}

impl EngineConfig {
    /// A default engine (8B on H100 profile) serving `model`.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            ..Self::default()
        }
    }

    /// The same engine with another profile.
    pub fn with_profile(mut self, profile: LatencyProfile) -> Self {
        self.profile = profile;
        self
    }

    /// The same engine tokenizing with `tokenizer` (e.g. [`Tokenizer::from_dir`]).
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = tokenizer;
        self
    }

    /// The same engine also accepting `key` as `Authorization: Bearer <key>`. Keys add
    /// up (call it again for more, as with several `--api-key` values); the first one
    /// turns authentication on for `/v1`, `/v2`, `/inference` and `/cohere` paths. An
    /// empty key makes [`EngineConfig::validate`] fail.
    pub fn with_api_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.api_keys.push(key.into());
        self
    }

    /// Served names (`[model]` when none were given).
    pub fn served_names(&self) -> Vec<String> {
        if self.served_model_names.is_empty() {
            vec![self.model.clone()]
        } else {
            self.served_model_names.clone()
        }
    }

    /// The name reported in responses and metrics.
    pub fn primary_name(&self) -> String {
        self.served_model_names
            .first()
            .cloned()
            .unwrap_or_else(|| self.model.clone())
    }

    /// Tokens per KV block.
    pub fn block_size(&self) -> usize {
        self.block_size.unwrap_or(self.profile.block_size)
    }

    /// KV blocks (`num_gpu_blocks`).
    pub fn num_gpu_blocks(&self) -> usize {
        self.num_gpu_blocks.unwrap_or(self.profile.num_gpu_blocks)
    }

    /// The context limit. As in vLLM 0.33 it is lowered to what the KV cache can hold
    /// for one request, so an admitted request can always run.
    pub fn max_model_len(&self) -> usize {
        let wanted = self.max_model_len.unwrap_or(self.profile.max_model_len);
        wanted.min(self.num_gpu_blocks().saturating_sub(1) * self.block_size())
    }

    /// `max_num_seqs`.
    pub fn max_num_seqs(&self) -> usize {
        self.max_num_seqs.unwrap_or(self.profile.max_num_seqs)
    }

    /// `max_num_batched_tokens`.
    pub fn max_num_batched_tokens(&self) -> usize {
        self.max_num_batched_tokens
            .unwrap_or(self.profile.max_num_batched_tokens)
    }

    /// Checks the configuration; the error says which knob is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.profile.validate()?;
        self.faults.validate()?;
        if self.model.is_empty() {
            return Err("model must not be empty".into());
        }
        if !(self.speedup.is_finite() && self.speedup > 0.0) {
            return Err(format!("speedup must be > 0, got {}", self.speedup));
        }
        if self.block_size() == 0 || self.num_gpu_blocks() < 2 {
            return Err("block_size must be > 0 and num_gpu_blocks ≥ 2".into());
        }
        if self.max_model_len() < 2 {
            return Err("max_model_len (after fitting the KV cache) must be ≥ 2".into());
        }
        if self.max_num_seqs() == 0 || self.max_num_batched_tokens() == 0 || self.max_loras == 0 {
            return Err("max_num_seqs, max_num_batched_tokens and max_loras must be > 0".into());
        }
        if self.keep_alive_timeout.is_zero() {
            return Err("keep_alive_timeout must be > 0".into());
        }
        if self.mean_output_tokens == 0 {
            return Err("mean_output_tokens must be > 0".into());
        }
        if self.api_keys.iter().any(|k| k.expose().is_empty()) {
            return Err("api keys must not be empty".into());
        }
        let names = self.served_names();
        if let Some(l) = self.lora_modules.iter().find(|l| names.contains(&l.name)) {
            return Err(format!(
                "LoRA adapter {:?} clashes with a served model name",
                l.name
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_module_forms() {
        let a: LoraModule = "sql-lora=/adapters/sql".parse().unwrap();
        assert_eq!(
            a,
            LoraModule {
                name: "sql-lora".into(),
                path: "/adapters/sql".into()
            }
        );
        let b: LoraModule = r#"{"name":"x","path":"/p"}"#.parse().unwrap();
        assert_eq!(b.name, "x");
        assert!("nopath".parse::<LoraModule>().is_err());
    }

    #[test]
    fn max_model_len_fits_the_kv_cache() {
        let mut c = EngineConfig::new("m");
        assert_eq!(c.max_model_len(), 131_072);
        c.num_gpu_blocks = Some(101);
        assert_eq!(c.max_model_len(), 1600);
        c.validate().unwrap();
        c.faults.error_rate = 2.0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn api_keys_add_up_and_never_print() {
        let c = EngineConfig::new("m")
            .with_api_key("sk-first")
            .with_api_key(String::from("sk-second"));
        assert_eq!(
            c.api_keys.iter().map(ApiKey::expose).collect::<Vec<_>>(),
            ["sk-first", "sk-second"]
        );
        c.validate().unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("sk-first") && !debug.contains("sk-second"));
        assert!(debug.contains("api_keys: [ApiKey(<redacted>), ApiKey(<redacted>)]"));
        assert!(EngineConfig::new("m").with_api_key("").validate().is_err());
    }
}
