//! Requests in flight per endpoint, and the load view policies read.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokio::time::Instant;

use llmstack_core::{Endpoint, EndpointId, StatsSnapshot};

use crate::CandidateList;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the router knows of one engine's load when it picks: its own live requests
/// there (exact, current) plus the engine's last fresh scrape.
///
/// Scraped numbers are `None` when unknown (never scraped, or older than three scrape
/// intervals): unknown is not zero.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// This router's requests on the engine whose response has not ended.
    pub in_flight: u32,
    /// Estimated prompt tokens of those requests.
    pub in_flight_tokens: u64,
    /// Estimated uncached prompt tokens of those requests that have not received their
    /// first response byte: prefill work still queued or running on the engine. A
    /// non-streamed answer arrives whole at the end, so a non-streamed request counts
    /// here until it is done (an overestimate of its prefill).
    pub pending_prefill_tokens: u64,
    /// Requests the engine reported (running + waiting) beyond this router's own when
    /// the scrape was folded in ([`InFlight::observe`]): other routers' traffic. Added
    /// to `in_flight`, it estimates the engine's queue between scrapes without herding
    /// (new picks count at once).
    pub foreign: f32,
    /// `vllm:num_requests_waiting` of the last fresh scrape.
    pub waiting: Option<f32>,
    /// `vllm:num_requests_running` of the last fresh scrape.
    pub running: Option<f32>,
    /// `vllm:kv_cache_usage_perc` (0..1) of the last fresh scrape.
    pub kv_usage: Option<f32>,
    /// KV capacity in tokens (`num_gpu_blocks × block_size`), once ever scraped.
    pub kv_capacity_tokens: Option<u64>,
    /// Prompt tokens of this request the engine probably has cached (from the router's
    /// prefix index; 0 without one).
    pub cached_tokens: u32,
    /// For a request naming a LoRA adapter: whether the engine's last fresh scrape shows
    /// the adapter running or waiting there. `None` for base models or when unknown.
    pub adapter_warm: Option<bool>,
    /// Tokens the router's prefix index has left in the engine's share before it must
    /// evict (as the engine's own cache would); `None` without an index or before the
    /// engine's first request.
    pub cache_free_tokens: Option<u64>,
}

impl Load {
    /// The engine's estimated requests: this router's in flight plus the others'.
    pub fn requests(&self) -> f64 {
        f64::from(self.in_flight) + f64::from(self.foreign)
    }
}

/// Counts, per endpoint, the requests that were sent to it and whose response has not
/// ended yet (body finished, failed, or dropped by a disconnecting client), with their
/// prompt tokens; and keeps each endpoint's last scraped load, read by
/// [`InFlight::live`].
///
/// Cheap to clone (shared). Counting is an [`InFlightGuard`]: taken when a request is
/// sent, released when the guard drops, so no code path can forget to decrement.
#[derive(Clone)]
pub struct InFlight {
    inner: Arc<Inner>,
}

struct Inner {
    counters: RwLock<Map<EndpointId, Arc<Counters>>>,
    /// Recently used candidate lists with their counters, in the same order: a list is
    /// recognised by pointer identity of its endpoints, which the cache keeps alive.
    views: Mutex<Vec<Arc<View>>>,
    /// The stats snapshot last folded into the counters.
    observed: Mutex<Option<(Arc<StatsSnapshot>, u64)>>,
    epoch: Instant,
}

/// Candidate lists kept in [`Inner::views`] (one per model is typical).
const VIEWS: usize = 16;

/// A shared candidate list and its counters, index for index.
struct View {
    list: Arc<[Arc<Endpoint>]>,
    counters: Vec<Arc<Counters>>,
    /// Index of each endpoint in `list`.
    positions: Map<EndpointId, usize>,
}

