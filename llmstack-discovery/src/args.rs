//! Discovery's settings as given: flags, environment variables or file keys, with
//! production-stack's names.

use std::path::PathBuf;

use llmstack_core::SettingErrors;
use llmstack_core::settings::{comma_list, trimmed};

use crate::{DiscoveryConfig, DiscoveryKind, DnsConfig, K8sConfig, K8sMode, ProbeConfig};

/// Discovery and prober settings as given, every one optional so that flags, their
/// environment variables (`LLMSTACK_<FLAG>`) and a file can be layered; turned into a
/// [`DiscoveryConfig`] by [`DiscoveryArgs::resolve`]. With the `clap` feature it is a
/// `clap::Args` to flatten into a command line; file keys are the field names.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct DiscoveryArgs {
    /// How engines are found: `static` (--static-backends, re-read from --config when
    /// the file changes), `dns` (--dns-name) or `k8s` (build feature `kube`)
    /// [default: static].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_SERVICE_DISCOVERY", value_parser = DiscoveryKind::parse))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_discovery: Option<DiscoveryKind>,
    /// dns: the name to resolve; `_service._proto.name` is an SRV lookup (ports from
    /// the records), anything else A/AAAA (e.g. a headless Service's
    /// `vllm.default.svc.cluster.local`).
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_DNS_NAME"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// dns: the engines' port for A/AAAA answers [default: 8000].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_DNS_PORT"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_port: Option<u16>,
    /// dns: comma-separated name servers (`ip:port`) [default: the system's].
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_DNS_NAMESERVERS", value_delimiter = ',')
    )]
    #[serde(
        deserialize_with = "comma_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub dns_nameservers: Option<Vec<String>>,
    /// dns: shortest seconds between two resolutions, whatever the TTL [default: 1].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_DNS_MIN_REFRESH"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_min_refresh: Option<f64>,
    /// dns: longest seconds between two resolutions, whatever the TTL [default: 30].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_DNS_MAX_REFRESH"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_max_refresh: Option<f64>,
    /// k8s: namespace watched [default: default].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_K8S_NAMESPACE"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_namespace: Option<String>,
    /// k8s: label selector of the engine Pods (or EndpointSlices), e.g. `app=vllm`.
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_K8S_LABEL_SELECTOR"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_label_selector: Option<String>,
    /// k8s: the engines' port when no `llmstack.io/port` annotation or container port
    /// named `http` gives it [default: 8000].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_K8S_PORT"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_port: Option<u16>,
    /// k8s: name of the container (or EndpointSlice) port that is the engine's
    /// [default: http].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_K8S_PORT_NAME"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_port_name: Option<String>,
    /// k8s: Pod annotation holding the engine's port [default: llmstack.io/port].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_K8S_PORT_ANNOTATION"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_port_annotation: Option<String>,
    /// k8s: `pod-ip` (watch Pods, route to pod IPs) or `endpoint-slice` (watch a
    /// Service's EndpointSlices; select them with
    /// `--k8s-label-selector kubernetes.io/service-name=NAME`) [default: pod-ip].
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_K8S_SERVICE_DISCOVERY_TYPE")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_service_discovery_type: Option<String>,
    /// k8s: a kubeconfig file [default: the pod's ServiceAccount, else KUBECONFIG].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_K8S_KUBECONFIG"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_kubeconfig: Option<PathBuf>,
    /// k8s: server-side timeout of one watch request in seconds; the watch resumes from
    /// its last resource version after each [default: 0, the client's 290 s].
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_K8S_WATCHER_TIMEOUT_SECONDS")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_watcher_timeout_seconds: Option<u64>,
    /// Comma-separated engine base URLs (repeat a URL for several models).
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_STATIC_BACKENDS", value_delimiter = ',')
    )]
    #[serde(
        deserialize_with = "comma_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub static_backends: Option<Vec<String>>,
    /// Comma-separated model per backend (parallel to --static-backends); optional:
    /// engines are asked for their models.
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_STATIC_MODELS", value_delimiter = ',')
    )]
    #[serde(
        deserialize_with = "comma_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub static_models: Option<Vec<String>>,
    /// Comma-separated label per backend (parallel to --static-backends).
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_STATIC_MODEL_LABELS", value_delimiter = ',')
    )]
    #[serde(
        deserialize_with = "comma_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub static_model_labels: Option<Vec<String>>,
    /// Seconds between two health probes (GET /health and /v1/models) of every engine
    /// [default: 5].
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_STATIC_BACKEND_HEALTH_CHECK_INTERVAL")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_backend_health_check_interval: Option<f64>,
    /// Seconds one engine poll may take [default: 2]. (production-stack's
    /// `--static-backend-health-check-timeout-seconds` is the same setting.)
    #[cfg_attr(
        feature = "clap",
        arg(
            long,
            env = "LLMSTACK_BACKEND_HEALTH_CHECK_TIMEOUT_SECONDS",
            alias = "static-backend-health-check-timeout-seconds"
        )
    )]
    #[serde(
        skip_serializing_if = "Option::is_none",
        alias = "static_backend_health_check_timeout_seconds"
    )]
    pub backend_health_check_timeout_seconds: Option<f64>,
    /// Failed health probes in a row that take a ready engine out of routing
    /// [default: 2].
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_HEALTH_CHECK_FAILURE_THRESHOLD")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_failure_threshold: Option<u32>,
    /// Successful health probes in a row that bring an engine back [default: 1].
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_HEALTH_CHECK_SUCCESS_THRESHOLD")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_success_threshold: Option<u32>,
    /// Also probe `GET /is_sleeping` (vLLM sleep mode, `VLLM_SERVER_DEV_MODE=1`): a
    /// sleeping engine gets no requests [default: false].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_CHECK_IS_SLEEPING"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_is_sleeping: Option<bool>,
}

