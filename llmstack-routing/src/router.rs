//! The router core: candidates, load view, prefix index, policy, in-flight guard.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use llmstack_core::{Endpoint, EndpointId, EndpointSet, Error, RouteRequest, StatsSnapshot};

use llmstack_core::Tokenize;

use crate::prefix::{PrefixConfig, PrefixIndex, PromptHashes};
use crate::{Candidates, InFlight, InFlightGuard, KvIndex, Policy, Target, candidates};

mod kv;

use kv::{Expected, KvRouting, Lookup};

/// Prefix holders passed to the policy, deepest first ([`Candidates::cached`]).
const MAX_HOLDERS: usize = 16;

/// Everything one routing decision needs, shared by all requests: a [`Policy`], the
/// [`InFlight`] counters, and optionally a [`PrefixIndex`].
///
/// [`Router::route`] is the whole decision: narrow the endpoint set to the request's
/// candidates, read each one's [`Load`](crate::Load) (live in-flight counts, the freshest scrape,
/// the prefix the index says it holds), ask the policy, and return the endpoint with an
/// [`InFlightGuard`] that counts the request until it is dropped. Once the engine
/// accepts the request, [`Router::accepted`] records the prompt in the index. Both the server and [`RouteLayer`](crate::RouteLayer) use it, so every
/// path holds a guard.
pub struct Router {
    policy: Box<dyn Policy>,
    in_flight: InFlight,
    prefix: Option<Mutex<PrefixIndex>>,
    kv: Option<KvRouting>,
    bytes_per_token: f64,
    chunk_bytes: usize,
    /// Engines put to sleep through this router (`/sleep`), out of routing until woken.
    asleep: Asleep,
}

/// The engines put to sleep: a flag read on every request, the list only when set.
/// Each id carries whether discovery has since shown the engine unready (its prober
/// found it asleep).
#[derive(Debug, Default)]
struct Asleep {
    any: std::sync::atomic::AtomicBool,
    ids: Mutex<Vec<(EndpointId, bool)>>,
}

/// The outcome of [`Router::route`].
#[derive(Debug)]
pub struct Routed {
    /// Where the request goes.
    pub endpoint: Arc<Endpoint>,
    /// Counts the request on `endpoint` until dropped: keep it until the response body
    /// ends; call [`InFlightGuard::first_byte`] when the first response byte arrives.
    pub guard: InFlightGuard,
    /// Prompt tokens the prefix index expects the engine to have cached (0 without an
    /// index or a match).
    pub cached_tokens: u32,
    /// Whether the endpoint was pinned (`?id=`) rather than chosen by the policy.
    pub pinned: bool,
    /// Why this engine, as `llmstack_routing_decisions_total`'s `reason`: `pinned`;
    /// `kv_cached` (the KV index says it holds part of the prompt), `cached` (the
    /// router's prefix index does) or `picked`; with a KV index, a request it could not
    /// decide says why: `no_tokenizer`, `no_events`, `no_tokens`.
    pub reason: &'static str,
    /// What the prefix index learns once the engine accepts the request.
    learn: Option<Learn>,
}

/// A prompt to record in the prefix index for an engine, and with KV events, its blocks
/// to expect from the engine: see [`Router::accepted`].
#[derive(Debug)]
pub(crate) struct Learn {
    id: llmstack_core::EndpointId,
    hashes: Vec<u64>,
    capacity: Option<u64>,
    expected: Option<Expected>,
}

impl Routed {
    /// Takes what the index should learn (the tower layer carries it separately).
    pub(crate) fn take_learn(&mut self) -> Option<Learn> {
        self.learn.take()
    }
}

impl Router {
    /// A router choosing with `policy`, without a prefix index.
    pub fn new(policy: impl Policy) -> Self {
        Self::boxed(Box::new(policy))
    }

    /// [`Router::new`] for an already boxed policy.
    pub fn boxed(policy: Box<dyn Policy>) -> Self {
        Self {
            policy,
            in_flight: InFlight::default(),
            prefix: None,
            kv: None,
            bytes_per_token: 4.0,
            chunk_bytes: PrefixConfig::default().chunk_bytes,
            asleep: Asleep::default(),
        }
    }

