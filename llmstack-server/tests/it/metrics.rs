//! The router's own /metrics: request accounting on every path, engine gauges, both
//! listeners. The recorder is process-wide, so each test uses its own model name and
//! reads only its own series.

use http::Method;
use llmstack_metrics::parse;
use serde_json::json;

use crate::support::*;

fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse(text)
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn requests_tokens_latencies_and_engine_gauges() {
    const M: &str = "metrics-model-a";
    let s = stack(vec![instant(M), instant(M)], |_| {}).await;
    let chat_url = s.at("/v1/chat/completions");
    let mut prompt_tokens = 0;
    for _ in 0..3 {
        let a = post(&s.client, &chat_url, &chat(M, 4)).await;
        assert_eq!(a.status, 200);
        prompt_tokens += a.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    for _ in 0..2 {
        let body = json!({"model": M, "messages": [{"role": "user", "content": "Hello there"}],
            "max_tokens": 4, "ignore_eos": true, "stream": true,
            "stream_options": {"include_usage": true}});
        let st = stream(&s.client, &chat_url, &body).await;
        let usage = &st.events[st.events.len() - 2].json()["usage"];
        prompt_tokens += usage["prompt_tokens"].as_u64().unwrap();
    }
    // Errors: an unknown model (labelled `unknown`, never by the client's string), a bad body.
    assert_eq!(
        post(&s.client, &chat_url, &chat("no-such-model-xyz", 1))
            .await
            .status,
        404
    );
    let bad = send(
        &s.client,
        Method::POST,
        &chat_url,
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(bad.status, 400);
    // A method the route does not take is a request too (405, accounted as 4xx).
    assert_eq!(get(&s.client, &chat_url).await.status, 405);

    let text = get(&s.client, &s.at("/metrics")).await;
    assert_eq!(text.status, 200);
    assert!(
        text.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = text.text().to_owned();
    let route = ("route", "/v1/chat/completions");
    assert_eq!(
        sum(
            &text,
            "llmstack_requests_total",
            &[route, ("model", M), ("status", "2xx")]
        ),
        5.0,
        "{text}"
    );
    assert!(
        sum(
            &text,
            "llmstack_requests_total",
            &[route, ("model", "unknown"), ("status", "4xx")]
        ) >= 3.0
    );
    assert!(
        !text.contains("no-such-model-xyz"),
        "client strings never become labels"
    );
    assert_eq!(
        sum(&text, "llmstack_completion_tokens_total", &[("model", M)]),
        20.0
    );
    assert_eq!(
        sum(&text, "llmstack_prompt_tokens_total", &[("model", M)]),
        prompt_tokens as f64
    );
    assert_eq!(
        sum(
            &text,
            "llmstack_time_to_first_token_seconds_count",
            &[("model", M)]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &text,
            "llmstack_inter_token_latency_seconds_count",
            &[("model", M)]
        ),
        6.0
    );
    assert_eq!(
        sum(
            &text,
            "llmstack_request_duration_seconds_count",
            &[route, ("model", M)]
        ),
        5.0
    );
    assert!(text.contains("# HELP llmstack_requests_total"));
    assert!(!text.contains("\nvllm:"), "never an engine metric name");
    for i in 0..2 {
        let id = s.id_of(i).await;
        assert_eq!(
            sum(&text, "llmstack_in_flight_requests", &[("engine", &id)]),
            0.0
        );
        assert!(
            sum(
                &text,
                "llmstack_routing_decisions_total",
                &[("reason", "picked")]
            ) >= 5.0
        );
        // Scraped engine gauges, re-exported under the router's own names.
        assert!(
            text.contains(&format!(
                "llmstack_engine_kv_cache_usage_ratio{{engine=\"{id}\"}}"
            )),
            "{id}"
        );
    }
    // The admin listener serves the same exposition.
    let admin = s.server.admin_addr().unwrap();
    let a = get(&s.client, &format!("http://{admin}/metrics")).await;
    assert_eq!(a.status, 200);
    assert!(a.text().contains("llmstack_requests_total"));
    assert_eq!(
        get(&s.client, &format!("http://{admin}/health"))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&s.client, &format!("http://{admin}/v1/models"))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn retries_errors_and_disconnects_are_counted() {
    const M: &str = "metrics-model-b";
    let s = stack(vec![instant(M), h100(M)], |c| {
        c.main_port_metrics = false;
        c.discovery.probe.interval = std::time::Duration::from_secs(60);
    })
    .await;
    let down = s.id_of(0).await;
    let slow = s.id_of(1).await;
    s.engines[0].go_down(std::time::Duration::from_secs(30));
    for _ in 0..4 {
        assert_eq!(
            post(
                &s.client,
                &s.at("/v1/completions"),
                &json!({"model": M, "prompt": "x", "max_tokens": 1})
            )
            .await
            .status,
            200
        );
    }
    // A client that leaves mid-stream still ends its request's accounting.
    let mut res = open(&s.client, &s.at("/v1/completions"), &streamed(M, 500)).await;
    read_frames(&mut res, 1).await;
    drop(res);
    assert_eq!(
        get(&s.client, &s.at("/metrics")).await.status,
        404,
        "main-port metrics off"
    );
    let admin = s.server.admin_addr().unwrap();
    let ok = eventually(std::time::Duration::from_secs(3), || async {
        let text = get(&s.client, &format!("http://{admin}/metrics"))
            .await
            .text()
            .to_owned();
        sum(&text, "llmstack_in_flight_requests", &[("engine", &slow)]) == 0.0
            && sum(
                &text,
                "llmstack_requests_total",
                &[("model", M), ("status", "2xx")],
            ) == 5.0
    })
    .await;
    let text = get(&s.client, &format!("http://{admin}/metrics"))
        .await
        .text()
        .to_owned();
    assert!(ok, "{text}");
    assert!(
        sum(
            &text,
            "llmstack_retries_total",
            &[("engine", &down), ("reason", "connect")]
        ) >= 1.0
    );
    assert!(
        sum(
            &text,
            "llmstack_upstream_errors_total",
            &[("engine", &down), ("kind", "connect")]
        ) >= 1.0
    );
}

/// 1,000 mixed requests, 64 at a time: plain, streamed, refused (404, 400), streams the
/// client drops mid-way, and plain requests the client gives up on before the answer.
/// Afterwards nothing is in flight anywhere, and every request that named the model is
/// counted exactly once.
#[tokio::test]
async fn a_thousand_mixed_requests_all_accounted_for() {
    use std::sync::Arc;

    const M: &str = "metrics-model-c";
    let s = Arc::new(stack(vec![instant(M), instant(M), h100(M)], |_| {}).await);
    let slow = s.id_of(2).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    let mut named = 0;
    for i in 0..1000 {
        let kind = i % 7;
        if !matches!(kind, 2 | 3) {
            named += 1;
        }
        let (s, gate, slow) = (Arc::clone(&s), Arc::clone(&gate), slow.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let c = &s.client;
            match kind {
                0 => assert_eq!(
                    post(c, &s.at("/v1/chat/completions"), &chat(M, 2))
                        .await
                        .status,
                    200
                ),
                1 => assert!(
                    !stream(c, &s.at("/v1/completions"), &streamed(M, 3))
                        .await
                        .broken
                ),
                2 => assert_eq!(
                    post(c, &s.at("/v1/chat/completions"), &chat("nope", 1))
                        .await
                        .status,
                    404
                ),
                3 => {
                    let a = send(
                        c,
                        Method::POST,
                        &s.at("/v1/completions"),
                        &[("content-type", "application/json")],
                        "{oops",
                    )
                    .await;
                    assert_eq!(a.status, 400);
                }
                4 => {
                    let url = s.at(&format!("/v1/completions?id={slow}"));
                    let mut res = open(c, &url, &streamed(M, 2000)).await;
                    read_frames(&mut res, 1).await;
                }
                5 => {
                    let url = s.at(&format!("/v1/chat/completions?id={slow}"));
                    let gave_up = tokio::time::timeout(
                        // Long enough for the router to have the request (this test runs
                        // clients, router and engines on one thread), far shorter than
                        // the slow engine's answer: the client leaves before the head.
                        std::time::Duration::from_millis(500),
                        post(c, &url, &chat(M, 2000)),
                    )
                    .await;
                    assert!(gave_up.is_err());
                }
                _ => assert_eq!(
                    post(
                        c,
                        &s.at("/v1/embeddings"),
                        &json!({"model": M, "input": "x"})
                    )
                    .await
                    .status,
                    200
                ),
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(s.id_of(i).await);
    }
    let settled = eventually(std::time::Duration::from_secs(10), || async {
        let text = get(&s.client, &s.at("/metrics")).await.text().to_owned();
        // Only this test's engines: the recorder is shared by every test in the process.
        ids.iter()
            .all(|id| sum(&text, "llmstack_in_flight_requests", &[("engine", id)]) == 0.0)
            && sum(&text, "llmstack_requests_total", &[("model", M)]) == f64::from(named)
    })
    .await;
    let text = get(&s.client, &s.at("/metrics")).await.text().to_owned();
    assert!(settled, "named {named}: {text}");
    assert_eq!(s.health().await["in_flight"], 0);
    assert!(
        sum(
            &text,
            "llmstack_requests_total",
            &[("model", M), ("status", "cancelled")]
        ) >= 100.0
    );
}
