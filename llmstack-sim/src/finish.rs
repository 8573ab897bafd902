//! How a sequence ends.
//!
//! The reason, what its last event reports and what the metrics record of it. The
//! scheduler produces these, the HTTP side and `/metrics` read them; this module imports
//! neither, so both can depend on it.

use tokio::time::Instant;

/// Why a sequence finished (the `finished_reason` label and the `finish_reason` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// EOS, a stop string or a stop token.
    Stop,
    /// `max_tokens` or `max_model_len` reached.
    Length,
    /// Aborted: the client went away, or sleep in `abort` mode.
    Abort,
    /// An internal error.
    Error,
    /// Repetition detected (never produced by the simulator; exported for completeness).
    Repetition,
}

/// How a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finish {
    pub(crate) reason: FinishReason,
    /// The stop token id when a `stop_token_ids` entry ended it.
    pub(crate) stop_token: Option<u32>,
}

/// What the metrics need of a finished sequence.
#[derive(Debug)]
pub(crate) struct FinishedSeq {
    pub(crate) reason: FinishReason,
    pub(crate) arrival: Instant,
    pub(crate) first_scheduled: Option<Instant>,
    pub(crate) first_token: Option<Instant>,
    pub(crate) last_token: Option<Instant>,
    pub(crate) now: Instant,
    pub(crate) prompt_tokens: usize,
    pub(crate) generation_tokens: usize,
    pub(crate) max_tokens: usize,
    pub(crate) cached_tokens: usize,
    pub(crate) preemptions: u32,
}

// === impl FinishReason ===

impl FinishReason {
    /// All reasons, in vLLM's label order.
    pub const ALL: [Self; 5] = [
        Self::Stop,
        Self::Length,
        Self::Abort,
        Self::Error,
        Self::Repetition,
    ];

    /// The label / JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
            Self::Error => "error",
            Self::Repetition => "repetition",
        }
    }
}
