//! vLLM's KV-cache events as data, the sink a subscriber feeds them to, and the
//! tokenizer interface a KV-aware router needs.
//!
//! A subscriber (`llmstack-metrics`, feature `kv-events`) decodes each engine's
//! published batches into [`KvBatch`]es and hands them to a [`KvSink`] (the routing
//! crate's KV index); a [`Tokenize`] implementation (`llmstack-tokenize`) turns a
//! request's prompt into the token ids the engine will see, so the router can match
//! them against the blocks the engines announced. None of these crates depends on
//! another: they meet here.

use std::fmt;
use std::sync::Arc;

use crate::{EndpointId, RouteRequest};

/// Where a block lives on its engine (`medium` of vLLM's events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Medium {
    /// GPU memory (also what events without a `medium` mean).
    #[default]
    Gpu,
    /// CPU memory (vLLM's KV offloading).
    Cpu,
    /// Any other tier (`"STORAGE"`, or a name this build does not know).
    Other,
}

impl Medium {
    /// The medium vLLM names `name` (`"GPU"`, `"CPU"`, case-insensitive); anything else is
    /// [`Medium::Other`].
    pub fn from_name(name: &str) -> Self {
        if name.eq_ignore_ascii_case("gpu") {
            Self::Gpu
        } else if name.eq_ignore_ascii_case("cpu") {
            Self::Cpu
        } else {
            Self::Other
        }
    }

    /// The label value for metrics and `/engines`: `gpu`, `cpu` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gpu => "gpu",
            Self::Cpu => "cpu",
            Self::Other => "other",
        }
    }
}

/// One element of a block's `extra_keys` (vLLM publishes them untagged: a LoRA name,
/// `[mm_identifier, offset]` pairs, the cache salt, prompt-embeds digest bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExtraKey {
    /// A string (a LoRA name or a cache salt).
    Text(String),
    /// An integer.
    Int(i64),
    /// Raw bytes (a digest).
    Bytes(Vec<u8>),
    /// A list (a multimodal `[identifier, offset]` pair).
    List(Vec<ExtraKey>),
    /// Anything else (floats, booleans, maps, nil inside a list).
    Other,
}

/// Blocks that entered an engine's prefix cache (vLLM's `BlockStored`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockStored {
    /// The engine's hash of each block, in order (a 32-byte digest is read as its last
    /// eight bytes, big-endian, which is what vLLM publishes by default).
    pub block_hashes: Vec<u64>,
    /// The engine's hash of the block before the first one; `None` at the start of a
    /// sequence.
    pub parent_block_hash: Option<u64>,
    /// The blocks' tokens, `block_hashes.len() × block_size` of them.
    pub token_ids: Vec<u32>,
    /// Tokens per block.
    pub block_size: u32,
    /// Where the blocks are.
    pub medium: Medium,
    /// The LoRA adapter the blocks were computed with.
    pub lora_name: Option<String>,
    /// Per block: `None`, or its extra keys (empty when the event had none).
    pub extra_keys: Vec<Option<Vec<ExtraKey>>>,
    /// The KV-cache group (0 for plain decoder models).
    pub group_idx: u32,
    /// Whether the group is full attention: `kv_cache_spec_kind` is absent or
    /// `"full_attention"` (sliding-window and Mamba groups cannot serve a prefix).
    pub full_attention: bool,
}

/// Blocks evicted from an engine's prefix cache (vLLM's `BlockRemoved`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockRemoved {
    /// The engine's hashes of the evicted blocks.
    pub block_hashes: Vec<u64>,
    /// Where they were.
    pub medium: Medium,
    /// The KV-cache group.
    pub group_idx: u32,
}

/// One KV-cache event.
#[derive(Debug, Clone, PartialEq)]
pub enum KvEvent {
    /// Blocks stored.
    BlockStored(BlockStored),
    /// Blocks removed.
    BlockRemoved(BlockRemoved),
    /// The whole prefix cache was reset.
    AllBlocksCleared,
}

/// One published batch: the events of one engine step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KvBatch {
    /// Publish time, Unix seconds.
    pub ts: f64,
    /// The events, in order.
    pub events: Vec<KvEvent>,
    /// The data-parallel rank that published it (0 without data parallelism).
    pub dp_rank: u32,
}

/// One publisher: an engine and a data-parallel rank of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KvSource {
    /// The engine.
    pub endpoint: EndpointId,
    /// Its data-parallel rank.
    pub dp_rank: u32,
}

impl fmt::Display for KvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.endpoint, self.dp_rank)
    }
}

/// Where a KV-event subscriber delivers what it learns. Calls for one source come in
/// publish order, from one task; calls for different sources may interleave.
pub trait KvSink: Send + Sync + 'static {
    /// Applies one batch from `source`, in sequence order.
    fn apply(&self, source: &KvSource, batch: &KvBatch);

    /// Forgets everything `source` announced: its sequence had a gap that could not be
    /// replayed, or it restarted.
    fn reset(&self, source: &KvSource);

    /// Forgets every source of `endpoint`: discovery removed it.
    fn remove(&self, endpoint: &EndpointId);
}

impl<S: KvSink + ?Sized> KvSink for Arc<S> {
    fn apply(&self, source: &KvSource, batch: &KvBatch) {
        (**self).apply(source, batch);
    }

    fn reset(&self, source: &KvSource) {
        (**self).reset(source);
    }

    fn remove(&self, endpoint: &EndpointId) {
        (**self).remove(endpoint);
    }
}

/// A request's prompt as the engine's token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTokens {
    /// The token ids the engine will prefill, in order.
    pub ids: Arc<[u32]>,
}

/// Turns a request's prompt into the token ids the engine serving `model` will see:
/// the model's tokenizer, and for chat its chat template, exactly as vLLM applies them.
///
/// Called on the request path: implementations cache what they can (a conversation's
/// earlier turns) and never block on I/O.
pub trait Tokenize: Send + Sync + 'static {
    /// The prompt of `req` for `model` (a base model: a LoRA adapter's tokenizer is its
    /// parent's), or `None` when this tokenizer has no tokenizer for `model` or cannot
    /// render the prompt (no prompt, a batch, non-text content, a template error).
    fn tokenize(&self, model: &str, req: &RouteRequest<'_>) -> Option<PromptTokens>;

    /// Whether there is a tokenizer for `model`.
    fn knows(&self, model: &str) -> bool;
}

impl<T: Tokenize + ?Sized> Tokenize for Arc<T> {
    fn tokenize(&self, model: &str, req: &RouteRequest<'_>) -> Option<PromptTokens> {
        (**self).tokenize(model, req)
    }

    fn knows(&self, model: &str) -> bool {
        (**self).knows(model)
    }
}
