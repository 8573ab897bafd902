//! The OpenAI surface and small routes, over HTTP.

use http::{Method, StatusCode};
use llmstack_sim::LoraModule;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn models_list_base_and_lora_cards() {
    let mut cfg = instant("/models/llama-8b");
    cfg.served_model_names = vec!["llama".into(), "llama-alias".into()];
    cfg.lora_modules = vec![LoraModule {
        name: "sql-lora".into(),
        path: "/adapters/sql".into(),
    }];
    let e = engine(cfg).await;
    let c = client();
    let a = get(&c, &format!("{}/v1/models", e.base_url())).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    let v = a.json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0]["id"], "llama");
    assert_eq!(data[0]["root"], "/models/llama-8b");
    assert_eq!(data[0]["parent"], serde_json::Value::Null);
    assert_eq!(data[0]["max_model_len"], 131_072);
    assert_eq!(data[1]["id"], "llama-alias");
    assert_eq!(data[2]["id"], "sql-lora");
    assert_eq!(data[2]["parent"], "llama");
    assert_eq!(data[2]["root"], "/adapters/sql");
    assert_eq!(data[2]["max_model_len"], serde_json::Value::Null);
    // vLLM's key order.
    assert!(
        a.text()
            .starts_with(r#"{"object":"list","data":[{"id":"llama","object":"model","created":"#)
    );

    // A LoRA request reports the adapter as model.
    let r = post(
        &c,
        &format!("{}/v1/completions", e.base_url()),
        &json!({"model": "sql-lora", "prompt": "select"}),
    )
    .await;
    assert_eq!(r.json()["model"], "sql-lora");
    // An alias answers with the first served name.
    let r = post(
        &c,
        &format!("{}/v1/completions", e.base_url()),
        &json!({"model": "llama-alias", "prompt": "x"}),
    )
    .await;
    assert_eq!(r.json()["model"], "llama");
}

#[tokio::test]
async fn completion_defaults_and_request_id() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    let body =
        json!({"model": "m", "prompt": "The capital of France is", "ignore_eos": true}).to_string();
    let a = send(
        &c,
        Method::POST,
        &url,
        &[
            ("content-type", "application/json"),
            ("x-request-id", "abc123"),
        ],
        &body,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["id"], "cmpl-abc123");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(
        v["usage"]["completion_tokens"], 16,
        "completions default max_tokens is 16"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(
        v["system_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("vllm-0.33.0-")
    );
    // Without the header, a random 16-hex id.
    let v = post(&c, &url, &json!({"prompt": "x", "max_tokens": 2}))
        .await
        .json();
    let id = v["id"].as_str().unwrap();
    assert_eq!(id.len(), "cmpl-".len() + 16, "{id}");
    // The body's request_id is used when there is no header.
    let v = post(
        &c,
        &url,
        &json!({"prompt": "x", "max_tokens": 2, "request_id": "rid"}),
    )
    .await
    .json();
    assert_eq!(v["id"], "cmpl-rid");
}

#[tokio::test]
async fn prompt_forms_n_and_usage() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    let v = post(
        &c,
        &url,
        &json!({"prompt": ["one two", "three"], "n": 2, "max_tokens": 3, "ignore_eos": true}),
    )
    .await
    .json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 4);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    // Token-id prompts are used as given (no BOS added).
    let v = post(&c, &url, &json!({"prompt": [1, 2, 3, 4], "max_tokens": 1}))
        .await
        .json();
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    let v = post(
        &c,
        &url,
        &json!({"prompt": [[1, 2], [3, 4, 5]], "max_tokens": 1}),
    )
    .await
    .json();
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    // Without ignore_eos the model may stop early, with finish_reason stop.
    let v = post(&c, &url, &json!({"prompt": "hi", "max_tokens": 5000}))
        .await
        .json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(
        (64..=192).contains(&n),
        "natural length around the mean of 128: {n}"
    );
}

