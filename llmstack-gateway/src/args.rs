//! The gateway's settings as given: flags, environment variables or file keys.

use std::fmt;
use std::path::PathBuf;

use llmstack_core::SettingErrors;

use crate::{AdmissionConfig, ApiKeys, KeysError, OutlierConfig};

/// Gateway settings as given, every one optional so that flags, their environment
/// variables and a file can be layered; turned into a [`GatewayConfig`] by
/// [`GatewayArgs::resolve`]. With the `clap` feature it is a `clap::Args` to flatten
/// into a command line; file keys are the field names. `Debug` never shows keys.
#[derive(Clone, Default, serde::Deserialize, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct GatewayArgs {
    /// File of the API keys clients must present (YAML `keys:` entries with `key` or
    /// `sha256`, `tenant`, `priority`, `rpm`, `tpm`; or one key per line); reloaded
    /// when it changes. Turns authentication on [default: none, no authentication].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_API_KEYS_FILE"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<PathBuf>,
    /// API keys clients may present, comma-separated (tenant `default`, no limits).
    /// Turns authentication on [default: none].
    #[cfg_attr(
        feature = "clap",
        arg(
            long,
            env = "LLMSTACK_API_KEYS",
            value_delimiter = ',',
            hide_env_values = true
        )
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<Vec<String>>,
    /// Failures in a row (connect errors, resets, deadlines, 5xx answers) that eject an
    /// engine for a while; 0 never ejects [default: 5].
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_OUTLIER_CONSECUTIVE_FAILURES")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_consecutive_failures: Option<u32>,
    /// Seconds of an engine's first ejection, doubled for each ejection in a row
    /// [default: 5].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_OUTLIER_BASE_EJECTION"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_base_ejection: Option<f64>,
    /// Seconds of the longest ejection [default: 120].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_OUTLIER_MAX_EJECTION"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_max_ejection: Option<f64>,
    /// Requests one engine may have at once; when every ready engine of a model has
    /// that many, more requests wait in the model's queue (0: no limit) [default: 0].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_MAX_IN_FLIGHT_PER_ENGINE"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_engine: Option<usize>,
    /// Requests waiting in an engine's own queue (scraped `num_requests_waiting`) at
    /// which it counts as saturated; when every ready engine of a model is, requests
    /// wait in the model's queue (0: not read) [default: 0].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_MAX_WAITING_PER_ENGINE"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_waiting_per_engine: Option<usize>,
    /// Seconds a request may wait for capacity, or for a model's first ready engine
    /// (the waiting room); 0: no waiting, an instant 503 [default: 0].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_QUEUE_TIMEOUT"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<f64>,
    /// Requests waiting per model at most; more get an instant 503 [default: 1000].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_MAX_QUEUE_LENGTH"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue_length: Option<usize>,
    /// Request header that may set a request's priority class (high, normal, low),
    /// never above its API key's tenant's [default: none].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_PRIORITY_HEADER"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_header: Option<String>,
}

/// Where the router's API keys come from (no source means no authentication), and
/// when engines are ejected. `Debug` never shows keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The keys file, reloaded when it changes.
    pub api_keys_file: Option<PathBuf>,
    /// Keys given directly.
    pub api_keys: Vec<String>,
    /// Outlier ejection.
    pub outliers: OutlierConfig,
    /// The admission queue.
    pub admission: AdmissionConfig,
}

// === impl GatewayArgs ===

impl GatewayArgs {
    /// The config these settings give, recording in `errors` a keys file that cannot
    /// be read or is invalid, an invalid key (the keys are loaded once to check), and
    /// ejection lengths not in (0 s, a year] or a base above the maximum.
    pub fn resolve(self, errors: &mut SettingErrors) -> GatewayConfig {
        let defaults = OutlierConfig::default();
        let outliers = OutlierConfig {
            consecutive_failures: self
                .outlier_consecutive_failures
                .unwrap_or(defaults.consecutive_failures),
            base_ejection: errors.seconds(
                "outlier-base-ejection",
                self.outlier_base_ejection,
                defaults.base_ejection,
            ),
            max_ejection: errors.seconds(
                "outlier-max-ejection",
                self.outlier_max_ejection,
                defaults.max_ejection,
            ),
        };
        if outliers.base_ejection > outliers.max_ejection {
            errors.push(
                "outlier-base-ejection",
                "--outlier-base-ejection must not be above --outlier-max-ejection",
            );
        }
        let admission_defaults = AdmissionConfig::default();
        let queue_timeout = match self.queue_timeout {
            Some(0.0) => std::time::Duration::ZERO,
            other => errors.seconds("queue-timeout", other, admission_defaults.queue_timeout),
        };
        let priority_header = self.priority_header.and_then(|name| {
            match http::HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    errors.push(
                        "priority-header",
                        format!("--priority-header `{name}` is not a header name"),
                    );
                    None
                }
            }
        });
        let admission = AdmissionConfig {
            max_in_flight_per_engine: self
                .max_in_flight_per_engine
                .unwrap_or(admission_defaults.max_in_flight_per_engine),
            max_waiting_per_engine: self
                .max_waiting_per_engine
                .unwrap_or(admission_defaults.max_waiting_per_engine),
            queue_timeout,
            max_queue_length: self
                .max_queue_length
                .unwrap_or(admission_defaults.max_queue_length),
            priority_header,
        };
        let config = GatewayConfig {
            admission,
            outliers,
            api_keys_file: self.api_keys_file,
            api_keys: self
                .api_keys
                .unwrap_or_default()
                .into_iter()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect(),
        };
        if let Err(e) = config.keys() {
            let setting = if config.api_keys_file.is_some() {
                "api-keys-file"
            } else {
                "api-keys"
            };
            errors.push(setting, e.to_string());
        }
        config
    }
}

impl fmt::Debug for GatewayArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayArgs")
            .field("api_keys_file", &self.api_keys_file)
            .field("api_keys", &self.api_keys.as_ref().map(Vec::len))
            .field(
                "outlier_consecutive_failures",
                &self.outlier_consecutive_failures,
            )
            .field("outlier_base_ejection", &self.outlier_base_ejection)
            .field("outlier_max_ejection", &self.outlier_max_ejection)
            .field("max_in_flight_per_engine", &self.max_in_flight_per_engine)
            .field("max_waiting_per_engine", &self.max_waiting_per_engine)
            .field("queue_timeout", &self.queue_timeout)
            .field("max_queue_length", &self.max_queue_length)
            .field("priority_header", &self.priority_header)
            .finish()
    }
}

// === impl GatewayConfig ===

impl GatewayConfig {
    /// Whether requests need an API key.
    pub fn authenticates(&self) -> bool {
        self.api_keys_file.is_some() || !self.api_keys.is_empty()
    }

    /// The keys, loaded now; `None` when authentication is off.
    pub fn keys(&self) -> Result<Option<ApiKeys>, KeysError> {
        if !self.authenticates() {
            return Ok(None);
        }
        ApiKeys::load(self.api_keys_file.as_deref(), &self.api_keys).map(Some)
    }
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("api_keys_file", &self.api_keys_file)
            .field("api_keys", &self.api_keys.len())
            .field("outliers", &self.outliers)
            .field("admission", &self.admission)
            .finish()
    }
}
