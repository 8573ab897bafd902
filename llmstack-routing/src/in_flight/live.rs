//! The live loads of one request's candidates, read on demand from their counters.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use llmstack_core::{Endpoint, EndpointId};

use super::counters::Counters;
use super::load::Load;

/// A hash map with foldhash's fast hasher.
pub(super) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A shared candidate list and its counters, index for index.
pub(super) struct View {
    pub(super) list: Arc<[Arc<Endpoint>]>,
    pub(super) counters: Vec<Arc<Counters>>,
    /// Index of each endpoint in `list`.
    pub(super) positions: Map<EndpointId, usize>,
}

/// The live loads of one request's candidates: see
/// [`InFlight::live`](crate::InFlight::live).
pub struct LiveLoads {
    pub(super) counters: Counted,
    pub(super) now: u64,
    pub(super) adapter: Option<Box<str>>,
}

/// Where a [`LiveLoads`] reads its counters: a cached shared list's, or its own.
pub(super) enum Counted {
    View(Arc<View>),
    Own(Vec<Arc<Counters>>),
}

// === impl LiveLoads ===

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
