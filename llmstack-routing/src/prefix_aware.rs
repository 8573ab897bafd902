//! Prefix-aware routing by a continuous cost.

use llmstack_core::RouteRequest;

use crate::policy::{argmin_by, rotation};

/// Pools up to this size are evaluated whole.
const EXACT_UP_TO: usize = 64;
/// Cold candidates sampled in larger pools.
const SAMPLE: usize = 32;
use crate::{Candidates, Load, Policy};

/// Sends each request where its first token is expected soonest, counting both the
/// prefill its uncached part needs and the queue on that engine; cache affinity and
/// load are weighed on one scale (tokens of prefill work) instead of flipping between
/// a "cache" and a "load" mode at a threshold.
///
/// For candidate `i` (all terms in prompt tokens):
///
/// ```text
/// cost_i = uncached_i                         prefill this request still needs there
///        + pending_prefill_i                  prefill already queued there by this router
///                                             (and by its peer replicas, when shared)
///        + request_weight × requests_i        running and queued requests there
///        + evict_weight × evicted_i           cached prefixes pushed out to make room
///        + footprint_weight × fill_i          what the rest will push out later
///                           × (uncached_i − evicted_i)
///        + adapter_penalty                    LoRA adapter known not to be loaded there
/// ```
///
/// `requests_i` is [`Load::requests`]: this router's requests there, counted the
/// moment they are picked, plus other routers' as of the last scrape (their running
/// and waiting). The scraped waiting count is not added again: it includes this
/// router's own requests, and between two scrapes it is a stale figure that would
/// herd picks onto whichever engine was scraped at a quiet moment.
///
/// `evicted_i` is the part of `uncached_i` that does not fit in what the index says is
/// left of engine `i`'s cache ([`Load::cache_free_tokens`]): once an engine's cache is
/// full, every new token there evicts one that another request will probably need
/// again. Without this term one engine holding a shared system prompt would attract
/// every new conversation until its cache thrashes.
///
/// `fill_i` is how full engine `i`'s cache is (1 − [`Load::cache_free_tokens`] /
/// [`Load::kv_capacity_tokens`]; 0 when either is unknown; the prefix index's share is
/// 75 % of the capacity, so an engine it knows empty reads 0.25): the tokens that still fit now will push out others' prefixes later, in
/// proportion to how little room is left. So new conversations go to the emptier caches
/// (their footprint, and the long first prefills of their users, are spread instead of
/// piling up where a queue happened to be short), and a conversation leaves its holder
/// only when the queue there outweighs its history and the second copy it would write
/// elsewhere. Measured in `benches/routing/run` (multi-round QA, docs/benchmarks.md):
/// mean TTFT at QPS 10 fell 8–10 % for both policies with `footprint_weight` 1, level
/// at 40–80 QPS; 2 was no better.
///
/// `uncached_i` is the prompt minus the prefix the router's
/// [`PrefixIndex`](crate::PrefixIndex) says engine `i` holds ([`Load::cached_tokens`]);
/// a match shorter than `min_match_tokens` counts as none (production-stack's
/// `--prefix-min-match-length`). Equal costs rotate. So: a shared prefix stays with its
/// holders while their queues are shorter than re-prefilling it elsewhere; a hot
/// prefix spreads to a second engine exactly when its holder's queue costs more than
/// the prefill; among several holders the least loaded wins; cold prompts go to the
/// least loaded engine. Never declines while there are candidates.
///
/// In pools larger than 64 candidates, the costs evaluated are those of the prefix
/// holders ([`Candidates::cached`]) and of 32 consecutive candidates from a rotating
/// start (endpoint order is unrelated to load, so this is a 32-way random sample of the
/// cold engines): the cost of a pick stays constant as the pool grows, and the cold
/// choice is within the least loaded few percent.
///
/// The policy itself is pure: the router fills [`Candidates::cached`] from its index
/// and records each accepted request in it ([`Router::accepted`](crate::Router::accepted)).
#[derive(Debug, Clone, Copy)]
pub struct PrefixAware {
    /// Matches shorter than this many tokens count as no match.
    pub min_match_tokens: u32,
    /// Tokens of prefill one queued or running request is worth (default 64).
    pub request_weight: f64,
    /// Tokens of prefill that loading a cold LoRA adapter is worth (default 512).
    pub adapter_penalty: f64,
    /// Tokens of prefill one evicted cached token is worth (default 1).
    pub evict_weight: f64,
    /// Tokens of prefill one token written into a full cache is worth later, scaled by
    /// how full the cache is (default 1; 0 turns the term off).
    pub footprint_weight: f64,
}

impl Default for PrefixAware {
    fn default() -> Self {
        Self {
            min_match_tokens: 0,
            request_weight: 64.0,
            adapter_penalty: 512.0,
            evict_weight: 1.0,
            footprint_weight: 1.0,
        }
    }
}

impl PrefixAware {
    /// The expected cost of sending a `prompt_tokens` request to an engine with `load`.
    pub fn cost(&self, load: &Load, prompt_tokens: u32) -> f64 {
        let cached = if load.cached_tokens >= self.min_match_tokens.max(1) {
            load.cached_tokens.min(prompt_tokens)
        } else {
            0
        };
        let adapter = if load.adapter_warm == Some(false) {
            self.adapter_penalty
        } else {
            0.0
        };
        let uncached = f64::from(prompt_tokens - cached);
        let evicted = load
            .cache_free_tokens
            .map_or(0.0, |free| (uncached - free as f64).max(0.0));
        let fill = match (load.cache_free_tokens, load.kv_capacity_tokens) {
            (Some(free), Some(capacity)) if capacity > 0 => {
                (1.0 - free as f64 / capacity as f64).clamp(0.0, 1.0)
            }
            _ => 0.0,
        };
        uncached
            + self.evict_weight * evicted
            + self.footprint_weight * fill * (uncached - evicted)
            + load.pending_prefill()
            + self.request_weight * load.requests()
            + adapter
    }
}

impl Policy for PrefixAware {
    fn pick(&self, _req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        let tokens = candidates.prompt_tokens();
        let n = candidates.len();
        if n <= EXACT_UP_TO {
            return argmin_by(n, |i| self.cost(&candidates.load(i), tokens));
        }
        let start = rotation(n);
        let sample = (start..n).chain(0..start).take(SAMPLE);
        let holders = candidates.cached().iter().map(|&(i, _)| i);
        let mut best: Option<(usize, f64)> = None;
        for i in holders.chain(sample) {
            let cost = self.cost(&candidates.load(i), tokens);
            if best.is_none_or(|(_, b)| cost < b) {
                best = Some((i, cost));
            }
        }
        best.map(|(i, _)| i)
    }

    fn name(&self) -> &'static str {
        "prefixaware"
    }
}

/// [`PrefixAware`]'s cost over what the engines announced in their KV events: the
/// policy of `--routing-logic kvaware`. The router fills each candidate's cached tokens
/// from its KV index ([`Router::with_kv_index`](crate::Router::with_kv_index)), exact
/// for every engine whatever router replica sent the requests, and from its own prefix
/// index for a model it cannot tokenize or whose engines publish no events.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvAware(pub PrefixAware);

impl Policy for KvAware {
    fn pick(&self, req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        self.0.pick(req, candidates)
    }

    fn name(&self) -> &'static str {
        "kvaware"
    }
}

#[cfg(test)]
mod tests;
