//! The machinery every inference route shares: injected faults, in-flight counting,
//! aborts of abandoned requests, and `x-request-id` answers.

use std::time::Duration;

use llmstack_sim::{FaultConfig, LatencyProfile};
use serde_json::{Value, json};

use crate::support::*;

fn slow(model: &str) -> llmstack_sim::EngineConfig {
    llmstack_sim::EngineConfig::new(model).with_profile(LatencyProfile::llama3_8b_h100())
}

async fn aborted(c: &HttpClient, base: &str) -> u64 {
    get(c, &format!("{base}/sim/state")).await.json()["aborted"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn injected_errors_hit_every_inference_route() {
    let e = engine(instant("m")).await;
    e.set_faults(FaultConfig {
        error_rate: 1.0,
        error_status: Some(429),
        ..FaultConfig::default()
    })
    .unwrap();
    let c = client();
    let base = e.base_url();
    let routes: [(&str, Value); 7] = [
        ("/v1/responses", json!({"input": "hi"})),
        ("/v1/rerank", json!({"query": "q", "documents": ["d"]})),
        ("/v1/score", json!({"text_1": "a", "text_2": "b"})),
        ("/v1/embeddings", json!({"input": "a"})),
        ("/v1/audio/speech", json!({"input": "a"})),
        ("/v1/images/generations", json!({"prompt": "a"})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        ),
    ];
    for (path, body) in routes {
        let a = post(&c, &format!("{base}{path}"), &body).await;
        assert_eq!(a.status, 429, "{path}");
        assert_eq!(a.json()["error"]["code"], 429, "{path}");
    }
    let m = post(
        &c,
        &format!("{base}/v1/messages"),
        &json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(m.status, 429);
    assert_eq!(m.json()["type"], "error", "Anthropic error shape");
    // Checks come first: an invalid request is still a 400.
    let bad = post(&c, &format!("{base}/v1/rerank"), &json!({"query": "q"})).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn hanging_requests_never_answer_and_count_in_flight() {
    let mut cfg = instant("m");
    cfg.enable_server_load_tracking = true;
    let e = engine(cfg).await;
    e.set_faults(FaultConfig {
        hang_rate: 1.0,
        ..FaultConfig::default()
    })
    .unwrap();
    let c = client();
    let base = e.base_url();
    let rerank = spawn_post(
        &c,
        format!("{base}/v1/rerank"),
        json!({"query": "q", "documents": ["d"]}),
    );
    let messages = spawn_post(
        &c,
        format!("{base}/v1/messages"),
        json!({"model": "m", "max_tokens": 2, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let load = format!("{base}/load");
    assert!(
        eventually(Duration::from_secs(2), || async {
            get(&client(), &load).await.json()["server_load"] == 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !rerank.is_finished() && !messages.is_finished(),
        "no headers, ever"
    );
    rerank.abort();
    messages.abort();
    assert!(
        eventually(Duration::from_secs(2), || async {
            get(&client(), &load).await.json()["server_load"] == 0
        })
        .await,
        "a client that gives up is no longer counted"
    );
}

#[tokio::test]
async fn close_after_chunks_cuts_every_kind_of_stream() {
    let e = engine(slow("m")).await;
    e.set_faults(FaultConfig {
        close_after_chunks: Some(4),
        ..FaultConfig::default()
    })
    .unwrap();
    let c = client();
    let base = e.base_url();
    let s = stream(
        &c,
        &format!("{base}/v1/responses"),
        &json!({"input": "hi", "max_output_tokens": 50, "stream": true}),
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(s.broken, "a body error, not a clean end");
    assert_eq!(s.events.len(), 4, "{}", s.raw);
    let s = stream(
        &c,
        &format!("{base}/v1/messages"),
        &json!({"model": "m", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert!(s.broken);
    assert_eq!(s.events.len(), 4);
    assert!(!s.raw.contains("message_stop"));
    // The cut requests were aborted in the engine.
    assert!(
        eventually(Duration::from_secs(2), || async {
            aborted(&c, &base).await == 2
        })
        .await
    );
    let audio = e.config().model.clone();
    let form = format!(
        "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{audio}\r\n--b\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.raw\"\r\n\r\n{}\r\n--b--\r\n",
        "x".repeat(320_044)
    );
    let s = stream_bytes(
        &c,
        &format!("{base}/v1/audio/transcriptions"),
        &[("content-type", "multipart/form-data; boundary=b")],
        bytes::Bytes::from(form),
    )
    .await;
    assert!(s.broken);
    assert_eq!(s.events.len(), 4);
}

#[tokio::test]
async fn disconnects_abort_responses_and_messages() {
    let e = engine(slow("m")).await;
    let c = client();
    let base = e.base_url();
    let running = || async {
        let m = get(&client(), &format!("{base}/metrics")).await;
        sample(m.text(), "vllm:num_requests_running", &[]).unwrap_or(0.0)
    };
    // A stream the client stops reading, and a non-streaming request it gives up on.
    let streamed = spawn_stream(
        &c,
        format!("{base}/v1/messages"),
        json!({"model": "m", "max_tokens": 5000, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let whole = spawn_post(
        &c,
        format!("{base}/v1/responses"),
        json!({"input": "hi", "max_output_tokens": 5000}),
    );
    assert!(eventually(Duration::from_secs(5), || async { running().await == 2.0 }).await);
    streamed.abort();
    whole.abort();
    assert!(
        eventually(Duration::from_secs(5), || async {
            aborted(&c, &base).await == 2 && running().await == 0.0
        })
        .await,
        "both aborted in the engine"
    );
    let m = get(&c, &format!("{base}/metrics")).await;
    assert_eq!(
        sample(
            m.text(),
            "vllm:request_success_total",
            &[("finished_reason", "abort")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn request_id_headers_echo_on_every_route() {
    let mut cfg = instant("m");
    cfg.enable_request_id_headers = true;
    let e = engine(cfg).await;
    let c = client();
    let base = e.base_url();
    let a = send(
        &c,
        http::Method::POST,
        &format!("{base}/v1/rerank"),
        &[
            ("content-type", "application/json"),
            ("x-request-id", "req-7"),
        ],
        r#"{"query": "q", "documents": ["d"]}"#,
    )
    .await;
    assert_eq!(a.headers["x-request-id"], "req-7");
    assert_eq!(a.json()["id"], "rerank-req-7");
    let fresh = get(&c, &format!("{base}/health")).await;
    let id = fresh.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    let off = engine(instant("m")).await;
    let quiet = get(&c, &format!("{}/health", off.base_url())).await;
    assert!(
        quiet.headers.get("x-request-id").is_none(),
        "off by default, as vLLM"
    );
}
