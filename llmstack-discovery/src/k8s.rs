//! Kubernetes discovery (feature `kube`): Pods or EndpointSlices, list+watch.
//!
//! kube-runtime's [`watcher`] lists, then watches from the list's resource version.
//! After a disconnect (watch timeout, apiserver restart) it watches again from the last
//! resource version it saw, so the apiserver replays what happened meanwhile, deletions
//! included; when that version is too old to replay (`410 Gone`, e.g. after an
//! apiserver restart), it lists again. The fresh list arrives as `Init`, `InitApply`…,
//! `InitDone`, and [`PodMap`] / [`SliceMap`] turn it into one [`Update::Reset`]. Either
//! way an object deleted while the watch was down is dropped, instead of being routed
//! to for hours (production-stack's watch re-opened from "now", without a resource
//! version or a re-list, and kept such "zombie" pods).
//!
//! The mapping from watcher events to [`Update`]s is pure and tested on its own
//! (property: after any event sequence, the endpoints equal what the last list plus
//! the later events describe).

use std::collections::BTreeMap;

use futures_util::StreamExt;
use http::Uri;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Api, Client};
use llmstack_core::{Endpoint, EndpointId, Update};
use tokio::sync::mpsc;

use crate::{K8sConfig, K8sMode, UpdateStream};

/// Watches the engines `config` describes with `client` and yields their endpoints:
/// a `Reset` after every (re-)list, then `Add`/`Remove` (Pods) or `Reset` (slices)
/// per change. Watch errors are logged, counted in
/// `llmstack_discovery_errors_total{source="k8s"}` and retried with kube-runtime's
/// default backoff (0.8 s doubling to 30 s); the last endpoints stay meanwhile.
///
/// The RBAC the router's ServiceAccount needs: `get`, `list`, `watch` on `pods` (or on
/// `endpointslices.discovery.k8s.io` in EndpointSlice mode) in the namespace.
pub fn k8s_discovery(client: Client, config: K8sConfig) -> UpdateStream {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        match config.mode {
            K8sMode::Pods => {
                let api: Api<Pod> = Api::namespaced(client, &config.namespace);
                let mut map = PodMap::new(config.clone());
                run(api, &config, &tx, move |e| map.on_event(e)).await;
            }
            K8sMode::EndpointSlices => {
                let api: Api<EndpointSlice> = Api::namespaced(client, &config.namespace);
                let mut map = SliceMap::new(config.clone());
                run(api, &config, &tx, move |e| map.on_event(e)).await;
            }
        }
    });
    UpdateStream::new(rx, Some(task))
}

/// Drives one watcher until the consumer goes away.
async fn run<K>(
    api: Api<K>,
    config: &K8sConfig,
    tx: &mpsc::Sender<Result<Update, llmstack_core::BoxError>>,
    mut on_event: impl FnMut(Event<K>) -> Option<Update>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let mut wc = watcher::Config::default();
    if !config.label_selector.trim().is_empty() {
        wc = wc.labels(config.label_selector.trim());
    }
    let secs = config.watch_timeout.as_secs();
    if secs > 0 {
        wc = wc.timeout(u32::try_from(secs).unwrap_or(u32::MAX));
    }
    let mut events = watch(api, wc).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if let Some(update) = on_event(event)
                    && tx.send(Ok(update)).await.is_err()
                {
                    return;
                }
            }
            Err(e) => {
                metrics::counter!("llmstack_discovery_errors_total", "source" => "k8s")
                    .increment(1);
                tracing::warn!(error = %e, "kubernetes watch failed; retrying (the last endpoints stay)");
            }
        }
    }
}

/// Pods → endpoints, fed with watcher events.
#[derive(Debug)]
pub struct PodMap {
    config: K8sConfig,
    /// Routable pods by `namespace/name`.
    pods: Listed<Endpoint>,
}

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

