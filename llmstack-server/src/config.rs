//! Settings: command-line flags (production-stack's names), environment variables and
//! a YAML file, merged into one typed [`ServerConfig`] and validated at start.
//!
//! Each library owns its settings (`DiscoveryArgs`, `RoutingArgs`, `ProxyArgs`,
//! `ScrapeArgs`: every value optional, resolved into its typed config); [`Settings`]
//! flattens them with the server's own [`ServerArgs`]. Precedence: a flag beats its
//! environment variable (`LLMSTACK_<FLAG>`), which beats the `--config` file, which
//! beats the defaults. The file uses the flag names with underscores
//! (`static_backends: [...]`, `routing_logic: roundrobin`); an unknown key is an error.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use llmstack_core::SettingErrors;
use llmstack_discovery::{DiscoveryArgs, DiscoveryConfig};
use llmstack_gateway::{GatewayArgs, GatewayConfig};
use llmstack_metrics::{KvEventsArgs, KvEventsConfig, ScrapeArgs, ScrapeConfig};
use llmstack_proxy::{ProxyArgs, ProxyConfig};
use llmstack_routing::{RoutingArgs, RoutingConfig, RoutingLogic};
use llmstack_tokenize::{TokenizerArgs, TokenizerSources};
use serde::Serialize;

use otel::otel_config;
pub use otel::{OtelConfig, OtelProtocol};
use serde::de::DeserializeOwned;

/// Router settings as given, one section per library plus the server's own: every
/// value optional, so a flag, its environment variable and the config file can be
/// layered ([`Settings::overlay`]). Turned into a [`ServerConfig`] by
/// [`Settings::resolve`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Settings {
    /// Listeners, logs, traces, shutdown, the engine key.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Discovery and the prober (`llmstack-discovery`).
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    /// Routing (`llmstack-routing`).
    #[command(flatten)]
    pub routing: RoutingArgs,
    /// Forwarding and retries (`llmstack-proxy`).
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// API keys and rate limits (`llmstack-gateway`).
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// The engine stats scraper (`llmstack-metrics`).
    #[command(flatten)]
    pub scrape: ScrapeArgs,
    /// The KV-event subscriber (`llmstack-metrics`, for `--routing-logic kvaware`).
    #[command(flatten)]
    pub kv_events: KvEventsArgs,
    /// The router's tokenizers (`llmstack-tokenize`, for `--routing-logic kvaware`).
    #[command(flatten)]
    pub tokenizer: TokenizerArgs,
}

/// The server's own settings as given.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct ServerArgs {
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long, env = "LLMSTACK_HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
    /// Port to listen on [default: 8001].
    #[arg(long, env = "LLMSTACK_PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Port of a separate admin listener serving /metrics, /health and /ready on the same
    /// address [default: none].
    #[arg(long, env = "LLMSTACK_ADMIN_PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_port: Option<u16>,
    /// Whether /metrics is also served on the main port, as production-stack does
    /// [default: true].
    #[arg(long, env = "LLMSTACK_MAIN_PORT_METRICS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_port_metrics: Option<bool>,
    /// Path prefix the router is served under (production-stack's FastAPI root path):
    /// a request path starting with it is routed without it [default: none].
    #[arg(long, env = "LLMSTACK_ROOT_PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_path: Option<String>,
    /// Log level: critical, error, warning, info, debug or trace [default: info].
    #[arg(long, env = "LLMSTACK_LOG_LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// OTLP collector to export request spans to: `collector:4317` (OTLP/gRPC, as
    /// production-stack takes it) or `http://collector:4318` (OTLP/HTTP); see
    /// --otel-protocol (needs the `otel` build feature, on by default).
    #[arg(long, env = "LLMSTACK_OTEL_ENDPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otel_endpoint: Option<String>,
    /// OTLP protocol: `grpc` or `http/protobuf` [default: grpc for an endpoint without
    /// a scheme or on port 4317, else http/protobuf].
    #[arg(long, env = "LLMSTACK_OTEL_PROTOCOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otel_protocol: Option<String>,
    /// Export over TLS (OTLP/gRPC, the system's root certificates) [default: false].
    #[arg(long, env = "LLMSTACK_OTEL_SECURE", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otel_secure: Option<bool>,
    /// Service name on exported spans [default: llmstack-server].
    #[arg(long, env = "LLMSTACK_OTEL_SERVICE_NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otel_service_name: Option<String>,
    /// Log format: `text` or `json` (one JSON object per line) [default: text].
    #[arg(long, env = "LLMSTACK_LOG_FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// Client connections open at once on the main port; beyond it, new connections wait
    /// in the kernel's accept queue [default: what the file-descriptor limit holds,
    /// two per request plus 1,024 idle engine connections and a reserve; at most
    /// 65536].
    #[arg(long, env = "LLMSTACK_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT [default: 30].
    #[arg(long, env = "LLMSTACK_SHUTDOWN_GRACE_PERIOD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_period: Option<f64>,
    /// The engines' key (vLLM --api-key): the router's own calls to engines carry it,
    /// and so does every forwarded request, in place of the client's `Authorization`.
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_api_key: Option<String>,
}

