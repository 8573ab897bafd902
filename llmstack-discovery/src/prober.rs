//! Learns each endpoint's models and readiness from `GET /v1/models`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llmstack_core::{Discover, Endpoint, EndpointId, EndpointState, ModelCard, Update};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{ProbeConfig, UpdateStream};

/// Largest `/v1/models` answer read (a few thousand adapters fit).
const MAX_MODELS_BODY: usize = 4 << 20;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Wraps a discovery source: every endpoint it yields is probed at once and then every
/// `config.interval`, and the updates passed on carry what the probes learned.
///
/// A probe is `GET <url>/health`, then `GET <url>/is_sleeping` when
/// `config.is_sleeping` is set, then `GET <url>/v1/models` (with `Authorization: Bearer
/// <api_key>` when set) within `config.timeout`. Success (2xx answers, awake, then an
/// OpenAI model list) makes the endpoint [`Ready`](EndpointState::Ready) with exactly
/// the models listed (base models and LoRA adapters, cards kept verbatim), so adapters
/// loaded at run time appear within one interval. Failure makes it
/// [`Unready`](EndpointState::Unready) and keeps its last known models, so requests for
/// them get 503, not 404:
///
/// - a ready endpoint after `config.failure_threshold` failures in a row (one slow
///   answer under load does not take it out); a sleeping engine at once;
/// - an unready endpoint comes back after `config.success_threshold` successes in a
///   row; a new endpoint is ready at its first success.
///
/// One probe per endpoint runs at a time. An update is passed on only when something
/// changed. Taking an endpoint out only stops new requests: the ones in flight finish.
///
/// The probes run in a task owned by the returned stream (dropped with it). Needs a
/// Tokio runtime.
pub fn probe(source: impl Discover, config: ProbeConfig) -> UpdateStream {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(run(source, config, tx));
    UpdateStream::new(rx, Some(task))
}

/// The probe result of one endpoint.
#[derive(Debug, Clone)]
struct Probed {
    state: EndpointState,
    models: Option<Vec<ModelCard>>,
    /// The engine answered that it sleeps: out at once, whatever the threshold.
    sleeping: bool,
}

/// What the prober knows of one discovered endpoint.
struct Tracked {
    /// As discovered (configured models).
    ep: Endpoint,
    /// Bumped when the endpoint is (re-)added or its URL changes: results of probes of
    /// an older generation are dropped (they probed another address).
    generation: u64,
    /// The last probe result that counted.
    probed: Option<Probed>,
    /// Consecutive failures (of a ready endpoint) and successes (of an unready one).
    failures: u32,
    successes: u32,
    /// The generation of the probe in flight, if any (one at a time per generation).
    probing: Option<u64>,
}

