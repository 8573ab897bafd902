//! Settings: command-line flags (production-stack's names), environment variables and
//! a YAML file, merged into one typed [`ServerConfig`] and validated at start.
//!
//! Precedence: a flag beats its environment variable (`LLMSTACK_<FLAG>`), which beats
//! the `--config` file, which beats the defaults. The file uses the flag names with
//! underscores (`static_backends: [...]`, `routing_logic: roundrobin`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use llmstack_discovery::{
    DiscoveryConfig, DiscoveryKind, DnsConfig, K8sConfig, K8sMode, ProbeConfig,
};
use llmstack_metrics::ScrapeConfig;
use llmstack_proxy::ProxyConfig;
use llmstack_routing::{RoutingConfig, RoutingLogic};

/// Router settings as given: every field optional, so a flag, its environment variable
/// and the config file can be layered. Turned into a [`ServerConfig`] by
/// [`Settings::resolve`].
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long, env = "LLMSTACK_HOST")]
    pub host: Option<IpAddr>,
    /// Port to listen on [default: 8001].
    #[arg(long, env = "LLMSTACK_PORT")]
    pub port: Option<u16>,
    /// Port of a separate admin listener serving /metrics, /health and /ready on the same
    /// address [default: none].
    #[arg(long, env = "LLMSTACK_ADMIN_PORT")]
    pub admin_port: Option<u16>,
    /// Whether /metrics is also served on the main port, as production-stack does
    /// [default: true].
    #[arg(long, env = "LLMSTACK_MAIN_PORT_METRICS")]
    pub main_port_metrics: Option<bool>,
    /// How engines are found: `static` (--static-backends, re-read from --config when
    /// the file changes), `dns` (--dns-name) or `k8s` (build feature `kube`)
    /// [default: static].
    #[arg(long, env = "LLMSTACK_SERVICE_DISCOVERY", value_parser = parse_discovery)]
    pub service_discovery: Option<DiscoveryKind>,
    /// dns: the name to resolve; `_service._proto.name` is an SRV lookup (ports from
    /// the records), anything else A/AAAA (e.g. a headless Service's
    /// `vllm.default.svc.cluster.local`).
    #[arg(long, env = "LLMSTACK_DNS_NAME")]
    pub dns_name: Option<String>,
    /// dns: the engines' port for A/AAAA answers [default: 8000].
    #[arg(long, env = "LLMSTACK_DNS_PORT")]
    pub dns_port: Option<u16>,
    /// dns: comma-separated name servers (`ip:port`) [default: the system's].
    #[arg(long, env = "LLMSTACK_DNS_NAMESERVERS", value_delimiter = ',')]
    #[serde(deserialize_with = "list")]
    pub dns_nameservers: Option<Vec<String>>,
    /// dns: shortest seconds between two resolutions, whatever the TTL [default: 1].
    #[arg(long, env = "LLMSTACK_DNS_MIN_REFRESH")]
    pub dns_min_refresh: Option<f64>,
    /// dns: longest seconds between two resolutions, whatever the TTL [default: 30].
    #[arg(long, env = "LLMSTACK_DNS_MAX_REFRESH")]
    pub dns_max_refresh: Option<f64>,
    /// k8s: namespace watched [default: default].
    #[arg(long, env = "LLMSTACK_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,
    /// k8s: label selector of the engine Pods (or EndpointSlices), e.g. `app=vllm`.
    #[arg(long, env = "LLMSTACK_K8S_LABEL_SELECTOR")]
    pub k8s_label_selector: Option<String>,
    /// k8s: the engines' port when no `llmstack.io/port` annotation or container port
    /// named `http` gives it [default: 8000].
    #[arg(long, env = "LLMSTACK_K8S_PORT")]
    pub k8s_port: Option<u16>,
    /// k8s: name of the container (or EndpointSlice) port that is the engine's
    /// [default: http].
    #[arg(long, env = "LLMSTACK_K8S_PORT_NAME")]
    pub k8s_port_name: Option<String>,
    /// k8s: Pod annotation holding the engine's port [default: llmstack.io/port].
    #[arg(long, env = "LLMSTACK_K8S_PORT_ANNOTATION")]
    pub k8s_port_annotation: Option<String>,
    /// k8s: `pod-ip` (watch Pods, route to pod IPs) or `endpoint-slice` (watch a
    /// Service's EndpointSlices; select them with
    /// `--k8s-label-selector kubernetes.io/service-name=NAME`) [default: pod-ip].
    #[arg(long, env = "LLMSTACK_K8S_SERVICE_DISCOVERY_TYPE")]
    pub k8s_service_discovery_type: Option<String>,
    /// k8s: a kubeconfig file [default: the pod's ServiceAccount, else KUBECONFIG].
    #[arg(long, env = "LLMSTACK_K8S_KUBECONFIG")]
    pub k8s_kubeconfig: Option<PathBuf>,
    /// k8s: server-side timeout of one watch request in seconds; the watch resumes from
    /// its last resource version after each [default: 0, the client's 290 s].
    #[arg(long, env = "LLMSTACK_K8S_WATCHER_TIMEOUT_SECONDS")]
    pub k8s_watcher_timeout_seconds: Option<u64>,
    /// Comma-separated engine base URLs (repeat a URL for several models).
    #[arg(long, env = "LLMSTACK_STATIC_BACKENDS", value_delimiter = ',')]
    #[serde(deserialize_with = "list")]
    pub static_backends: Option<Vec<String>>,
    /// Comma-separated model per backend (parallel to --static-backends); optional:
    /// engines are asked for their models.
    #[arg(long, env = "LLMSTACK_STATIC_MODELS", value_delimiter = ',')]
    #[serde(deserialize_with = "list")]
    pub static_models: Option<Vec<String>>,
    /// Comma-separated label per backend (parallel to --static-backends).
    #[arg(long, env = "LLMSTACK_STATIC_MODEL_LABELS", value_delimiter = ',')]
    #[serde(deserialize_with = "list")]
    pub static_model_labels: Option<Vec<String>>,
    /// Comma-separated `alias:model` pairs; requests for an alias go to the model.
    #[arg(long, env = "LLMSTACK_STATIC_ALIASES", value_delimiter = ',')]
    #[serde(deserialize_with = "list")]
    pub static_aliases: Option<Vec<String>>,
    /// Routing policy: roundrobin, random, leastloaded (alias loadaware), power_of_two,
    /// session, prefixaware [default: roundrobin].
    #[arg(long, env = "LLMSTACK_ROUTING_LOGIC", value_parser = RoutingLogic::parse)]
    pub routing_logic: Option<RoutingLogic>,
    /// Header (or top-level body field) carrying the session id, e.g. `x-user-id`;
    /// without one, `session` keys on the OpenAI `user` field.
    #[arg(long, env = "LLMSTACK_SESSION_KEY")]
    pub session_key: Option<String>,
    /// prefixaware: cached matches shorter than this many prompt characters count as
    /// none [default: 0].
    #[arg(long, env = "LLMSTACK_PREFIX_MIN_MATCH_LENGTH")]
    pub prefix_min_match_length: Option<usize>,
    /// prefixaware: bytes of prompt per indexed chunk [default: 256].
    #[arg(long, env = "LLMSTACK_PREFIX_CHUNK_SIZE")]
    pub prefix_chunk_size: Option<usize>,
    /// prefixaware: prefix-cache tokens assumed per engine until its /metrics reports
    /// num_gpu_blocks × block_size [default: 262144].
    #[arg(long, env = "LLMSTACK_PREFIX_CAPACITY_TOKENS")]
    pub prefix_capacity_tokens: Option<u64>,
    /// Seconds between two scrapes of every engine's /metrics [default: 1; sub-second
    /// values are fine].
    #[arg(long, env = "LLMSTACK_ENGINE_STATS_INTERVAL")]
    pub engine_stats_interval: Option<f64>,
    /// Seconds between two health probes (GET /health and /v1/models) of every engine
    /// [default: 5].
    #[arg(long, env = "LLMSTACK_STATIC_BACKEND_HEALTH_CHECK_INTERVAL")]
    pub static_backend_health_check_interval: Option<f64>,
    /// Seconds one engine poll may take [default: 2].
    #[arg(long, env = "LLMSTACK_BACKEND_HEALTH_CHECK_TIMEOUT_SECONDS")]
    pub backend_health_check_timeout_seconds: Option<f64>,
    /// Failed health probes in a row that take a ready engine out of routing
    /// [default: 2].
    #[arg(long, env = "LLMSTACK_HEALTH_CHECK_FAILURE_THRESHOLD")]
    pub health_check_failure_threshold: Option<u32>,
    /// Successful health probes in a row that bring an engine back [default: 1].
    #[arg(long, env = "LLMSTACK_HEALTH_CHECK_SUCCESS_THRESHOLD")]
    pub health_check_success_threshold: Option<u32>,
    /// Also probe `GET /is_sleeping` (vLLM sleep mode, `VLLM_SERVER_DEV_MODE=1`): a
    /// sleeping engine gets no requests [default: false].
    #[arg(long, env = "LLMSTACK_CHECK_IS_SLEEPING")]
    pub check_is_sleeping: Option<bool>,
    /// Log level: critical, error, warning, info, debug or trace [default: info].
    #[arg(long, env = "LLMSTACK_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// OTLP/HTTP collector to export request spans to, e.g. `http://collector:4318`
    /// (needs the `otel` build feature).
    #[arg(long, env = "LLMSTACK_OTEL_ENDPOINT")]
    pub otel_endpoint: Option<String>,
    /// Service name on exported spans [default: llmstack-server].
    #[arg(long, env = "LLMSTACK_OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
    /// Log format: `text` or `json` (one JSON object per line) [default: text].
    #[arg(long, env = "LLMSTACK_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Seconds to establish a connection to an engine [default: 5].
    #[arg(long, env = "LLMSTACK_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<f64>,
    /// Seconds to wait for an engine's response head [default: 600].
    #[arg(long, env = "LLMSTACK_FIRST_BYTE_TIMEOUT")]
    pub first_byte_timeout: Option<f64>,
    /// Seconds an engine may stay silent between two chunks of a body [default: 300].
    #[arg(long, env = "LLMSTACK_IDLE_TIMEOUT")]
    pub idle_timeout: Option<f64>,
    /// Other engines to try when one fails before answering [default: 2].
    #[arg(long, env = "LLMSTACK_MAX_INSTANCE_FAILOVER_REROUTE_ATTEMPTS")]
    pub max_instance_failover_reroute_attempts: Option<u32>,
    /// Largest request body accepted, in bytes [default: 33554432].
    #[arg(long, env = "LLMSTACK_MAX_REQUEST_BODY_BYTES")]
    pub max_request_body_bytes: Option<usize>,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT [default: 30].
    #[arg(long, env = "LLMSTACK_SHUTDOWN_GRACE_PERIOD")]
    pub shutdown_grace_period: Option<f64>,
    /// Bearer token the router uses for its own calls to engines (vLLM --api-key).
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    pub engine_api_key: Option<String>,
}

