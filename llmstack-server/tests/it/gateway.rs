//! The gateway layers through the whole router: API keys (401), the engines' own key,
//! the keys file reloaded, and tenants' rate limits (429 with OpenAI's headers).

use std::time::Duration;

use http::Method;
use llmstack_server::ServerConfig;
use serde_json::Value;
use tokio::time::Instant;

use crate::support::*;

const M: &str = "m";

/// The engines' key, set where the router uses it (probes, scrapes, forwarding).
fn engine_key(c: &mut ServerConfig, key: &str) {
    c.discovery.probe.api_key = Some(key.into());
    c.scrape.api_key = Some(key.into());
    c.proxy.engine_authorization = llmstack_server::ProxyConfig::engine_key(key);
}

async fn chat_as(s: &Stack, header: Option<(&str, &str)>, body: &Value) -> Answer {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(header);
    send(
        &s.client,
        Method::POST,
        &s.at("/v1/chat/completions"),
        &headers,
        &body.to_string(),
    )
    .await
}

fn assert_unauthorized(a: &Answer) {
    assert_eq!(a.status, 401, "{}", a.text());
    let body = a.json();
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
}

#[tokio::test]
async fn keys_are_needed_and_the_engines_key_replaces_them() {
    let keys = TempFile::new("sk-client-1\n");
    let engines = vec![
        instant(M).with_api_key("engine-secret"),
        instant(M).with_api_key("engine-secret"),
    ];
    let s = stack(engines, |c| {
        engine_key(c, "engine-secret");
        c.gateway.api_keys_file = Some(keys.0.clone());
        c.gateway.api_keys = vec!["sk-client-2".into()];
    })
    .await;
    assert_unauthorized(&chat_as(&s, None, &chat(M, 2)).await);
    assert_unauthorized(&chat_as(&s, Some(("authorization", "Bearer sk-nope")), &chat(M, 2)).await);
    // The engine's own key is no router key.
    assert_unauthorized(
        &chat_as(
            &s,
            Some(("authorization", "Bearer engine-secret")),
            &chat(M, 2),
        )
        .await,
    );
    for header in [
        ("authorization", "Bearer sk-client-1"),
        ("x-api-key", "sk-client-2"),
    ] {
        // The engines only take their own key: the router put it in place of the client's.
        let a = chat_as(&s, Some(header), &chat(M, 2)).await;
        assert_eq!(a.status, 200, "{header:?}: {}", a.text());
    }
    let with_key = [("authorization", "Bearer sk-client-1")];
    let models = send(&s.client, Method::GET, &s.at("/v1/models"), &[], "").await;
    assert_unauthorized(&models);
    let models = send(&s.client, Method::GET, &s.at("/v1/models"), &with_key, "").await;
    assert_eq!(models.json()["data"][0]["id"], M);
    // Engine URLs: the admin listener, or a key.
    assert_unauthorized(&get(&s.client, &s.at("/engines")).await);
    let listed = send(&s.client, Method::GET, &s.at("/engines"), &with_key, "").await;
    assert_eq!(listed.json().as_array().unwrap().len(), 2);
    let admin = get(&s.client, &engines_url(&s.server)).await;
    assert_eq!(admin.json().as_array().unwrap().len(), 2);
    // Probes and metrics stay open.
    assert_eq!(get(&s.client, &s.at("/health")).await.status, 200);
    assert_eq!(get(&s.client, &s.at("/ready")).await.status, 200);
    let metrics = get(&s.client, &s.at("/metrics")).await;
    let text = metrics.text();
    let refused =
        |reason| sample(text, "llmstack_auth_failures_total", &[("reason", reason)]).unwrap_or(0.0);
    // Three without a key (chat, models, engines), two with a wrong one.
    assert_eq!(refused("missing"), 3.0, "{text}");
    assert_eq!(refused("invalid"), 2.0, "{text}");
    assert_eq!(sample(text, "llmstack_api_keys", &[]), Some(2.0));
    let refused_requests = sample(
        text,
        "llmstack_requests_total",
        &[("route", "/v1/chat/completions"), ("status", "4xx")],
    );
    assert_eq!(refused_requests, Some(3.0), "refusals are accounted for");
}

#[tokio::test]
async fn without_router_keys_the_engines_key_still_goes_on() {
    let s = stack(vec![instant(M).with_api_key("engine-secret")], |c| {
        engine_key(c, "engine-secret");
    })
    .await;
    for header in [None, Some(("authorization", "Bearer whatever"))] {
        let a = chat_as(&s, header, &chat(M, 2)).await;
        assert_eq!(a.status, 200, "{header:?}: {}", a.text());
    }
}

