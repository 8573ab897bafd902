//! A new configuration applied to the running server: what changes while serving, and
//! what is kept as it runs (a restart applies it).

use llmstack_routing::{RouteHandle, RoutingConfig, RoutingLogic};

use super::KvSwitch;
use crate::config::ServerConfig;
use crate::discover::Rediscover;
use crate::kv::KvParts;

/// The outcome of [`apply`].
pub(super) struct Applied {
    /// The configuration now in force.
    pub(super) in_force: ServerConfig,
    /// The changed settings kept as they run (they need a restart).
    pub(super) restart: Vec<String>,
    /// Why a part that should have changed did not.
    pub(super) error: Option<String>,
}

/// Applies `new` over `old`, the configuration in force.
pub(super) async fn apply(
    old: &ServerConfig,
    mut new: ServerConfig,
    route: &RouteHandle,
    discovery: &mut Rediscover,
    kv: &KvSwitch,
) -> Applied {
    let mut errors = Vec::new();
    let (o, n) = (&old.routing, &new.routing);
    if o.session_key != n.session_key {
        route.set_session_key(n.session_key.as_deref());
    }
    if o.static_aliases != n.static_aliases {
        route.set_aliases(&n.static_aliases);
    }
    let kvaware = n.routing_logic == RoutingLogic::Kvaware;
    if policy_part(o) != policy_part(n) || (kvaware && old.kv != new.kv) {
        match rebuild_router(&new, route, kv).await {
            Ok(()) => tracing::info!(
                policy = new.routing.routing_logic.as_str(),
                "dynamic config: routing logic changed"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "dynamic config: routing not changed");
                errors.push(format!("routing not changed: {e}"));
                let (session_key, aliases) = (n.session_key.clone(), n.static_aliases.clone());
                new.routing = RoutingConfig {
                    session_key,
                    static_aliases: aliases,
                    ..old.routing.clone()
                };
                new.kv.clone_from(&old.kv);
            }
        }
    }
    if discovery_changed(old, &new) {
        match discovery.restart(&new.discovery).await {
            Ok(()) => tracing::info!(
                kind = ?new.discovery.service_discovery,
                "dynamic config: discovery restarted"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "dynamic config: discovery not changed");
                errors.push(format!("discovery not changed: {e}"));
                new.discovery.clone_from(&old.discovery);
            }
        }
    }
    let restart = keep_running(old, &mut new);
    Applied {
        in_force: new,
        restart,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

/// Routes with a new router built from `new`'s routing settings, over the same
/// in-flight counters: for `kvaware`, with a KV-event path started for it (which
/// replaces the running one); otherwise the running one, if any, stops.
async fn rebuild_router(
    new: &ServerConfig,
    route: &RouteHandle,
    kv: &KvSwitch,
) -> Result<(), String> {
    let router = new
        .routing
        .router()
        .with_in_flight(route.router().in_flight().clone());
    let (router, parts) = if new.routing.routing_logic == RoutingLogic::Kvaware {
        let config = new.kv.clone().unwrap_or_default();
        let (router, parts) =
            KvParts::start(&config, router, kv.endpoints.clone(), kv.stats.clone())
                .await
                .map_err(|e| format!("--tokenizer: {e}"))?;
        (router, Some(parts))
    } else {
        (router, None)
    };
    // Engines put to sleep through the router stay out of routing.
    for id in route.router().asleep() {
        router.set_asleep(&id, true);
    }
    route.set_router(router);
    let old = std::mem::replace(
        &mut *kv
            .slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        parts,
    );
    drop(old); // stops the old subscriber and tokenizer tasks
    Ok(())
}

/// Puts back into `new` the settings that need a restart (they stay as they run);
/// their names.
fn keep_running(old: &ServerConfig, new: &mut ServerConfig) -> Vec<String> {
    let mut restart = Vec::new();
    let mut keep = |name: &str, differs: bool| {
        if differs {
            restart.push(name.to_owned());
        }
        differs
    };
    if keep(
        "peers",
        (&old.routing.peers, old.routing.peer_port) != (&new.routing.peers, new.routing.peer_port),
    ) {
        new.routing.peers.clone_from(&old.routing.peers);
        new.routing.peer_port = old.routing.peer_port;
    }
    if keep("proxy settings", old.proxy != new.proxy) {
        new.proxy = old.proxy.clone();
    }
    if keep("gateway settings", old.gateway != new.gateway) {
        new.gateway = old.gateway.clone();
    }
    if keep("scrape settings", old.scrape != new.scrape) {
        new.scrape = old.scrape.clone();
    }
    let server = |c: &ServerConfig| {
        (
            c.listen,
            c.admin,
            c.main_port_metrics,
            c.log_filter.clone(),
            c.log_json,
            c.otel.clone(),
            c.shutdown_grace,
            c.max_connections,
            c.root_path.clone(),
        )
    };
    if keep("server settings", server(old) != server(new)) {
        new.listen = old.listen;
        new.admin = old.admin;
        new.main_port_metrics = old.main_port_metrics;
        new.log_filter.clone_from(&old.log_filter);
        new.log_json = old.log_json;
        new.otel.clone_from(&old.otel);
        new.shutdown_grace = old.shutdown_grace;
        new.max_connections = old.max_connections;
        new.root_path.clone_from(&old.root_path);
    }
    restart
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

/// The routing settings a router is built from (not the session key, aliases, peers).
fn policy_part(c: &RoutingConfig) -> (RoutingLogic, usize, usize, u64) {
    (
        c.routing_logic,
        c.prefix_min_match_length,
        c.prefix_chunk_size,
        c.prefix_capacity_tokens,
    )
}
