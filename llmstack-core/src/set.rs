//! The immutable snapshot of all endpoints, indexed by model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::{Endpoint, EndpointId, EndpointState, Update};

/// Model name → the routable endpoints serving it.
type ModelIndex = HashMap<Box<str>, Arc<[Arc<Endpoint>]>, RandomState>;

/// All endpoints the router knows, with an index from model name to the endpoints that
/// may receive its requests.
///
/// A snapshot: cloning is cheap (reference counts) and a clone never changes. Only
/// [`EndpointSet::apply`] interprets [`Update`]s; it rebuilds the index, so lookups on
/// the request path are one hash probe.
#[derive(Debug, Clone, Default)]
pub struct EndpointSet {
    endpoints: Arc<BTreeMap<EndpointId, Arc<Endpoint>>>,
    /// Model → routable endpoints serving it, in id order.
    routable: Arc<ModelIndex>,
    /// Every model any endpoint has ever served (for 404 versus 503).
    seen: Arc<BTreeSet<Arc<str>>>,
}

// === impl EndpointSet ===

impl EndpointSet {
    /// Applies one update; returns whether the set changed.
    ///
    /// `Reset` replaces everything, `Add` inserts or replaces by id, `Remove` deletes by
    /// id (unknown ids are ignored). Models served by any endpoint are remembered as
    /// "seen" for the life of the set, even after their endpoints are gone.
    pub fn apply(&mut self, update: Update) -> bool {
        let mut next = (*self.endpoints).clone();
        match update {
            Update::Reset(endpoints) => {
                next.clear();
                for ep in endpoints {
                    next.insert(ep.id.clone(), Arc::new(ep));
                }
            }
            Update::Add(endpoints) => {
                for ep in endpoints {
                    next.insert(ep.id.clone(), Arc::new(ep));
                }
            }
            Update::Remove(ids) => {
                for id in ids {
                    next.remove(&id);
                }
            }
        }
        if next == *self.endpoints {
            return false;
        }
        self.rebuild(next);
        true
    }

    fn rebuild(&mut self, endpoints: BTreeMap<EndpointId, Arc<Endpoint>>) {
        let mut routable: HashMap<Box<str>, Vec<Arc<Endpoint>>> = HashMap::new();
        let mut seen = (*self.seen).clone();
        for ep in endpoints.values() {
            for model in &ep.models {
                if !seen.contains(model.id.as_str()) {
                    seen.insert(model.id.as_str().into());
                }
                let list = routable.entry(model.id.as_str().into()).or_default();
                if ep.is_routable() {
                    list.push(Arc::clone(ep));
                }
            }
        }
        self.routable = Arc::new(routable.into_iter().map(|(k, v)| (k, v.into())).collect());
        self.seen = Arc::new(seen);
        self.endpoints = Arc::new(endpoints);
    }

    /// Remembers `model` as seen (a configured model or alias target), so requests for it
    /// get 503 rather than 404 while no endpoint serves it.
    pub fn remember(&mut self, model: &str) {
        if !self.seen.contains(model) {
            Arc::make_mut(&mut self.seen).insert(model.into());
        }
    }

    /// The routable endpoints serving `model` (base model or LoRA adapter), in id order;
    /// empty when none.
    pub fn candidates(&self, model: &str) -> &[Arc<Endpoint>] {
        self.routable.get(model).map_or(&[], |list| list)
    }

    /// [`EndpointSet::candidates`] as the shared list itself: the same `Arc` for as long
    /// as the set is unchanged, so callers may cache per-list data keyed by its identity.
    pub fn candidates_shared(&self, model: &str) -> Option<&Arc<[Arc<Endpoint>]>> {
        self.routable.get(model)
    }

    /// Whether `model` was ever served by an endpoint of this set's history, or
    /// remembered with [`EndpointSet::remember`].
    pub fn has_seen(&self, model: &str) -> bool {
        self.seen.contains(model)
    }

    /// The set's own copy of `model`'s name when [`EndpointSet::has_seen`] is true: a
    /// shared string to label the request with, without allocating.
    pub fn seen_model(&self, model: &str) -> Option<&Arc<str>> {
        self.seen.get(model)
    }

    /// Every model [`EndpointSet::has_seen`] is true for, in name order.
    pub fn seen_models(&self) -> impl Iterator<Item = &str> {
        self.seen.iter().map(|m| &**m)
    }

    /// The endpoint with this id (in any state).
    pub fn get(&self, id: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints.get(id)
    }

    /// All endpoints, in id order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<Endpoint>> {
        self.endpoints.values()
    }

    /// Number of endpoints (in any state).
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Number of endpoints whose last probe succeeded.
    pub fn ready_count(&self) -> usize {
        self.iter()
            .filter(|ep| ep.state == EndpointState::Ready)
            .count()
    }
}

impl std::borrow::Borrow<str> for EndpointId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests;
