//! Finds vLLM engines and keeps track of what each serves and whether it is up.
//!
//! A discovery source is a [`Discover`](llmstack_core::Discover) stream of endpoint
//! updates: [`static_discovery`] yields the configured list once,
//! [`reloading_static_discovery`] re-reads a file, [`dns_discovery`] follows a name's
//! records, `k8s::k8s_discovery` (feature `kube`) watches Pods or EndpointSlices.
//! [`probe`] wraps any source: it asks every endpoint for `GET /health` (and
//! `/is_sleeping`) and `GET /v1/models` on an interval, learns its models (LoRA adapters
//! and their parents included), marks it ready or unready, and passes the enriched
//! updates on. [`publish`] applies them to an [`EndpointSet`](llmstack_core::EndpointSet)
//! behind a `watch` channel, which routing reads. [`DiscoveryArgs`] is the settings as
//! flags, environment or file keys (a `clap::Args` with the `clap` feature). Details:
//! docs/discovery.md.

mod args;
mod config;
mod dns;
#[cfg(feature = "kube")]
pub mod k8s;
mod prober;
mod publish;
mod static_list;
mod stream;

pub use args::DiscoveryArgs;
pub use config::{
    ConfigError, DiscoveryConfig, DiscoveryKind, DnsConfig, K8sConfig, K8sMode, ProbeConfig,
};
pub use dns::dns_discovery;
pub use prober::probe;
pub use publish::publish;
pub use static_list::{reloading_static_discovery, static_discovery, static_endpoints};
pub use stream::UpdateStream;

/// The base URL of an engine at `addr`: `http://ip:port` (IPv6 in brackets).
pub(crate) fn url_at(addr: std::net::SocketAddr) -> Option<http::Uri> {
    // Always parses: `ip:port` is a valid authority.
    format!("http://{addr}").parse().ok()
}