// === impl DiscoveryArgs ===

impl DiscoveryArgs {
    /// The discovery config these settings give (defaults for what is not given),
    /// recording every invalid setting in `errors`: numbers out of range, name servers
    /// that are not `ip:port`, an unknown Kubernetes mode, and whatever
    /// [`DiscoveryConfig::validate`] refuses. The engine API key is not a discovery
    /// setting: set [`ProbeConfig::api_key`] on the result.
    pub fn resolve(self, errors: &mut SettingErrors) -> DiscoveryConfig {
        let probe_defaults = ProbeConfig::default();
        let probe = ProbeConfig {
            interval: errors.seconds(
                "static-backend-health-check-interval",
                self.static_backend_health_check_interval,
                probe_defaults.interval,
            ),
            timeout: errors.seconds(
                "backend-health-check-timeout-seconds",
                self.backend_health_check_timeout_seconds,
                probe_defaults.timeout,
            ),
            api_key: None,
            failure_threshold: self
                .health_check_failure_threshold
                .unwrap_or(probe_defaults.failure_threshold),
            success_threshold: self
                .health_check_success_threshold
                .unwrap_or(probe_defaults.success_threshold),
            is_sleeping: self.check_is_sleeping.unwrap_or(probe_defaults.is_sleeping),
        };
        let dns_defaults = DnsConfig::default();
        let mut nameservers = Vec::new();
        for ns in trimmed(self.dns_nameservers) {
            match ns.parse() {
                Ok(addr) => nameservers.push(addr),
                Err(_) => errors.push(
                    "dns-nameservers",
                    format!("--dns-nameservers entry `{ns}` is not `ip:port` (e.g. 10.96.0.10:53)"),
                ),
            }
        }
        let dns = DnsConfig {
            name: self.dns_name.unwrap_or_default().trim().to_owned(),
            port: self.dns_port.unwrap_or(dns_defaults.port),
            nameservers,
            min_refresh: errors.seconds(
                "dns-min-refresh",
                self.dns_min_refresh,
                dns_defaults.min_refresh,
            ),
            max_refresh: errors.seconds(
                "dns-max-refresh",
                self.dns_max_refresh,
                dns_defaults.max_refresh,
            ),
        };
        let k8s_defaults = K8sConfig::default();
        let mode = match self.k8s_service_discovery_type.as_deref().map(str::trim) {
            None | Some("pod-ip" | "pods") => K8sMode::Pods,
            Some("endpoint-slice" | "endpointslice" | "endpoint-slices") => K8sMode::EndpointSlices,
            Some("service-name") => {
                errors.push(
                    "k8s-service-discovery-type",
                    "--k8s-service-discovery-type service-name is not supported: use endpoint-slice (the Service's ready endpoints) or --service-discovery dns with the Service's name",
                );
                K8sMode::Pods
            }
            Some(other) => {
                errors.push(
                    "k8s-service-discovery-type",
                    format!(
                        "--k8s-service-discovery-type `{other}` is not pod-ip or endpoint-slice"
                    ),
                );
                K8sMode::Pods
            }
        };
        let k8s = K8sConfig {
            namespace: self.k8s_namespace.unwrap_or(k8s_defaults.namespace),
            label_selector: self.k8s_label_selector.unwrap_or_default(),
            mode,
            port: self.k8s_port.unwrap_or(k8s_defaults.port),
            port_name: self.k8s_port_name.unwrap_or(k8s_defaults.port_name),
            port_annotation: self
                .k8s_port_annotation
                .unwrap_or(k8s_defaults.port_annotation),
            kubeconfig: self.k8s_kubeconfig,
            watch_timeout: std::time::Duration::from_secs(
                self.k8s_watcher_timeout_seconds.unwrap_or(0),
            ),
        };
        let config = DiscoveryConfig {
            service_discovery: self.service_discovery.unwrap_or_default(),
            static_backends: trimmed(self.static_backends),
            static_models: trimmed(self.static_models),
            static_model_labels: trimmed(self.static_model_labels),
            static_file: None,
            dns,
            k8s,
            probe,
        };
        if let Err(e) = config.validate() {
            errors.push("service-discovery", e.0);
        }
        config
    }

    /// Whether any part of the static list (backends, models, labels) is given.
    pub fn has_static_list(&self) -> bool {
        self.static_backends.is_some()
            || self.static_models.is_some()
            || self.static_model_labels.is_some()
    }
}