#[tokio::test]
async fn a_changed_keys_file_takes_effect_without_a_restart() {
    let keys = TempFile::new("keys:\n  - key: sk-old\n    tenant: a\n");
    let s = stack(vec![instant(M)], |c| {
        c.gateway.api_keys_file = Some(keys.0.clone());
    })
    .await;
    let old = Some(("authorization", "Bearer sk-old"));
    let new = Some(("authorization", "Bearer sk-new"));
    assert_eq!(chat_as(&s, old, &chat(M, 1)).await.status, 200);
    assert_unauthorized(&chat_as(&s, new, &chat(M, 1)).await);
    std::fs::write(&keys.0, "keys:\n  - key: sk-new\n    tenant: a\n").unwrap();
    let reloaded = eventually(Duration::from_secs(5), || async {
        chat_as(&s, new, &chat(M, 1)).await.status == 200
    })
    .await;
    assert!(reloaded, "the new key was not accepted");
    assert_unauthorized(&chat_as(&s, old, &chat(M, 1)).await);
    // A broken file keeps the keys there were.
    std::fs::write(&keys.0, "keys:\n  - key: sk-x\n    priority: urgent\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(chat_as(&s, new, &chat(M, 1)).await.status, 200);
    let metrics = get(&s.client, &s.at("/metrics")).await;
    let errors = sample(
        metrics.text(),
        "llmstack_api_key_reloads_total",
        &[("result", "error")],
    );
    assert_eq!(errors, Some(1.0), "{}", metrics.text());
}

#[tokio::test]
async fn a_tenant_over_its_rpm_gets_429_with_openai_headers() {
    let keys = TempFile::new(
        "keys:\n  - {key: sk-small, tenant: small, rpm: 3}\n  - {key: sk-big, tenant: big}\n",
    );
    let s = stack(vec![instant(M)], |c| {
        c.gateway.api_keys_file = Some(keys.0.clone());
    })
    .await;
    let small = Some(("authorization", "Bearer sk-small"));
    for left in ["2", "1", "0"] {
        let a = chat_as(&s, small, &chat(M, 1)).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.headers["x-ratelimit-limit-requests"], "3");
        assert_eq!(a.headers["x-ratelimit-remaining-requests"], left);
        assert!(a.headers.contains_key("x-ratelimit-reset-requests"));
    }
    let a = chat_as(&s, small, &chat(M, 1)).await;
    assert_eq!(a.status, 429, "{}", a.text());
    let body = a.json();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "requests", "{body}");
    // 3 a minute: the next one in 20 s.
    assert_eq!(a.headers["retry-after"], "20");
    assert_eq!(a.headers["x-ratelimit-remaining-requests"], "0");
    // Another tenant is not limited by it.
    for _ in 0..5 {
        let a = chat_as(&s, Some(("x-api-key", "sk-big")), &chat(M, 1)).await;
        assert_eq!(a.status, 200);
        assert!(!a.headers.contains_key("x-ratelimit-limit-requests"));
    }
    let metrics = get(&s.client, &s.at("/metrics")).await;
    let limited = sample(
        metrics.text(),
        "llmstack_rate_limited_total",
        &[("tenant", "small"), ("limit", "requests")],
    );
    assert_eq!(limited, Some(1.0));
}

#[tokio::test]
async fn a_tenants_tokens_are_estimated_then_corrected_from_usage() {
    let keys = TempFile::new("keys:\n  - {key: sk-t, tenant: t, tpm: 600}\n");
    let s = stack(vec![instant(M)], |c| {
        c.gateway.api_keys_file = Some(keys.0.clone());
    })
    .await;
    let key = Some(("authorization", "Bearer sk-t"));
    let body = chat(M, 200);
    let estimate = (body.to_string().len() / 4) as f64;
    let start = Instant::now();
    let first = chat_as(&s, key, &body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let remaining = |a: &Answer| -> f64 {
        a.headers["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(remaining(&first), 600.0 - estimate);
    let usage = &first.json()["usage"];
    let used =
        usage["prompt_tokens"].as_f64().unwrap() + usage["completion_tokens"].as_f64().unwrap();
    assert!(used > estimate + 150.0, "{usage}");
    // The hook runs when the response body is dropped, just after the client has it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = chat_as(&s, key, &chat(M, 1)).await;
    let refill = start.elapsed().as_secs_f64() * 10.0;
    let expected = 600.0 - used - (chat(M, 1).to_string().len() / 4) as f64;
    let got = remaining(&second);
    assert!(
        got >= expected.floor() - 1.0 && got <= (expected + refill).ceil() + 1.0,
        "remaining {got}, expected {expected} (+ up to {refill} refilled)"
    );
    // Over the minute's tokens: 429 for tokens.
    let big = chat(M, 400);
    let mut refused = None;
    for _ in 0..4 {
        let a = chat_as(&s, key, &big).await;
        if a.status == 429 {
            refused = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("never refused");
    assert_eq!(refused.json()["error"]["type"], "tokens");
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(refused.headers["x-ratelimit-limit-tokens"], "600");
}
