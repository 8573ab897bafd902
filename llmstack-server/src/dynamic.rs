//! production-stack's dynamic configuration (`--dynamic-config-yaml/json`): the
//! settings file is re-read when it changes and what can change while serving is
//! applied at once, for the requests that start afterwards (those in flight finish as
//! they started):
//!
//! - the routing logic and the prefix settings: a new router over the same in-flight
//!   counters (switching to or from `kvaware`, whose event subscriber and tokenizers
//!   start with the process, needs a restart);
//! - the session key and the model aliases;
//! - the static engine list (`static_backends`, `static_models`,
//!   `static_model_labels`): re-read by the static discovery source itself;
//! - the other discovery settings (its kind, DNS, Kubernetes, the prober): a new
//!   source replaces the running one once started, and its first answer replaces the
//!   endpoint set (engines that stay keep their connections; streams on engines that
//!   leave run to their end).
//!
//! Other changed settings (listeners, proxy, gateway, scrape, peers) are kept as they
//! are, logged, and listed in `/health` as needing a restart. A file that cannot be read or is not valid changes nothing: the last good
//! settings stay in force, the reason is logged and in `/health`, and
//! `llmstack_dynamic_config_reloads_total{result="invalid"}` counts it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use llmstack_routing::{RouteHandle, RoutingConfig, RoutingLogic};
use serde_json::{Value, json};

use crate::config::{ServerConfig, Settings};
use crate::discover::Rediscover;

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
            Ok((mut config, json)) => {
                let (mut restart, rediscover) = apply(&in_force, &config, &route);
                let mut error = None;
                if rediscover {
                    if let Err(e) = discovery.restart(&config.discovery).await {
                        tracing::warn!(error = %e, "dynamic config: discovery not changed");
                        error = Some(format!("discovery not changed: {e}"));
                        config.discovery = in_force.discovery.clone();
                        restart.push("discovery".to_owned());
                    } else {
                        tracing::info!(
                            kind = ?config.discovery.service_discovery,
                            "dynamic config: discovery restarted"
                        );
                    }
                }
                for setting in &restart {
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
                    error,
                    restart_needed: restart,
                };
                drop(s);
                in_force = merge_applied(in_force, config);
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

/// Applies the routing changes from `old` to `new`; the settings that changed but need
/// a restart, and whether discovery must restart (its settings changed beyond the
/// static list the file's static source re-reads).
fn apply(old: &ServerConfig, new: &ServerConfig, route: &RouteHandle) -> (Vec<String>, bool) {
    let mut restart = Vec::new();
    let (o, n) = (&old.routing, &new.routing);
    if o.session_key != n.session_key {
        route.set_session_key(n.session_key.as_deref());
    }
    if o.static_aliases != n.static_aliases {
        route.set_aliases(&n.static_aliases);
    }
    if (&o.peers, o.peer_port) != (&n.peers, n.peer_port) {
        restart.push("peers".to_owned());
    }
    if policy_part(o) != policy_part(n) {
        let kvaware = [o.routing_logic, n.routing_logic].contains(&RoutingLogic::Kvaware);
        if kvaware {
            restart.push("routing_logic".to_owned());
        } else {
            let router = n
                .router()
                .with_in_flight(route.router().in_flight().clone());
            route.set_router(router);
            tracing::info!(
                policy = n.routing_logic.as_str(),
                "dynamic config: routing logic changed"
            );
        }
    }
    let rediscover = discovery_changed(old, new);
    let sections = [
        ("proxy", old.proxy != new.proxy),
        ("gateway", old.gateway != new.gateway),
        ("scrape", old.scrape != new.scrape),
        ("kv", old.kv != new.kv),
        (
            "server",
            (
                old.listen,
                old.admin,
                old.main_port_metrics,
                &old.log_filter,
                old.log_json,
            ) != (
                new.listen,
                new.admin,
                new.main_port_metrics,
                &new.log_filter,
                new.log_json,
            ) || (
                &old.otel,
                old.shutdown_grace,
                old.max_connections,
                &old.root_path,
            ) != (
                &new.otel,
                new.shutdown_grace,
                new.max_connections,
                &new.root_path,
            ),
        ),
    ];
    restart.extend(
        sections
            .into_iter()
            .filter(|(_, differ)| *differ)
            .map(|(name, _)| format!("{name} settings")),
    );
    (restart, rediscover)
}

/// Whether discovery must restart: its settings changed, beyond the static list when
/// both take it from the file (the file's static source re-reads that itself).
fn discovery_changed(old: &ServerConfig, new: &ServerConfig) -> bool {
    let (o, n) = (&old.discovery, &new.discovery);
    if o.static_file != n.static_file {
        return true;
    }
    let mut od = serde_json::to_value(o).unwrap_or_default();
    let mut nd = serde_json::to_value(n).unwrap_or_default();
    if o.static_file.is_some() {
        for v in [&mut od, &mut nd] {
            if let Some(m) = v.as_object_mut() {
                for key in ["static_backends", "static_models", "static_model_labels"] {
                    m.remove(key);
                }
            }
        }
    }
    od != nd
}

/// `old` with what [`apply`] applied taken from `new` (the rest stays as it runs).
fn merge_applied(mut old: ServerConfig, new: ServerConfig) -> ServerConfig {
    let kvaware =
        [old.routing.routing_logic, new.routing.routing_logic].contains(&RoutingLogic::Kvaware);
    let (peers, peer_port) = (old.routing.peers.clone(), old.routing.peer_port);
    if kvaware {
        old.routing.session_key = new.routing.session_key;
        old.routing.static_aliases = new.routing.static_aliases;
    } else {
        old.routing = RoutingConfig {
            peers,
            peer_port,
            ..new.routing
        };
    }
    // The discovery in force: the new one (restarted, or its list re-read from the
    // file), or the old one when the restart failed (then `new` carries it).
    old.discovery = new.discovery;
    old
}

/// The routing settings a router is built from (not the session key, aliases, peers).
fn policy_part(c: &RoutingConfig) -> (RoutingLogic, usize, usize, u64) {
    (
        c.routing_logic,
        c.prefix_min_match_length,
        c.prefix_chunk_size,
        c.prefix_capacity_tokens,
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