/// A settings file as read by [`Settings::read`].
#[derive(Debug, Clone)]
pub struct SettingsFile {
    /// The settings.
    pub settings: Settings,
    /// Notes on the production-stack keys accepted without effect (to log).
    pub notes: Vec<String>,
    /// The file's settings, in this router's form, as JSON.
    pub json: serde_json::Value,
}

/// Why a settings file could not be used.
#[derive(Debug)]
pub enum SettingsError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not YAML, not a mapping, or a value has the wrong type.
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Keys that are no setting's name.
    Unknown {
        /// The file.
        path: PathBuf,
        /// The keys, in file order.
        keys: Vec<String>,
    },
    /// The settings are not valid.
    Invalid(SettingErrors),
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
    /// API keys (authentication is off without any).
    pub gateway: GatewayConfig,
    /// Time in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Client connections open at once on the main port (`None`: from the
    /// file-descriptor limit, see [`ServerConfig::connection_cap`]).
    pub max_connections: Option<usize>,
    /// The engine stats scraper.
    pub scrape: ScrapeConfig,
    /// KV-event routing, with `--routing-logic kvaware` (else `None`).
    pub kv: Option<KvConfig>,
    /// The path prefix production-stack's `--root-path` names: requests under it are
    /// served as if it were not there (requests without it too).
    pub root_path: Option<String>,
    /// `--dynamic-config-yaml/json`: the file re-read when it changes.
    pub dynamic: Option<DynamicConfig>,
}

/// production-stack's dynamic configuration (`--dynamic-config-yaml/json`): the file
/// read at start and re-read when it changes, and the settings given as flags and
/// environment, which win over the file at every reload.
#[derive(Debug, Clone)]
pub struct DynamicConfig {
    /// The file.
    pub path: PathBuf,
    /// The flags and environment.
    pub flags: Box<Settings>,
}

impl PartialEq for DynamicConfig {
    /// The same file (the flags come from the same command line).
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

/// KV-event routing (`--routing-logic kvaware`): where events and tokenizers come from.
/// The default: engines that serve `/kv_event_sources`, tokenizers from the Hugging
/// Face cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KvConfig {
    /// The subscriber's settings.
    pub events: KvEventsConfig,
    /// The tokenizers named at start (others are looked up in the Hugging Face cache).
    pub tokenizers: TokenizerSources,
}

// === impl ServerConfig ===

impl ServerConfig {
    /// The cap on open client connections: `max_connections` when set, else what
    /// `nofile` descriptors hold: each proxied request has a client and an engine
    /// connection, and the pool keeps up to `proxy.max_idle_connections` idle engine
    /// connections, with 256 more for listeners, probes and files; at most 65536 and at
    /// least 64.
    pub fn connection_cap(&self, nofile: u64) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let idle = u64::try_from(self.proxy.max_idle_connections).unwrap_or(u64::MAX);
            let half = nofile.saturating_sub(256).saturating_sub(idle) / 2;
            usize::try_from(half.clamp(64, 65_536)).unwrap_or(65_536)
        })
    }
}

// === impl Settings ===

