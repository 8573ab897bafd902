//! EndpointSlices as endpoints: the ready, not terminating endpoints of every slice.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use llmstack_core::{Endpoint, EndpointId, Update};

use super::listed::{Listed, key};
use super::pods::{pod_id, url};
use crate::K8sConfig;

/// EndpointSlices → endpoints, fed with watcher events. Every change yields a
/// `Reset` of all slices' endpoints (a slice holds many, and one engine may appear in
/// two slices during a rollout).
#[derive(Debug)]
pub struct SliceMap {
    config: K8sConfig,
    slices: Listed<Vec<Endpoint>>,
}

// === impl SliceMap ===

impl SliceMap {
    /// No slices yet.
    pub fn new(config: K8sConfig) -> Self {
        Self {
            config,
            slices: Listed::default(),
        }
    }

    /// Applies one watcher event; returns the update to pass on, if anything changed.
    pub fn on_event(&mut self, event: Event<EndpointSlice>) -> Option<Update> {
        let current = &mut self.slices.current;
        match event {
            Event::Init | Event::InitApply(_) | Event::InitDone => {
                let done = self.slices.listing(event, |slice| {
                    Some((key(&slice.metadata), slice_endpoints(&slice, &self.config)))
                });
                if !done {
                    return None;
                }
            }
            Event::Apply(slice) => {
                let eps = slice_endpoints(&slice, &self.config);
                if current.get(&key(&slice.metadata)) == Some(&eps) {
                    return None;
                }
                current.insert(key(&slice.metadata), eps);
            }
            Event::Delete(slice) => {
                current.remove(&key(&slice.metadata))?;
            }
        }
        Some(Update::Reset(self.endpoints()))
    }

    /// The routable endpoints now (one per id: the first slice listing it wins).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut by_id: BTreeMap<EndpointId, Endpoint> = BTreeMap::new();
        for ep in self.slices.current.values().flatten() {
            by_id.entry(ep.id.clone()).or_insert_with(|| ep.clone());
        }
        by_id.into_values().collect()
    }
}

/// The endpoints of a slice that may receive traffic: `conditions.ready` not false
/// (unset means ready) and not terminating. Port: the slice port named
/// `config.port_name`, else its only port, else `config.port`. Id: the target pod's
/// `<name>.<uid prefix>` (as [`pod_endpoint`](super::pod_endpoint)) when the endpoint
/// refers to a Pod, else derived from the URL. Slice labels are copied.
pub fn slice_endpoints(slice: &EndpointSlice, config: &K8sConfig) -> Vec<Endpoint> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(config.port_name.as_str()))
        .or_else(|| {
            if ports.len() == 1 {
                ports.first()
            } else {
                None
            }
        })
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(config.port);
    let mut out = Vec::new();
    for e in &slice.endpoints {
        let conditions = e.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        if !ready || terminating {
            continue;
        }
        let Some(ip) = e.addresses.first() else {
            continue;
        };
        let Some(url) = url(ip, port) else { continue };
        let mut ep = Endpoint::new(url);
        if let Some(target) = e
            .target_ref
            .as_ref()
            .filter(|t| t.kind.as_deref() == Some("Pod"))
            && let Some(name) = target.name.as_deref()
        {
            ep.id = pod_id(name, target.uid.as_deref());
        }
        ep.labels = slice.metadata.labels.clone().unwrap_or_default();
        out.push(ep);
    }
    out
}