    /// Keeps a prefix index with `config`: every request's prompt is hashed, each
    /// candidate's [`Load::cached_tokens`](crate::Load::cached_tokens) filled from the index, and each choice
    /// recorded in it.
    #[must_use]
    pub fn with_prefix_index(mut self, config: PrefixConfig) -> Self {
        self.bytes_per_token = config.bytes_per_token.max(0.1);
        self.chunk_bytes = config.chunk_bytes.max(1);
        self.prefix = Some(Mutex::new(PrefixIndex::new(config)));
        self
    }

    /// Routes by the engines' KV events: each request's prompt is tokenized by
    /// `tokenizer` and matched against `index` (fed by a KV-event subscriber), and each
    /// candidate's [`Load::cached_tokens`](crate::Load::cached_tokens) is what its
    /// engine announced it holds. A request whose model has no tokenizer, whose
    /// candidates have published no events, or whose prompt cannot be tokenized falls
    /// back to the prefix index (keep one: [`Router::with_prefix_index`]), logged once
    /// per model and counted by its [`Routed::reason`].
    #[must_use]
    pub fn with_kv_index(mut self, index: Arc<KvIndex>, tokenizer: Arc<dyn Tokenize>) -> Self {
        self.kv = Some(KvRouting::new(index, tokenizer));
        self
    }

    /// The KV index, when routing by KV events.
    pub fn kv_index(&self) -> Option<&Arc<KvIndex>> {
        self.kv.as_ref().map(|kv| &kv.index)
    }

    /// Uses these (shared) in-flight counters instead of its own.
    #[must_use]
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// The in-flight counters.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// Whether routing predicts cached prompt tokens (a prefix index or a KV index):
    /// then [`Routed::cached_tokens`] is the prediction, else it is always 0.
    pub fn predicts_cache(&self) -> bool {
        self.prefix.is_some() || self.kv.is_some()
    }

    /// The policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Runs `f` on the prefix index, if there is one (the lock is held during `f`).
    pub fn with_index<R>(&self, f: impl FnOnce(&PrefixIndex) -> R) -> Option<R> {
        let index = self.prefix.as_ref()?;
        Some(f(&index.lock().unwrap_or_else(PoisonError::into_inner)))
    }

    /// Forgets endpoints for which `exists` is false: their prefix-index share, and
    /// their in-flight counters once nothing is in flight there.
    pub fn retain(&self, mut exists: impl FnMut(&EndpointId) -> bool) {
        self.in_flight.retain(&mut exists);
        let mut asleep = self
            .asleep
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        asleep.retain(|(id, _)| exists(id));
        self.asleep.any.store(!asleep.is_empty(), Ordering::Relaxed);
        drop(asleep);
        if let Some(index) = &self.prefix {
            index
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(exists);
        }
    }