impl Settings {
    /// Reads a YAML (or JSON) settings file: a mapping whose keys are the flag names
    /// with underscores (every key must be one), in production-stack's forms too (its
    /// `--dynamic-config-yaml/json` files: `null` values, `static_models` and
    /// `static_aliases` as mappings, its flags without a setting here accepted or
    /// refused as on the command line).
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        Self::read(path).map(|file| file.settings)
    }

    /// [`Settings::from_file`], with the notes on accepted production-stack keys and
    /// the file's settings as JSON (for `/health`).
    pub fn read(path: &Path) -> Result<SettingsFile, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse = |message: String| SettingsError::Parse {
            path: path.to_owned(),
            message,
        };
        let mut map = match serde_yaml_ng::from_str(&text).map_err(|e| parse(e.to_string()))? {
            serde_yaml_ng::Value::Null => serde_yaml_ng::Mapping::new(),
            serde_yaml_ng::Value::Mapping(map) => map,
            _ => return Err(parse("the file must be a mapping of settings".into())),
        };
        let notes = prodstack::normalize(&mut map).map_err(parse)?;
        let known: Vec<String> = Settings::augment_args(clap::Command::new("settings"))
            .get_arguments()
            .map(|a| a.get_id().as_str().to_owned())
            .collect();
        let unknown: Vec<String> = map
            .keys()
            .map(|k| k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned))
            .filter(|k| !known.contains(k))
            .collect();
        if !unknown.is_empty() {
            return Err(SettingsError::Unknown {
                path: path.to_owned(),
                keys: unknown,
            });
        }
        let value = serde_yaml_ng::Value::Mapping(map);
        let json = serde_json::to_value(&value).unwrap_or_default();
        let section = |what: &str| {
            let what = what.to_owned();
            move |e: serde_yaml_ng::Error| parse(format!("{what} settings: {e}"))
        };
        let settings = Settings {
            server: serde_yaml_ng::from_value(value.clone()).map_err(section("server"))?,
            discovery: serde_yaml_ng::from_value(value.clone()).map_err(section("discovery"))?,
            routing: serde_yaml_ng::from_value(value.clone()).map_err(section("routing"))?,
            proxy: serde_yaml_ng::from_value(value.clone()).map_err(section("proxy"))?,
            gateway: serde_yaml_ng::from_value(value.clone()).map_err(section("gateway"))?,
            scrape: serde_yaml_ng::from_value(value.clone()).map_err(section("scrape"))?,
            kv_events: serde_yaml_ng::from_value(value.clone()).map_err(section("kv events"))?,
            tokenizer: serde_yaml_ng::from_value(value).map_err(section("tokenizer"))?,
        };
        Ok(SettingsFile {
            settings,
            notes,
            json,
        })
    }

    /// `self`, with every value that `over` sets replaced by `over`'s.
    #[must_use]
    pub fn overlay(self, over: Settings) -> Settings {
        Settings {
            server: overlay(self.server, over.server),
            discovery: overlay(self.discovery, over.discovery),
            routing: overlay(self.routing, over.routing),
            proxy: overlay(self.proxy, over.proxy),
            gateway: overlay(self.gateway, over.gateway),
            scrape: overlay(self.scrape, over.scrape),
            kv_events: overlay(self.kv_events, over.kv_events),
            tokenizer: overlay(self.tokenizer, over.tokenizer),
        }
    }

    /// The validated configuration, or every reason it is not valid.
    pub fn resolve(self) -> Result<ServerConfig, SettingsError> {
        let mut errors = SettingErrors::default();
        let server = self.server;
        let api_key = server.engine_api_key.filter(|k| !k.is_empty());
        let mut discovery = self.discovery.resolve(&mut errors);
        discovery.probe.api_key.clone_from(&api_key);
        let routing = self.routing.resolve(&mut errors);
        let mut proxy = self.proxy.resolve(&mut errors);
        if let Some(key) = &api_key {
            proxy.engine_authorization = llmstack_proxy::ProxyConfig::engine_key(key);
            if proxy.engine_authorization.is_none() {
                errors.push(
                    "engine-api-key",
                    "VLLM_API_KEY must be printable ASCII (it goes in an HTTP header)",
                );
            }
        }
        let gateway = self.gateway.resolve(&mut errors);
        let scrape = self
            .scrape
            .resolve(discovery.probe.timeout, api_key, &mut errors);
        let kvaware = routing.routing_logic == RoutingLogic::Kvaware;
        for (set, flag) in [
            (self.kv_events.is_set(), "kv-events-port"),
            (self.tokenizer.is_set(), "tokenizer"),
        ] {
            if set && !kvaware {
                errors.push(
                    flag,
                    format!(
                        "--{flag} is for KV-event routing: add --routing-logic kvaware (now {})",
                        routing.routing_logic.as_str()
                    ),
                );
            }
        }
        let kv = KvConfig {
            events: self.kv_events.resolve(&mut errors),
            tokenizers: self.tokenizer.resolve(&mut errors),
        };
        let kv = kvaware.then_some(kv);
        let shutdown_grace = errors.seconds(
            "shutdown-grace-period",
            server.shutdown_grace_period,
            Duration::from_secs(30),
        );
        let log_json = match server
            .log_format
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                errors.push(
                    "log-format",
                    format!("--log-format `{other}` is not text or json"),
                );
                false
            }
        };
        let otel = server
            .otel_endpoint
            .filter(|e| !e.is_empty())
            .and_then(|endpoint| {
                otel_config(
                    &endpoint,
                    server.otel_protocol.as_deref(),
                    server.otel_secure.unwrap_or(false),
                    &mut errors,
                )
            })
            .map(|(endpoint, protocol)| OtelConfig {
                endpoint,
                protocol,
                service_name: server
                    .otel_service_name
                    .unwrap_or_else(|| "llmstack-server".into()),
            });
        if otel.is_some() && !cfg!(feature = "otel") {
            errors.push(
                "otel-endpoint",
                "--otel-endpoint needs a build with the `otel` feature (cargo build --features otel)",
            );
        }
        let log_level = server.log_level.unwrap_or_else(|| "info".into());
        let log_filter = match log_level.to_ascii_lowercase().as_str() {
            "critical" | "error" => "error",
            "warning" | "warn" => "warn",
            "info" => "info",
            "debug" => "debug",
            "trace" => "trace",
            other => {
                errors.push(
                    "log-level",
                    format!(
                        "--log-level `{other}` is not one of critical, error, warning, info, debug, trace"
                    ),
                );
                "info"
            }
        };
        let host = server.host.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let root_path = server
            .root_path
            .map(|p| p.trim_end_matches('/').to_owned())
            .filter(|p| !p.is_empty());
        if root_path.as_ref().is_some_and(|p| !p.starts_with('/')) {
            errors.push("root-path", "--root-path must start with `/` (e.g. /vllm)");
        }
        if server.max_connections == Some(0) {
            errors.push(
                "max-connections",
                "--max-connections must be greater than zero",
            );
        }
        errors
            .into_result(ServerConfig {
                listen: std::net::SocketAddr::new(host, server.port.unwrap_or(8001)),
                admin: server
                    .admin_port
                    .map(|p| std::net::SocketAddr::new(host, p)),
                main_port_metrics: server.main_port_metrics.unwrap_or(true),
                log_filter: log_filter.to_owned(),
                log_json,
                otel,
                discovery,
                routing,
                proxy,
                gateway,
                shutdown_grace,
                max_connections: server.max_connections,
                scrape,
                kv,
                root_path,
                dynamic: None,
            })
            .map_err(SettingsError::Invalid)
    }
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            Self::Parse { path, message } => write!(f, "config file {}: {message}", path.display()),
            Self::Unknown { path, keys } => write!(
                f,
                "config file {}: unknown setting(s) {} (keys are the flag names with underscores, e.g. static_backends)",
                path.display(),
                keys.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::Invalid(errors) => write!(f, "{errors}"),
        }
    }
}

