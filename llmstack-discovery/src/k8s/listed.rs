//! Objects by `namespace/name`, kept through the watcher's list protocol.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;

/// Objects by `namespace/name`, following the watcher's list protocol: `Init` starts a
/// new list, `InitApply` adds to it, `InitDone` replaces the current objects with it
/// (whatever is not listed again is gone).
#[derive(Debug)]
pub(super) struct Listed<V> {
    pub(super) current: BTreeMap<String, V>,
    /// A (re-)list in progress.
    listing: Option<BTreeMap<String, V>>,
}

// === impl Listed ===

impl<V> Default for Listed<V> {
    fn default() -> Self {
        Self {
            current: BTreeMap::new(),
            listing: None,
        }
    }
}

impl<V> Listed<V> {
    /// Applies a list event (`Init`, `InitApply`, `InitDone`; others are ignored),
    /// turning each listed object into an entry with `entry` (`None`: left out).
    /// Returns whether the list is done, i.e. `current` was replaced.
    pub(super) fn listing<K>(
        &mut self,
        event: Event<K>,
        entry: impl FnOnce(K) -> Option<(String, V)>,
    ) -> bool {
        match event {
            Event::Init => self.listing = Some(BTreeMap::new()),
            Event::InitApply(object) => {
                if let Some((key, value)) = entry(object) {
                    self.listing
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, value);
                }
            }
            Event::InitDone => {
                self.current = self.listing.take().unwrap_or_default();
                return true;
            }
            Event::Apply(_) | Event::Delete(_) => {}
        }
        false
    }
}

/// An object's key in a [`Listed`]: `namespace/name`.
pub(super) fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}