async fn run(
    mut source: impl Discover,
    config: ProbeConfig,
    tx: mpsc::Sender<Result<llmstack_core::Update, llmstack_core::BoxError>>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.timeout));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(3))
        .build(connector);
    let mut tracked: BTreeMap<EndpointId, Tracked> = BTreeMap::new();
    // As last published.
    let mut published: HashMap<EndpointId, Endpoint> = HashMap::new();
    let mut probes: JoinSet<(EndpointId, u64, Probed)> = JoinSet::new();
    // Which endpoint and generation each probe task is for (a task that panics is
    // only known by its task id).
    let mut tasks: HashMap<tokio::task::Id, (EndpointId, u64)> = HashMap::new();
    let mut next_generation: u64 = 0;
    let spawn = |probes: &mut JoinSet<(EndpointId, u64, Probed)>,
                 tasks: &mut HashMap<tokio::task::Id, (EndpointId, u64)>,
                 t: &mut Tracked| {
        t.probing = Some(t.generation);
        let handle = probes.spawn(probe_one(
            client.clone(),
            t.ep.clone(),
            t.generation,
            config.clone(),
        ));
        tasks.insert(handle.id(), (t.ep.id.clone(), t.generation));
    };
    // New endpoints are probed as they arrive; the periodic round starts one interval later.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.interval,
        config.interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut source_done = false;
    loop {
        tokio::select! {
            next = next_update(&mut source), if !source_done => {
                let update = match next {
                    Some(Ok(update)) => update,
                    Some(Err(e)) => {
                        if tx.send(Err(e)).await.is_err() { return; }
                        continue;
                    }
                    None => {
                        source_done = true;
                        tracing::warn!("discovery source ended; keeping the last endpoints");
                        continue;
                    }
                };
                for id in absorb(&mut tracked, &update, &mut next_generation) {
                    if let Some(t) = tracked.get_mut(&id)
                        && t.probing != Some(t.generation)
                    {
                        spawn(&mut probes, &mut tasks, t);
                    }
                }
                let update = match update {
                    Update::Remove(ids) => {
                        for id in &ids { published.remove(id); }
                        Update::Remove(ids)
                    }
                    Update::Reset(_) => {
                        published = tracked.values().map(|t| (t.ep.id.clone(), merge(t))).collect();
                        Update::Reset(published.values().cloned().collect())
                    }
                    Update::Add(eps) => {
                        let merged: Vec<Endpoint> = eps.iter().filter_map(|ep| tracked.get(&ep.id)).map(merge).collect();
                        for ep in &merged { published.insert(ep.id.clone(), ep.clone()); }
                        Update::Add(merged)
                    }
                };
                if tx.send(Ok(update)).await.is_err() { return; }
            }
            _ = tick.tick() => {
                // One probe per endpoint at a time: a slow one is not stacked up.
                for t in tracked.values_mut() {
                    if t.probing.is_none() {
                        spawn(&mut probes, &mut tasks, t);
                    }
                }
            }
            Some(done) = probes.join_next_with_id(), if !probes.is_empty() => {
                let (task, result) = match done {
                    Ok((task, (_, _, result))) => (task, Some(result)),
                    Err(e) => (e.id(), None),
                };
                let Some((id, generation)) = tasks.remove(&task) else { continue };
                let Some(t) = tracked.get_mut(&id) else { continue };
                if t.probing == Some(generation) {
                    t.probing = None;
                }
                // A probe of an older address, or one that panicked, says nothing.
                let Some(result) = result.filter(|_| generation == t.generation) else { continue };
                let before = t.probed.as_ref().map(|p| p.state);
                if result.state == EndpointState::Unready {
                    t.failures += 1;
                    t.successes = 0;
                    // A ready engine stays ready through failed probes below the
                    // threshold (a slow answer under load); a sleeping one goes at once.
                    if before == Some(EndpointState::Ready) && !result.sleeping && t.failures < config.failure_threshold {
                        continue;
                    }
                } else {
                    t.failures = 0;
                    t.successes += 1;
                    // An engine that was taken out comes back after enough successes.
                    if before == Some(EndpointState::Unready) && t.successes < config.success_threshold {
                        continue;
                    }
                }
                t.probed = Some(result);
                let merged = merge(t);
                if published.get(&id) != Some(&merged) {
                    if published.get(&id).map(|p| p.state) != Some(merged.state) {
                        tracing::info!(endpoint = %id, url = %merged.url, state = ?merged.state, models = merged.models.len(), "endpoint state");
                    }
                    published.insert(id, merged.clone());
                    if tx.send(Ok(Update::Add(vec![merged]))).await.is_err() { return; }
                }
            }
            () = tx.closed() => return,
        }
    }
}

async fn next_update(
    source: &mut impl Discover,
) -> Option<Result<Update, llmstack_core::BoxError>> {
    poll_fn(|cx| Pin::new(&mut *source).poll_next(cx)).await
}

/// Applies `update` to the tracked endpoints; returns the ids that are new or changed
/// (to probe now). An endpoint that is new, or whose URL changed, starts over: a new
/// generation, no probe result, [`Pending`](EndpointState::Pending) until probed.
fn absorb(
    tracked: &mut BTreeMap<EndpointId, Tracked>,
    update: &Update,
    next_generation: &mut u64,
) -> Vec<EndpointId> {
    let mut fresh = Vec::new();
    let mut insert = |tracked: &mut BTreeMap<EndpointId, Tracked>, ep: &Endpoint| {
        match tracked.get_mut(&ep.id) {
            Some(t) if t.ep == *ep => return,
            Some(t) if t.ep.url == ep.url => t.ep = ep.clone(),
            _ => {
                *next_generation += 1;
                tracked.insert(
                    ep.id.clone(),
                    Tracked {
                        ep: ep.clone(),
                        generation: *next_generation,
                        probed: None,
                        failures: 0,
                        successes: 0,
                        probing: None,
                    },
                );
            }
        }
        fresh.push(ep.id.clone());
    };
    match update {
        Update::Reset(eps) => {
            tracked.retain(|id, _| eps.iter().any(|ep| &ep.id == id));
            for ep in eps {
                insert(tracked, ep);
            }
        }
        Update::Add(eps) => {
            for ep in eps {
                insert(tracked, ep);
            }
        }
        Update::Remove(ids) => {
            for id in ids {
                tracked.remove(id);
            }
        }
    }
    fresh
}

/// The discovered endpoint with what its last counted probe learned.
fn merge(t: &Tracked) -> Endpoint {
    let mut ep = t.ep.clone();
    if let Some(p) = &t.probed {
        ep.state = p.state;
        if let Some(models) = &p.models {
            ep.models.clone_from(models);
        }
    }
    ep
}

