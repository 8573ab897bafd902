//! The gateway's settings as given: flags, environment variables or file keys.

use std::fmt;
use std::path::PathBuf;

use llmstack_core::SettingErrors;

use crate::{ApiKeys, KeysError, OutlierConfig};

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
        let config = GatewayConfig {
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
            .finish()
    }
}
