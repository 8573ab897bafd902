//! Discovery settings.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which discovery source to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscoveryKind {
    /// A fixed list of URLs (`--static-backends`).
    #[default]
    Static,
    /// A DNS name's A/AAAA or SRV records, re-resolved at their TTL (`--dns-name`).
    Dns,
    /// Kubernetes Pods or EndpointSlices (production-stack's `k8s`; build feature
    /// `kube`).
    K8s,
}

// === impl DiscoveryKind ===

impl DiscoveryKind {
    /// Parses a `--service-discovery` value: `static`, `dns` or `k8s`.
    pub fn parse(s: &str) -> Result<Self, llmstack_core::SettingError> {
        match s {
            "static" => Ok(Self::Static),
            "dns" => Ok(Self::Dns),
            "k8s" => Ok(Self::K8s),
            "external-only" => Err(llmstack_core::SettingError {
                setting: "service-discovery",
                message: "external providers are not supported (production-stack's \
                          external-only): list OpenAI-compatible servers with --service-discovery \
                          static --static-backends"
                    .into(),
            }),
            other => Err(llmstack_core::SettingError {
                setting: "service-discovery",
                message: format!("unknown discovery `{other}` (expected static, dns or k8s)"),
            }),
        }
    }
}

/// Settings of the discovery crate, validated with [`DiscoveryConfig::validate`].
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The source.
    pub service_discovery: DiscoveryKind,
    /// Engine base URLs (`http://host:port[/prefix]`); a URL may repeat to serve several
    /// models.
    pub static_backends: Vec<String>,
    /// Model per backend, parallel to `static_backends`. Optional: without it, models
    /// are learned from each engine's `/v1/models`.
    pub static_models: Vec<String>,
    /// Label per backend, parallel to `static_backends` (stored as the `model` label).
    pub static_model_labels: Vec<String>,
    /// The file the static list was read from, re-read when it changes (the server's
    /// `--config`); `None`: the list is fixed.
    #[serde(skip)]
    pub static_file: Option<PathBuf>,
    /// DNS discovery.
    pub dns: DnsConfig,
    /// Kubernetes discovery.
    pub k8s: K8sConfig,
    /// The engine prober.
    pub probe: ProbeConfig,
}

/// Settings of DNS discovery ([`DiscoveryKind::Dns`]).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// The name to resolve. A name starting with `_` (`_http._tcp.vllm.ns.svc`) is
    /// looked up as SRV records, which carry each engine's port; any other name as A
    /// and AAAA records, with [`DnsConfig::port`]. A headless Kubernetes Service's name
    /// resolves to its ready pods' IPs.
    pub name: String,
    /// The engines' port for A/AAAA answers (default 8000).
    pub port: u16,
    /// Name servers to ask (`ip:port`); empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Shortest time between two resolutions, whatever the records' TTL (default 1 s).
    #[serde(with = "secs")]
    pub min_refresh: Duration,
    /// Longest time between two resolutions, whatever the records' TTL (default 30 s).
    #[serde(with = "secs")]
    pub max_refresh: Duration,
}

/// Where Kubernetes discovery reads engines from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum K8sMode {
    /// Pods matching the label selector, at their pod IP (production-stack's
    /// `pod-ip`).
    #[default]
    Pods,
    /// `discovery.k8s.io/v1` EndpointSlices of a Service (selected by the label
    /// selector, e.g. `kubernetes.io/service-name=vllm`), at each ready endpoint's
    /// address.
    EndpointSlices,
}

/// Settings of Kubernetes discovery ([`DiscoveryKind::K8s`]).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct K8sConfig {
    /// Namespace watched (`--k8s-namespace`, default `default`).
    pub namespace: String,
    /// Label selector of the engine Pods or EndpointSlices (`--k8s-label-selector`).
    pub label_selector: String,
    /// Pods or EndpointSlices.
    pub mode: K8sMode,
    /// The engines' port (`--k8s-port`, default 8000), used when neither the
    /// [`K8sConfig::port_annotation`] nor a container port named
    /// [`K8sConfig::port_name`] gives one.
    pub port: u16,
    /// A container port (or EndpointSlice port) of this name is the engine's port.
    pub port_name: String,
    /// A Pod annotation holding the engine's port; beats the named port.
    pub port_annotation: String,
    /// A kubeconfig file to use (`--k8s-kubeconfig`); `None`: the pod's ServiceAccount
    /// in a cluster, else `KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Server-side timeout of one watch request (`--k8s-watcher-timeout-seconds`; 0:
    /// the client's default of 290 s). After a disconnect the watcher resumes from the last resource version, or re-lists when
    /// that version is gone (410).
    #[serde(with = "secs")]
    pub watch_timeout: Duration,
}