/// One endpoint's live numbers. Floats are stored as their bits; `NAN` is unknown.
struct Counters {
    requests: AtomicU32,
    tokens: AtomicU64,
    pending: AtomicU64,
    foreign: AtomicU32,
    waiting: AtomicU32,
    running: AtomicU32,
    kv_usage: AtomicU32,
    kv_capacity: AtomicU64,
    /// Prefix-index tokens left before eviction (`u64::MAX`: unknown).
    cache_free: AtomicU64,
    /// Milliseconds since the epoch until which the scraped numbers are fresh.
    fresh_until: AtomicU64,
    /// When the observed scrape was taken (ms since the epoch), to fold each once.
    scraped_at: AtomicU64,
    /// LoRA adapters running or waiting, as of the last fresh scrape.
    adapters: Mutex<Vec<String>>,
}

/// The live loads of one request's candidates: see [`InFlight::live`].
pub struct LiveLoads {
    counters: Counted,
    now: u64,
    adapter: Option<Box<str>>,
}

enum Counted {
    View(Arc<View>),
    Own(Vec<Arc<Counters>>),
}

impl LiveLoads {
    /// The index of endpoint `id` among the candidates, when known without a search
    /// (a shared candidate list); `None` otherwise.
    pub(crate) fn position(&self, id: &EndpointId) -> Option<Option<usize>> {
        match &self.counters {
            Counted::View(view) => Some(view.positions.get(id).copied()),
            Counted::Own(_) => None,
        }
    }

    /// Candidate `i`'s load now ([`Load::default`] out of range).
    pub fn get(&self, i: usize) -> Load {
        let counters = match &self.counters {
            Counted::View(view) => view.counters.get(i),
            Counted::Own(own) => own.get(i),
        };
        counters.map_or_else(Load::default, |c| c.load(self.now, self.adapter.as_deref()))
    }
}

impl fmt::Debug for LiveLoads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveLoads").finish_non_exhaustive()
    }
}

/// One request in flight on one endpoint; dropping it ends the request's count.
pub struct InFlightGuard {
    counters: Arc<Counters>,
    tokens: u64,
    /// Uncached tokens still counted as pending prefill (0 once the first byte came).
    pending: u64,
}

// === impl InFlight ===

impl Default for InFlight {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                counters: RwLock::default(),
                views: Mutex::default(),
                observed: Mutex::default(),
                epoch: Instant::now(),
            }),
        }
    }
}

