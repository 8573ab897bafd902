//! One endpoint's live numbers, as atomics: its requests in flight and its last
//! scraped load.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::load::Load;

/// One endpoint's live numbers. Floats are stored as their bits; `NAN` is unknown.
pub(super) struct Counters {
    pub(super) requests: AtomicU32,
    pub(super) tokens: AtomicU64,
    pub(super) pending: AtomicU64,
    pub(super) foreign: AtomicU32,
    /// Peer replicas' requests in flight here, summed (written by the sharing task).
    pub(super) peer_requests: AtomicU32,
    /// Peer replicas' pending prefill here, summed.
    pub(super) peer_pending: AtomicU64,
    /// Whether `requests` or `pending` changed since the sharing task last sent them.
    pub(super) dirty: AtomicBool,
    pub(super) signal: Arc<Signal>,
    pub(super) waiting: AtomicU32,
    pub(super) running: AtomicU32,
    pub(super) kv_usage: AtomicU32,
    pub(super) kv_capacity: AtomicU64,
    /// Prefix-index tokens left before eviction (`u64::MAX`: unknown).
    pub(super) cache_free: AtomicU64,
    /// Milliseconds since the epoch until which the scraped numbers are fresh.
    pub(super) fresh_until: AtomicU64,
    /// When the observed scrape was taken (ms since the epoch), to fold each once.
    pub(super) scraped_at: AtomicU64,
    /// LoRA adapters running or waiting, as of the last fresh scrape.
    pub(super) adapters: Mutex<Vec<String>>,
}

/// Wakes the load-sharing task when a counter changes, once sharing is on.
#[derive(Default)]
pub(super) struct Signal {
    pub(super) on: AtomicBool,
    pub(super) notify: Notify,
}

pub(super) fn store_f32(cell: &AtomicU32, v: f32) {
    cell.store(v.to_bits(), Ordering::Relaxed);
}

fn load_f32(cell: &AtomicU32) -> Option<f32> {
    let v = f32::from_bits(cell.load(Ordering::Relaxed));
    (!v.is_nan()).then_some(v)
}

// === impl Counters ===

impl Counters {
    pub(super) fn new(signal: Arc<Signal>) -> Self {
        let unknown = || AtomicU32::new(f32::NAN.to_bits());
        Self {
            requests: AtomicU32::new(0),
            tokens: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            foreign: AtomicU32::new(0f32.to_bits()),
            peer_requests: AtomicU32::new(0),
            peer_pending: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            signal,
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

    pub(super) fn load(&self, now: u64, adapter: Option<&str>) -> Load {
        let fresh = now < self.fresh_until.load(Ordering::Relaxed)
            && self.scraped_at.load(Ordering::Relaxed) != u64::MAX;
        let scraped = |cell: &AtomicU32| if fresh { load_f32(cell) } else { None };
        let capacity = self.kv_capacity.load(Ordering::Relaxed);
        Load {
            in_flight: self.requests.load(Ordering::Relaxed),
            in_flight_tokens: self.tokens.load(Ordering::Relaxed),
            pending_prefill_tokens: self.pending.load(Ordering::Relaxed),
            foreign: scraped(&self.foreign).unwrap_or(0.0),
            peer_in_flight: self.peer_requests.load(Ordering::Relaxed),
            peer_pending_prefill_tokens: self.peer_pending.load(Ordering::Relaxed),
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

    /// The request counts changed: when load sharing is on, mark them for the sharing
    /// task and wake it. One relaxed load when it is off.
    pub(super) fn touched(&self) {
        if self.signal.on.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Relaxed);
            self.signal.notify.notify_one();
        }
    }
}