async fn probe_one(
    client: HttpClient,
    ep: Endpoint,
    generation: u64,
    config: ProbeConfig,
) -> (EndpointId, u64, Probed) {
    let result = tokio::time::timeout(config.timeout, fetch_models(&client, &ep, &config)).await;
    let failed = |sleeping| Probed {
        state: EndpointState::Unready,
        models: None,
        sleeping,
    };
    let probed = match result {
        Ok(Ok(models)) => Probed {
            state: EndpointState::Ready,
            models: Some(models),
            sleeping: false,
        },
        Ok(Err(Failure::Sleeping)) => {
            tracing::debug!(endpoint = %ep.id, url = %ep.url, "engine sleeps");
            failed(true)
        }
        Ok(Err(Failure::Other(reason))) => {
            tracing::debug!(endpoint = %ep.id, url = %ep.url, %reason, "probe failed");
            failed(false)
        }
        Err(_) => {
            tracing::debug!(endpoint = %ep.id, url = %ep.url, "probe timed out");
            failed(false)
        }
    };
    (ep.id, generation, probed)
}

/// Why a probe failed.
enum Failure {
    /// `/is_sleeping` said so.
    Sleeping,
    /// Anything else: refused, an error status, a bad model list.
    Other(String),
}

/// `GET /health` (the engine's own liveness: 503 once its engine core died), then
/// `GET /is_sleeping` when configured (404: no sleep mode, awake), then `GET
/// /v1/models`.
async fn fetch_models(
    client: &HttpClient,
    ep: &Endpoint,
    config: &ProbeConfig,
) -> Result<Vec<ModelCard>, Failure> {
    get(client, ep, config, "/health")
        .await
        .map_err(|(_, e)| Failure::Other(e))?;
    if config.is_sleeping {
        match get(client, ep, config, "/is_sleeping").await {
            Ok(body) => {
                if parse_sleeping(&body).map_err(|e| Failure::Other(e.to_string()))? {
                    return Err(Failure::Sleeping);
                }
            }
            Err((Some(http::StatusCode::NOT_FOUND), _)) => {}
            Err((_, e)) => return Err(Failure::Other(e)),
        }
    }
    let models = get(client, ep, config, "/v1/models")
        .await
        .map_err(|(_, e)| Failure::Other(e))?;
    parse_models(&models).map_err(|e| Failure::Other(format!("/v1/models: {e}")))
}

/// `{"is_sleeping": bool}`.
fn parse_sleeping(body: &[u8]) -> Result<bool, SleepingError> {
    #[derive(serde::Deserialize)]
    struct Sleeping {
        is_sleeping: bool,
    }
    serde_json::from_slice::<Sleeping>(body)
        .map(|s| s.is_sleeping)
        .map_err(SleepingError)
}

/// An `/is_sleeping` answer that is not `{"is_sleeping": bool}`.
#[derive(Debug)]
struct SleepingError(serde_json::Error);

// === impl SleepingError ===

impl fmt::Display for SleepingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/is_sleeping: {}", self.0)
    }
}

impl std::error::Error for SleepingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The body of a 2xx answer to `GET path`; else the status (if one came) and why.
async fn get(
    client: &HttpClient,
    ep: &Endpoint,
    config: &ProbeConfig,
    path: &str,
) -> Result<Bytes, (Option<http::StatusCode>, String)> {
    let fail = |e: String| (None, e);
    let uri = ep
        .uri_for(path)
        .ok_or_else(|| fail("the endpoint URL has no host".into()))?;
    let mut req = http::Request::get(uri);
    if let Some(key) = &config.api_key {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let req = req.body(Empty::new()).map_err(|e| fail(e.to_string()))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| fail(format!("{e:?}")))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_MODELS_BODY)
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err((Some(status), format!("{path} answered {status}")));
    }
    Ok(body)
}

/// The cards of an OpenAI model list (`{"object":"list","data":[…]}`).
fn parse_models(body: &[u8]) -> Result<Vec<ModelCard>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let list: List = serde_json::from_slice(body)?;
    Ok(list
        .data
        .into_iter()
        .filter_map(ModelCard::from_card)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_list_with_adapters() {
        let body = br#"{"object":"list","data":[
            {"id":"base","object":"model","max_model_len":4096,"parent":null},
            {"id":"sql-lora","object":"model","parent":"base"},
            {"object":"model"}]}"#;
        let models = parse_models(body).unwrap();
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].card["max_model_len"], 4096);
        assert!(!models[0].is_adapter());
        assert_eq!(models[1].parent.as_deref(), Some("base"));
        assert!(parse_models(b"{}").is_err());
        assert!(matches!(
            parse_sleeping(br#"{"is_sleeping":true}"#),
            Ok(true)
        ));
        let err = parse_sleeping(b"{}").unwrap_err();
        assert!(
            err.to_string().starts_with("/is_sleeping: missing field"),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some(), "the JSON error");
    }
}