    /// Chooses the endpoint for `req` among `set` (see [`candidates`] for the errors),
    /// with `stats` as the freshest scrape. A policy that declines gives
    /// [`Error::NoReadyEndpoint`]. Cost: one pass over the candidates; with a prefix
    /// index, also one pass over the prompt (parse and hash) and two short index
    /// lock holds.
    pub fn route(
        &self,
        set: &EndpointSet,
        stats: Option<&Arc<StatsSnapshot>>,
        req: &RouteRequest<'_>,
        target: &Target<'_>,
    ) -> Result<Routed, Error> {
        // Engines asleep are excluded unless the request names one (`?id=`).
        let excluded;
        let asleep_too;
        let target = if target.pinned.is_none() && self.asleep.any.load(Ordering::Relaxed) {
            excluded = self.excluded_with_asleep(target.exclude);
            asleep_too = Target {
                exclude: &excluded,
                ..target.clone()
            };
            &asleep_too
        } else {
            target
        };
        let list = candidates(set, req, target)?;
        if let Some(stats) = stats {
            self.in_flight.observe(stats);
        }
        let model = req.model().unwrap_or_default();
        let parent = list
            .first()
            .and_then(|ep| ep.models.iter().find(|m| m.id == model))
            .and_then(|card| card.parent.as_deref());
        let adapter = parent.map(|_| model);
        let kv = self
            .kv
            .as_ref()
            .filter(|_| target.pinned.is_none())
            .map(|kv| kv.lookup(req, model, parent, &list));
        let prompt = self
            .prefix
            .as_ref()
            .map(|_| PromptHashes::of(req, self.chunk_bytes));
        let live = self.in_flight.live(&list, adapter);
        let mut expected = None;
        let (tokens, cached, fallback) = match kv {
            Some(Lookup::Matched {
                tokens,
                cached,
                expected: prompt,
            }) => {
                expected = Some(prompt);
                (tokens, cached, None)
            }
            other => {
                let fallback = match other {
                    Some(Lookup::Fallback(reason)) => Some(reason),
                    _ => None,
                };
                let prompt_bytes = prompt.as_ref().map_or(req.prompt_len(), |p| p.bytes);
                let tokens = (prompt_bytes as f64 / self.bytes_per_token).ceil() as u32;
                let cached = self.prefix_matches(prompt.as_ref(), &list, &live, tokens);
                (tokens, cached, fallback)
            }
        };
        let candidates = Candidates::live(&list, &live, &cached, tokens);
        let pick = if target.pinned.is_some() {
            Some(0)
        } else {
            self.policy.pick(req, &candidates)
        };
        let chosen = pick.and_then(|i| Some((list.get(i)?, candidates.load(i))));
        let Some((endpoint, load)) = chosen else {
            return Err(Error::NoReadyEndpoint {
                model: model.to_owned(),
            });
        };
        let hashes = prompt.map(|p| p.hashes).filter(|h| !h.is_empty());
        let learn = (hashes.is_some() || expected.is_some()).then(|| Learn {
            id: endpoint.id.clone(),
            hashes: hashes.unwrap_or_default(),
            capacity: load.kv_capacity_tokens,
            expected,
        });
        let uncached = tokens.saturating_sub(load.cached_tokens);
        let reason = if target.pinned.is_some() {
            "pinned"
        } else if let Some(reason) = fallback {
            reason
        } else if load.cached_tokens == 0 {
            "picked"
        } else if self.kv.is_some() {
            "kv_cached"
        } else {
            "cached"
        };
        Ok(Routed {
            endpoint: Arc::clone(endpoint),
            guard: self
                .in_flight
                .start_with(&endpoint.id, u64::from(tokens), u64::from(uncached)),
            cached_tokens: load.cached_tokens,
            pinned: target.pinned.is_some(),
            reason,
            learn,
        })
    }

    /// The endpoint for a request that names no model
    /// ([`BodyKind::Addressed`](llmstack_core::BodyKind::Addressed)): the endpoint `id`
    /// in any state (a sleeping engine must be reachable to wake it), else the ready
    /// endpoint with the fewest requests in flight. Errors: an `id` not in `set` is
    /// [`Error::UnknownEndpoint`], no ready endpoint is [`Error::NoReadyEndpoint`]
    /// (with the route as its model). Counted in flight like every request.
    pub fn address(
        &self,
        set: &EndpointSet,
        id: Option<&str>,
        route: &str,
    ) -> Result<Routed, Error> {
        let endpoint = match id {
            Some(id) => set
                .get(id)
                .ok_or_else(|| Error::UnknownEndpoint { id: id.to_owned() })?,
            None => set
                .iter()
                .filter(|ep| ep.state == llmstack_core::EndpointState::Ready)
                .min_by_key(|ep| self.in_flight.get(&ep.id))
                .ok_or_else(|| Error::NoReadyEndpoint {
                    model: route.to_owned(),
                })?,
        };
        Ok(Routed {
            endpoint: Arc::clone(endpoint),
            guard: self.in_flight.start_with(&endpoint.id, 0, 0),
            cached_tokens: 0,
            pinned: id.is_some(),
            reason: if id.is_some() { "pinned" } else { "picked" },
            learn: None,
        })
    }

    /// Marks engine `id` asleep (out of routing, unless a request names it with `?id=`)
    /// or awake: the route layer does it when the engine answers `/sleep` or `/wake_up`
    /// with success. The mark goes when the engine leaves ([`Router::retain`]), or when
    /// discovery shows it unready and then ready again ([`Router::observe_asleep`]: a
    /// prober that asks `/is_sleeping` found it asleep, then awake).
    pub fn set_asleep(&self, id: &EndpointId, asleep: bool) {
        let mut ids = self
            .asleep
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ids.retain(|(e, _)| e != id);
        if asleep {
            ids.push((id.clone(), false));
        }
        self.asleep.any.store(!ids.is_empty(), Ordering::Relaxed);
    }