/// The validated settings of the whole router: one section per library crate plus the
/// server's own.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Where to listen.
    pub listen: std::net::SocketAddr,
    /// Where the admin listener (/metrics, /health, /ready) listens, if anywhere.
    pub admin: Option<std::net::SocketAddr>,
    /// Whether /metrics is also served on the main port.
    pub main_port_metrics: bool,
    /// tracing filter directive derived from the log level.
    pub log_filter: String,
    /// Whether logs are JSON lines (else text).
    pub log_json: bool,
    /// OpenTelemetry export, if configured.
    pub otel: Option<OtelConfig>,
    /// Discovery.
    pub discovery: DiscoveryConfig,
    /// Routing.
    pub routing: RoutingConfig,
    /// The forwarder and retries.
    pub proxy: ProxyConfig,
    /// Time in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// The engine stats scraper.
    pub scrape: ScrapeConfig,
}

/// Where request spans are exported (feature `otel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    /// OTLP/HTTP collector base URL.
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
}

// === impl Settings ===

impl Settings {
    /// Reads a YAML settings file.
    pub fn from_file(path: &PathBuf) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        serde_yaml_ng::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// `self`, with every field that `over` sets replaced by `over`'s value.
    #[must_use]
    pub fn overlay(self, over: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            host,
            port,
            admin_port,
            main_port_metrics,
            service_discovery,
            dns_name,
            dns_port,
            dns_nameservers,
            dns_min_refresh,
            dns_max_refresh,
            k8s_namespace,
            k8s_label_selector,
            k8s_port,
            k8s_port_name,
            k8s_port_annotation,
            k8s_service_discovery_type,
            k8s_watcher_timeout_seconds,
            k8s_kubeconfig,
            static_backends,
            static_models,
            static_model_labels,
            static_aliases,
            routing_logic,
            session_key,
            prefix_min_match_length,
            prefix_chunk_size,
            prefix_capacity_tokens,
            engine_stats_interval,
            static_backend_health_check_interval,
            backend_health_check_timeout_seconds,
            health_check_failure_threshold,
            health_check_success_threshold,
            check_is_sleeping,
            log_level,
            log_format,
            otel_endpoint,
            otel_service_name,
            connect_timeout,
            first_byte_timeout,
            idle_timeout,
            max_instance_failover_reroute_attempts,
            max_request_body_bytes,
            shutdown_grace_period,
            engine_api_key
        )
    }

    /// The validated configuration, or every reason it is not valid (one per line).
    pub fn resolve(self) -> Result<ServerConfig, String> {
        let mut errors = Vec::new();
        let secs = |name: &str, v: Option<f64>, default: Duration, errors: &mut Vec<String>| match v
        {
            None => default,
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_SECONDS => Duration::from_secs_f64(s),
            Some(s) => {
                errors.push(format!(
                    "--{name} must be a number of seconds above 0 and at most {MAX_SECONDS} (a year), got {s}"
                ));
                default
            }
        };
        let defaults = ProxyConfig::default();
        let probe_defaults = ProbeConfig::default();
        let proxy = ProxyConfig {
            connect_timeout: secs(
                "connect-timeout",
                self.connect_timeout,
                defaults.connect_timeout,
                &mut errors,
            ),
            first_byte_timeout: secs(
                "first-byte-timeout",
                self.first_byte_timeout,
                defaults.first_byte_timeout,
                &mut errors,
            ),
            idle_timeout: secs(
                "idle-timeout",
                self.idle_timeout,
                defaults.idle_timeout,
                &mut errors,
            ),
            retries: self
                .max_instance_failover_reroute_attempts
                .unwrap_or(defaults.retries),
            max_body: self.max_request_body_bytes.unwrap_or(defaults.max_body),
        };
        let shutdown_grace = secs(
            "shutdown-grace-period",
            self.shutdown_grace_period,
            Duration::from_secs(30),
            &mut errors,
        );
        if proxy.max_body == 0 {
            errors.push("--max-request-body-bytes must be greater than zero".into());
        }
        let probe = ProbeConfig {
            interval: secs(
                "static-backend-health-check-interval",
                self.static_backend_health_check_interval,
                probe_defaults.interval,
                &mut errors,
            ),
            timeout: secs(
                "backend-health-check-timeout-seconds",
                self.backend_health_check_timeout_seconds,
                probe_defaults.timeout,
                &mut errors,
            ),
            api_key: self.engine_api_key.filter(|k| !k.is_empty()),
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
                Err(_) => errors.push(format!(
                    "--dns-nameservers entry `{ns}` is not `ip:port` (e.g. 10.96.0.10:53)"
                )),
            }
        }
        let dns = DnsConfig {
            name: self.dns_name.unwrap_or_default().trim().to_owned(),
            port: self.dns_port.unwrap_or(dns_defaults.port),
            nameservers,
            min_refresh: secs(
                "dns-min-refresh",
                self.dns_min_refresh,
                dns_defaults.min_refresh,
                &mut errors,
            ),
            max_refresh: secs(
                "dns-max-refresh",
                self.dns_max_refresh,
                dns_defaults.max_refresh,
                &mut errors,
            ),
        };
        let k8s_defaults = K8sConfig::default();
        let mode = match self.k8s_service_discovery_type.as_deref().map(str::trim) {
            None | Some("pod-ip" | "pods") => K8sMode::Pods,
            Some("endpoint-slice" | "endpointslice" | "endpoint-slices") => K8sMode::EndpointSlices,
            Some("service-name") => {
                errors.push(
                    "--k8s-service-discovery-type service-name is not supported: use endpoint-slice (the Service's ready endpoints) or --service-discovery dns with the Service's name".into(),
                );
                K8sMode::Pods
            }
            Some(other) => {
                errors.push(format!(
                    "--k8s-service-discovery-type `{other}` is not pod-ip or endpoint-slice"
                ));
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
            watch_timeout: Duration::from_secs(self.k8s_watcher_timeout_seconds.unwrap_or(0)),
        };
        let scrape_defaults = ScrapeConfig::default();
        let scrape = ScrapeConfig {
            interval: secs(
                "engine-stats-interval",
                self.engine_stats_interval,
                scrape_defaults.interval,
                &mut errors,
            ),
            timeout: probe.timeout,
            api_key: probe.api_key.clone(),
        };
        let discovery = DiscoveryConfig {
            service_discovery: self.service_discovery.unwrap_or_default(),
            static_backends: trimmed(self.static_backends),
            static_models: trimmed(self.static_models),
            static_model_labels: trimmed(self.static_model_labels),
            static_file: None,
            dns,
            k8s,
            probe,
        };
        if let Err(e) = discovery.validate() {
            errors.push(e.0);
        }
        let mut static_aliases = BTreeMap::new();
        for pair in trimmed(self.static_aliases) {
            match pair.split_once(':') {
                Some((alias, model)) => {
                    static_aliases.insert(alias.trim().to_owned(), model.trim().to_owned());
                }
                None => errors.push(format!(
                    "--static-aliases entry `{pair}` is not `alias:model`"
                )),
            }
        }
        let defaults = RoutingConfig::default();
        let routing = RoutingConfig {
            routing_logic: self.routing_logic.unwrap_or_default(),
            session_key: self.session_key.filter(|k| !k.is_empty()),
            static_aliases,
            prefix_min_match_length: self
                .prefix_min_match_length
                .unwrap_or(defaults.prefix_min_match_length),
            prefix_chunk_size: self.prefix_chunk_size.unwrap_or(defaults.prefix_chunk_size),
            prefix_capacity_tokens: self
                .prefix_capacity_tokens
                .unwrap_or(defaults.prefix_capacity_tokens),
        };
        if let Err(e) = routing.validate() {
            errors.push(e);
        }
        let log_json = match self
            .log_format
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                errors.push(format!("--log-format `{other}` is not text or json"));
                false
            }
        };
        let otel = self
            .otel_endpoint
            .filter(|e| !e.is_empty())
            .map(|endpoint| OtelConfig {
                endpoint,
                service_name: self
                    .otel_service_name
                    .unwrap_or_else(|| "llmstack-server".into()),
            });
        if otel.is_some() && !cfg!(feature = "otel") {
            errors.push(
                "--otel-endpoint needs a build with the `otel` feature (cargo build --features otel)"
                    .into(),
            );
        }
        let log_level = self.log_level.unwrap_or_else(|| "info".into());
        let log_filter = match log_level.to_ascii_lowercase().as_str() {
            "critical" | "error" => "error",
            "warning" | "warn" => "warn",
            "info" => "info",
            "debug" => "debug",
            "trace" => "trace",
            other => {
                errors.push(format!(
                    "--log-level `{other}` is not one of critical, error, warning, info, debug, trace"
                ));
                "info"
            }
        };
        if !errors.is_empty() {
            return Err(errors.join("\n"));
        }
        let host = self.host.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        Ok(ServerConfig {
            listen: std::net::SocketAddr::new(host, self.port.unwrap_or(8001)),
            admin: self.admin_port.map(|p| std::net::SocketAddr::new(host, p)),
            main_port_metrics: self.main_port_metrics.unwrap_or(true),
            log_filter: log_filter.to_owned(),
            log_json,
            otel,
            discovery,
            routing,
            proxy,
            shutdown_grace,
            scrape,
        })
    }
}