impl InFlight {
    fn counters(&self, id: &EndpointId) -> Arc<Counters> {
        let found = {
            let read = self.read();
            read.get(id).cloned()
        };
        match found {
            Some(counters) => counters,
            None => {
                let mut write = self
                    .inner
                    .counters
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                Arc::clone(
                    write
                        .entry(id.clone())
                        .or_insert_with(|| Arc::new(Counters::new())),
                )
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map<EndpointId, Arc<Counters>>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map is
        // still consistent (inserts and removals are single operations).
        self.inner
            .counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more request on `id` until the returned guard drops (no prompt
    /// tokens: see [`InFlight::start_with`]).
    pub fn start(&self, id: &EndpointId) -> InFlightGuard {
        self.start_with(id, 0, 0)
    }

    /// [`InFlight::start`] with the request's estimated prompt tokens, of which
    /// `uncached` must be prefilled (counted as pending until
    /// [`InFlightGuard::first_byte`]).
    pub fn start_with(&self, id: &EndpointId, tokens: u64, uncached: u64) -> InFlightGuard {
        let counters = self.counters(id);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters.tokens.fetch_add(tokens, Ordering::Relaxed);
        counters.pending.fetch_add(uncached, Ordering::Relaxed);
        InFlightGuard {
            counters,
            tokens,
            pending: uncached,
        }
    }

    /// Records how many tokens `id`'s share of a prefix index has left
    /// ([`Load::cache_free_tokens`]).
    pub fn set_cache_free(&self, id: &EndpointId, tokens: u64) {
        self.counters(id)
            .cache_free
            .store(tokens.min(u64::MAX - 1), Ordering::Relaxed);
    }

    /// Requests in flight on `id` now.
    pub fn get(&self, id: &EndpointId) -> usize {
        self.read()
            .get(id)
            .map_or(0, |c| c.requests.load(Ordering::Relaxed) as usize)
    }

    /// Requests in flight on all endpoints.
    pub fn total(&self) -> usize {
        self.read()
            .values()
            .map(|c| c.requests.load(Ordering::Relaxed) as usize)
            .sum()
    }

    /// Forgets the counters of endpoints that are gone and have nothing in flight
    /// (keeps the map bounded by the endpoints that exist).
    pub fn retain(&self, mut exists: impl FnMut(&EndpointId) -> bool) {
        let mut write = self
            .inner
            .counters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        write.retain(|id, c| exists(id) || c.requests.load(Ordering::Relaxed) > 0);
        drop(write);
        // Cached lists may hold counters just forgotten: start afresh.
        self.inner
            .views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.inner.epoch).as_millis())
            .unwrap_or(u64::MAX)
    }

    /// Folds a stats snapshot into the per-endpoint numbers: each engine's `foreign`
    /// load is its scraped running + waiting minus this router's in-flight count at
    /// the fold. A snapshot is folded once, and at most every eighth of a scrape
    /// interval (the scraper publishes one snapshot per engine result; folding each
    /// would cost O(engines²) per interval): calls in between return at once.
    pub fn observe(&self, snapshot: &Arc<StatsSnapshot>) {
        let Ok(mut observed) = self.inner.observed.try_lock() else {
            return; // another pick is folding (this or a newer) snapshot
        };
        let now = self.millis(Instant::now());
        let gap = u64::try_from((snapshot.interval() / 8).as_millis()).unwrap_or(u64::MAX);
        if let Some((last, at)) = observed.as_ref()
            && (Arc::ptr_eq(last, snapshot) || now < at.saturating_add(gap))
        {
            return;
        }
        *observed = Some((Arc::clone(snapshot), now));
        drop(observed);
        let stale_after = snapshot.interval() * 3;
        for (id, stats) in snapshot.iter() {
            let counters = self.counters(id);
            let at = self.millis(stats.scraped_at);
            if counters.scraped_at.swap(at, Ordering::Relaxed) == at {
                continue;
            }
            let mine = counters.requests.load(Ordering::Relaxed) as f32;
            let engine = (stats.running + stats.waiting) as f32;
            store_f32(&counters.foreign, (engine - mine).max(0.0));
            store_f32(&counters.waiting, stats.waiting as f32);
            store_f32(&counters.running, stats.running as f32);
            store_f32(&counters.kv_usage, stats.kv_cache_usage as f32);
            if let (Some(blocks), Some(size)) = (stats.num_gpu_blocks, stats.block_size) {
                counters
                    .kv_capacity
                    .store(blocks.saturating_mul(u64::from(size)), Ordering::Relaxed);
            }
            counters.fresh_until.store(
                self.millis(stats.scraped_at + stale_after),
                Ordering::Relaxed,
            );
            let mut adapters = counters
                .adapters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            adapters.clear();
            adapters.extend(stats.lora_running.iter().cloned());
            adapters.extend(stats.lora_waiting.iter().cloned());
        }
    }

    /// The loads of `candidates`, read on demand. `adapter` is the requested model
    /// when it is a LoRA adapter (fills [`Load::adapter_warm`]). Cost: the counters of
    /// a shared candidate list seen recently are found at once, others by one hash
    /// lookup per candidate; then a few atomic loads per [`LiveLoads::get`].
    pub fn live(&self, candidates: &CandidateList<'_>, adapter: Option<&str>) -> LiveLoads {
        let counters = match candidates {
            CandidateList::Shared(list) => Counted::View(self.view(list)),
            CandidateList::Owned(list) => {
                Counted::Own(list.iter().map(|ep| self.counters(&ep.id)).collect())
            }
        };
        LiveLoads {
            counters,
            now: self.millis(Instant::now()),
            adapter: adapter.map(Box::from),
        }
    }

    /// The counters of a shared candidate list, index for index.
    fn view(&self, list: &Arc<[Arc<Endpoint>]>) -> Arc<View> {
        let mut views = self
            .inner
            .views
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = views.iter().position(|v| Arc::ptr_eq(&v.list, list)) {
            let view = Arc::clone(&views[i]);
            if i > 0 {
                views[..=i].rotate_right(1); // most recently used first
            }
            return view;
        }
        drop(views);
        let view = Arc::new(View {
            list: Arc::clone(list),
            counters: list.iter().map(|ep| self.counters(&ep.id)).collect(),
            positions: list
                .iter()
                .enumerate()
                .map(|(i, ep)| (ep.id.clone(), i))
                .collect(),
        });
        let mut views = self
            .inner
            .views
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        views.truncate(VIEWS - 1);
        views.insert(0, Arc::clone(&view));
        view
    }
}

fn store_f32(cell: &AtomicU32, v: f32) {
    cell.store(v.to_bits(), Ordering::Relaxed);
}

fn load_f32(cell: &AtomicU32) -> Option<f32> {
    let v = f32::from_bits(cell.load(Ordering::Relaxed));
    (!v.is_nan()).then_some(v)
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("total", &self.total())
            .finish()
    }
}

// === impl Counters ===

impl Counters {
    fn new() -> Self {
        let unknown = || AtomicU32::new(f32::NAN.to_bits());
        Self {
            requests: AtomicU32::new(0),
            tokens: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            foreign: AtomicU32::new(0f32.to_bits()),
            waiting: unknown(),
            running: unknown(),
            kv_usage: unknown(),
            kv_capacity: AtomicU64::new(0),
            cache_free: AtomicU64::new(u64::MAX),
            fresh_until: AtomicU64::new(0),
            scraped_at: AtomicU64::new(u64::MAX),
            adapters: Mutex::default(),
        }
    }

