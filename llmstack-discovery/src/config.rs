//! Discovery settings.

use std::fmt;
use std::time::Duration;

/// Which discovery source to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscoveryKind {
    /// A fixed list of URLs (`--static-backends`).
    #[default]
    Static,
    /// Kubernetes pods or services (production-stack's `k8s`); not in this build.
    K8s,
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
    /// The engine prober.
    pub probe: ProbeConfig,
}

/// Settings of the `/v1/models` prober.
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
}

/// A setting that cannot work, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

// === impl DiscoveryConfig ===

impl DiscoveryConfig {
    /// Checks the settings: a static source needs at least one backend, every backend
    /// must be an absolute `http(s)` URL, and the parallel lists must be empty or as long
    /// as the backend list.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.service_discovery {
            DiscoveryKind::K8s => {
                return Err(ConfigError(
                    "--service-discovery k8s is not available yet in this build; use static".into(),
                ));
            }
            DiscoveryKind::Static => {}
        }
        if self.static_backends.is_empty() {
            return Err(ConfigError(
                "static discovery needs --static-backends (a comma-separated list of engine URLs)"
                    .into(),
            ));
        }
        for url in &self.static_backends {
            crate::static_list::parse_url(url).map_err(ConfigError)?;
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
        }
    }
}

impl ProbeConfig {
    /// Checks that the interval and timeout are positive and at most a day.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let day = Duration::from_secs(86_400);
        for (name, d) in [("interval", self.interval), ("timeout", self.timeout)] {
            if d.is_zero() || d > day {
                return Err(ConfigError(format!(
                    "the probe {name} must be greater than zero and at most a day, got {d:?}"
                )));
            }
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
