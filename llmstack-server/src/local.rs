//! Routes the router answers itself.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use llmstack_gateway::EngineHealth;
use serde_json::{Value, json};

use crate::state::Shared;
use crate::telemetry;

/// A local answer's body.
type Body = Full<Bytes>;

/// A router-local route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    Metrics,
    Models,
    Engines,
    Health,
    Ready,
    Version,
}

/// The local route at `path`, if any.
pub(crate) fn route(path: &str) -> Option<Local> {
    Some(match path {
        "/metrics" => Local::Metrics,
        "/v1/models" => Local::Models,
        "/engines" => Local::Engines,
        "/health" => Local::Health,
        "/ready" => Local::Ready,
        "/version" => Local::Version,
        _ => return None,
    })
}

/// Answers a local route from the current state.
pub(crate) fn answer(shared: &Shared, route: Local) -> Response<Body> {
    match route {
        Local::Metrics => metrics_response(telemetry::render(shared, &shared.metrics)),
        Local::Models => json_response(StatusCode::OK, &models(shared)),
        Local::Engines => json_response(StatusCode::OK, &engines(shared)),
        Local::Health => {
            let c = shared.forward.counters();
            let mut health = json!({
                "status": "healthy",
                "in_flight": shared.route.router().in_flight().total(),
                "requests": shared.requests.load(Ordering::Relaxed),
                "errors": shared.errors.load(Ordering::Relaxed),
                "retries": c.retries.load(Ordering::Relaxed),
                "broken_streams": c.broken_streams.load(Ordering::Relaxed),
                "timeouts": c.timeouts.load(Ordering::Relaxed),
                "engine_connections_opened": shared.forward.connections_opened(),
                "client_connections": shared.open_connections(),
                "max_client_connections": shared.max_connections,
            });
            // production-stack's /health echoes its dynamic config.
            if let (Some(d), Some(map)) = (&shared.dynamic, health.as_object_mut()) {
                map.insert("dynamic_config".into(), d.to_json());
            }
            json_response(StatusCode::OK, &health)
        }
        Local::Ready => {
            let ready = shared.endpoints().ready_count();
            if shared.draining.load(Ordering::Relaxed) {
                llmstack_core::Error::ShuttingDown
                    .to_response()
                    .map(Full::new)
            } else if ready == 0 {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "not ready", "ready_engines": 0}),
                )
            } else {
                json_response(
                    StatusCode::OK,
                    &json!({"status": "ready", "ready_engines": ready}),
                )
            }
        }
        Local::Version => json_response(
            StatusCode::OK,
            &json!({"version": env!("CARGO_PKG_VERSION")}),
        ),
    }
}

/// Answers a local route; `/metrics` renders on the blocking pool (about a millisecond
/// with hundreds of engines), so the request threads are never stalled by a scrape.
pub(crate) async fn answer_async(shared: &Arc<Shared>, route: Local) -> Response<Body> {
    if route != Local::Metrics {
        return answer(shared, route);
    }
    let s = Arc::clone(shared);
    match tokio::task::spawn_blocking(move || telemetry::render(&s, &s.metrics)).await {
        Ok(text) => metrics_response(text),
        Err(e) => {
            tracing::warn!(error = %e, "rendering /metrics failed");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "rendering /metrics failed"}),
            )
        }
    }
}

fn metrics_response(text: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// A JSON response.
fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The union of the ready engines' model lists: one card per model id (the first
/// engine's, in id order), with adapters' `parent` and extra fields such as
/// `max_model_len` kept as the engine sent them.
fn models(shared: &Shared) -> Value {
    let set = shared.endpoints();
    let mut seen = HashSet::new();
    let mut data = Vec::new();
    for ep in set
        .iter()
        .filter(|ep| ep.state == llmstack_core::EndpointState::Ready)
    {
        for model in &ep.models {
            if !seen.insert(model.id.as_str()) {
                continue;
            }
            if model.card.is_empty() {
                data.push(json!({
                    "id": model.id, "object": "model", "owned_by": "vllm",
                    "root": model.id, "parent": model.parent,
                }));
            } else {
                data.push(Value::Object(model.card.clone()));
            }
        }
    }
    json!({"object": "list", "data": data})
}

/// An engine's ejection state for `/engines`.
fn outlier(state: Option<EngineHealth>) -> Value {
    match state.unwrap_or(EngineHealth::Healthy { failures: 0 }) {
        EngineHealth::Healthy { failures } => json!({"state": "serving", "failures": failures}),
        EngineHealth::Ejected {
            remaining,
            ejections,
        } => json!({"state": "ejected", "remaining_ms": remaining.as_millis() as u64,
            "ejections": ejections}),
        EngineHealth::HalfOpen { ejections, trial } => {
            json!({"state": "half_open", "ejections": ejections, "trial_in_flight": trial})
        }
    }
}

/// Every known engine with its state and load.
fn engines(shared: &Shared) -> Value {
    let set = shared.endpoints();
    let stats = shared.stats.snapshot();
    let now = tokio::time::Instant::now();
    // kvaware: every publisher's status and the index's blocks per engine, read once.
    let parts = shared
        .kv
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The router in force, read once.
    let router = shared.route.router();
    let kv = parts
        .as_ref()
        .zip(router.kv_index())
        .map(|(kv, index)| (kv.statuses(), crate::kv::engine_blocks(index)));
    let asleep = router.asleep();
    let list: Vec<Value> = set
        .iter()
        .map(|ep| {
            let models: Vec<Value> = ep
                .models
                .iter()
                .map(|m| json!({"id": m.id, "parent": m.parent}))
                .collect();
            json!({
                "id": ep.id,
                "url": ep.url.to_string().trim_end_matches('/'),
                "models": models,
                "state": ep.state,
                // Put to sleep through the router (`/sleep`): out of routing until woken.
                "asleep": asleep.contains(&ep.id),
                "role": ep.role,
                "labels": ep.labels,
                "in_flight": router.in_flight().get(&ep.id),
                // --peers: what the other router replicas last said they have there.
                "peer_in_flight": router.in_flight().peer_totals(&ep.id).map(|(requests, pending)| {
                    json!({"requests": requests, "pending_prefill_tokens": pending})
                }),
                // Outlier ejection: serving, ejected (for how long) or half-open.
                "outlier": outlier(shared.outliers.state(&ep.id)),
                // prefixaware: this engine's share of the prefix index, in chunks.
                "prefix_index": router.with_index(|index| {
                    index
                        .usage(&ep.id)
                        .map(|(chunks, budget)| json!({"chunks": chunks, "budget": budget}))
                }),
                // The last scrape of its /metrics; null when none is fresh.
                "stats": stats.get_at(&ep.id, now).map(|s| json!({
                    "running": s.running,
                    "waiting": s.waiting,
                    "kv_cache_usage": s.kv_cache_usage,
                    "prefix_cache_hit_rate": s.prefix_cache_hit_rate,
                    "num_gpu_blocks": s.num_gpu_blocks,
                    "block_size": s.block_size,
                    "lora_running": s.lora_running,
                    "lora_waiting": s.lora_waiting,
                    "age_ms": now.saturating_duration_since(s.scraped_at).as_millis() as u64,
                })),
                // kvaware: its KV-event publishers and what the KV index holds for it.
                "kv_events": kv.as_ref()
                    .map(|(statuses, blocks)| crate::kv::engine_json(&ep.id, statuses, blocks)),
            })
        })
        .collect();
    Value::Array(list)
}
