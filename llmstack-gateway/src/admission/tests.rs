use std::convert::Infallible;
use std::sync::Mutex as StdMutex;

use llmstack_core::{Endpoint, Update};
use tower::ServiceExt;

use super::*;

/// Requests the inner service is "serving": their permits, held until the test
/// drops them (a response body ending).
type Serving = Arc<StdMutex<Vec<(String, HeldUntilDone)>>>;

/// An inner service that keeps each request's permit and answers 200 with the
/// request's `x-name` header.
fn inner(
    serving: &Serving,
) -> impl use<>
+ Service<
    Request<Bytes>,
    Response = Response<Bytes>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<Bytes>, Infallible>>,
> + Clone {
    let serving = Arc::clone(serving);
    tower::service_fn(move |mut req: Request<Bytes>| {
        let name = req.headers()["x-name"].to_str().unwrap().to_owned();
        if let Some(held) = req.extensions_mut().remove::<HeldUntilDone>() {
            serving.lock().unwrap().push((name.clone(), held));
        }
        std::future::ready(Ok(Response::new(Bytes::from(name))))
    })
}

fn set(ready: usize) -> EndpointSet {
    let mut set = EndpointSet::default();
    set.remember("m");
    let engines = (0..ready)
        .map(|i| {
            Endpoint::new(format!("http://127.0.0.1:{}", 9000 + i).parse().unwrap()).with_model("m")
        })
        .collect();
    set.apply(Update::Reset(engines));
    set
}

