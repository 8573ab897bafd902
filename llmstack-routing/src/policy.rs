//! The policy trait, what it sees, and composition.

use std::sync::Arc;

use llmstack_core::{Endpoint, RouteRequest};

use crate::Load;
use crate::in_flight::LiveLoads;

/// The engines a request may go to, with each one's [`Load`], and what the router
/// estimated about the request itself.
///
/// Every candidate serves the requested model (or LoRA adapter), is routable and is not
/// excluded (pinned elsewhere, or already failed by this request); they come in
/// endpoint id order. Loads are read on demand ([`Candidates::load`] costs a few atomic
/// loads), so a policy that looks at a few candidates stays cheap in a large pool.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    endpoints: &'a [Arc<Endpoint>],
    loads: Loads<'a>,
    /// Candidates the prefix index says hold part of the prompt: (index, tokens).
    cached: &'a [(usize, u32)],
    prompt_tokens: u32,
}

#[derive(Debug, Clone, Copy)]
enum Loads<'a> {
    Given(&'a [Load]),
    Live(&'a LiveLoads),
}

impl<'a> Candidates<'a> {
    /// Candidates with given loads (tests, benchmarks, other routers); `loads` shorter
    /// than `endpoints` reads as [`Load::default`] for the rest. Cached prefixes are
    /// taken from each load's [`Load::cached_tokens`]; policies that only weigh the
    /// holders in large pools ([`PrefixAware`](crate::PrefixAware) beyond 64
    /// candidates) find them through [`Candidates::with_cached`].
    pub fn new(endpoints: &'a [Arc<Endpoint>], loads: &'a [Load], prompt_tokens: u32) -> Self {
        Self {
            endpoints,
            loads: Loads::Given(loads),
            cached: &[],
            prompt_tokens,
        }
    }

    /// Candidates reading live loads; `cached` lists the prefix holders, by index.
    pub(crate) fn live(
        endpoints: &'a [Arc<Endpoint>],
        loads: &'a LiveLoads,
        cached: &'a [(usize, u32)],
        prompt_tokens: u32,
    ) -> Self {
        Self {
            endpoints,
            loads: Loads::Live(loads),
            cached,
            prompt_tokens,
        }
    }

    /// These candidates (by index, with their cached tokens) hold a prefix of the
    /// prompt: overrides [`Load::cached_tokens`] and fills [`Candidates::cached`].
    #[must_use]
    pub fn with_cached(mut self, cached: &'a [(usize, u32)]) -> Self {
        self.cached = cached;
        self
    }

    /// The candidates holding a cached prefix of the prompt according to the router's
    /// prefix index, as `(index, cached tokens)` (the router passes the 16 deepest
    /// holders); empty without an index, or when the loads were given (then
    /// see [`Load::cached_tokens`]).
    pub fn cached(&self) -> &'a [(usize, u32)] {
        self.cached
    }

    /// The candidate endpoints.
    pub fn endpoints(&self) -> &'a [Arc<Endpoint>] {
        self.endpoints
    }

    /// The load of candidate `i` (read now; [`Load::default`] out of range).
    pub fn load(&self, i: usize) -> Load {
        let mut load = match self.loads {
            Loads::Given(loads) => loads.get(i).copied().unwrap_or_default(),
            Loads::Live(live) => live.get(i),
        };
        // A short list (the router passes at most 16 holders): a scan is cheapest.
        if let Some(&(_, tokens)) = self.cached.iter().find(|c| c.0 == i) {
            load.cached_tokens = tokens;
        }
        load
    }

    /// How many candidates there are.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The request's estimated prompt tokens (0 when it has no prompt).
    pub fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }
}

/// A pure, synchronous chooser: given one request and the endpoints eligible for it,
/// pick one.
///
/// Return the index of the choice in `candidates`, or `None` to decline: either there
/// are no candidates, or the policy has no opinion on this request (a session policy
/// given no session key), in which case a composed fallback ([`PolicyExt::or`])
/// decides, and a policy declining alone makes the request fail with 503. No I/O, no
/// `async`, no lock held across anything that can block: `pick` runs on the request
/// path of every request.
pub trait Policy: Send + Sync + 'static {
    /// The choice, as an index into `candidates`.
    fn pick(&self, req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize>;

    /// The policy's name, as `--routing-logic` spells it (for logs and metrics).
    fn name(&self) -> &'static str;
}

impl<P: Policy + ?Sized> Policy for Arc<P> {
    fn pick(&self, req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        (**self).pick(req, candidates)
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }
}

impl<P: Policy + ?Sized> Policy for Box<P> {
    fn pick(&self, req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        (**self).pick(req, candidates)
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }
}

/// Composition of policies.
pub trait PolicyExt: Policy + Sized {
    /// This policy, and `fallback` whenever it declines (returns `None`). The name stays
    /// this policy's. Chains read in order: `session.or(prefix).or(least_loaded)`.
    fn or<F: Policy>(self, fallback: F) -> Fallback<Self, F> {
        Fallback {
            first: self,
            fallback,
        }
    }
}

impl<P: Policy> PolicyExt for P {}

/// `first`, then `fallback` when `first` declines: see [`PolicyExt::or`].
#[derive(Debug, Default)]
pub struct Fallback<A, B> {
    first: A,
    fallback: B,
}

impl<A: Policy, B: Policy> Policy for Fallback<A, B> {
    fn pick(&self, req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        self.first
            .pick(req, candidates)
            .or_else(|| self.fallback.pick(req, candidates))
    }

    fn name(&self) -> &'static str {
        self.first.name()
    }
}

/// A rotating start index for tie-breaks: spreads equal choices instead of always
/// taking the first candidate.
pub(crate) fn rotation(n: usize) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    if n <= 1 {
        0
    } else {
        NEXT.fetch_add(1, Ordering::Relaxed) % n
    }
}

/// The index minimising `key` over `0..n`, ties broken by a rotating start; `None` when
/// `n == 0`.
pub(crate) fn argmin_by(n: usize, mut key: impl FnMut(usize) -> f64) -> Option<usize> {
    let start = rotation(n);
    let mut best: Option<(usize, f64)> = None;
    for i in (start..n).chain(0..start) {
        let v = key(i);
        if best.is_none_or(|(_, b)| v < b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}