impl std::error::Error for SettingsError {}

/// `base` with every value `over` sets replaced (both are settings sections whose
/// unset values serialize to nothing).
fn overlay<T: Serialize + DeserializeOwned>(base: T, over: T) -> T {
    let merged = match (serde_json::to_value(&base), serde_json::to_value(&over)) {
        (Ok(serde_json::Value::Object(mut merged)), Ok(serde_json::Value::Object(set))) => {
            merged.extend(set);
            serde_json::from_value(serde_json::Value::Object(merged))
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
        _ => return over,
    };
    // Sections round-trip through JSON (they are read from YAML the same way); if one
    // ever did not, the flags alone are better than a mix.
    merged.unwrap_or(over)
}

/// The static endpoints a `--config` file lists now (its `static_backends`,
/// `static_models` and `static_model_labels`): how the router re-reads the file when it
/// changes. Fails on a file that cannot be read or a list that is not valid.
pub(crate) fn static_endpoints_in(
    path: &Path,
) -> Result<Vec<llmstack_core::Endpoint>, llmstack_core::BoxError> {
    let file = Settings::from_file(path)?;
    let listed = DiscoveryArgs {
        static_backends: file.discovery.static_backends,
        static_models: file.discovery.static_models,
        static_model_labels: file.discovery.static_model_labels,
        ..DiscoveryArgs::default()
    };
    let mut errors = SettingErrors::default();
    let config = listed.resolve(&mut errors);
    errors.into_result(())?;
    Ok(llmstack_discovery::static_endpoints(&config)?)
}

mod otel;
mod prodstack;
#[cfg(test)]
mod tests;