    fn load(&self, now: u64, adapter: Option<&str>) -> Load {
        let fresh = now < self.fresh_until.load(Ordering::Relaxed)
            && self.scraped_at.load(Ordering::Relaxed) != u64::MAX;
        let scraped = |cell: &AtomicU32| if fresh { load_f32(cell) } else { None };
        let capacity = self.kv_capacity.load(Ordering::Relaxed);
        Load {
            in_flight: self.requests.load(Ordering::Relaxed),
            in_flight_tokens: self.tokens.load(Ordering::Relaxed),
            pending_prefill_tokens: self.pending.load(Ordering::Relaxed),
            foreign: scraped(&self.foreign).unwrap_or(0.0),
            waiting: scraped(&self.waiting),
            running: scraped(&self.running),
            kv_usage: scraped(&self.kv_usage),
            kv_capacity_tokens: (capacity > 0).then_some(capacity),
            cached_tokens: 0,
            cache_free_tokens: match self.cache_free.load(Ordering::Relaxed) {
                u64::MAX => None,
                free => Some(free),
            },
            adapter_warm: match adapter {
                Some(name) if fresh => Some(
                    self.adapters
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .iter()
                        .any(|a| a == name),
                ),
                _ => None,
            },
        }
    }
}

// === impl InFlightGuard ===

impl InFlightGuard {
    /// The response's first byte arrived: the request's prefill is over, so its
    /// uncached tokens stop counting as pending prefill. Idempotent.
    pub fn first_byte(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        if pending > 0 {
            self.counters.pending.fetch_sub(pending, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.first_byte();
        self.counters.requests.fetch_sub(1, Ordering::Relaxed);
        self.counters
            .tokens
            .fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

impl fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightGuard")
            .field("tokens", &self.tokens)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use llmstack_core::EngineStats;

    use super::*;

    /// Every candidate's load now.
    fn loads(in_flight: &InFlight, eps: &[Arc<Endpoint>], adapter: Option<&str>) -> Vec<Load> {
        let live = in_flight.live(&CandidateList::Owned(eps.to_vec()), adapter);
        (0..eps.len()).map(|i| live.get(i)).collect()
    }

    #[test]
    fn guards_count_until_dropped() {
        let in_flight = InFlight::default();
        let (a, b) = (EndpointId::new("a"), EndpointId::new("b"));
        let g1 = in_flight.start(&a);
        let g2 = in_flight.start(&a);
        let g3 = in_flight.clone().start(&b);
        assert_eq!(
            (in_flight.get(&a), in_flight.get(&b), in_flight.total()),
            (2, 1, 3)
        );
        drop(g1);
        drop(g3);
        assert_eq!((in_flight.get(&a), in_flight.get(&b)), (1, 0));
        in_flight.retain(|_| false);
        assert_eq!(in_flight.get(&a), 1, "busy counters are kept");
        drop(g2);
        in_flight.retain(|_| false);
        assert_eq!(in_flight.total(), 0);
    }

    fn endpoint(port: u16) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            format!("http://127.0.0.1:{port}").parse().unwrap(),
        ))
    }

