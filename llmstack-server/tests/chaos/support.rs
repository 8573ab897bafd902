//! A router in front of simulated engines, and a load generator, for the chaos tests.
//! (A trimmed copy of `tests/it/support.rs`, which belongs to the `it` binary.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub use llmstack_test_support::*;

#[path = "../common/config.rs"]
mod config;
pub use config::config_for;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use llmstack_server::{Server, ServerConfig};
use llmstack_sim::{EngineConfig, LatencyProfile, SimEngine};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The model every engine serves.
pub const M: &str = "m";

/// Engines and the router in front of them.
pub struct Stack {
    pub engines: Vec<SimEngine>,
    pub server: Server,
    pub url: String,
    pub client: HttpClient,
}

/// An instant-profile engine config (no model time).
pub fn instant() -> EngineConfig {
    EngineConfig::new(M).with_profile(LatencyProfile::instant())
}

/// An engine taking `step_ms` per decode step whatever its batch (one token per step
/// per request), so that streams last a known time however many share the engine.
pub fn paced(step_ms: f64) -> EngineConfig {
    EngineConfig::new(M).with_profile(LatencyProfile {
        name: "paced".into(),
        base_ms: step_ms,
        ..LatencyProfile::instant()
    })
}

/// Starts the engines, then a router in front of them (adjusted by `tweak`), and waits
/// until every engine is ready.
pub async fn stack(configs: Vec<EngineConfig>, tweak: impl FnOnce(&mut ServerConfig)) -> Stack {
    let mut engines = Vec::new();
    for c in configs {
        engines.push(
            SimEngine::start(c, "127.0.0.1:0".parse().unwrap(), 0)
                .await
                .unwrap(),
        );
    }
    let mut config = config_for(&engines);
    tweak(&mut config);
    let server = Server::start(config).await.unwrap();
    let s = Stack {
        url: format!("http://{}", server.local_addr()),
        engines,
        server,
        client: client(),
    };
    let n = s.engines.len();
    let ready = eventually(Duration::from_secs(10), || async {
        s.ready_engines().await == n
    })
    .await;
    assert!(ready, "engines did not become ready");
    s
}

impl Stack {
    /// `self.url + path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `path` on the admin listener (which answers during a drain too).
    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.admin_addr().unwrap())
    }

    /// The router's `/engines` (from the admin listener).
    pub async fn engine_list(&self) -> Vec<Value> {
        let list = get(&self.client, &self.admin("/engines")).await.json();
        list.as_array().unwrap().clone()
    }

    /// How many engines the router lists as ready.
    pub async fn ready_engines(&self) -> usize {
        let list = self.engine_list().await;
        list.iter().filter(|e| e["state"] == "ready").count()
    }

    /// Engine `i`'s entry in the router's `/engines`.
    pub async fn engine_entry(&self, i: usize) -> Value {
        let want = self.engines[i].base_url();
        let list = self.engine_list().await;
        let entry = list.into_iter().find(|e| e["url"] == want.as_str());
        entry.unwrap_or_else(|| panic!("{want} not listed"))
    }

    /// The router's id of engine `i`.
    pub async fn id_of(&self, i: usize) -> String {
        let entry = self.engine_entry(i).await;
        entry["id"].as_str().unwrap().to_owned()
    }

    /// The router's `/health` counters (from the admin listener).
    pub async fn health(&self) -> Value {
        get(&self.client, &self.admin("/health")).await.json()
    }

    /// The router's Prometheus text.
    pub async fn metrics(&self) -> String {
        let a = get(&self.client, &self.admin("/metrics")).await;
        a.text().to_owned()
    }

    /// Requests engine `i` completed (any finish reason), from its `/metrics`.
    pub async fn served(&self, i: usize) -> f64 {
        served(&self.client, &self.engines[i]).await
    }

    /// Waits until the router has nothing in flight and no engine is running a
    /// request; panics with the counts otherwise.
    pub async fn assert_clean(&self) {
        let clean = eventually(Duration::from_secs(5), || async {
            if self.health().await["in_flight"] != 0 {
                return false;
            }
            for e in &self.engines {
                if running(&self.client, e).await != 0.0 {
                    return false;
                }
            }
            true
        })
        .await;
        let mut running_now = Vec::new();
        for e in &self.engines {
            running_now.push(running(&self.client, e).await);
        }
        assert!(
            clean,
            "not clean: router {}, engines running {running_now:?}",
            self.health().await
        );
    }
}

