//! The router's own metrics: the Prometheus recorder, and the gauges refreshed from
//! shared state at each scrape. (Per-request accounting is `llmstack-metrics`'
//! `AccountLayer`.)

use std::sync::OnceLock;
use std::time::Duration;

use llmstack_core::EndpointState;
use llmstack_gateway::EngineHealth;
use llmstack_metrics::names;
use metrics::{SharedString, counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::state::Shared;

/// Latency buckets (seconds): sub-millisecond router work up to long generations.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];
/// Inter-token buckets (seconds): an 8B decode step is 6–15 ms.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How long a gauge lives without being set (see [`recorder`]).
const GAUGE_IDLE: Duration = Duration::from_secs(60);

/// The process's Prometheus recorder, installed on first use (the server is the only
/// code that installs one). When an embedding program installed another recorder first,
/// the router's series go to that one and this handle renders nothing of them.
pub(crate) fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Per-engine gauges are refreshed at every render while the engine is known
            // and its stats fresh; an engine removed or gone silent drops out after a
            // minute instead of showing its last value forever.
            let builder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .set_buckets_for_metric(
                    Matcher::Full(names::REQUEST_DURATION.into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::TTFT.into()), LATENCY_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::ITL.into()), ITL_BUCKETS)
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "histogram buckets rejected; using defaults");
                    PrometheusBuilder::new().build_recorder()
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows only its own series"
                );
            }
            names::describe();
            handle
        })
        .clone()
}

/// Keeps histograms bounded: the exporter holds every recorded sample until upkeep
/// folds them into the buckets. Every second: a busy router records ~100k samples a
/// second (a latency per streamed token), which at the exporter's 5 s default held
/// megabytes between upkeeps.
pub(crate) async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// `/metrics`: refreshes the gauges read from shared state, then renders.
pub(crate) fn render(shared: &Shared, handle: &PrometheusHandle) -> String {
    let set = shared.endpoints();
    let stats = shared.stats.snapshot();
    let mut by_state = [0u32; 3];
    // Every model ever served or configured, so one whose engines all left reads 0.
    let mut ready_by_model: std::collections::HashMap<&str, u32> =
        set.seen_models().map(|m| (m, 0)).collect();
    for ep in set.iter() {
        for model in &ep.models {
            *ready_by_model.entry(model.id.as_str()).or_default() +=
                u32::from(ep.state == EndpointState::Ready);
        }
        let engine = SharedString::from(ep.id.to_string());
        by_state[match ep.state {
            EndpointState::Pending => 0,
            EndpointState::Ready => 1,
            EndpointState::Unready => 2,
        }] += 1;
        gauge!(names::IN_FLIGHT, "engine" => engine.clone())
            .set(shared.route.router().in_flight().get(&ep.id) as f64);
        let ejected = matches!(
            shared.outliers.state(&ep.id),
            Some(EngineHealth::Ejected { .. } | EngineHealth::HalfOpen { .. })
        );
        gauge!(names::ENGINE_EJECTED, "engine" => engine.clone()).set(f64::from(u8::from(ejected)));
        if let Some(s) = stats.get(&ep.id) {
            gauge!(names::ENGINE_RUNNING, "engine" => engine.clone()).set(s.running);
            gauge!(names::ENGINE_WAITING, "engine" => engine.clone()).set(s.waiting);
            gauge!(names::ENGINE_KV_CACHE_USAGE, "engine" => engine.clone()).set(s.kv_cache_usage);
            counter!(names::ENGINE_PREFIX_CACHE_HITS, "engine" => engine.clone())
                .absolute(s.prefix_cache_hits as u64);
            if let Some(rate) = s.prefix_cache_hit_rate {
                gauge!(names::ENGINE_PREFIX_CACHE_HIT, "engine" => engine).set(rate);
            }
        }
    }
    if let Some(peers) = shared.route.router().in_flight().peers_heard() {
        gauge!(names::PEER_REPLICAS).set(f64::from(peers));
    }
    for (state, n) in ["pending", "ready", "unready"].into_iter().zip(by_state) {
        gauge!(names::ENDPOINTS, "state" => state).set(f64::from(n));
    }
    if let Some(index) = shared.route.router().kv_index() {
        for (engine, blocks) in crate::kv::engine_blocks(index) {
            let engine = SharedString::from(engine.to_string());
            gauge!(names::KV_INDEX_BLOCKS, "engine" => engine.clone(), "medium" => "gpu")
                .set(blocks.gpu as f64);
            gauge!(names::KV_INDEX_BLOCKS, "engine" => engine, "medium" => "cpu")
                .set(blocks.cpu as f64);
        }
    }
    gauge!(names::CLIENT_CONNECTIONS).set(shared.open_connections() as f64);
    for (model, class, depth) in shared.admission.depths() {
        gauge!(names::QUEUE_DEPTH, "model" => model.to_string(), "priority" => class.as_str())
            .set(depth as f64);
    }
    if let Some(keys) = &shared.keys {
        gauge!(names::API_KEYS).set(keys.len() as f64);
    }
    for (model, n) in ready_by_model {
        gauge!(names::MODEL_READY_ENDPOINTS, "model" => model.to_owned()).set(f64::from(n));
    }
    handle.render()
}
