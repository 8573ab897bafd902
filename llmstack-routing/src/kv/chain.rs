//! The router's block keys: a hash chain over token ids.

use llmstack_core::kv::ExtraKey;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The key space a sequence's blocks live in: vLLM never shares cached blocks between
/// LoRA adapters, or between requests with different `cache_salt`s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeySpace<'a> {
    /// The LoRA adapter (`None` for the base model).
    pub lora: Option<&'a str>,
    /// The request's `cache_salt`.
    pub salt: Option<&'a str>,
}

impl KeySpace<'_> {
    /// The seed of the chain's first block.
    pub(crate) fn seed(&self) -> u64 {
        let mut bytes =
            Vec::with_capacity(self.lora.map_or(0, str::len) + self.salt.map_or(0, str::len) + 2);
        if let Some(lora) = self.lora {
            bytes.extend_from_slice(lora.as_bytes());
        }
        bytes.push(0x1f);
        if let Some(salt) = self.salt {
            bytes.extend_from_slice(salt.as_bytes());
        }
        xxh3_64_with_seed(&bytes, 0x6b76_6b65_7973) // "kvkeys"
    }
}

/// The key of a block of `tokens` following the block keyed `prev`.
pub(crate) fn next_key(prev: u64, tokens: &[u32]) -> u64 {
    // Little-endian bytes of the ids, hashed without a copy where the platform allows.
    let mut buf = [0u8; 4 * 64];
    if tokens.len() <= 64 {
        for (i, t) in tokens.iter().enumerate() {
            buf[4 * i..4 * i + 4].copy_from_slice(&t.to_le_bytes());
        }
        return xxh3_64_with_seed(&buf[..4 * tokens.len()], prev);
    }
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    xxh3_64_with_seed(&bytes, prev)
}

/// Folds a block's extra keys other than the LoRA name and the root block's salt (both
/// already in the [`KeySpace`]) into its key: multimodal placeholders and prompt
/// embeddings make a block that no text prompt can match.
pub(crate) fn with_extra(key: u64, extra: &[ExtraKey], lora: Option<&str>, root: bool) -> u64 {
    let mut key = key;
    let mut salt_seen = false;
    for k in extra {
        match k {
            ExtraKey::Text(s) if Some(s.as_str()) == lora => {}
            // The salt rides on the first block only, after the LoRA name.
            ExtraKey::Text(_) if root && !salt_seen => salt_seen = true,
            other => key = xxh3_64_with_seed(format!("{other:?}").as_bytes(), key),
        }
    }
    key
}

/// The root salt a stored root block carries in its extra keys (the first string that is
/// not the LoRA name).
pub(crate) fn root_salt<'a>(extra: &'a [ExtraKey], lora: Option<&str>) -> Option<&'a str> {
    extra.iter().find_map(|k| match k {
        ExtraKey::Text(s) if Some(s.as_str()) != lora => Some(s.as_str()),
        _ => None,
    })
}

/// The keys of the full blocks of `tokens`, `block_size` tokens each, in `space`: the
/// same keys the index gives the blocks an engine announces for that sequence.
pub fn block_keys(space: &KeySpace<'_>, tokens: &[u32], block_size: usize) -> Vec<u64> {
    chain_keys(space.seed(), tokens, block_size)
}

/// [`block_keys`] in the key space seeded `seed` ([`KeySpace::seed`]).
pub(crate) fn chain_keys(seed: u64, tokens: &[u32], block_size: usize) -> Vec<u64> {
    let block_size = block_size.max(1);
    let mut prev = seed;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            prev = next_key(prev, block);
            prev
        })
        .collect()
}