#[tokio::test]
async fn chat_with_string_or_parts_content() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", e.base_url());
    let a = post(&c, &url, &json!({"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4, "ignore_eos": true})).await;
    let b = post(&c, &url, &json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}], "max_completion_tokens": 4, "ignore_eos": true})).await;
    let (a, b) = (a.json(), b.json());
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    assert_eq!(a["usage"], b["usage"]);
    assert_eq!(a["usage"]["completion_tokens"], 4);
    assert!(
        a["choices"][0]["message"].get("tool_calls").is_none(),
        "tool_calls omitted in 0.33"
    );
}

#[tokio::test]
async fn cached_tokens_reported_for_a_shared_conversation_prefix() {
    let mut cfg = instant("m");
    cfg.enable_prompt_tokens_details = true;
    let e = engine(cfg).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", e.base_url());
    let system = "You are a helpful assistant. ".repeat(20);
    let first = json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": "first question"}], "max_tokens": 2});
    let v = post(&c, &url, &first).await.json();
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let second = json!({"messages": [
        {"role": "system", "content": system}, {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "second question"}], "max_tokens": 2});
    let v = post(&c, &url, &second).await.json();
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(cached % 16, 0);
    assert!(
        cached >= prompt - 16 && cached <= prompt,
        "the first turn is reused: {cached} of {prompt}"
    );
}