    fn stats(running: f64, waiting: f64) -> EngineStats {
        EngineStats {
            running,
            waiting,
            kv_cache_usage: 0.25,
            prefix_cache_queries: 0.0,
            prefix_cache_hits: 0.0,
            prefix_cache_hit_rate: None,
            num_gpu_blocks: Some(100),
            block_size: Some(16),
            lora_running: vec!["sql".into()],
            lora_waiting: vec![],
            models: HashMap::new(),
            scraped_at: Instant::now(),
        }
    }

    #[test]
    fn tokens_and_pending_prefill_follow_the_guard() {
        let in_flight = InFlight::default();
        let eps = [endpoint(1)];
        let mut guard = in_flight.start_with(&eps[0].id, 100, 60);
        let out = loads(&in_flight, &eps, None);
        assert_eq!(
            (
                out[0].in_flight,
                out[0].in_flight_tokens,
                out[0].pending_prefill_tokens
            ),
            (1, 100, 60)
        );
        guard.first_byte();
        guard.first_byte();
        let out = loads(&in_flight, &eps, None);
        assert_eq!(
            (out[0].in_flight_tokens, out[0].pending_prefill_tokens),
            (100, 0)
        );
        drop(guard);
        let out = loads(&in_flight, &eps, None);
        assert_eq!(out[0], Load::default());
    }

    #[test]
    fn scraped_load_counts_only_other_routers_traffic() {
        let in_flight = InFlight::default();
        let eps = [endpoint(1), endpoint(2)];
        let _mine = [in_flight.start(&eps[0].id), in_flight.start(&eps[0].id)];
        // The engine reports 5 (our 2 + 3 from elsewhere).
        let snap = Arc::new(StatsSnapshot::with_engines(
            Duration::from_secs(1),
            HashMap::from([(eps[0].id.clone(), stats(4.0, 1.0))]),
        ));
        in_flight.observe(&snap);
        let _more = in_flight.start(&eps[0].id);
        let out = loads(&in_flight, &eps, Some("sql"));
        assert_eq!(out[0].in_flight, 3);
        assert_eq!(out[0].foreign, 3.0);
        assert_eq!(
            out[0].requests(),
            6.0,
            "picks after the scrape count at once"
        );
        assert_eq!(out[0].waiting, Some(1.0));
        assert_eq!(out[0].kv_capacity_tokens, Some(1600));
        assert_eq!(out[0].adapter_warm, Some(true));
        assert_eq!(out[1], Load::default(), "never scraped: unknown, not zero");
        let out = loads(&in_flight, &eps, Some("other"));
        assert_eq!(out[0].adapter_warm, Some(false));
    }

    #[test]
    fn stale_scrapes_read_as_unknown() {
        let in_flight = InFlight::default();
        let eps = [endpoint(1)];
        let mut old = stats(3.0, 2.0);
        old.scraped_at = Instant::now() - Duration::from_secs(10);
        let snap = Arc::new(StatsSnapshot::with_engines(
            Duration::from_secs(1),
            HashMap::from([(eps[0].id.clone(), old)]),
        ));
        in_flight.observe(&snap);
        let out = loads(&in_flight, &eps, Some("sql"));
        assert_eq!(
            (out[0].foreign, out[0].waiting, out[0].adapter_warm),
            (0.0, None, None)
        );
        assert_eq!(out[0].kv_capacity_tokens, Some(1600), "capacity is kept");
    }
}
