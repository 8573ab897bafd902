//! One request's count on one endpoint, taken when it is sent and released when the
//! guard drops.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::counters::Counters;

/// One request in flight on one endpoint; dropping it ends the request's count.
pub struct InFlightGuard {
    counters: Arc<Counters>,
    tokens: u64,
    /// Uncached tokens still counted as pending prefill (0 once the first byte came).
    pending: u64,
}

// === impl InFlightGuard ===

impl InFlightGuard {
    /// Counts one more request on `counters`, with `tokens` estimated prompt tokens of
    /// which `uncached` are pending prefill, until the guard drops.
    pub(super) fn new(counters: Arc<Counters>, tokens: u64, uncached: u64) -> Self {
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters.tokens.fetch_add(tokens, Ordering::Relaxed);
        counters.pending.fetch_add(uncached, Ordering::Relaxed);
        counters.touched();
        Self {
            counters,
            tokens,
            pending: uncached,
        }
    }

    /// The response's first byte arrived: the request's prefill is over, so its
    /// uncached tokens stop counting as pending prefill. Idempotent.
    pub fn first_byte(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        if pending > 0 {
            self.counters.pending.fetch_sub(pending, Ordering::Relaxed);
            self.counters.touched();
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
        self.counters.touched();
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
