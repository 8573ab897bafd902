//! One sequence at the scheduler's edges.
//!
//! What the HTTP side hands in ([`NewSeq`]), what the scheduler keeps of it ([`Seq`]),
//! and what it reports back ([`SeqEvent`] per step, [`SeqState`] for `/sim/state`).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::block_pool::BlockId;
use crate::finish::Finish;
use crate::hash::BlockHash;

/// Tokens carried by one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Emitted {
    /// One new token (streaming sequences, one per step).
    One(u32),
    /// All generated tokens at once (non-streaming sequences, on finish).
    All(Vec<u32>),
    /// No token (e.g. aborted).
    Nothing,
}

/// What a sequence reports to its HTTP handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeqEvent {
    /// Choice index within the HTTP response.
    pub(crate) index: u32,
    pub(crate) tokens: Emitted,
    pub(crate) finish: Option<Finish>,
    /// Prompt tokens served from the prefix cache at first admission.
    pub(crate) cached_tokens: u32,
}

/// A LoRA adapter as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LoraRef {
    pub(crate) name: Arc<str>,
    pub(crate) path: Arc<str>,
}

/// A sequence handed to the engine: one choice of one prompt.
#[derive(Debug)]
pub(crate) struct NewSeq {
    pub(crate) id: u64,
    pub(crate) index: u32,
    pub(crate) prompt: Arc<[u32]>,
    /// Already clamped to `max_model_len − prompt_len`.
    pub(crate) max_tokens: usize,
    pub(crate) min_tokens: usize,
    pub(crate) ignore_eos: bool,
    /// Tokens after which the simulated model emits EOS (unless `ignore_eos`).
    pub(crate) natural_len: usize,
    pub(crate) stop_token_ids: Arc<[u32]>,
    pub(crate) lora: Option<LoraRef>,
    pub(crate) cache_salt: Option<Arc<str>>,
    /// Per-step events (streaming, stop strings) or one event at the end.
    pub(crate) stream: bool,
    pub(crate) seed: u64,
    pub(crate) arrival: Instant,
    pub(crate) sink: mpsc::UnboundedSender<SeqEvent>,
}

/// The scheduler's record of one sequence: its tokens, KV blocks and timings.
#[derive(Debug)]
pub(super) struct Seq {
    pub(super) new: NewSeq,
    pub(super) output: Vec<u32>,
    pub(super) num_computed: usize,
    pub(super) blocks: Vec<BlockId>,
    pub(super) hashes: Vec<BlockHash>,
    pub(super) num_registered: usize,
    pub(super) admitted: bool,
    pub(super) cached_tokens: usize,
    pub(super) first_scheduled: Option<Instant>,
    pub(super) first_token: Option<Instant>,
    pub(super) last_token: Option<Instant>,
    pub(super) num_preemptions: u32,
}

/// One request's state for `/sim/state`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeqState {
    /// Internal sequence id.
    pub id: u64,
    /// `running` or `waiting`.
    pub status: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens whose KV is computed.
    pub computed_tokens: usize,
    /// Generated tokens.
    pub output_tokens: usize,
    /// Prefix-cache hit at first admission.
    pub cached_tokens: usize,
    /// Times preempted.
    pub preemptions: u32,
}

// === impl Seq ===

impl Seq {
    pub(super) fn total_len(&self) -> usize {
        self.new.prompt.len() + self.output.len()
    }

    pub(super) fn token(&self, i: usize) -> u32 {
        let p = &self.new.prompt;
        if i < p.len() {
            p[i]
        } else {
            self.output[i - p.len()]
        }
    }
}
