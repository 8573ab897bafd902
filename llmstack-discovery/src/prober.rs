//! Learns each endpoint's models and readiness from `GET /v1/models`.

use std::collections::{BTreeMap, HashMap, HashSet};
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

/// Consecutive failed probes that take a ready endpoint out of routing.
const FAILURES_BEFORE_UNREADY: u32 = 2;

/// Largest `/v1/models` answer read (a few thousand adapters fit).
const MAX_MODELS_BODY: usize = 4 << 20;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Wraps a discovery source: every endpoint it yields is probed at once and then every
/// `config.interval`, and the updates passed on carry what the probes learned.
///
/// A probe is `GET <url>/health` then `GET <url>/v1/models` (with `Authorization:
/// Bearer <api_key>` when set)
/// within `config.timeout`. Success (2xx twice, then an OpenAI model list) makes the endpoint
/// [`Ready`](EndpointState::Ready) with exactly the models listed (base models and LoRA
/// adapters, cards kept verbatim). Failure makes it
/// [`Unready`](EndpointState::Unready) (a ready endpoint after two failures in a row, so
/// one slow answer under load does not take it out) and keeps its configured models, so
/// requests for them get 503, not 404. One probe per endpoint runs at a time. An update
/// is passed on only when something changed.
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
    // As discovered (configured models), and as last published.
    let mut discovered: BTreeMap<EndpointId, Endpoint> = BTreeMap::new();
    let mut published: HashMap<EndpointId, Endpoint> = HashMap::new();
    let mut probed: HashMap<EndpointId, Probed> = HashMap::new();
    let mut probes: JoinSet<(EndpointId, Probed)> = JoinSet::new();
    let mut probing: HashSet<EndpointId> = HashSet::new();
    let mut failures: HashMap<EndpointId, u32> = HashMap::new();
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
                let fresh = absorb(&mut discovered, &update);
                probed.retain(|id, _| discovered.contains_key(id));
                for id in fresh {
                    if let Some(ep) = discovered.get(&id)
                        && probing.insert(id.clone())
                    {
                        probes.spawn(probe_one(client.clone(), ep.clone(), config.clone()));
                    }
                }
                failures.retain(|id, _| discovered.contains_key(id));
                let update = match update {
                    Update::Remove(ids) => {
                        for id in &ids { published.remove(id); }
                        Update::Remove(ids)
                    }
                    Update::Reset(_) => {
                        published = discovered.values().map(|ep| (ep.id.clone(), merge(ep, probed.get(&ep.id)))).collect();
                        Update::Reset(published.values().cloned().collect())
                    }
                    Update::Add(eps) => {
                        let merged: Vec<Endpoint> = eps.iter().filter_map(|ep| discovered.get(&ep.id)).map(|ep| merge(ep, probed.get(&ep.id))).collect();
                        for ep in &merged { published.insert(ep.id.clone(), ep.clone()); }
                        Update::Add(merged)
                    }
                };
                if tx.send(Ok(update)).await.is_err() { return; }
            }
            _ = tick.tick() => {
                // One probe per endpoint at a time: a slow one is not stacked up.
                for ep in discovered.values() {
                    if probing.insert(ep.id.clone()) {
                        probes.spawn(probe_one(client.clone(), ep.clone(), config.clone()));
                    }
                }
            }
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                let Ok((id, result)) = done else { continue };
                probing.remove(&id);
                let Some(ep) = discovered.get(&id) else { continue };
                let failed = failures.entry(id.clone()).or_insert(0);
                if result.state == EndpointState::Unready {
                    *failed += 1;
                    // A ready engine stays ready through one failed probe (a slow answer
                    // under load); the second in a row takes it out.
                    let was_ready = probed.get(&id).is_some_and(|p| p.state == EndpointState::Ready);
                    if was_ready && *failed < FAILURES_BEFORE_UNREADY {
                        continue;
                    }
                } else {
                    *failed = 0;
                }
                probed.insert(id.clone(), result);
                let merged = merge(ep, probed.get(&id));
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

/// Applies `update` to the discovered map; returns the ids that are new or changed.
fn absorb(discovered: &mut BTreeMap<EndpointId, Endpoint>, update: &Update) -> Vec<EndpointId> {
    let mut fresh = Vec::new();
    let mut insert = |discovered: &mut BTreeMap<EndpointId, Endpoint>, ep: &Endpoint| {
        if discovered.get(&ep.id) != Some(ep) {
            fresh.push(ep.id.clone());
            discovered.insert(ep.id.clone(), ep.clone());
        }
    };
    match update {
        Update::Reset(eps) => {
            discovered.retain(|id, _| eps.iter().any(|ep| &ep.id == id));
            for ep in eps {
                insert(discovered, ep);
            }
        }
        Update::Add(eps) => {
            for ep in eps {
                insert(discovered, ep);
            }
        }
        Update::Remove(ids) => {
            for id in ids {
                discovered.remove(id);
            }
        }
    }
    fresh
}

/// The discovered endpoint with what its last probe learned.
fn merge(ep: &Endpoint, probed: Option<&Probed>) -> Endpoint {
    let mut ep = ep.clone();
    if let Some(p) = probed {
        ep.state = p.state;
        if let Some(models) = &p.models {
            ep.models.clone_from(models);
        }
    }
    ep
}

async fn probe_one(client: HttpClient, ep: Endpoint, config: ProbeConfig) -> (EndpointId, Probed) {
    let result = tokio::time::timeout(config.timeout, fetch_models(&client, &ep, &config)).await;
    let probed = match result {
        Ok(Ok(models)) => Probed {
            state: EndpointState::Ready,
            models: Some(models),
        },
        Ok(Err(reason)) => {
            tracing::debug!(endpoint = %ep.id, url = %ep.url, %reason, "probe failed");
            Probed {
                state: EndpointState::Unready,
                models: None,
            }
        }
        Err(_) => {
            tracing::debug!(endpoint = %ep.id, url = %ep.url, "probe timed out");
            Probed {
                state: EndpointState::Unready,
                models: None,
            }
        }
    };
    (ep.id, probed)
}

/// `GET /health` (the engine's own liveness: 503 once its engine core died), then
/// `GET /v1/models`.
async fn fetch_models(
    client: &HttpClient,
    ep: &Endpoint,
    config: &ProbeConfig,
) -> Result<Vec<ModelCard>, String> {
    get(client, ep, config, "/health").await?;
    parse_models(&get(client, ep, config, "/v1/models").await?)
}

async fn get(
    client: &HttpClient,
    ep: &Endpoint,
    config: &ProbeConfig,
    path: &str,
) -> Result<Bytes, String> {
    let uri = ep.uri_for(path).ok_or("the endpoint URL has no host")?;
    let mut req = http::Request::get(uri);
    if let Some(key) = &config.api_key {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_MODELS_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{path} answered {status}"));
    }
    Ok(body)
}

/// The cards of an OpenAI model list (`{"object":"list","data":[…]}`).
fn parse_models(body: &[u8]) -> Result<Vec<ModelCard>, String> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| format!("/v1/models: {e}"))?;
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
    }
}