    /// Follows the engines marked asleep in a new endpoint set: one shown unready and
    /// later ready again (woken, even without the router) loses its mark. Cheap when
    /// none is marked.
    pub fn observe_asleep(&self, set: &EndpointSet) {
        if !self.asleep.any.load(Ordering::Relaxed) {
            return;
        }
        let mut ids = self
            .asleep
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ids.retain_mut(
            |(id, seen_unready)| match set.get(id.as_str()).map(|e| e.state) {
                Some(llmstack_core::EndpointState::Unready) => {
                    *seen_unready = true;
                    true
                }
                Some(llmstack_core::EndpointState::Ready) => !*seen_unready,
                _ => true,
            },
        );
        self.asleep.any.store(!ids.is_empty(), Ordering::Relaxed);
    }

    /// The engines marked asleep ([`Router::set_asleep`]).
    pub fn asleep(&self) -> Vec<EndpointId> {
        let ids = self
            .asleep
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ids.iter().map(|(id, _)| id.clone()).collect()
    }

    /// `exclude` and the engines asleep.
    fn excluded_with_asleep(&self, exclude: &[EndpointId]) -> Vec<EndpointId> {
        let ids = self
            .asleep
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let asleep = ids.iter().map(|(id, _)| id);
        exclude.iter().chain(asleep).cloned().collect()
    }

    /// The candidates holding a prefix of the prompt by the router's own prefix index.
    fn prefix_matches(
        &self,
        prompt: Option<&PromptHashes>,
        list: &[Arc<Endpoint>],
        live: &crate::LiveLoads,
        tokens: u32,
    ) -> Vec<(usize, u32)> {
        let mut cached = Vec::new();
        let (Some(index), Some(prompt)) = (&self.prefix, prompt) else {
            return cached;
        };
        let index = index.lock().unwrap_or_else(PoisonError::into_inner);
        let chunk_tokens = index.config().chunk_tokens();
        // The deepest holders only: a prefix held by hundreds of engines (a shared
        // system prompt) must not make every pick walk them all.
        for (id, depth) in index.matches(&prompt.hashes, MAX_HOLDERS) {
            let at = live
                .position(id)
                .unwrap_or_else(|| list.binary_search_by(|ep| ep.id.cmp(id)).ok());
            if let Some(i) = at {
                let tokens_cached = (depth as f64 * chunk_tokens) as u32;
                cached.push((i, tokens_cached.min(tokens)));
            }
        }
        cached
    }

    /// The engine accepted `routed`'s request (a 2xx response head): records its
    /// prompt in the prefix index for that engine, which now caches it, and when the
    /// KV index decided, its blocks as pending there until the engine announces them
    /// ([`KvIndex::expect`]). Nothing is recorded for a request that failed or was
    /// refused, so an engine refusing connections never looks like a holder.
    /// Idempotent; a no-op without an index.
    pub fn accepted(&self, routed: &mut Routed) {
        if let Some(learn) = routed.take_learn() {
            self.learn(learn);
        }
    }

    pub(crate) fn learn(&self, learn: Learn) {
        if let (Some(kv), Some(expected)) = (&self.kv, &learn.expected) {
            kv.expect(&learn.id, expected);
        }
        let Some(index) = &self.prefix else {
            return;
        };
        if learn.hashes.is_empty() {
            return;
        }
        let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
        index.insert(&learn.id, &learn.hashes, learn.capacity);
        // The cache room the cost charges evictions against is the prefix index's
        // LRU model even under kvaware: an engine's announced blocks fill its whole
        // KV cache (vLLM keeps freed blocks cached until evicted), so room counted
        // from them is ~0 everywhere and doubles the pull of cached prefixes (measured:
        // 82.7 % hits and 1.3x prefixaware's TTFT at QPS 10 in benches/routing/run,
        // against 89.2 % and level this way).
        if let Some((used, budget)) = index.usage(&learn.id) {
            let free = budget.saturating_sub(used) as f64 * index.config().chunk_tokens();
            drop(index);
            self.in_flight.set_cache_free(&learn.id, free as u64);
        }
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("policy", &self.policy.name())
            .field("in_flight", &self.in_flight)
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[cfg(test)]
mod tests;
