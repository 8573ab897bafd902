//! The router's KV-event path: the prompt's tokens matched against the [`KvIndex`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use llmstack_core::{Endpoint, EndpointId, RouteRequest, Tokenize};

use crate::kv::chain_keys;
use crate::{KeySpace, KvIndex};

/// A token held only in a lower tier (CPU offload) is worth this much of a GPU-held
/// one: loading it back costs a PCIe transfer instead of a prefill.
const LOWER_TIER_CREDIT: f64 = 0.75;

/// The KV index and the tokenizer that turns prompts into the engines' token ids.
pub(crate) struct KvRouting {
    pub(crate) index: Arc<KvIndex>,
    tokenizer: Arc<dyn Tokenize>,
    /// Models already logged as falling back (once each, per reason).
    warned: Mutex<HashSet<(String, &'static str)>>,
}

/// What the KV path found for one request.
pub(crate) enum Lookup {
    /// The prompt's exact tokens, each holding candidate's cached tokens, and the
    /// prompt to expect from the engine that accepts it.
    Matched {
        tokens: u32,
        cached: Vec<(usize, u32)>,
        expected: Expected,
    },
    /// The KV path cannot decide this request: why (a routing reason label).
    Fallback(&'static str),
}

/// A prompt whose blocks the engine that accepts it will announce: see
/// [`KvRouting::expect`].
#[derive(Debug)]
pub(crate) struct Expected {
    /// Its key space's seed.
    seed: u64,
    /// Its token ids (shared with the tokenizer's answer, not copied).
    ids: Arc<[u32]>,
}

// === impl KvRouting ===

impl KvRouting {
    pub(crate) fn new(index: Arc<KvIndex>, tokenizer: Arc<dyn Tokenize>) -> Self {
        Self {
            index,
            tokenizer,
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// Tokenizes `req` for `model` (its base model when it names a LoRA adapter) and
    /// matches it against the engines in `list`.
    pub(crate) fn lookup(
        &self,
        req: &RouteRequest<'_>,
        model: &str,
        adapter_parent: Option<&str>,
        list: &[Arc<Endpoint>],
    ) -> Lookup {
        let base = adapter_parent.unwrap_or(model);
        if !self.tokenizer.knows(base) {
            return self.fallback(base, "no_tokenizer");
        }
        if !self.index.any_events(list) {
            return self.fallback(base, "no_events");
        }
        let Some(prompt) = self.tokenizer.tokenize(base, req) else {
            // A prompt the tokenizer cannot render (a batch, images): not worth a warning.
            return Lookup::Fallback("no_tokens");
        };
        let space = KeySpace {
            lora: adapter_parent.map(|_| model),
            salt: req.cache_salt(),
        };
        let tokens = u32::try_from(prompt.ids.len()).unwrap_or(u32::MAX);
        let expected = Expected {
            seed: space.seed(),
            ids: Arc::clone(&prompt.ids),
        };
        let cached = self
            .index
            .matches(&space, &prompt.ids, list)
            .into_iter()
            .map(|(i, m)| {
                let lower = f64::from(m.tokens - m.gpu_tokens) * LOWER_TIER_CREDIT;
                // vLLM always recomputes the last token, so a full match is one short.
                let credit = (f64::from(m.gpu_tokens) + lower) as u32;
                (i, credit.min(tokens.saturating_sub(1)))
            })
            .filter(|&(_, t)| t > 0)
            .collect();
        Lookup::Matched {
            tokens,
            cached,
            expected,
        }
    }

    /// `endpoint` accepted the `expected` prompt: its full blocks (at the engines'
    /// block size) are pending there until the engine announces them, so the next
    /// request sharing them (a conversation's next turn, often sooner than the events)
    /// is matched there too. Hashes the prompt's blocks outside the index's lock, then
    /// one write. This replica's own bookkeeping: see [`KvIndex::expect`].
    pub(crate) fn expect(&self, endpoint: &EndpointId, expected: &Expected) {
        let Some(size) = self.index.block_size() else {
            return;
        };
        let keys = chain_keys(expected.seed, &expected.ids, size as usize);
        self.index.expect(endpoint, &keys);
    }

    fn fallback(&self, model: &str, reason: &'static str) -> Lookup {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.len() < 1024 && warned.insert((model.to_owned(), reason)) {
            tracing::warn!(
                model,
                reason,
                "kvaware: routing this model by the router's own prefix index (prefixaware) instead of KV events"
            );
        }
        Lookup::Fallback(reason)
    }
}

#[cfg(test)]
mod tests;
