//! The scraper's settings as given: flags, environment variables or file keys, with
//! production-stack's names.

use std::time::Duration;

use llmstack_core::SettingErrors;

use crate::ScrapeConfig;

/// Scraper settings as given, optional so that flags, their environment variables
/// (`LLMSTACK_<FLAG>`) and a file can be layered; turned into a [`ScrapeConfig`] by
/// [`ScrapeArgs::resolve`]. With the `clap` feature it is a `clap::Args` to flatten
/// into a command line; file keys are the field names.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct ScrapeArgs {
    /// Seconds between two scrapes of every engine's /metrics [default: 1; sub-second
    /// values are fine].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_ENGINE_STATS_INTERVAL"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_stats_interval: Option<f64>,
}

// === impl ScrapeArgs ===

impl ScrapeArgs {
    /// The config these settings give, each scrape within `timeout` and with the
    /// engines' `api_key` (shared with the prober), recording an interval not in
    /// (0 s, a year] in `errors`.
    pub fn resolve(
        self,
        timeout: Duration,
        api_key: Option<String>,
        errors: &mut SettingErrors,
    ) -> ScrapeConfig {
        ScrapeConfig {
            interval: errors.seconds(
                "engine-stats-interval",
                self.engine_stats_interval,
                ScrapeConfig::default().interval,
            ),
            timeout,
            api_key,
        }
    }
}

/// KV-event subscriber settings as given (feature `kv-events`), optional so that flags,
/// their environment variables and a file can be layered; turned into a
/// [`KvEventsConfig`](crate::KvEventsConfig) by [`KvEventsArgs::resolve`].
///
/// Engines that serve `GET /kv_event_sources` (llmstack-sim, vLLM 0.33+) say where
/// they publish; these settings are for the ones that do not.
#[cfg(feature = "kv-events")]
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct KvEventsArgs {
    /// The engines' KV-event PUB port (vLLM's `--kv-events-config` endpoint
    /// `tcp://*:PORT`), for engines that do not serve /kv_event_sources: the router
    /// subscribes to `tcp://{engine host}:PORT` (needs --routing-logic kvaware)
    /// [default: only engines that say are subscribed to].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_KV_EVENTS_PORT"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_events_port: Option<u16>,
    /// The engines' KV-event replay port (`replay_endpoint`), used with
    /// --kv-events-port to fill gaps [default: none; a gap resets the engine's entries].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_KV_EVENTS_REPLAY_PORT"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_events_replay_port: Option<u16>,
    /// Topic prefix subscribed to (vLLM's `topic`) [default: every topic].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_KV_EVENTS_TOPIC"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_events_topic: Option<String>,
}

#[cfg(feature = "kv-events")]
impl KvEventsArgs {
    /// Whether any setting is given (they mean something only to a KV-aware router).
    pub fn is_set(&self) -> bool {
        self.kv_events_port.is_some()
            || self.kv_events_replay_port.is_some()
            || self.kv_events_topic.is_some()
    }

    /// The config these settings give, recording in `errors` a port of 0 or a replay
    /// port without a PUB port.
    pub fn resolve(self, errors: &mut SettingErrors) -> crate::KvEventsConfig {
        for (name, port) in [
            ("kv-events-port", self.kv_events_port),
            ("kv-events-replay-port", self.kv_events_replay_port),
        ] {
            if port == Some(0) {
                errors.push(name, format!("--{name} must be a port number, not 0"));
            }
        }
        if self.kv_events_replay_port.is_some() && self.kv_events_port.is_none() {
            errors.push(
                "kv-events-replay-port",
                "--kv-events-replay-port goes with --kv-events-port (engines that serve /kv_event_sources name their replay socket themselves)",
            );
        }
        crate::KvEventsConfig {
            port: self.kv_events_port.filter(|&p| p != 0),
            replay_port: self.kv_events_replay_port.filter(|&p| p != 0),
            topic: self.kv_events_topic.unwrap_or_default(),
            ..crate::KvEventsConfig::default()
        }
    }
}