/// Settings of the engine prober.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Time between two probes of one endpoint.
    #[serde(with = "secs")]
    pub interval: Duration,
    /// Deadline of one probe (connect and answer).
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Bearer token for the engines' own API (vLLM `--api-key`; env `VLLM_API_KEY`).
    pub api_key: Option<String>,
    /// Failed probes in a row that take a ready engine out of routing (default 2).
    pub failure_threshold: u32,
    /// Successful probes in a row that bring an unready engine back (default 1).
    pub success_threshold: u32,
    /// Also ask `GET /is_sleeping`: a sleeping engine (vLLM sleep mode) gets no
    /// requests until it wakes up. Needs engines started with `VLLM_SERVER_DEV_MODE=1`
    /// (else the route answers 404, which counts as awake).
    pub is_sleeping: bool,
}

/// A setting that cannot work, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

// === impl DiscoveryConfig ===

impl DiscoveryConfig {
    /// Checks the settings: a static source needs at least one backend, every backend
    /// must be an absolute `http` URL, and the parallel lists must be empty or as long
    /// as the backend list; DNS needs a name and sane refresh bounds; Kubernetes needs
    /// the `kube` build feature and a valid port.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.service_discovery {
            DiscoveryKind::K8s => return self.k8s.validate().and_then(|()| self.probe.validate()),
            DiscoveryKind::Dns => return self.dns.validate().and_then(|()| self.probe.validate()),
            DiscoveryKind::Static => {}
        }
        if self.static_backends.is_empty() {
            return Err(ConfigError(
                "static discovery needs --static-backends (a comma-separated list of engine URLs)"
                    .into(),
            ));
        }
        for url in &self.static_backends {
            crate::static_list::parse_url(url)?;
        }
        for (name, list) in [
            ("--static-models", &self.static_models),
            ("--static-model-labels", &self.static_model_labels),
        ] {
            if !list.is_empty() && list.len() != self.static_backends.len() {
                return Err(ConfigError(format!(
                    "{name} has {} entries but --static-backends has {}; they are parallel lists",
                    list.len(),
                    self.static_backends.len()
                )));
            }
        }
        self.probe.validate()
    }
}

// === impl ProbeConfig ===

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            api_key: None,
            failure_threshold: 2,
            success_threshold: 1,
            is_sleeping: false,
        }
    }
}

impl ProbeConfig {
    /// Checks that the interval and timeout are positive and at most a day, and the
    /// thresholds between 1 and 100.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let day = Duration::from_secs(86_400);
        for (name, d) in [("interval", self.interval), ("timeout", self.timeout)] {
            if d.is_zero() || d > day {
                return Err(ConfigError(format!(
                    "the probe {name} must be greater than zero and at most a day, got {d:?}"
                )));
            }
        }
        for (name, n) in [
            ("failure", self.failure_threshold),
            ("success", self.success_threshold),
        ] {
            if !(1..=100).contains(&n) {
                return Err(ConfigError(format!(
                    "the probe {name} threshold must be between 1 and 100, got {n}"
                )));
            }
        }
        Ok(())
    }
}

// === impl DnsConfig ===

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            port: 8000,
            nameservers: Vec::new(),
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(30),
        }
    }
}

impl DnsConfig {
    /// Checks that there is a name, a non-zero port and `0 < min_refresh ≤
    /// max_refresh ≤ a day`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = self.name.trim();
        if name.is_empty() || name.contains(['/', ':', ' ']) {
            return Err(ConfigError(format!(
                "DNS discovery needs --dns-name, a host name like vllm.default.svc.cluster.local or _http._tcp.vllm (got `{name}`)"
            )));
        }
        if self.port == 0 {
            return Err(ConfigError("--dns-port must not be 0".into()));
        }
        let day = Duration::from_secs(86_400);
        if self.min_refresh.is_zero()
            || self.min_refresh > self.max_refresh
            || self.max_refresh > day
        {
            return Err(ConfigError(format!(
                "DNS refresh bounds need 0 < min ({:?}) <= max ({:?}) <= a day",
                self.min_refresh, self.max_refresh
            )));
        }
        Ok(())
    }
}

// === impl K8sConfig ===

impl Default for K8sConfig {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            label_selector: String::new(),
            mode: K8sMode::Pods,
            port: 8000,
            port_name: "http".into(),
            port_annotation: "llmstack.io/port".into(),
            kubeconfig: None,
            watch_timeout: Duration::ZERO,
        }
    }
}

impl K8sConfig {
    /// Checks the build has the `kube` feature, the namespace is set, the port is not 0
    /// and the watch timeout is under an hour.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !cfg!(feature = "kube") {
            return Err(ConfigError(
                "--service-discovery k8s needs a build with the `kube` feature (cargo build --features kube)".into(),
            ));
        }
        if self.namespace.trim().is_empty() {
            return Err(ConfigError("--k8s-namespace must not be empty".into()));
        }
        if self.port == 0 {
            return Err(ConfigError("--k8s-port must not be 0".into()));
        }
        if self.watch_timeout > Duration::from_secs(3600) {
            return Err(ConfigError(format!(
                "--k8s-watcher-timeout-seconds must be at most 3600, got {:?}",
                self.watch_timeout
            )));
        }
        Ok(())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Durations as (fractional) seconds in config files.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
