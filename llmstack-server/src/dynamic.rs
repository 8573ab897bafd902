//! production-stack's dynamic configuration (`--dynamic-config-yaml/json`): the
//! settings file is re-read when it changes and what can change while serving is
//! applied at once, for the requests that start afterwards (those in flight finish as
//! they started):
//!
//! - the routing logic and the prefix settings: a new router over the same in-flight
//!   counters (to `kvaware`: with its KV-event subscriber and tokenizers started first;
//!   from it: those stopped);
//! - the session key and the model aliases;
//! - the static engine list (`static_backends`, `static_models`,
//!   `static_model_labels`): re-read by the static discovery source itself;
//! - the other discovery settings (its kind, DNS, Kubernetes, the prober): a new
//!   source replaces the running one once it has answered and probed what it found
//!   (`discover.rs`); its set then replaces the endpoint set (engines that stay keep
//!   their connections; streams on engines that leave run to their end).
//!
//! Other changed settings (listeners, proxy, gateway, scrape, peers) are kept as they
//! are, logged, and listed in `/health` as needing a restart. A part that cannot start
//! (a tokenizer that does not load, no Kubernetes API access) leaves that part as it
//! runs, with the reason in `/health`. A file that cannot be read or is not valid
//! changes nothing: the last good settings stay in force, the reason is logged and in
//! `/health`, and `llmstack_dynamic_config_reloads_total{result="invalid"}` counts it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use llmstack_core::{EndpointSet, StatsReader};
use llmstack_routing::RouteHandle;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::config::{ServerConfig, Settings};
use crate::discover::Rediscover;
use crate::kv::KvSlot;

mod apply;

/// What starting or stopping `kvaware` while serving needs.
pub(crate) struct KvSwitch {
    /// The endpoint set (the subscriber and tokenizers follow it).
    pub(crate) endpoints: watch::Receiver<EndpointSet>,
    /// The engines' scraped stats (their KV capacity).
    pub(crate) stats: StatsReader,
    /// Where the running KV-event path is kept.
    pub(crate) slot: Arc<KvSlot>,
}

/// How often the file is checked for changes.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// `llmstack_dynamic_config_reloads_total{result}`: `applied` or `invalid`.
pub(crate) const RELOADS: &str = "llmstack_dynamic_config_reloads_total";

/// What `/health` reports of the dynamic configuration.
#[derive(Debug)]
pub(crate) struct Status {
    path: PathBuf,
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    /// The file's settings in force, as JSON.
    in_force: Value,
    /// When they were applied (seconds since the epoch).
    applied_at: u64,
    /// Why the file's current content is not in force, if it is not.
    error: Option<String>,
    /// Settings of the file in force that need a restart to apply.
    restart_needed: Vec<String>,
}

impl Status {
    /// The status at start, with the file's settings as read then.
    pub(crate) fn new(path: PathBuf) -> Self {
        let in_force = Settings::read(&path).map(|f| f.json).unwrap_or_default();
        Self {
            path,
            inner: Mutex::new(StatusInner {
                in_force,
                applied_at: now(),
                ..StatusInner::default()
            }),
        }
    }

    /// The `/health` entry.
    pub(crate) fn to_json(&self) -> Value {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        json!({
            "path": self.path,
            "config": s.in_force,
            "applied_at": s.applied_at,
            "error": s.error,
            "restart_needed": s.restart_needed,
        })
    }
}

/// Watches the file and applies its changes to `route` until the task is aborted.
/// `started` is the configuration the server started with.
pub(crate) async fn watch(
    status: Arc<Status>,
    flags: Settings,
    started: ServerConfig,
    route: RouteHandle,
    mut discovery: Rediscover,
    kv: KvSwitch,
) {
    let mut in_force = started;
    let mut last = std::fs::read(&status.path).ok();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_bytes = std::fs::read(&status.path).ok();
        if now_bytes == last {
            continue;
        }
        last = now_bytes;
        match load(&status.path, &flags) {
            Ok((config, json)) => {
                let applied = apply::apply(&in_force, config, &route, &mut discovery, &kv).await;
                for setting in &applied.restart {
                    tracing::warn!(
                        setting = %setting,
                        file = %status.path.display(),
                        "dynamic config: this change needs a restart; the running value is kept"
                    );
                }
                tracing::info!(file = %status.path.display(), "dynamic config applied");
                metrics::counter!(RELOADS, "result" => "applied").increment(1);
                let mut s = status.inner.lock().unwrap_or_else(PoisonError::into_inner);
                *s = StatusInner {
                    in_force: json,
                    applied_at: now(),
                    error: applied.error,
                    restart_needed: applied.restart,
                };
                drop(s);
                in_force = applied.in_force;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    file = %status.path.display(),
                    "dynamic config is not valid; the last good one stays in force"
                );
                metrics::counter!(RELOADS, "result" => "invalid").increment(1);
                status
                    .inner
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .error = Some(e);
            }
        }
    }
}

/// The file's settings under the flags, validated; and the file's settings as JSON.
fn load(path: &std::path::Path, flags: &Settings) -> Result<(ServerConfig, Value), String> {
    let file = Settings::read(path).map_err(|e| e.to_string())?;
    let listed =
        file.settings.discovery.static_backends.is_some() && !flags.discovery.has_static_list();
    let mut config = file
        .settings
        .overlay(flags.clone())
        .resolve()
        .map_err(|e| e.to_string())?;
    // As at start: the static list is re-read from the file when all of it is there.
    config.discovery.static_file = listed.then(|| path.to_owned());
    config.routing.validate().map_err(|e| e.to_string())?;
    Ok((config, file.json))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
