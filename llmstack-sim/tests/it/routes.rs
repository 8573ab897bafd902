//! The Responses, Messages, score, rerank and images routes over HTTP.

use http::Method;
use serde_json::{Value, json};

use crate::support::*;

/// An instant engine whose answers end on their own after about 8 tokens.
fn short_answers(model: &str) -> llmstack_sim::EngineConfig {
    let mut cfg = instant(model);
    cfg.mean_output_tokens = 8;
    cfg
}

fn names(s: &Stream) -> Vec<&str> {
    s.events
        .iter()
        .map(|e| e.name.as_deref().unwrap_or("-"))
        .collect()
}

#[tokio::test]
async fn responses_answer_a_response_object() {
    let e = engine(short_answers("m")).await;
    let c = client();
    let url = format!("{}/v1/responses", e.base_url());
    let a = send(
        &c,
        Method::POST,
        &url,
        &[
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
        ],
        &json!({"model": "m", "input": "Say hi", "max_output_tokens": 1000}).to_string(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.headers["content-type"], "application/json");
    let r = a.json();
    assert_eq!(r["id"], "resp_abc");
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], "m");
    assert_eq!(r["max_output_tokens"], 1000);
    let item = &r["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["content"][0]["type"], "output_text");
    let text = item["content"][0]["text"].as_str().unwrap();
    assert!(!text.is_empty());
    // The input renders like the same chat conversation.
    let tok = post(
        &c,
        &format!("{}/tokenize", e.base_url()),
        &json!({"messages": [{"role": "user", "content": "Say hi"}]}),
    )
    .await
    .json();
    let u = &r["usage"];
    assert_eq!(u["input_tokens"], tok["count"]);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap()
    );
    // Cut by max_output_tokens: incomplete.
    let cut = post(
        &c,
        &url,
        &json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "Say hi"}]}],
                "instructions": "Be brief", "max_output_tokens": 2}),
    )
    .await
    .json();
    assert_eq!(cut["status"], "incomplete");
    assert_eq!(cut["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(cut["usage"]["output_tokens"], 2);
    assert_eq!(cut["instructions"], "Be brief");
    assert!(cut["id"].as_str().unwrap().starts_with("resp_"));
}

#[tokio::test]
async fn responses_stream_named_events() {
    let e = engine(instant("m")).await;
    let c = client();
    let s = stream(
        &c,
        &format!("{}/v1/responses", e.base_url()),
        &json!({"model": "m", "input": "hi", "max_output_tokens": 5, "stream": true}),
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(!s.broken);
    assert!(!s.raw.contains("[DONE]"), "no [DONE] sentinel");
    let n = names(&s);
    let deltas = n.len() - 8;
    assert!(deltas >= 1, "{n:?}");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(n, expected);
    for (i, ev) in s.events.iter().enumerate() {
        let d = ev.json();
        assert_eq!(d["type"], ev.name.as_deref().unwrap());
        assert_eq!(d["sequence_number"], i);
    }
    assert_eq!(s.events[0].json()["response"]["status"], "in_progress");
    let streamed: String = s.events[4..4 + deltas]
        .iter()
        .map(|e| e.json()["delta"].as_str().unwrap().to_owned())
        .collect();
    let last = s.events.last().unwrap().json();
    let text = last["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(streamed, text);
    assert_eq!(s.events[4 + deltas].json()["text"], text);
    assert_eq!(last["response"]["usage"]["output_tokens"], deltas);
}

#[tokio::test]
async fn messages_answer_anthropic_messages() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/messages", e.base_url());
    let body = json!({"model": "m", "max_tokens": 4, "system": "You are terse.",
                      "messages": [{"role": "user", "content": "hi"}]});
    let a = post(&c, &url, &body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let m = a.json();
    assert!(m["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], "m");
    assert_eq!(m["content"][0]["type"], "text");
    assert!(!m["content"][0]["text"].as_str().unwrap().is_empty());
    assert_eq!(m["stop_reason"], "max_tokens");
    assert_eq!(m["usage"]["output_tokens"], 4);
    let count = post(&c, &format!("{url}/count_tokens"), &body).await.json();
    assert_eq!(m["usage"]["input_tokens"], count["input_tokens"]);
    let no_system = post(
        &c,
        &format!("{url}/count_tokens"),
        &json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
    )
    .await
    .json();
    assert!(no_system["input_tokens"].as_u64() < count["input_tokens"].as_u64());
    // Ended by the model itself.
    let e2 = engine(short_answers("m")).await;
    let done = post(
        &c,
        &format!("{}/v1/messages", e2.base_url()),
        &json!({"model": "m", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .json();
    assert_eq!(done["stop_reason"], "end_turn");
    assert!(
        done.get("stop_sequence").is_none(),
        "nulls dropped, as vLLM"
    );
}

#[tokio::test]
async fn messages_errors() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/messages", e.base_url());
    // Validation: max_tokens is required (OpenAI-style 400, before the handler).
    let a = post(&c, &url, &json!({"model": "m", "messages": []})).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "max_tokens");
    // After validation, errors use Anthropic's shape.
    let a = post(
        &c,
        &url,
        &json!({"model": "nope", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(a.status, 404);
    let err = a.json();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "NotFoundError");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("The model `nope` does not exist")
    );
    let a = send(
        &c,
        Method::POST,
        &url,
        &[("content-type", "text/plain")],
        "{}",
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(get(&c, &url).await.status, 405);
}

#[tokio::test]
async fn messages_stream_anthropic_events() {
    let e = engine(instant("m")).await;
    let c = client();
    let s = stream(
        &c,
        &format!("{}/v1/messages", e.base_url()),
        &json!({"model": "m", "max_tokens": 3, "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(!s.broken);
    assert_eq!(
        names(&s),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for ev in &s.events {
        assert_eq!(ev.json()["type"], ev.name.as_deref().unwrap());
    }
    let start = s.events[0].json();
    assert_eq!(start["message"]["role"], "assistant");
    assert!(start["message"]["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(s.events[2].json()["delta"]["type"], "text_delta");
    let delta = s.events[6].json();
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn generation_routes_run_through_the_engine() {
    let e = engine(instant("m")).await;
    let c = client();
    let base = e.base_url();
    post(
        &c,
        &format!("{base}/v1/responses"),
        &json!({"input": "hi", "max_output_tokens": 3}),
    )
    .await;
    post(
        &c,
        &format!("{base}/v1/messages"),
        &json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let m = get(&c, &format!("{base}/metrics")).await;
    assert_eq!(
        sample(
            m.text(),
            "vllm:request_success_total",
            &[("finished_reason", "length")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(m.text(), "vllm:generation_tokens_total", &[]),
        Some(5.0)
    );
}

#[tokio::test]
async fn rerank_orders_documents_by_relevance() {
    let e = engine(instant("m")).await;
    let c = client();
    let docs = json!(["Bananas are yellow.", "Paris is the capital of France.", {"text": "France borders Spain."}]);
    for path in ["/v1/rerank", "/rerank", "/v2/rerank"] {
        let a = post(
            &c,
            &format!("{}{path}", e.base_url()),
            &json!({"model": "m", "query": "What is the capital of France?", "documents": docs}),
        )
        .await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        let r = a.json();
        assert!(r["id"].as_str().unwrap().starts_with("rerank-"));
        assert_eq!(r["model"], "m");
        assert!(r["usage"]["total_tokens"].as_u64().unwrap() > 0);
        let results = r["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0]["index"], 1);
        assert_eq!(
            results[0]["document"]["text"],
            "Paris is the capital of France."
        );
        let scores: Vec<f64> = results
            .iter()
            .map(|x| x["relevance_score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    }
    let top = post(
        &c,
        &format!("{}/v1/rerank", e.base_url()),
        &json!({"query": "capital of France", "documents": docs, "top_n": 1}),
    )
    .await
    .json();
    assert_eq!(top["results"].as_array().unwrap().len(), 1);
    let again = post(
        &c,
        &format!("{}/v1/rerank", e.base_url()),
        &json!({"query": "capital of France", "documents": docs, "top_n": 1}),
    )
    .await
    .json();
    assert_eq!(top["results"], again["results"], "deterministic");
    let missing = post(
        &c,
        &format!("{}/v1/rerank", e.base_url()),
        &json!({"model": "other", "query": "q", "documents": ["d"]}),
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "NotFoundError");
    let bad = post(
        &c,
        &format!("{}/rerank", e.base_url()),
        &json!({"query": "q"}),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "documents");
}

#[tokio::test]
async fn score_pairs_texts() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/score", e.base_url());
    let one_to_n = post(
        &c,
        &url,
        &json!({"model": "m", "text_1": "capital of France", "text_2": ["Paris is the capital of France", "bananas"]}),
    )
    .await;
    assert_eq!(one_to_n.status, 200, "{}", one_to_n.text());
    let r = one_to_n.json();
    assert_eq!(r["object"], "list");
    assert!(r["id"].as_str().unwrap().starts_with("score-"));
    assert!(r["created"].is_u64());
    let data = r["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "score");
    let (s0, s1) = (
        data[0]["score"].as_f64().unwrap(),
        data[1]["score"].as_f64().unwrap(),
    );
    assert!(s0 > s1 && (0.0..=1.0).contains(&s0) && (0.0..=1.0).contains(&s1));
    assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let n_to_n = post(
        &c,
        &format!("{}/score", e.base_url()),
        &json!({"text_1": ["a", "b"], "text_2": ["a", "c"]}),
    )
    .await
    .json();
    assert_eq!(n_to_n["data"].as_array().unwrap().len(), 2);
    let mismatch = post(
        &c,
        &url,
        &json!({"text_1": ["a", "b"], "text_2": ["a", "b", "c"]}),
    )
    .await;
    assert_eq!(mismatch.status, 400);
    assert_eq!(mismatch.json()["error"]["type"], "BadRequestError");
}

#[tokio::test]
async fn images_are_tiny_pngs() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/images/generations", e.base_url());
    let a = post(
        &c,
        &url,
        &json!({"model": "m", "prompt": "a red fox", "n": 2, "size": "256x256"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = a.json();
    assert!(r["created"].is_u64());
    let data = r["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for d in data {
        // base64 of the PNG signature.
        assert!(d["b64_json"].as_str().unwrap().starts_with("iVBORw0KGgo"));
    }
    assert_ne!(data[0], data[1]);
    let again = post(
        &c,
        &url,
        &json!({"model": "m", "prompt": "a red fox", "n": 2, "size": "256x256"}),
    )
    .await;
    assert_eq!(again.json()["data"], r["data"], "deterministic");
    for bad in [
        json!({"prompt": "x", "n": 0}),
        json!({"prompt": "x", "size": "huge"}),
        json!({"prompt": "x", "response_format": "url"}),
        json!({"n": 1}),
    ] {
        assert_eq!(post(&c, &url, &bad).await.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn speech_is_a_wav_that_grows_with_the_input() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/audio/speech", e.base_url());
    let short = post(
        &c,
        &url,
        &json!({"model": "m", "input": "Hello.", "voice": "alloy"}),
    )
    .await;
    assert_eq!(short.status, 200, "{}", short.text());
    assert_eq!(short.headers["content-type"], "audio/wav");
    assert_eq!(&short.body[..4], b"RIFF");
    assert_eq!(&short.body[8..12], b"WAVE");
    let long = post(
        &c,
        &url,
        &json!({"model": "m", "input": "Hello there, this is a much longer sentence to read.", "voice": "alloy"}),
    )
    .await;
    assert!(long.body.len() > short.body.len());
    let pcm = post(
        &c,
        &url,
        &json!({"input": "Hello.", "response_format": "pcm"}),
    )
    .await;
    assert_eq!(pcm.headers["content-type"], "audio/pcm");
    assert_eq!(pcm.body.len(), short.body.len() - 44);
    let mp3 = post(
        &c,
        &url,
        &json!({"input": "Hello.", "response_format": "mp3"}),
    )
    .await;
    assert_eq!(mp3.status, 400);
    let unknown = post(&c, &url, &json!({"model": "x", "input": "Hello."})).await;
    assert_eq!(unknown.status, 404);
    let v: Value = unknown.json();
    assert_eq!(v["error"]["param"], "model");
}
