//! The engine limits the scheduler obeys, and the plan of one step.
//!
//! The latency model and `finish_step` read the plan.

/// Engine limits the scheduler obeys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoreLimits {
    pub(crate) block_size: usize,
    pub(crate) max_num_seqs: usize,
    pub(crate) max_num_batched_tokens: usize,
    pub(crate) max_model_len: usize,
    pub(crate) max_loras: usize,
}

/// What one step computes, for the latency model and for `finish_step`.
#[derive(Debug, Default, Clone)]
pub(crate) struct StepPlan {
    /// (sequence, new tokens computed this step).
    pub(crate) scheduled: Vec<(u64, usize)>,
    /// Sequences decoding one token.
    pub(crate) num_decode: usize,
    /// Their total context length.
    pub(crate) decode_ctx: usize,
    /// Prefill tokens in the step.
    pub(crate) prefill_tokens: usize,
    /// Σ p·(c + p/2) over prefill chunks (new p on c cached/computed tokens).
    pub(crate) prefill_attention: f64,
}

// === impl StepPlan ===

impl StepPlan {
    /// Whether the step computes anything.
    pub(crate) fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }

    /// Tokens computed in the step.
    pub(crate) fn num_tokens(&self) -> usize {
        self.prefill_tokens + self.num_decode
    }
}
