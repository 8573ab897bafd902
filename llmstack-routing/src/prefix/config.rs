//! Settings of the prefix index: chunk size, bytes per token, and each engine's cache share.

/// The largest KV capacity believed of one engine, in tokens (2^27: far beyond any
/// GPU's, about 100 MB of index at the default chunk size).
pub const MAX_CAPACITY_TOKENS: u64 = 1 << 27;

/// Settings of the prefix index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixConfig {
    /// Bytes of canonical prompt per chunk (default 256: about 64 tokens, four vLLM blocks).
    pub chunk_bytes: usize,
    /// Prompt bytes per token, to turn bytes into token estimates (default 4).
    pub bytes_per_token: f64,
    /// Tokens of cache assumed per engine until its scrape reports
    /// `num_gpu_blocks × block_size` (default 262 144).
    pub default_capacity_tokens: u64,
    /// Fraction of an engine's KV capacity the index assumes holds reusable prefixes
    /// (default 0.75): the rest holds running requests' blocks and answers, and covers
    /// the error of estimating tokens from bytes. Overestimating the cache makes the
    /// router keep sending conversations to an engine whose LRU cache cycles through
    /// them, missing every time.
    pub cache_share: f64,
}

// === impl PrefixConfig ===

impl Default for PrefixConfig {
    fn default() -> Self {
        Self {
            chunk_bytes: 256,
            bytes_per_token: 4.0,
            default_capacity_tokens: 262_144,
            cache_share: 0.75,
        }
    }
}

impl PrefixConfig {
    /// Estimated tokens per chunk (at least 1).
    pub fn chunk_tokens(&self) -> f64 {
        (self.chunk_bytes as f64 / self.bytes_per_token).max(1.0)
    }

    /// How many chunks an engine with `tokens` of KV capacity holds.
    /// (`tokens` × [`PrefixConfig::cache_share`], in chunks). Capacities are capped at
    /// [`MAX_CAPACITY_TOKENS`], so a bogus `num_gpu_blocks` cannot unbound the index.
    pub fn chunks_for(&self, tokens: u64) -> usize {
        let tokens = tokens.min(MAX_CAPACITY_TOKENS);
        (tokens as f64 * self.cache_share.clamp(0.0, 1.0) / self.chunk_tokens()).floor() as usize
    }
}
