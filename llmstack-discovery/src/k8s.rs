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

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Api, Client};
use llmstack_core::Update;
use tokio::sync::mpsc;

use crate::{K8sConfig, K8sMode, UpdateStream};

mod listed;
mod pods;
mod slices;

pub use pods::{PodMap, pod_endpoint};
pub use slices::{SliceMap, slice_endpoints};

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

/// The API client `config` asks for: its `kubeconfig` file when set, else from the
/// environment (in a pod, its ServiceAccount; elsewhere `KUBECONFIG` or
/// `~/.kube/config`, as kube's `Client::try_default`).
///
/// Fails with kube's error: the file cannot be read or used, or no configuration is
/// found.
pub async fn client(config: &K8sConfig) -> Result<Client, ClientError> {
    match &config.kubeconfig {
        Some(path) => {
            let at = |source| ClientError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(at)?;
            let options = kube::config::KubeConfigOptions::default();
            let cfg = kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(at)?;
            Client::try_from(cfg).map_err(ClientError::Client)
        }
        None => Client::try_default().await.map_err(ClientError::Client),
    }
}

/// Why [`client`] could not build an API client.
#[derive(Debug)]
pub enum ClientError {
    /// The kubeconfig file given could not be read or used.
    Kubeconfig {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: kube::config::KubeconfigError,
    },
    /// No usable configuration (in-cluster or kubeconfig), or the client failed.
    Client(kube::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kubeconfig { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Client(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Kubeconfig { source, .. } => Some(source),
            Self::Client(e) => Some(e),
        }
    }
}

#[cfg(test)]
mod tests;
