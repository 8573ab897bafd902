//! The discovery source the settings describe, and its replacement while serving
//! (production-stack's dynamic configuration, `dynamic.rs`).

use std::time::Duration;

use llmstack_core::{BoxError, Discover, EndpointSet};
use llmstack_discovery::{
    DiscoveryConfig, DiscoveryKind, dns_discovery, probe, publish, reloading_static_discovery,
    static_discovery, static_endpoints,
};
use tokio::sync::watch;

/// How often a static list's `--config` file is checked for changes.
const STATIC_FILE_POLL: Duration = Duration::from_secs(1);

/// A discovery source of any kind.
pub(crate) type Source = Box<dyn Discover>;

/// What the dynamic configuration needs to replace the discovery source while serving:
/// the endpoint set's sender, the server's reaction to a new set, the running task.
pub(crate) struct Rediscover {
    /// The endpoint set's sender (a clone of the running source's).
    pub(crate) set_tx: watch::Sender<EndpointSet>,
    /// Makes the server's reaction to a new set, for each new source.
    pub(crate) on_change: Box<dyn Fn() -> OnChange + Send + Sync>,
    /// The running source's publish task.
    pub(crate) running: tokio::task::AbortHandle,
}

/// The server's reaction to a new endpoint set (frees what gone engines held).
pub(crate) type OnChange = Box<dyn FnMut(&EndpointSet) + Send>;

impl Rediscover {
    /// Starts discovery as `config` says (probed as it says) and stops the running one
    /// once the new one is up; the endpoint set stays as it is until the new source's
    /// first answer replaces it. On error, the running one is kept.
    pub(crate) async fn restart(&mut self, config: &DiscoveryConfig) -> Result<(), String> {
        config.validate().map_err(|e| e.to_string())?;
        let source = probe(
            source(config).await.map_err(|e| e.to_string())?,
            config.probe.clone(),
        );
        let task = tokio::spawn(publish(
            source,
            self.set_tx.clone(),
            (self.on_change)(),
            None,
        ));
        let old = std::mem::replace(&mut self.running, task.abort_handle());
        old.abort();
        Ok(())
    }
}

impl Drop for Rediscover {
    /// The discovery task started last stops with the watcher (the server's `Drop`).
    fn drop(&mut self) {
        self.running.abort();
    }
}

/// The discovery source `config` describes (not yet probed); the error is the
/// configuration's (a bad static list, no Kubernetes API access).
pub(crate) async fn source(config: &DiscoveryConfig) -> Result<Source, BoxError> {
    Ok(match config.service_discovery {
        DiscoveryKind::Static => {
            let endpoints = static_endpoints(config)?;
            match &config.static_file {
                Some(path) => Box::new(reloading_static_discovery(
                    path.clone(),
                    STATIC_FILE_POLL,
                    endpoints,
                    crate::config::static_endpoints_in,
                )),
                None => Box::new(static_discovery(endpoints)),
            }
        }
        DiscoveryKind::Dns => Box::new(dns_discovery(config.dns.clone())),
        DiscoveryKind::K8s => k8s_source(config).await?,
    })
}

#[cfg(feature = "kube")]
async fn k8s_source(config: &DiscoveryConfig) -> Result<Source, BoxError> {
    let client = llmstack_discovery::k8s::client(&config.k8s)
        .await
        .map_err(|e| {
            format!("no Kubernetes API access (in-cluster ServiceAccount or KUBECONFIG): {e}")
        })?;
    Ok(Box::new(llmstack_discovery::k8s::k8s_discovery(
        client,
        config.k8s.clone(),
    )))
}

#[cfg(not(feature = "kube"))]
async fn k8s_source(_: &DiscoveryConfig) -> Result<Source, BoxError> {
    Err(
        "--service-discovery k8s needs a build with the `kube` feature (cargo build --features kube)"
            .into(),
    )
}
