//! Requests in flight per endpoint.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use llmstack_core::EndpointId;

/// Counts, per endpoint, the requests that were sent to it and whose response has not
/// ended yet (body finished, failed, or dropped by a disconnecting client).
///
/// Cheap to clone (shared). Counting is an [`InFlightGuard`]: taken when a request is
/// sent, released when the guard drops, so no code path can forget to decrement.
#[derive(Clone, Default)]
pub struct InFlight {
    counters: Arc<RwLock<HashMap<EndpointId, Arc<AtomicUsize>>>>,
}

/// One request in flight on one endpoint; dropping it ends the request's count.
pub struct InFlightGuard {
    counter: Arc<AtomicUsize>,
}

// === impl InFlight ===

impl InFlight {
    /// Counts one more request on `id` until the returned guard drops.
    pub fn start(&self, id: &EndpointId) -> InFlightGuard {
        let counter = {
            let read = self.counters.read().unwrap_or_else(PoisonError::into_inner);
            read.get(id).cloned()
        };
        let counter = match counter {
            Some(counter) => counter,
            None => {
                let mut write = self
                    .counters
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                Arc::clone(write.entry(id.clone()).or_default())
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { counter }
    }

    /// Requests in flight on `id` now.
    pub fn get(&self, id: &EndpointId) -> usize {
        let read = self.counters.read().unwrap_or_else(PoisonError::into_inner);
        read.get(id).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Requests in flight on all endpoints.
    pub fn total(&self) -> usize {
        let read = self.counters.read().unwrap_or_else(PoisonError::into_inner);
        read.values().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Forgets the counters of endpoints that are gone and have nothing in flight
    /// (keeps the map bounded by the endpoints that exist).
    pub fn retain(&self, mut exists: impl FnMut(&EndpointId) -> bool) {
        let mut write = self
            .counters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        write.retain(|id, c| exists(id) || c.load(Ordering::Relaxed) > 0);
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("total", &self.total())
            .finish()
    }
}

// === impl InFlightGuard ===

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightGuard").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
