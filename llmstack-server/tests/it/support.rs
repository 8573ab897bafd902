//! A router in front of simulated engines, for the tests.

use std::time::Duration;

pub use llmstack_test_support::*;

#[path = "../common/config.rs"]
mod config;
pub use config::config_for;

use llmstack_server::{Server, ServerConfig};
use llmstack_sim::{EngineConfig, LatencyProfile, SimEngine};
use serde_json::{Value, json};

/// Engines and the router in front of them.
pub struct Stack {
    pub engines: Vec<SimEngine>,
    pub server: Server,
    pub url: String,
    pub client: HttpClient,
}

/// An instant-profile engine config (no model time).
pub fn instant(model: &str) -> EngineConfig {
    EngineConfig::new(model).with_profile(LatencyProfile::instant())
}

/// An engine with the calibrated H100 timing (7 ms+ per token).
pub fn h100(model: &str) -> EngineConfig {
    EngineConfig::new(model).with_profile(LatencyProfile::llama3_8b_h100())
}

/// Two instant engines serving `model` on one port at two addresses, 127.0.0.2 and
/// 127.0.0.3 (DNS A records carry no port).
pub async fn engines_at_two_addresses(model: &str) -> (SimEngine, SimEngine) {
    loop {
        let a = SimEngine::start(instant(model), "127.0.0.2:0".parse().unwrap(), 0)
            .await
            .unwrap();
        let at = format!("127.0.0.3:{}", a.addr().port()).parse().unwrap();
        if let Ok(b) = SimEngine::start(instant(model), at, 0).await {
            return (a, b);
        }
    }
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
    let url = format!("http://{}", server.local_addr());
    let client = client();
    let n = engines.len();
    let engines_url = engines_url(&server);
    let ready = eventually(Duration::from_secs(5), || {
        let (c, u) = (client.clone(), engines_url.clone());
        async move {
            let engines = get(&c, &u).await.json();
            engines
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["state"] == "ready")
                .count()
                == n
        }
    })
    .await;
    assert!(ready || n == 0, "engines did not become ready");
    Stack {
        engines,
        server,
        url,
        client,
    }
}

/// Where `server` lists its engines with no key needed: the admin listener's
/// `/engines`, else the main one's.
pub fn engines_url(server: &Server) -> String {
    let addr = server.admin_addr().unwrap_or(server.local_addr());
    format!("http://{addr}/engines")
}

impl Stack {
    /// A started router and the engines behind it.
    pub fn new(server: Server, engines: Vec<SimEngine>) -> Self {
        Self {
            url: format!("http://{}", server.local_addr()),
            engines,
            server,
            client: client(),
        }
    }

    /// `self.url + path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Engine `i`'s entry in the router's `/engines`, if listed.
    pub async fn engine_entry(&self, i: usize) -> Option<Value> {
        let want = self.engines[i].base_url();
        let engines = get(&self.client, &engines_url(&self.server)).await.json();
        engines
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == want.as_str())
            .cloned()
    }

    /// The router's id of engine `i`.
    pub async fn id_of(&self, i: usize) -> String {
        let entry = self.engine_entry(i).await;
        let entry = entry.unwrap_or_else(|| panic!("{} not listed", self.engines[i].base_url()));
        entry["id"].as_str().unwrap().to_owned()
    }

    /// The router's `/health` counters.
    pub async fn health(&self) -> Value {
        get(&self.client, &self.at("/health")).await.json()
    }
}

/// Requests engine `e` finished, by reason, from its `/metrics`.
pub async fn finished(c: &HttpClient, e: &SimEngine, reason: &str) -> f64 {
    let text = get(c, &format!("{}/metrics", e.base_url())).await;
    sample(
        text.text(),
        "vllm:request_success_total",
        &[("finished_reason", reason)],
    )
    .unwrap_or(0.0)
}

/// A small chat request.
pub fn chat(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hello there"}],
           "max_tokens": max_tokens, "ignore_eos": true})
}

/// A small streamed completion request.
pub fn streamed(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens,
           "stream": true, "ignore_eos": true})
}

/// Asserts the OpenAI error shape and status.
pub fn assert_error(a: &Answer, status: u16, kind: &str) {
    assert_eq!(a.status.as_u16(), status, "{}", a.text());
    let body = a.json();
    let err = &body["error"];
    assert_eq!(err["code"], status, "{body}");
    assert_eq!(err["type"], kind, "{body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err.get("param").is_some(), "{body}");
}

/// A POST whose response head has arrived; the body is the caller's to read (or drop,
/// to disconnect mid-stream).
pub async fn open(
    c: &HttpClient,
    url: &str,
    body: &Value,
) -> http::Response<hyper::body::Incoming> {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    c.request(req).await.unwrap()
}

/// Reads `n` body frames of `res`.
pub async fn read_frames(res: &mut http::Response<hyper::body::Incoming>, n: usize) {
    use http_body_util::BodyExt;
    for _ in 0..n {
        res.body_mut().frame().await.unwrap().unwrap();
    }
}

/// Replaces the file at once (as a ConfigMap update does), never half-written.
pub fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Starts the router on the dynamic config `file`, probing every 0.2 s.
pub async fn router_on(file: &TempFile, engines: Vec<SimEngine>) -> Stack {
    let path = file.0.to_str().unwrap().to_owned();
    let args = [
        "llmstack-server",
        "--dynamic-config-yaml",
        &path,
        "--host",
        "127.0.0.1",
    ];
    let args = args.into_iter().chain(["--port", "0", "--admin-port", "0"]);
    let args = args.chain(["--static-backend-health-check-interval", "0.2"]);
    let Ok((llmstack_server::Action::Serve(config), _)) =
        llmstack_server::parse(args.map(str::to_owned))
    else {
        panic!("the file is valid");
    };
    Stack::new(Server::start(*config).await.unwrap(), engines)
}

/// A file in a fresh temporary directory, removed with it when dropped.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub fn new(text: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("llmstack-it-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file.yaml");
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
