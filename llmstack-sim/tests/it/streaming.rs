//! SSE streams over HTTP: chunk sequence, usage, n > 1, disconnects.

use std::time::Duration;

use llmstack_sim::LatencyProfile;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn chat_stream_sequence() {
    let e = engine(instant("m")).await;
    let c = client();
    let s = stream(
        &c,
        &format!("{}/v1/chat/completions", e.base_url()),
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "ignore_eos": true,
                "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(!s.broken);
    let ev = &s.events;
    // role, 5 tokens, usage, [DONE]
    assert_eq!(ev.len(), 8, "{}", s.raw);
    assert_eq!(
        ev[0].json()["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for e in &ev[1..6] {
        assert!(
            e.json()["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .starts_with(' ')
        );
    }
    assert_eq!(ev[5].json()["choices"][0]["finish_reason"], "length");
    assert_eq!(
        ev[4].json()["choices"][0]["finish_reason"],
        serde_json::Value::Null
    );
    let usage = ev[6].json();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(ev[7].data, "[DONE]");
    let ids: Vec<String> = ev[..7]
        .iter()
        .map(|e| e.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one id for the whole stream"
    );
    assert!(s.raw.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn completion_stream_without_usage_and_continuous_usage() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    let s = stream(
        &c,
        &url,
        &json!({"prompt": "x", "max_tokens": 3, "ignore_eos": true, "stream": true}),
    )
    .await;
    assert_eq!(s.events.len(), 4);
    let last = s.events[2].json();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(
        last["system_fingerprint"].is_string(),
        "fingerprint on the last chunk without usage"
    );
    let s = stream(
        &c,
        &url,
        &json!({"prompt": "x", "max_tokens": 3, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true, "continuous_usage_stats": true}}),
    )
    .await;
    let counts: Vec<u64> = s.events[..3]
        .iter()
        .map(|e| e.json()["usage"]["completion_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![1, 2, 3]);
}

#[tokio::test]
async fn n_choices_stream_interleaved_by_index() {
    let e = engine(EngineConfigExt::slow("m")).await;
    let c = client();
    let s = stream(
        &c,
        &format!("{}/v1/chat/completions", e.base_url()),
        &json!({"messages": [{"role": "user", "content": "hi"}], "n": 3, "max_tokens": 4, "ignore_eos": true, "stream": true}),
    )
    .await;
    let chunks: Vec<serde_json::Value> = s
        .events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| e.json())
        .collect();
    let mut roles = [0; 3];
    let mut tokens = [0; 3];
    for ch in &chunks {
        let i = ch["choices"][0]["index"].as_u64().unwrap() as usize;
        if ch["choices"][0]["delta"].get("role").is_some() {
            assert_eq!(tokens[i], 0, "role before tokens");
            roles[i] += 1;
        } else {
            tokens[i] += 1;
        }
    }
    assert_eq!(roles, [1, 1, 1]);
    assert_eq!(tokens, [4, 4, 4]);
    let firsts: Vec<usize> = (0..3)
        .map(|i| {
            chunks
                .iter()
                .position(|c| c["choices"][0]["index"] == i)
                .unwrap()
        })
        .collect();
    assert!(
        firsts.iter().all(|&p| p < 6),
        "choices advance together, step by step: {firsts:?}"
    );
}

#[tokio::test]
async fn client_disconnect_aborts_the_request() {
    let e = engine(EngineConfigExt::slow("m")).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    let body = json!({"prompt": "x", "max_tokens": 5000, "ignore_eos": true, "stream": true});
    let task = spawn_stream(&c, url, body);
    let metrics = format!("{}/metrics", e.base_url());
    let c2 = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            sample(
                get(&c2, &metrics).await.text(),
                "vllm:num_requests_running",
                &[],
            ) == Some(1.0)
        })
        .await
    );
    task.abort();
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = get(&c2, &metrics).await;
            sample(
                m.text(),
                "vllm:request_success_total",
                &[("finished_reason", "abort")],
            ) == Some(1.0)
                && sample(m.text(), "vllm:num_requests_running", &[]) == Some(0.0)
                && sample(m.text(), "vllm:kv_cache_usage_perc", &[]) == Some(0.0)
        })
        .await,
        "the engine aborted the request and freed its blocks"
    );
}

#[tokio::test]
async fn stop_strings_end_streams_without_leaking() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    // Find a word the model says, then stop on it.
    let probe = post(
        &c,
        &url,
        &json!({"prompt": "p", "max_tokens": 12, "ignore_eos": true}),
    )
    .await
    .json();
    let text = probe["choices"][0]["text"].as_str().unwrap().to_owned();
    let word = text.split(' ').nth(6).unwrap().to_owned();
    let stop = format!(" {word}");
    let cut = text.find(&stop).unwrap();
    let s = stream(&c, &url, &json!({"prompt": "p", "max_tokens": 12, "ignore_eos": true, "stream": true, "stop": [stop.clone()], "stream_options": {"include_usage": true}})).await;
    let chunks: Vec<serde_json::Value> = s
        .events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| e.json())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, text[..cut]);
    let last = chunks
        .iter()
        .rev()
        .find(|c| !c["choices"].as_array().unwrap().is_empty())
        .unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["stop_reason"], stop);
    let m = get(&c, &format!("{}/metrics", e.base_url())).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            let m = get(&c, &format!("{}/metrics", e.base_url())).await;
            sample(
                m.text(),
                "vllm:request_success_total",
                &[("finished_reason", "stop")],
            ) == Some(1.0)
        })
        .await,
        "{}",
        m.text()
    );
}

/// A profile slow enough that requests overlap in tests (8 ms steps at speedup 1).
struct EngineConfigExt;

impl EngineConfigExt {
    fn slow(model: &str) -> llmstack_sim::EngineConfig {
        llmstack_sim::EngineConfig::new(model).with_profile(LatencyProfile::llama3_8b_h100())
    }
}
