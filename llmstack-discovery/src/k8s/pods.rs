//! Pods as endpoints: which pods may receive traffic, at which port, under which id.

use http::Uri;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use llmstack_core::{Endpoint, EndpointId, Update};

use super::listed::{Listed, key};
use crate::K8sConfig;

/// Pods → endpoints, fed with watcher events.
#[derive(Debug)]
pub struct PodMap {
    config: K8sConfig,
    /// Routable pods by `namespace/name`.
    pods: Listed<Endpoint>,
}

// === impl PodMap ===

impl PodMap {
    /// No pods yet.
    pub fn new(config: K8sConfig) -> Self {
        Self {
            config,
            pods: Listed::default(),
        }
    }

    /// Applies one watcher event; returns the update to pass on, if anything changed
    /// (always a `Reset` at `InitDone`, so a (re-)list is a snapshot).
    pub fn on_event(&mut self, event: Event<Pod>) -> Option<Update> {
        let current = &mut self.pods.current;
        match event {
            Event::Init | Event::InitApply(_) | Event::InitDone => {
                let done = self.pods.listing(event, |pod| {
                    let ep = pod_endpoint(&pod, &self.config)?;
                    Some((key(&pod.metadata), ep))
                });
                done.then(|| Update::Reset(self.pods.current.values().cloned().collect()))
            }
            Event::Apply(pod) => {
                let key = key(&pod.metadata);
                match pod_endpoint(&pod, &self.config) {
                    Some(ep) => {
                        let old = current.insert(key, ep.clone());
                        match old {
                            Some(old) if old == ep => None,
                            Some(old) if old.id != ep.id => {
                                // Same name, new pod: the old one is gone.
                                Some(Update::Reset(current.values().cloned().collect()))
                            }
                            _ => Some(Update::Add(vec![ep])),
                        }
                    }
                    None => current.remove(&key).map(|old| Update::Remove(vec![old.id])),
                }
            }
            Event::Delete(pod) => current
                .remove(&key(&pod.metadata))
                .map(|old| Update::Remove(vec![old.id])),
        }
    }

    /// The routable endpoints now.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.pods.current.values()
    }
}

/// The endpoint of a pod that may receive traffic: phase `Running`, condition `Ready`
/// true, no deletion timestamp, a pod IP. Its port: the `config.port_annotation`
/// annotation, else a container port named `config.port_name`, else `config.port`.
/// Its id: `<pod name>.<first 8 characters of the pod UID>`, stable across router
/// restarts and new for a re-created pod of the same name (whose cache is empty).
/// Pod labels are copied (`model` is production-stack's model label).
pub fn pod_endpoint(pod: &Pod, config: &K8sConfig) -> Option<Endpoint> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    let annotated = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(&config.port_annotation))
        .and_then(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p != 0);
    let named = || {
        pod.spec.as_ref().and_then(|spec| {
            spec.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(config.port_name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
        })
    };
    let port = annotated.or_else(named).unwrap_or(config.port);
    let mut ep = Endpoint::new(url(ip, port)?);
    ep.id = pod_id(meta.name.as_deref()?, meta.uid.as_deref());
    ep.labels = meta.labels.clone().unwrap_or_default();
    Some(ep)
}

/// A pod's endpoint id: `<name>.<first 8 characters of its UID>` (the name alone
/// without a UID).
pub(super) fn pod_id(name: &str, uid: Option<&str>) -> EndpointId {
    let uid: String = uid.unwrap_or_default().chars().take(8).collect();
    if uid.is_empty() {
        EndpointId::new(name)
    } else {
        EndpointId::new(format!("{name}.{uid}"))
    }
}

/// `http://ip:port` (IPv6 in brackets); `None` for something that is not an IP.
pub(super) fn url(ip: &str, port: u16) -> Option<Uri> {
    let ip: std::net::IpAddr = ip.trim().parse().ok()?;
    crate::url_at(std::net::SocketAddr::new(ip, port))
}
