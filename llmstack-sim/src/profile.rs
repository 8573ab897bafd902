//! Latency profiles: how long one engine step takes, and the engine's shape (KV capacity,
//! batch limits). Profiles are plain data, so adding a GPU or model is a table entry or a
//! TOML file (`--profile-file`), not code.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scheduler::StepPlan;

/// A step-time model and engine shape:
/// `step_ms = base + decode_seq·B_dec + decode_ctx·Σctx_dec + prefill_token·P
///            + prefill_attention·Σ p_i·(c_i + p_i/2)`
/// where `B_dec` is the number of decoding sequences, `Σctx_dec` their total context,
/// `P` the prefill tokens of the step and `p_i`/`c_i` each prefill chunk's new and already
/// computed tokens (vllm.md §6.6). A step with nothing to compute takes no time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyProfile {
    /// Profile name (`--profile`).
    pub name: String,
    /// Fixed cost of a step, ms.
    pub base_ms: f64,
    /// Per decoding sequence, ms.
    pub decode_seq_ms: f64,
    /// Per context token of decoding sequences, ms.
    pub decode_ctx_ms: f64,
    /// Per prefill token, ms.
    pub prefill_token_ms: f64,
    /// Attention term of prefill, ms per token².
    pub prefill_attention_ms: f64,
    /// KV-cache blocks (`num_gpu_blocks`).
    pub num_gpu_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// `--max-num-seqs` default.
    pub max_num_seqs: usize,
    /// `--max-num-batched-tokens` default.
    pub max_num_batched_tokens: usize,
    /// `--max-model-len` default.
    pub max_model_len: usize,
    /// `gpu_memory_utilization` shown in `cache_config_info`.
    #[serde(default = "default_gpu_util")]
    pub gpu_memory_utilization: f64,
}

fn default_gpu_util() -> f64 {
    0.92
}

impl LatencyProfile {
    /// Llama-3-8B (bf16) on one H100 80GB, vLLM 0.33 defaults: the calibrated model of
    /// vllm.md §6.6 and ~26k KV blocks of 16 tokens.
    pub fn llama3_8b_h100() -> Self {
        Self {
            name: "llama3-8b-h100".into(),
            base_ms: 7.0,
            decode_seq_ms: 0.009,
            decode_ctx_ms: 4.2e-5,
            prefill_token_ms: 0.0234,
            prefill_attention_ms: 9.4e-7,
            num_gpu_blocks: 26_000,
            block_size: 16,
            max_num_seqs: 1024,
            max_num_batched_tokens: 8192,
            max_model_len: 131_072,
            gpu_memory_utilization: 0.92,
        }
    }

    /// No model time at all, for overhead benchmarks; same shape as the 8B profile.
    pub fn instant() -> Self {
        Self {
            name: "instant".into(),
            base_ms: 0.0,
            decode_seq_ms: 0.0,
            decode_ctx_ms: 0.0,
            prefill_token_ms: 0.0,
            prefill_attention_ms: 0.0,
            ..Self::llama3_8b_h100()
        }
    }

    /// The built-in profiles.
    pub fn builtin() -> Vec<Self> {
        vec![Self::llama3_8b_h100(), Self::instant()]
    }

    /// A built-in profile by name.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::builtin().into_iter().find(|p| p.name == name)
    }

    /// Profiles from a TOML file of `[[profile]]` tables (same fields as this struct).
    pub fn from_toml(text: &str) -> Result<Vec<Self>, toml::de::Error> {
        #[derive(Deserialize)]
        struct File {
            profile: Vec<LatencyProfile>,
        }
        Ok(toml::from_str::<File>(text)?.profile)
    }

    /// Simulated duration of a step, in milliseconds of model time.
    pub fn step_ms(
        &self,
        num_decode: usize,
        decode_ctx: usize,
        prefill_tokens: usize,
        prefill_attention: f64,
    ) -> f64 {
        if num_decode == 0 && prefill_tokens == 0 {
            return 0.0;
        }
        self.base_ms
            + self.decode_seq_ms * num_decode as f64
            + self.decode_ctx_ms * decode_ctx as f64
            + self.prefill_token_ms * prefill_tokens as f64
            + self.prefill_attention_ms * prefill_attention
    }

    /// Wall-clock duration of a planned step with everything divided by `speedup`.
    pub(crate) fn step_duration(&self, plan: &StepPlan, speedup: f64) -> Duration {
        let ms = self.step_ms(
            plan.num_decode,
            plan.decode_ctx,
            plan.prefill_tokens,
            plan.prefill_attention,
        );
        Duration::from_secs_f64((ms / speedup.max(1e-9)).max(0.0) / 1000.0)
    }

    /// Checks the shape is usable.
    pub fn validate(&self) -> Result<(), String> {
        let times = [
            self.base_ms,
            self.decode_seq_ms,
            self.decode_ctx_ms,
            self.prefill_token_ms,
            self.prefill_attention_ms,
        ];
        if times.iter().any(|t| !t.is_finite() || *t < 0.0) {
            return Err(format!(
                "profile {}: step-time coefficients must be finite and ≥ 0",
                self.name
            ));
        }
        if self.block_size == 0
            || self.num_gpu_blocks < 2
            || self.max_num_seqs == 0
            || self.max_num_batched_tokens == 0
            || self.max_model_len == 0
        {
            return Err(format!(
                "profile {}: block_size, max_num_seqs, max_num_batched_tokens and max_model_len must be > 0 and num_gpu_blocks ≥ 2",
                self.name
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrated_model_matches_vllm_md() {
        let p = LatencyProfile::llama3_8b_h100();
        // Idle server, 1k-token prompt: one prefill step.
        let ttft = p.step_ms(0, 0, 1000, 1000.0 * 500.0);
        assert!((ttft - (7.0 + 23.4 + 0.47)).abs() < 1e-9, "{ttft}");
        // 64 × 2k-context decode: about 13 ms.
        let itl = p.step_ms(64, 64 * 2048, 0, 0.0);
        assert!((12.0..14.0).contains(&itl), "{itl}");
        // 256 × 2k: about 31 ms.
        let itl = p.step_ms(256, 256 * 2048, 0, 0.0);
        assert!((28.0..32.0).contains(&itl), "{itl}");
        assert_eq!(p.step_ms(0, 0, 0, 0.0), 0.0);
        let i = LatencyProfile::instant();
        assert_eq!(i.step_ms(256, 1 << 20, 8192, 1e9), 0.0);
    }

    #[test]
    fn profiles_load_from_toml() {
        let text = r#"
            [[profile]]
            name = "tiny"
            base_ms = 1.0
            decode_seq_ms = 0.0
            decode_ctx_ms = 0.0
            prefill_token_ms = 0.01
            prefill_attention_ms = 0.0
            num_gpu_blocks = 64
            block_size = 16
            max_num_seqs = 8
            max_num_batched_tokens = 256
            max_model_len = 1024
        "#;
        let p = LatencyProfile::from_toml(text).unwrap();
        assert_eq!(p[0].name, "tiny");
        assert_eq!(p[0].gpu_memory_utilization, 0.92);
        p[0].validate().unwrap();
        assert!(LatencyProfile::from_toml("[[profile]]\nname = 1").is_err());
    }
}