/// Objects by `namespace/name`, following the watcher's list protocol: `Init` starts a
/// new list, `InitApply` adds to it, `InitDone` replaces the current objects with it
/// (whatever is not listed again is gone).
#[derive(Debug)]
struct Listed<V> {
    current: BTreeMap<String, V>,
    /// A (re-)list in progress.
    listing: Option<BTreeMap<String, V>>,
}

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
    fn listing<K>(
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

/// EndpointSlices → endpoints, fed with watcher events. Every change yields a
/// `Reset` of all slices' endpoints (a slice holds many, and one engine may appear in
/// two slices during a rollout).
#[derive(Debug)]
pub struct SliceMap {
    config: K8sConfig,
    slices: Listed<Vec<Endpoint>>,
}

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

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
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

/// The endpoints of a slice that may receive traffic: `conditions.ready` not false
/// (unset means ready) and not terminating. Port: the slice port named
/// `config.port_name`, else its only port, else `config.port`. Id: the target pod's
/// `<name>.<uid prefix>` (as [`pod_endpoint`]) when the endpoint refers to a Pod, else
/// derived from the URL. Slice labels are copied.
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

/// A pod's endpoint id: `<name>.<first 8 characters of its UID>` (the name alone
/// without a UID).
fn pod_id(name: &str, uid: Option<&str>) -> EndpointId {
    let uid: String = uid.unwrap_or_default().chars().take(8).collect();
    if uid.is_empty() {
        EndpointId::new(name)
    } else {
        EndpointId::new(format!("{name}.{uid}"))
    }
}

/// `http://ip:port` (IPv6 in brackets); `None` for something that is not an IP.
fn url(ip: &str, port: u16) -> Option<Uri> {
    let ip: std::net::IpAddr = ip.trim().parse().ok()?;
    crate::url_at(std::net::SocketAddr::new(ip, port))
}

/// The API client `config` asks for: its `kubeconfig` file when set, else from the
/// environment (in a pod, its ServiceAccount; elsewhere `KUBECONFIG` or
/// `~/.kube/config`, as kube's `Client::try_default`).
pub async fn client(config: &K8sConfig) -> Result<Client, String> {
    match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let options = kube::config::KubeConfigOptions::default();
            let cfg = kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Client::try_from(cfg).map_err(|e| e.to_string())
        }
        None => Client::try_default().await.map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::api::discovery::v1::{
        Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use llmstack_core::EndpointSet;
    use proptest::prelude::*;

    use super::*;

    /// A pod as the test kubelet would leave it.
    #[derive(Debug, Clone)]
    struct Spec {
        name: usize,
        uid: usize,
        ip: u8,
        running: bool,
        ready: bool,
        deleting: bool,
        annotated_port: Option<u16>,
    }

    fn pod(s: &Spec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("vllm-{}", s.name)),
                namespace: Some("default".into()),
                uid: Some(format!("{:08x}-uid", s.uid * 7919 + s.name)),
                deletion_timestamp: s.deleting.then(|| Time(Default::default())),
                annotations: s
                    .annotated_port
                    .map(|p| [("llmstack.io/port".to_owned(), p.to_string())].into()),
                labels: Some([("model".to_owned(), "m".to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "vllm".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        ..ContainerPort::default()
                    }]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(if s.running { "Running" } else { "Pending" }.into()),
                pod_ip: Some(format!("127.0.0.{}", s.ip)),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if s.ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn config() -> K8sConfig {
        K8sConfig::default()
    }

    #[test]
    fn a_pod_is_routable_only_running_ready_and_not_terminating() {
        let base = Spec {
            name: 0,
            uid: 0,
            ip: 2,
            running: true,
            ready: true,
            deleting: false,
            annotated_port: None,
        };
        let ep = pod_endpoint(&pod(&base), &config()).unwrap();
        // The container port named `http` beats --k8s-port.
        assert_eq!(ep.url.to_string(), "http://127.0.0.2:8080/");
        assert!(ep.id.as_str().starts_with("vllm-0."), "{}", ep.id.as_str());
        assert_eq!(ep.labels["model"], "m");
        // The annotation beats the named port; --k8s-port is the last resort.
        let annotated = Spec {
            annotated_port: Some(9000),
            ..base.clone()
        };
        assert_eq!(
            pod_endpoint(&pod(&annotated), &config())
                .unwrap()
                .url
                .port_u16(),
            Some(9000)
        );
        let unnamed = K8sConfig {
            port_name: "other".into(),
            port: 8001,
            ..config()
        };
        assert_eq!(
            pod_endpoint(&pod(&base), &unnamed).unwrap().url.port_u16(),
            Some(8001)
        );
        for not in [
            Spec {
                running: false,
                ..base.clone()
            },
            Spec {
                ready: false,
                ..base.clone()
            },
            Spec {
                deleting: true,
                ..base.clone()
            },
        ] {
            assert!(pod_endpoint(&pod(&not), &config()).is_none(), "{not:?}");
        }
        let mut no_ip = pod(&base);
        no_ip.status.as_mut().unwrap().pod_ip = None;
        assert!(pod_endpoint(&no_ip, &config()).is_none());
        // The id survives a router restart (same pod) and changes for a new pod.
        assert_eq!(pod_endpoint(&pod(&base), &config()).unwrap().id, ep.id);
        let again = Spec { uid: 1, ..base };
        assert_ne!(pod_endpoint(&pod(&again), &config()).unwrap().id, ep.id);
    }

    #[test]
    fn slices_list_ready_endpoints_at_the_named_port() {
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            metadata: ObjectMeta {
                name: Some("vllm-abcde".into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            ports: Some(vec![
                EndpointPort {
                    name: Some("metrics".into()),
                    port: Some(9090),
                    ..EndpointPort::default()
                },
                EndpointPort {
                    name: Some("http".into()),
                    port: Some(8000),
                    ..EndpointPort::default()
                },
            ]),
            endpoints: vec![
                SliceEndpoint {
                    addresses: vec!["127.0.0.2".into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..EndpointConditions::default()
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some("vllm-0".into()),
                        uid: Some("0123456789".into()),
                        ..ObjectReference::default()
                    }),
                    ..SliceEndpoint::default()
                },
                // Unset readiness means ready.
                SliceEndpoint {
                    addresses: vec!["127.0.0.3".into()],
                    ..SliceEndpoint::default()
                },
                SliceEndpoint {
                    addresses: vec!["127.0.0.4".into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(false),
                        ..EndpointConditions::default()
                    }),
                    ..SliceEndpoint::default()
                },
                SliceEndpoint {
                    addresses: vec!["127.0.0.5".into()],
                    conditions: Some(EndpointConditions {
                        terminating: Some(true),
                        ..EndpointConditions::default()
                    }),
                    ..SliceEndpoint::default()
                },
            ],
        };
        let eps = slice_endpoints(&slice, &config());
        let urls: Vec<String> = eps.iter().map(|e| e.url.to_string()).collect();
        assert_eq!(urls, ["http://127.0.0.2:8000/", "http://127.0.0.3:8000/"]);
        assert_eq!(eps[0].id.as_str(), "vllm-0.01234567");
        let mut map = SliceMap::new(config());
        assert_eq!(map.on_event(Event::Init), None);
        assert_eq!(map.on_event(Event::InitApply(slice.clone())), None);
        let Some(Update::Reset(all)) = map.on_event(Event::InitDone) else {
            panic!()
        };
        assert_eq!(all.len(), 2);
        assert_eq!(map.on_event(Event::Apply(slice.clone())), None, "unchanged");
        assert_eq!(
            map.on_event(Event::Delete(slice)),
            Some(Update::Reset(vec![]))
        );
    }

    /// One step of a watcher: a (re-)list, or one event.
    #[derive(Debug, Clone)]
    enum Step {
        List(Vec<Spec>),
        Apply(Spec),
        Delete(Spec),
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            0..4usize,
            0..2usize,
            2..6u8,
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.2),
            prop::option::of(9000..9002u16),
        )
            .prop_map(
                |(name, uid, ip, running, ready, deleting, annotated_port)| Spec {
                    name,
                    uid,
                    ip,
                    running,
                    ready,
                    deleting,
                    annotated_port,
                },
            )
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => prop::collection::vec(spec(), 0..5).prop_map(Step::List),
            4 => spec().prop_map(Step::Apply),
            2 => spec().prop_map(Step::Delete),
        ]
    }

    proptest! {
        /// Any watcher event sequence ends in exactly the routable pods of the last
        /// list plus the later events, applied through the router's own EndpointSet.
        #[test]
        fn events_end_in_the_final_state(steps in prop::collection::vec(step(), 1..40)) {
            let mut map = PodMap::new(config());
            let mut set = EndpointSet::default();
            // What the apiserver holds, by pod name (a re-list replaces it).
            let mut world: BTreeMap<usize, Spec> = BTreeMap::new();
            for step in steps {
                let mut events = Vec::new();
                match step {
                    Step::List(pods) => {
                        world.clear();
                        events.push(Event::Init);
                        for p in pods {
                            world.insert(p.name, p);
                        }
                        events.extend(world.values().map(|p| Event::InitApply(pod(p))));
                        events.push(Event::InitDone);
                    }
                    Step::Apply(p) => {
                        world.insert(p.name, p.clone());
                        events.push(Event::Apply(pod(&p)));
                    }
                    Step::Delete(p) => {
                        // Deletes name the object as last seen.
                        let Some(last) = world.remove(&p.name) else { continue };
                        events.push(Event::Delete(pod(&last)));
                    }
                }
                for e in events {
                    if let Some(update) = map.on_event(e) {
                        set.apply(update);
                    }
                }
                let want: BTreeSet<(String, String)> = world
                    .values()
                    .filter_map(|p| pod_endpoint(&pod(p), &config()))
                    .map(|e| (e.id.as_str().to_owned(), e.url.to_string()))
                    .collect();
                let have: BTreeSet<(String, String)> = set
                    .iter()
                    .map(|e| (e.id.as_str().to_owned(), e.url.to_string()))
                    .collect();
                prop_assert_eq!(&have, &want);
                let mapped: BTreeSet<(String, String)> = map
                    .endpoints()
                    .map(|e| (e.id.as_str().to_owned(), e.url.to_string()))
                    .collect();
                prop_assert_eq!(mapped, want);
            }
        }
    }
}