#[tokio::test]
async fn errors_have_vllm_status_and_body() {
    let mut cfg = instant("m");
    cfg.max_model_len = Some(64);
    let e = engine(cfg).await;
    let c = client();
    let u = |p: &str| format!("{}{p}", e.base_url());
    let check = |a: &Answer, status: u16, kind: &str| {
        assert_eq!(a.status.as_u16(), status, "{}", a.text());
        let v = a.json();
        assert_eq!(v["error"]["code"], status);
        assert_eq!(v["error"]["type"], kind);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    };
    let a = post(
        &c,
        &u("/v1/chat/completions"),
        &json!({"model": "gpt-9", "messages": []}),
    )
    .await;
    check(&a, 404, "NotFoundError");
    assert_eq!(a.json()["error"]["param"], "model");
    let a = post(
        &c,
        &u("/v1/completions"),
        &json!({"prompt": "word ".repeat(100)}),
    )
    .await;
    check(&a, 400, "BadRequestError");
    assert_eq!(a.json()["error"]["param"], "input_tokens");
    let a = post(
        &c,
        &u("/v1/completions"),
        &json!({"prompt": "x", "max_tokens": 65}),
    )
    .await;
    check(&a, 400, "BadRequestError");
    let a = send(
        &c,
        Method::POST,
        &u("/v1/completions"),
        &[("content-type", "application/json")],
        "{\"prompt\":",
    )
    .await;
    check(&a, 400, "Bad Request");
    let a = send(
        &c,
        Method::POST,
        &u("/v1/completions"),
        &[("content-type", "text/plain")],
        "{}",
    )
    .await;
    check(&a, 400, "Bad Request");
    let a = post(
        &c,
        &u("/v1/completions"),
        &json!({"prompt": "x", "n": "two"}),
    )
    .await;
    check(&a, 400, "Bad Request");
    assert_eq!(a.json()["error"]["param"], "n");
    let a = post(&c, &u("/v1/completions"), &json!({"prompt": ""})).await;
    check(&a, 400, "BadRequestError");
    let a = post(&c, &u("/v1/completions"), &json!({"prompt": [99_999_999]})).await;
    check(&a, 400, "BadRequestError");
    let a = post(&c, &u("/v1/chat/completions"), &json!({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}})).await;
    check(&a, 400, "Bad Request");
    // Unknown routes and methods answer like FastAPI.
    let a = get(&c, &u("/v1/nothing")).await;
    assert_eq!(
        (a.status.as_u16(), a.text()),
        (404, r#"{"detail":"Not Found"}"#)
    );
    let a = get(&c, &u("/v1/completions")).await;
    assert_eq!(
        (a.status.as_u16(), a.text()),
        (405, r#"{"detail":"Method Not Allowed"}"#)
    );
    // The engine still serves after all that.
    assert_eq!(
        post(
            &c,
            &u("/v1/completions"),
            &json!({"prompt": "x", "max_tokens": 1})
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn garbage_never_breaks_the_engine() {
    let e = engine(instant("m")).await;
    let c = client();
    let mut rng = fastrand::Rng::with_seed(7);
    let routes = [
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/tokenize",
        "/detokenize",
        "/sim/faults",
        "/v1/load_lora_adapter",
    ];
    let shapes = [
        "null",
        "[]",
        "{}",
        "1e999",
        "\"str\"",
        r#"{"prompt":{"a":1}}"#,
        r#"{"messages":"x"}"#,
        r#"{"messages":[{"role":1}]}"#,
        r#"{"prompt":"x","max_tokens":-1}"#,
        r#"{"prompt":"x","max_tokens":1e30}"#,
        r#"{"prompt":"x","n":0}"#,
        r#"{"prompt":"x","n":100000}"#,
        r#"{"input":[[1,2],[-3]]}"#,
        r#"{"tokens":[4294967295]}"#,
        r#"{"prompt":"x","stop":[1,2]}"#,
        r#"{"error_rate":5}"#,
    ];
    for i in 0..200 {
        let route = routes[i % routes.len()];
        let body = if i < shapes.len() * 3 {
            shapes[i % shapes.len()].to_owned()
        } else {
            (0..rng.usize(0..200))
                .map(|_| char::from(rng.u8(32..127)))
                .collect()
        };
        let url = format!("{}{route}", e.base_url());
        let a = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            send(
                &c,
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                &body,
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{route} {body:?} hung"));
        assert!(
            !a.status.is_server_error(),
            "{route} {body:?} → {} {}",
            a.status,
            a.text()
        );
        if a.status.is_client_error() && a.status != 404 {
            assert!(
                a.json()["error"]["message"].is_string(),
                "{route} {body:?}: {}",
                a.text()
            );
        }
    }
    let a = post(
        &c,
        &format!("{}/v1/completions", e.base_url()),
        &json!({"prompt": "still alive", "max_tokens": 1}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn tokenize_detokenize_round_trip() {
    let e = engine(instant("m")).await;
    let c = client();
    let u = |p: &str| format!("{}{p}", e.base_url());
    let v = post(
        &c,
        &u("/tokenize"),
        &json!({"model": "m", "prompt": "Hello world"}),
    )
    .await
    .json();
    let tokens = v["tokens"].clone();
    assert_eq!(v["count"], tokens.as_array().unwrap().len());
    assert_eq!(v["max_model_len"], 131_072);
    assert_eq!(v["token_strs"], serde_json::Value::Null);
    let back = post(
        &c,
        &u("/detokenize"),
        &json!({"model": "m", "tokens": tokens}),
    )
    .await
    .json();
    assert_eq!(back["prompt"], "<|begin_of_text|>Hello world");
    let v = post(
        &c,
        &u("/tokenize"),
        &json!({"prompt": "Hello world", "add_special_tokens": false, "return_token_strs": true}),
    )
    .await
    .json();
    assert_eq!(
        v["token_strs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect::<String>(),
        "Hello world"
    );
    // messages render with the chat template; count matches a chat request's prompt_tokens.
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let t = post(&c, &u("/tokenize"), &json!({"messages": msgs}))
        .await
        .json();
    let r = post(
        &c,
        &u("/v1/chat/completions"),
        &json!({"messages": msgs, "max_tokens": 1}),
    )
    .await
    .json();
    assert_eq!(t["count"], r["usage"]["prompt_tokens"]);
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/embeddings", e.base_url());
    let v = post(&c, &url, &json!({"input": ["a b c", "d e f"]}))
        .await
        .json();
    assert_eq!(v["object"], "list");
    assert!(v["id"].as_str().unwrap().starts_with("embd-"));
    let a: Vec<f64> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(a.len(), 1024);
    let norm: f64 = a.iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-3);
    assert_ne!(v["data"][0]["embedding"], v["data"][1]["embedding"]);
    let again = post(&c, &url, &json!({"input": "a b c"})).await.json();
    assert_eq!(
        again["data"][0]["embedding"], v["data"][0]["embedding"],
        "deterministic"
    );
    let b = post(
        &c,
        &url,
        &json!({"input": "a b c", "encoding_format": "base64", "dimensions": 8}),
    )
    .await
    .json();
    assert_eq!(
        b["data"][0]["embedding"].as_str().unwrap().len(),
        44,
        "8 floats = 32 bytes = 44 base64 chars"
    );
}

#[tokio::test]
async fn small_routes() {
    let mut cfg = instant("m");
    cfg.enable_server_load_tracking = true;
    let e = engine(cfg).await;
    let c = client();
    let u = |p: &str| format!("{}{p}", e.base_url());
    let h = get(&c, &u("/health")).await;
    assert_eq!((h.status.as_u16(), h.body.len()), (200, 0));
    assert_eq!(
        send(&c, Method::POST, &u("/ping"), &[], "").await.status,
        200
    );
    assert_eq!(
        get(&c, &u("/version")).await.text(),
        r#"{"version":"0.33.0"}"#
    );
    assert_eq!(get(&c, &u("/load")).await.text(), r#"{"server_load":0}"#);
    assert_eq!(
        get(&c, &u("/is_sleeping")).await.text(),
        r#"{"is_sleeping":false}"#
    );
    assert_eq!(get(&c, &u("/kv_event_sources")).await.text(), "{}");
    let m = get(&c, &u("/metrics")).await;
    assert_eq!(
        m.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_like_uvicorn() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = instant("m");
    cfg.keep_alive_timeout = std::time::Duration::from_millis(300);
    let e = engine(cfg).await;
    let mut s = tokio::net::TcpStream::connect(e.addr()).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    // The connection stays open for reuse, then the server closes it once idle.
    let t0 = tokio::time::Instant::now();
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed by the server");
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn typed_ignored_fields_and_sampling_ranges() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", e.base_url());
    let msgs = json!([{"role": "user", "content": "x"}]);
    let ok = post(&c, &url, &json!({"messages": msgs, "max_tokens": 2, "temperature": 0.7, "top_p": 0.9, "logprobs": true,
        "top_logprobs": 2, "tools": [], "response_format": {"type": "text"}, "user": "u", "seed": 3})).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    for (body, param) in [
        (
            json!({"messages": msgs, "temperature": "hot"}),
            "temperature",
        ),
        (json!({"messages": msgs, "logprobs": 3}), "logprobs"),
        (json!({"messages": msgs, "temperature": -1}), "temperature"),
        (json!({"messages": msgs, "top_p": 0}), "top_p"),
        (
            json!({"messages": msgs, "min_tokens": 5, "max_tokens": 2}),
            "min_tokens",
        ),
    ] {
        let a = post(&c, &url, &body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text());
        assert_eq!(a.json()["error"]["param"], param, "{body}");
    }
}

#[tokio::test]
async fn cached_tokens_reported_when_a_stop_string_ends_the_answer() {
    let mut cfg = instant("m");
    cfg.enable_prompt_tokens_details = true;
    let e = engine(cfg).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    let prompt = "a long shared prompt ".repeat(8);
    let first = post(
        &c,
        &url,
        &json!({"prompt": prompt, "max_tokens": 8, "ignore_eos": true}),
    )
    .await
    .json();
    let text = first["choices"][0]["text"].as_str().unwrap().to_owned();
    let stop = text.split(' ').nth(3).unwrap().to_owned();
    let second = post(
        &c,
        &url,
        &json!({"prompt": prompt, "max_tokens": 8, "ignore_eos": true, "stop": [stop]}),
    )
    .await
    .json();
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            >= 16,
        "{second}"
    );
}

#[tokio::test]
async fn completion_stream_returns_prompt_token_ids_first() {
    let e = engine(instant("m")).await;
    let c = client();
    let s = stream(
        &c,
        &format!("{}/v1/completions", e.base_url()),
        &json!({"prompt": [5, 6, 7], "max_tokens": 2, "stream": true, "return_token_ids": true}),
    )
    .await;
    assert_eq!(
        s.events[0].json()["choices"][0]["prompt_token_ids"],
        json!([5, 6, 7])
    );
    assert_eq!(
        s.events[1].json()["choices"][0]["prompt_token_ids"],
        serde_json::Value::Null
    );
    assert_eq!(
        s.events[0].json()["choices"][0]["token_ids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
