//! The admission queue through the whole router: priority classes under saturation,
//! and the waiting room while a model has no ready engine yet.

use std::time::Duration;

use http::Method;
use llmstack_gateway::AdmissionConfig;
use llmstack_sim::SimEngine;
use tokio::time::Instant;

use crate::support::*;

const M: &str = "m";

#[tokio::test]
async fn under_saturation_the_high_class_waits_less_than_the_low_class() {
    let keys = TempFile::new(
        "keys:\n  - {key: sk-high, tenant: gold, priority: high}\n  - {key: sk-low, tenant: batch, priority: low}\n",
    );
    // One engine, two requests at a time, each about 150 ms.
    let s = stack(vec![h100(M)], |c| {
        c.gateway.api_keys_file = Some(keys.0.clone());
        c.gateway.admission = AdmissionConfig {
            max_in_flight_per_engine: 2,
            queue_timeout: Duration::from_secs(30),
            ..AdmissionConfig::default()
        };
    })
    .await;
    let body = chat(M, 16).to_string();
    let mut tasks = Vec::new();
    // Low requests arrive first, then high ones, all within a few milliseconds.
    for (key, n) in [("sk-low", 10), ("sk-high", 10)] {
        for _ in 0..n {
            let (client, url, body) =
                (s.client.clone(), s.at("/v1/chat/completions"), body.clone());
            let auth = format!("Bearer {key}");
            tasks.push((
                key,
                tokio::spawn(async move {
                    let start = Instant::now();
                    let headers = [
                        ("content-type", "application/json"),
                        ("authorization", auth.as_str()),
                    ];
                    let a = send(&client, Method::POST, &url, &headers, &body).await;
                    (a.status, start.elapsed())
                }),
            ));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut high = Vec::new();
    let mut low = Vec::new();
    for (key, task) in tasks {
        let (status, took) = task.await.unwrap();
        assert_eq!(status, 200);
        if key == "sk-high" {
            high.push(took)
        } else {
            low.push(took)
        }
    }
    high.sort();
    low.sort();
    let (high_p99, low_p99) = (high[high.len() - 1], low[low.len() - 1]);
    assert!(
        high_p99 < low_p99,
        "high class max {high_p99:?} not below low class max {low_p99:?}"
    );
    // Everything queued was admitted: nothing left waiting, nothing refused.
    let metrics = get(&s.client, &s.at("/metrics")).await;
    let text = metrics.text();
    for class in ["high", "normal", "low"] {
        let depth = sample(
            text,
            "llmstack_queue_depth",
            &[("model", M), ("priority", class)],
        );
        assert_eq!(depth, Some(0.0), "{class}: {text}");
    }
    assert_eq!(
        sample(text, "llmstack_queue_rejected_total", &[]),
        None,
        "{text}"
    );
    let waited = sample(
        text,
        "llmstack_queue_wait_seconds_count",
        &[("priority", "low")],
    );
    assert!(waited.unwrap_or(0.0) >= 8.0, "{text}");
}

#[tokio::test]
async fn a_request_sent_before_any_engine_is_ready_waits_for_one() {
    // The engine's port, reserved now; the engine starts later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut config = config_for(&[]);
    config.discovery.static_backends = vec![url.parse().unwrap()];
    config.discovery.static_models = vec![M.into()];
    config.gateway.admission.queue_timeout = Duration::from_secs(10);
    let server = llmstack_server::Server::start(config).await.unwrap();
    let s = Stack::new(server, Vec::new());
    let started = Instant::now();
    let early = spawn_post(&s.client, s.at("/v1/chat/completions"), chat(M, 2));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!early.is_finished(), "answered before any engine was ready");
    let engine = SimEngine::start(instant(M), format!("127.0.0.1:{port}").parse().unwrap(), 0)
        .await
        .unwrap();
    let a = early.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    // Without an engine for longer than the deadline: 503 with Retry-After.
    drop(engine);
    let mut config = config_for(&[]);
    config.discovery.static_backends = vec![url.parse().unwrap()];
    config.discovery.static_models = vec![M.into()];
    config.gateway.admission.queue_timeout = Duration::from_millis(600);
    let server = llmstack_server::Server::start(config).await.unwrap();
    let s = Stack::new(server, Vec::new());
    let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 2)).await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.headers["retry-after"], "1");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no capacity"),
        "{}",
        a.text()
    );
}

/// With `max_waiting_per_engine`, the router reads saturation from the engine's own
/// queue as scraped: an engine running one request at a time, with room for one more
/// in its queue, never sees the whole burst; the rest wait in the router's queue and
/// are all served.
#[tokio::test]
async fn the_engines_scraped_queue_saturates_it() {
    let mut engine = h100(M);
    engine.max_num_seqs = Some(1);
    let s = stack(vec![engine], |c| {
        c.gateway.admission = AdmissionConfig {
            max_waiting_per_engine: 1,
            queue_timeout: Duration::from_secs(30),
            ..AdmissionConfig::default()
        };
    })
    .await;
    let burst: Vec<_> = (0..6)
        .map(|_| spawn_post(&s.client, s.at("/v1/chat/completions"), chat(M, 8)))
        .collect();
    for task in burst {
        let a = task.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let metrics = get(&s.client, &s.at("/metrics")).await;
    let text = metrics.text();
    let waited = sample(
        text,
        "llmstack_queue_wait_seconds_count",
        &[("priority", "normal")],
    );
    assert!(waited.unwrap_or(0.0) >= 3.0, "{text}");
    assert_eq!(
        sample(text, "llmstack_queue_rejected_total", &[]),
        None,
        "{text}"
    );
}