fn request(name: &str, priority: Option<Priority>) -> Request<Bytes> {
    let mut req = Request::post("/v1/chat/completions")
        .header("x-name", name)
        .body(Bytes::from_static(br#"{"model":"m","messages":[]}"#))
        .unwrap();
    if let Some(priority) = priority {
        req.extensions_mut().insert(Tenant {
            name: "t".into(),
            priority,
            rpm: None,
            tpm: None,
        });
    }
    req
}

fn config(per_engine: usize, timeout_ms: u64, max_len: usize) -> AdmissionConfig {
    AdmissionConfig {
        max_in_flight_per_engine: per_engine,
        max_waiting_per_engine: 0,
        queue_timeout: Duration::from_millis(timeout_ms),
        max_queue_length: max_len,
        priority_header: Some(HeaderName::from_static("x-priority")),
    }
}

fn finish(serving: &Serving, name: &str) {
    let mut s = serving.lock().unwrap();
    let at = s.iter().position(|(n, _)| n == name).unwrap();
    s.remove(at);
}

fn names(serving: &Serving) -> Vec<String> {
    serving
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| n.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn capacity_frees_in_priority_order_then_fifo() {
    let (_tx, rx) = watch::channel(set(1));
    let serving = Serving::default();
    let layer = AdmissionLayer::new(config(2, 10_000, 100), rx);
    let svc = layer.layer(inner(&serving));
    for name in ["a", "b"] {
        let resp = svc.clone().oneshot(request(name, None)).await.unwrap();
        assert_eq!(resp.body(), name);
    }
    // Full: these wait. Arrival order low1, normal1, high1, low2, high2.
    let mut waiting = Vec::new();
    for (name, p) in [
        ("low1", Priority::Low),
        ("normal1", Priority::Normal),
        ("high1", Priority::High),
        ("low2", Priority::Low),
        ("high2", Priority::High),
    ] {
        waiting.push(tokio::spawn(svc.clone().oneshot(request(name, Some(p)))));
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(names(&serving), ["a", "b"]);
    let depth: usize = layer.depths().iter().map(|d| d.2).sum();
    assert_eq!(depth, 5);
    let mut order = Vec::new();
    for done in ["a", "b", "high1", "high2", "normal1"] {
        finish(&serving, done);
        tokio::time::sleep(Duration::from_millis(1)).await;
        order.push(names(&serving).last().unwrap().clone());
    }
    assert_eq!(order, ["high1", "high2", "normal1", "low1", "low2"]);
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap().status(), 200);
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_and_a_passed_deadline_are_503_with_retry_after() {
    let (_tx, rx) = watch::channel(set(1));
    let serving = Serving::default();
    let svc = AdmissionLayer::new(config(1, 500, 1), rx).layer(inner(&serving));
    assert_eq!(
        svc.clone()
            .oneshot(request("a", None))
            .await
            .unwrap()
            .status(),
        200
    );
    let waiter = tokio::spawn(svc.clone().oneshot(request("b", None)));
    tokio::time::sleep(Duration::from_millis(1)).await;
    // One waiter is the most: the next is refused at once.
    let full = svc.clone().oneshot(request("c", None)).await.unwrap();
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(full.body()).unwrap();
    assert_eq!(body["error"]["param"], "model");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue is full")
    );
    // The waiter gives up at its deadline.
    let started = Instant::now();
    let late = waiter.await.unwrap().unwrap();
    assert_eq!(late.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(490));
    assert_eq!(names(&serving), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_gives_up_its_place() {
    let (_tx, rx) = watch::channel(set(1));
    let serving = Serving::default();
    let layer = AdmissionLayer::new(config(1, 10_000, 10), rx);
    let svc = layer.layer(inner(&serving));
    svc.clone().oneshot(request("a", None)).await.unwrap();
    let gone = tokio::spawn(svc.clone().oneshot(request("gone", None)));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let next = tokio::spawn(svc.clone().oneshot(request("next", None)));
    tokio::time::sleep(Duration::from_millis(1)).await;
    gone.abort();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let depth: usize = layer.depths().iter().map(|d| d.2).sum();
    assert_eq!(depth, 1);
    finish(&serving, "a");
    assert_eq!(next.await.unwrap().unwrap().body(), "next");
    assert_eq!(names(&serving), ["next"]);
}

#[tokio::test(start_paused = true)]
async fn the_waiting_room_holds_requests_until_an_engine_is_ready() {
    let (tx, rx) = watch::channel(set(0));
    let serving = Serving::default();
    let layer = AdmissionLayer::new(config(0, 5_000, 10), rx);
    tokio::spawn(layer.watch_endpoints());
    let svc = layer.layer(inner(&serving));
    let early = tokio::spawn(svc.clone().oneshot(request("early", None)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!early.is_finished());
    tx.send_replace(set(1));
    assert_eq!(early.await.unwrap().unwrap().body(), "early");
    // No limit per engine: with an engine ready, nobody waits.
    for name in ["x", "y", "z"] {
        assert_eq!(
            svc.clone()
                .oneshot(request(name, None))
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn the_header_lowers_but_never_raises_the_tenants_class() {
    let (_tx, rx) = watch::channel(set(1));
    let layer = AdmissionLayer::new(config(1, 1000, 10), rx);
    let shared = &layer.shared;
    let with = |tenant, header: Option<&str>| {
        let mut req = request("r", tenant);
        if let Some(h) = header {
            req.headers_mut().insert("x-priority", h.parse().unwrap());
        }
        shared.class(&req)
    };
    assert_eq!(with(None, None), Priority::Normal);
    assert_eq!(with(None, Some("high")), Priority::High);
    assert_eq!(with(Some(Priority::Low), Some("high")), Priority::Low);
    assert_eq!(with(Some(Priority::High), Some("low")), Priority::Low);
    assert_eq!(with(Some(Priority::High), Some("bogus")), Priority::High);
    // Off: nothing is held or read.
    let off = AdmissionLayer::new(AdmissionConfig::default(), watch::channel(set(0)).1);
    let serving = Serving::default();
    let resp = off
        .layer(inner(&serving))
        .oneshot(request("r", None))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(names(&serving).is_empty(), "no permit without admission");
}

#[tokio::test(start_paused = true)]
async fn scraped_queues_saturate_engines_and_new_stats_admit() {
    use std::collections::HashMap;

    use llmstack_core::{EngineStats, StatsSnapshot};

    let endpoints = set(1);
    let id = endpoints.candidates("m")[0].id.clone();
    let snapshot = |waiting: f64| {
        let stats = EngineStats {
            running: 0.0,
            waiting,
            kv_cache_usage: 0.0,
            prefix_cache_queries: 0.0,
            prefix_cache_hits: 0.0,
            prefix_cache_hit_rate: None,
            num_gpu_blocks: None,
            block_size: None,
            lora_running: Vec::new(),
            lora_waiting: Vec::new(),
            models: HashMap::new(),
            scraped_at: Instant::now(),
        };
        let engines = HashMap::from([(id.clone(), stats)]);
        Arc::new(StatsSnapshot::with_engines(Duration::from_secs(1), engines))
    };
    let (stats_tx, stats_rx) = watch::channel(snapshot(3.0));
    let (_tx, rx) = watch::channel(endpoints);
    let serving = Serving::default();
    let mut cfg = config(0, 10_000, 10);
    cfg.max_waiting_per_engine = 4;
    let layer = AdmissionLayer::new(cfg, rx).with_stats(StatsReader::new(stats_rx));
    tokio::spawn(layer.watch_endpoints());
    let svc = layer.layer(inner(&serving));
    // Three waiting of four: room for one more until the next scrape.
    assert_eq!(
        svc.clone()
            .oneshot(request("a", None))
            .await
            .unwrap()
            .status(),
        200
    );
    let b = tokio::spawn(svc.clone().oneshot(request("b", None)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!b.is_finished(), "the engine's queue is full");
    // The next scrape shows room: the waiter goes.
    stats_tx.send_replace(snapshot(0.0));
    assert_eq!(b.await.unwrap().unwrap().status(), 200);
}
