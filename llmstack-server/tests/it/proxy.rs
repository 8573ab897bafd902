//! The data path: every proxied route, byte-identical streams, round-robin, pinning,
//! aliases, request ids and the error bodies.

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use llmstack_sim::SimEngine;

use crate::support::*;

const M: &str = "meta-llama/Llama-3.1-8B-Instruct";
const Q: &str = "Qwen/Qwen2.5-7B-Instruct";

fn multipart(model: &str) -> (String, Bytes) {
    let boundary = "llmstackBoundary7";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes());
    body.extend_from_slice(b"RIFF\x24\x00\x00\x00WAVEfmt ");
    body.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(body),
    )
}

#[tokio::test]
async fn every_proxied_route_reaches_an_engine() {
    let s = stack(vec![instant(M)], |_| {}).await;
    let json_routes: Vec<(&str, Value)> = vec![
        ("/v1/chat/completions", chat(M, 4)),
        (
            "/v1/completions",
            json!({"model": M, "prompt": "hi", "max_tokens": 4}),
        ),
        ("/v1/embeddings", json!({"model": M, "input": "hi"})),
        (
            "/v1/responses",
            json!({"model": M, "input": "hi", "max_output_tokens": 4}),
        ),
        (
            "/v1/messages",
            json!({"model": M, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/rerank",
            json!({"model": M, "query": "a", "documents": ["a b", "c"]}),
        ),
        (
            "/rerank",
            json!({"model": M, "query": "a", "documents": ["a b", "c"]}),
        ),
        (
            "/v1/score",
            json!({"model": M, "text_1": "a", "text_2": "a b"}),
        ),
        (
            "/score",
            json!({"model": M, "text_1": "a", "text_2": "a b"}),
        ),
        ("/tokenize", json!({"model": M, "prompt": "hello world"})),
        ("/detokenize", json!({"model": M, "tokens": [1, 2, 3]})),
        (
            "/v1/audio/speech",
            json!({"model": M, "input": "hello", "voice": "alloy"}),
        ),
        (
            "/v1/images/generations",
            json!({"model": M, "prompt": "a cat"}),
        ),
    ];
    let direct = s.engines[0].base_url();
    for (path, body) in &json_routes {
        let routed = post(&s.client, &s.at(path), body).await;
        assert_eq!(
            routed.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&routed.body)
        );
        assert!(routed.headers.contains_key("x-request-id"), "{path}");
        let straight = post(&s.client, &format!("{direct}{path}"), body).await;
        assert_eq!(
            routed.headers.get("content-type"),
            straight.headers.get("content-type"),
            "{path}"
        );
        if path.contains("tokenize") {
            assert_eq!(
                routed.body, straight.body,
                "{path}: deterministic answers match"
            );
        }
    }
    for path in ["/v1/audio/transcriptions", "/v1/audio/translations"] {
        let (ct, body) = multipart(M);
        let a = send_bytes(
            &s.client,
            Method::POST,
            &s.at(path),
            &[("content-type", &ct)],
            body,
        )
        .await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        assert!(a.json()["text"].is_string(), "{path}: {}", a.text());
    }
}

#[tokio::test]
async fn streamed_response_is_byte_identical_to_direct() {
    let s = stack(vec![instant(M), instant(M)], |_| {}).await;
    let id = s.id_of(0).await;
    let body = json!({"model": M, "prompt": "The quick brown fox", "max_tokens": 24,
        "stream": true, "stream_options": {"include_usage": true}, "seed": 3, "temperature": 0});
    let headers = [
        ("content-type", "application/json"),
        ("x-request-id", "same-id-1"),
    ];
    for attempt in 0.. {
        let routed = stream_bytes(
            &s.client,
            &s.at(&format!("/v1/completions?id={id}")),
            &headers,
            Bytes::from(body.to_string()),
        )
        .await;
        let direct = stream_bytes(
            &s.client,
            &format!("{}/v1/completions", s.engines[0].base_url()),
            &headers,
            Bytes::from(body.to_string()),
        )
        .await;
        assert_eq!(routed.status, 200);
        assert!(!routed.broken);
        assert!(
            routed.events.len() > 24,
            "one event per token plus usage and [DONE]"
        );
        if routed.raw == direct.raw {
            assert_eq!(routed.headers["x-request-id"], "same-id-1");
            assert_eq!(
                routed.headers["content-type"],
                direct.headers["content-type"]
            );
            return;
        }
        // `created` is a whole-second timestamp: the two may straddle a second.
        assert!(
            attempt < 3,
            "streams differ:\n{}\n---\n{}",
            routed.raw,
            direct.raw
        );
    }
}

#[tokio::test]
async fn round_robin_spreads_evenly_per_model() {
    let s = stack(vec![instant(M), instant(Q), instant(M), instant(Q)], |_| {}).await;
    // Interleave the models so a shared counter would skew them.
    for i in 0..40 {
        let model = if i % 2 == 0 { M } else { Q };
        let a = post(
            &s.client,
            &s.at("/v1/completions"),
            &json!({"model": model, "prompt": "x", "max_tokens": 1}),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json()["model"], model);
    }
    for e in &s.engines {
        assert_eq!(
            finished(&s.client, e, "length").await,
            10.0,
            "{}",
            e.base_url()
        );
    }
    // Sequential requests reuse one kept-alive connection per engine.
    assert_eq!(s.health().await["engine_connections_opened"], 4);
}

#[tokio::test]
async fn pinning_only_to_discovered_engines() {
    let s = stack(vec![instant(M), instant(M), instant(Q)], |_| {}).await;
    let id = s.id_of(1).await;
    for _ in 0..5 {
        let a = post(
            &s.client,
            &s.at(&format!("/v1/chat/completions?id={id}")),
            &chat(M, 1),
        )
        .await;
        assert_eq!(a.status, 200);
    }
    assert_eq!(finished(&s.client, &s.engines[1], "length").await, 5.0);
    assert_eq!(finished(&s.client, &s.engines[0], "length").await, 0.0);
    // An engine that does not serve the model, an unknown id, a URL: all refused.
    let q = s.id_of(2).await;
    let twice = format!("{id}&id={id}");
    for bad in [
        q.as_str(),
        "nope",
        "http%3A%2F%2F127.0.0.1%3A1",
        "",
        "%zz",
        &twice,
    ] {
        let a = post(
            &s.client,
            &s.at(&format!("/v1/chat/completions?id={bad}")),
            &chat(M, 1),
        )
        .await;
        assert_error(&a, 400, "BadRequestError");
        assert_eq!(a.json()["error"]["param"], "id");
    }
    // Percent-encoded ids are decoded; other query parameters reach the engine.
    let encoded: String = id.bytes().map(|b| format!("%{b:02x}")).collect();
    let a = post(
        &s.client,
        &s.at(&format!("/v1/chat/completions?x=1&id={encoded}")),
        &chat(M, 1),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(finished(&s.client, &s.engines[1], "length").await, 6.0);
}

#[tokio::test]
async fn ipv6_literal_backends() {
    let Ok(engine) = SimEngine::start(instant(M), "[::1]:0".parse().unwrap(), 0).await else {
        // Only where the machine has no IPv6 loopback at all.
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let url = engine.base_url();
    assert!(url.starts_with("http://[::1]:"), "{url}");
    let s = stack(vec![], |c| {
        c.discovery.static_backends = vec![url.clone()];
        c.discovery.static_models = vec![M.into()];
    })
    .await;
    let ready = eventually(std::time::Duration::from_secs(5), || async {
        get(&s.client, &s.at("/ready")).await.status == 200
    })
    .await;
    assert!(ready);
    let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn aliases_and_request_ids() {
    let s = stack(vec![instant(M)], |c| {
        c.routing.static_aliases.insert("gpt-4o".into(), M.into());
    })
    .await;
    let a = send(
        &s.client,
        Method::POST,
        &s.at("/v1/chat/completions"),
        &[("content-type", "application/json"), ("x-request-id", "client-7")],
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).to_string(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["model"], M, "the engine saw the real model name");
    assert_eq!(a.headers["x-request-id"], "client-7");
    assert_eq!(
        a.json()["id"],
        "chatcmpl-client-7",
        "the engine got the same id"
    );
    // Without one, the router makes one up and sends it both ways.
    let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
    let id = a.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(a.json()["id"], format!("chatcmpl-{id}"));
    // Multipart alias.
    let (ct, body) = multipart("gpt-4o");
    let a = send_bytes(
        &s.client,
        Method::POST,
        &s.at("/v1/audio/transcriptions"),
        &[("content-type", &ct)],
        body,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn error_bodies() {
    let s = stack(vec![instant(M)], |c| {
        c.proxy.max_body = 2048;
        // A model only a dead engine serves: known, never ready.
        c.discovery
            .static_backends
            .push("http://127.0.0.1:1".into());
        c.discovery.static_models.push("ghost".into());
    })
    .await;
    let url = s.at("/v1/chat/completions");
    assert_error(
        &post(&s.client, &url, &chat("nobody", 1)).await,
        404,
        "NotFoundError",
    );
    let ready = eventually(std::time::Duration::from_secs(3), || async {
        post(&s.client, &url, &chat("ghost", 1)).await.status == 503
    })
    .await;
    assert!(ready);
    assert_error(
        &post(&s.client, &url, &chat("ghost", 1)).await,
        503,
        "ServiceUnavailableError",
    );
    let json_ct = [("content-type", "application/json")];
    for bad in [
        "not json",
        "[1]",
        "{\"messages\": []}",
        "{\"model\": 7}",
        "",
    ] {
        let a = send(&s.client, Method::POST, &url, &json_ct, bad).await;
        assert_error(&a, 400, "BadRequestError");
    }
    let big = json!({"model": M, "prompt": "x".repeat(4096)}).to_string();
    assert_error(
        &send(
            &s.client,
            Method::POST,
            &s.at("/v1/completions"),
            &json_ct,
            &big,
        )
        .await,
        413,
        "RequestEntityTooLarge",
    );
    assert_error(&get(&s.client, &url).await, 405, "MethodNotAllowed");
    assert_error(
        &get(&s.client, &s.at("/v2/nothing")).await,
        404,
        "NotFoundError",
    );
    let (_, body) = multipart(M);
    let a = send_bytes(
        &s.client,
        Method::POST,
        &s.at("/v1/audio/transcriptions"),
        &json_ct,
        body,
    )
    .await;
    assert_error(&a, 400, "BadRequestError");
    // Errors carry a request id too, and the router is still fine.
    assert!(a.headers.contains_key("x-request-id"));
    assert_eq!(post(&s.client, &url, &chat(M, 1)).await.status, 200);
}

/// `--routing-logic session --session-key x-user-id`: a user's requests stay on one
/// engine; different users spread; requests without the header rotate.
#[tokio::test]
async fn session_affinity_keeps_users_on_their_engine() {
    use llmstack_routing::RoutingLogic;

    let s = stack(vec![instant(M), instant(M), instant(M)], |c| {
        c.routing.routing_logic = RoutingLogic::Session;
        c.routing.session_key = Some("x-user-id".into());
    })
    .await;
    let url = s.at("/v1/chat/completions");
    let body = chat(M, 1).to_string();
    let ct = ("content-type", "application/json");
    for user in 0..12 {
        let header = format!("user-{user}");
        for _ in 0..3 {
            let a = send(
                &s.client,
                Method::POST,
                &url,
                &[ct, ("x-user-id", &header)],
                &body,
            )
            .await;
            assert_eq!(a.status, 200);
        }
    }
    // 36 requests; each engine's count is a multiple of 3 (whole users), and more than
    // one engine is used.
    let mut counts = Vec::new();
    for e in &s.engines {
        counts.push(finished(&s.client, e, "length").await as u32);
    }
    assert_eq!(counts.iter().sum::<u32>(), 36);
    assert!(counts.iter().all(|c| c % 3 == 0), "{counts:?}");
    assert!(counts.iter().filter(|c| **c > 0).count() >= 2, "{counts:?}");
    // The same key in the body field works too (production-stack's fallback).
    let body = json!({"model": M, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "x-user-id": "user-0"});
    let a = post(&s.client, &url, &body).await;
    assert_eq!(a.status, 200);
}