/// The static endpoints a `--config` file lists now (its `static_backends`,
/// `static_models` and `static_model_labels`): how the router re-reads the file when it
/// changes. Fails on a file that cannot be read or a list that is not valid.
pub(crate) fn static_endpoints_in(
    path: &std::path::Path,
) -> Result<Vec<llmstack_core::Endpoint>, String> {
    let file = Settings::from_file(&path.to_path_buf())?;
    let config = DiscoveryConfig {
        static_backends: trimmed(file.static_backends),
        static_models: trimmed(file.static_models),
        static_model_labels: trimmed(file.static_model_labels),
        ..DiscoveryConfig::default()
    };
    config.validate().map_err(|e| e.0)?;
    llmstack_discovery::static_endpoints(&config).map_err(|e| e.0)
}

/// Longest duration a setting takes (a year): anything longer is a typo, and deadlines
/// far in the future overflow the clock.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

fn trimmed(list: Option<Vec<String>>) -> Vec<String> {
    list.unwrap_or_default()
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_discovery(s: &str) -> Result<DiscoveryKind, String> {
    match s {
        "static" => Ok(DiscoveryKind::Static),
        "dns" => Ok(DiscoveryKind::Dns),
        "k8s" => Ok(DiscoveryKind::K8s),
        other => Err(format!(
            "unknown discovery `{other}` (expected static, dns or k8s)"
        )),
    }
}

/// A list given either as a YAML sequence or as one comma-separated string.
fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::One(s)) => Some(s.split(',').map(str::to_owned).collect()),
        Some(Either::Many(v)) => Some(v),
    })
}

use serde::Deserialize as _;

#[cfg(test)]
mod tests;
