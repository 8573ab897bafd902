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
