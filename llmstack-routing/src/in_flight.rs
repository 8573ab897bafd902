//! Requests in flight per endpoint, and the load view policies read.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokio::time::Instant;

use llmstack_core::{Endpoint, EndpointId, StatsSnapshot};

use crate::CandidateList;
use counters::{Counters, Signal, store_f32};
use live::{Counted, Map, View};

mod counters;
mod guard;
mod live;
mod load;
mod share;

pub use guard::InFlightGuard;
pub use live::LiveLoads;
pub use load::Load;
pub use share::{EXPIRY as SHARE_EXPIRY, HEARTBEAT as SHARE_HEARTBEAT, PeerAddrs};

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
    /// Wakes the load-sharing task ([`InFlight::share`]).
    signal: Arc<Signal>,
    /// Peers' latest sums per engine (by [`EndpointId::stable_hash`]), kept for engines
    /// this router has no counters for yet.
    peer_sums: Mutex<Map<u64, (u32, u64)>>,
    /// Peers heard from within the last second (written by the sharing task).
    peers_heard: std::sync::atomic::AtomicU32,
    epoch: Instant,
}

/// Candidate lists kept in [`Inner::views`] (one per model is typical).
const VIEWS: usize = 16;

// === impl InFlight ===

impl Default for InFlight {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                counters: RwLock::default(),
                views: Mutex::default(),
                observed: Mutex::default(),
                signal: Arc::default(),
                peer_sums: Mutex::default(),
                peers_heard: std::sync::atomic::AtomicU32::new(0),
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
                Arc::clone(write.entry(id.clone()).or_insert_with(|| {
                    let counters = Counters::new(Arc::clone(&self.inner.signal));
                    // Peers may have reported this engine before this router used it.
                    if let Some(&(requests, pending)) = self
                        .inner
                        .peer_sums
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&id.stable_hash())
                    {
                        counters.peer_requests.store(requests, Ordering::Relaxed);
                        counters.peer_pending.store(pending, Ordering::Relaxed);
                    }
                    Arc::new(counters)
                }))
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
        InFlightGuard::new(self.counters(id), tokens, uncached)
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

    /// What peer replicas last said they have in flight on `id`, summed: requests and
    /// pending prefill tokens. `None` unless load sharing runs ([`InFlight::share`]).
    pub fn peer_totals(&self, id: &EndpointId) -> Option<(u32, u64)> {
        if !self.inner.signal.on.load(Ordering::Relaxed) {
            return None;
        }
        let known = self.read().get(id).map(|c| {
            (
                c.peer_requests.load(Ordering::Relaxed),
                c.peer_pending.load(Ordering::Relaxed),
            )
        });
        Some(known.unwrap_or_else(|| {
            self.inner
                .peer_sums
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&id.stable_hash())
                .copied()
                .unwrap_or((0, 0))
        }))
    }

    /// Peer replicas heard from within the last second; `None` unless load sharing runs
    /// ([`InFlight::share`]). With N replicas sharing, N − 1 when all is well.
    pub fn peers_heard(&self) -> Option<u32> {
        self.inner
            .signal
            .on
            .load(Ordering::Relaxed)
            .then(|| self.inner.peers_heard.load(Ordering::Relaxed))
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
            // This router's and its peers' requests are counted exactly elsewhere.
            let mine = (counters.requests.load(Ordering::Relaxed)
                + counters.peer_requests.load(Ordering::Relaxed)) as f32;
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

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("total", &self.total())
            .finish()
    }
}

#[cfg(test)]
mod tests;