/// A sample of engine `e`'s `/metrics`, summed over every series of that name with
/// these labels.
pub async fn engine_metric(
    c: &HttpClient,
    e: &SimEngine,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let text = get(c, &format!("{}/metrics", e.base_url())).await;
    sum_samples(text.text(), name, labels)
}

/// Requests engine `e` generated in full (`ignore_eos`: they end at `max_tokens`).
pub async fn served(c: &HttpClient, e: &SimEngine) -> f64 {
    let length = [("finished_reason", "length")];
    engine_metric(c, e, "vllm:request_success_total", &length).await
}

/// Requests engine `e` is running now.
pub async fn running(c: &HttpClient, e: &SimEngine) -> f64 {
    engine_metric(c, e, "vllm:num_requests_running", &[]).await
}

/// The sum of every sample of `name` carrying all of `labels` (0 when none does).
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (n == name && all).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// How much the samples of `name` with `labels` grew from `before` to `after` (two
/// scrapes of the router's `/metrics`). The Prometheus recorder is the process's, and
/// an engine's id is its URL: a test that runs in the same process as another may
/// meet an engine id (a port) that test used, so counts are taken as differences.
pub fn grew(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sum_samples(after, name, labels) - sum_samples(before, name, labels)
}

/// A small chat request.
pub fn chat(max_tokens: u32) -> Value {
    json!({"model": M, "messages": [{"role": "user", "content": "Hello there"}],
           "max_tokens": max_tokens, "ignore_eos": true})
}

/// A small streamed completion request.
pub fn streamed(max_tokens: u32) -> Value {
    json!({"model": M, "prompt": "Once upon a time", "max_tokens": max_tokens,
           "stream": true, "ignore_eos": true})
}

/// Asserts the OpenAI error shape with this status and type.
pub fn assert_openai_error(status: u16, body: &str, kind: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let err = &v["error"];
    assert_eq!(err["code"], status, "{body}");
    assert_eq!(err["type"], kind, "{body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// What one client saw: the status and body, or the transport error.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Answer, String>,
    /// From sending the request to the end of the body.
    pub took: Duration,
}

impl Outcome {
    /// The status, `None` for a transport error.
    pub fn status(&self) -> Option<u16> {
        self.result.as_ref().ok().map(|a| a.status.as_u16())
    }
}

/// A POST that reports transport errors instead of panicking.
pub async fn try_post(c: &HttpClient, url: &str, body: &Value) -> Outcome {
    let start = Instant::now();
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let result = async {
        let res = c
            .request(req)
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| format!("body: {e:?}"))?;
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        })
    }
    .await;
    Outcome {
        result,
        took: start.elapsed(),
    }
}

/// Closed-loop load: `workers` clients each sending `body` to `url` one request after
/// another (with `pause` between), until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    pub fn start(
        c: &HttpClient,
        url: String,
        body: Value,
        workers: usize,
        pause: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (c, url, body) = (c.clone(), url.clone(), body.clone());
                let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        seen.push(try_post(&c, &url, &body).await);
                        done.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(pause).await;
                    }
                    seen
                })
            })
            .collect();
        Self {
            stop,
            done,
            workers,
        }
    }

    /// Requests answered so far.
    pub fn completed(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` requests were answered (panics after 20 s).
    pub async fn until_completed(&self, n: usize) {
        let reached = eventually(Duration::from_secs(20), || async { self.completed() >= n }).await;
        assert!(reached, "the load stalled at {} requests", self.completed());
    }

    /// Stops the workers and returns what every request saw.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.await.unwrap());
        }
        all
    }
}

/// Counts of outcomes by status (`None`: transport error), for messages.
pub fn tally(outcomes: &[Outcome]) -> std::collections::BTreeMap<Option<u16>, usize> {
    let mut t = std::collections::BTreeMap::new();
    for o in outcomes {
        *t.entry(o.status()).or_default() += 1;
    }
    t
}

/// The first few non-200 outcomes, for messages.
pub fn failures(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| o.status() != Some(200))
        .take(5)
        .map(|o| match &o.result {
            Ok(a) => format!("{} {}", a.status, a.text()),
            Err(e) => e.clone(),
        })
        .collect()
}
