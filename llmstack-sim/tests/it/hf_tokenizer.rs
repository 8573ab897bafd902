//! `--tokenizer DIR`: an engine with the fixture's Hugging Face tokenizer tokenizes, renders
//! chats, generates, detokenizes and hashes blocks exactly as `llmstack-tokenize` (the
//! router's tokenizer) computes them.

use http::StatusCode;
use llmstack_sim::{BlockHasher, HashAlgo, KvEventsConfig, Tokenizer, published};
use llmstack_tokenize::ModelTokenizer;
use serde_json::{Value, json};
use zeromq::{Socket, SubSocket};

use crate::kv_events::recv_batch;
use crate::support::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");

/// The router's view of the fixture: `llmstack-tokenize` loaded on its own.
fn router_tokenizer() -> ModelTokenizer {
    ModelTokenizer::from_dir(FIXTURE).unwrap()
}

fn with_fixture(model: &str) -> llmstack_sim::EngineConfig {
    instant(model).with_tokenizer(Tokenizer::from_dir(FIXTURE).unwrap())
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test]
async fn tokenize_and_detokenize_use_the_model_tokenizer() {
    let e = engine(with_fixture("m")).await;
    let c = client();
    let router = router_tokenizer();
    let url = format!("{}/tokenize", e.base_url());
    let messages = json!([
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France? 日本"}]},
    ]);
    let r = post(&c, &url, &json!({"model": "m", "messages": messages})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let want = router.encode_chat(&messages.to_string()).unwrap();
    assert_eq!(ids(&r.json()["tokens"]), want);
    assert_eq!(r.json()["count"], want.len());

    // The fixture's own expectation for a chat rendered with its template.
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURE}/expected.json")).unwrap())
            .unwrap();
    let case = &expected["chats"][0];
    assert_eq!(case["template"], "default");
    let r = post(&c, &url, &json!({"messages": case["messages"]})).await;
    assert_eq!(r.json()["tokens"], case["ids"]);

    // A text prompt: BOS by default, token strings are the vocabulary's entries.
    let r = post(
        &c,
        &url,
        &json!({"prompt": "Hello world", "return_token_strs": true}),
    )
    .await;
    assert_eq!(
        ids(&r.json()["tokens"]),
        router.encode("Hello world", true).unwrap()
    );
    assert_eq!(r.json()["token_strs"][0], "<|begin_of_text|>");
    let r = post(
        &c,
        &url,
        &json!({"prompt": "Hello world", "add_special_tokens": false}),
    )
    .await;
    let plain = r.json()["tokens"].clone();
    let d = post(
        &c,
        &format!("{}/detokenize", e.base_url()),
        &json!({"tokens": plain}),
    )
    .await;
    assert_eq!(d.json(), json!({"prompt": "Hello world"}));
    // Ids beyond the vocabulary are rejected.
    let d = post(
        &c,
        &format!("{}/detokenize", e.base_url()),
        &json!({"tokens": [1_000_000]}),
    )
    .await;
    assert_eq!(d.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn usage_and_context_checks_count_real_tokens() {
    let mut cfg = with_fixture("m");
    cfg.max_model_len = Some(48);
    let e = engine(cfg).await;
    let c = client();
    let router = router_tokenizer();
    let prompt = "The router caches prefix blocks, and the engine's KV events announce them.";
    let want = router.encode(prompt, true).unwrap().len();
    let r = post(
        &c,
        &format!("{}/v1/completions", e.base_url()),
        &json!({"prompt": prompt, "max_tokens": 3, "ignore_eos": true}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], want);
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);

    let long = prompt.repeat(4);
    let n = router.encode(&long, true).unwrap().len();
    assert!(n > 48);
    let r = post(
        &c,
        &format!("{}/v1/completions", e.base_url()),
        &json!({"prompt": long}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains(&format!("contains {n} input tokens")), "{msg}");

    let r = post(
        &c,
        &format!("{}/v1/embeddings", e.base_url()),
        &json!({"input": prompt}),
    )
    .await;
    assert_eq!(r.json()["usage"]["prompt_tokens"], want);
}

#[tokio::test]
async fn streamed_chat_concatenates_to_the_full_answer() {
    // Short natural answers: the model ends with the tokenizer's EOS, which is no text.
    let mut cfg = with_fixture("m");
    cfg.mean_output_tokens = 8;
    let e = engine(cfg).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", e.base_url());
    let body = json!({"messages": [{"role": "user", "content": "Tell me a story."}],
                      "max_tokens": 40, "seed": 7});
    let full = post(&c, &url, &body).await.json();
    assert_eq!(full["choices"][0]["finish_reason"], "stop", "{full}");
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!text.is_empty());
    assert!(
        text.split(' ').skip(1).all(|w| !w.is_empty()),
        "ordinary words with one space each: {text:?}"
    );
    assert_eq!(
        full["usage"]["prompt_tokens"],
        router_tokenizer()
            .encode_chat(&body["messages"].to_string())
            .unwrap()
            .len()
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let s = stream(&c, &url, &streamed).await;
    assert_eq!(s.status, StatusCode::OK);
    let events: Vec<Value> = s
        .events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| e.json())
        .collect();
    let deltas: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(deltas, text);
    let usage = &events.last().unwrap()["usage"];
    for key in ["prompt_tokens", "completion_tokens"] {
        assert_eq!(usage[key], full["usage"][key], "{key}");
    }
}

#[tokio::test]
async fn other_apis_render_with_the_chat_template() {
    let e = engine(with_fixture("m")).await;
    let c = client();
    let router = router_tokenizer();
    // Anthropic Messages: `system` becomes the first turn.
    let r = post(
        &c,
        &format!("{}/v1/messages/count_tokens", e.base_url()),
        &json!({"model": "m", "system": "Be brief.", "messages": [{"role": "user", "content": "Hi!"}]}),
    )
    .await;
    let turns =
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]);
    assert_eq!(
        r.json()["input_tokens"],
        router.encode_chat(&turns.to_string()).unwrap().len()
    );
    // Responses: a string input is one user turn.
    let r = post(
        &c,
        &format!("{}/v1/responses", e.base_url()),
        &json!({"input": "Hi!", "max_output_tokens": 4}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let one = json!([{"role": "user", "content": "Hi!"}]);
    assert_eq!(
        r.json()["usage"]["input_tokens"],
        router.encode_chat(&one.to_string()).unwrap().len()
    );
    // The template's own error (this one accepts text parts only) is a 400.
    let r = post(
        &c,
        &format!("{}/v1/chat/completions", e.base_url()),
        &json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
}

#[tokio::test]
async fn kv_events_carry_the_model_token_ids() {
    let mut sub = SubSocket::new();
    let bound = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    sub.subscribe("").await.unwrap();
    let mut cfg = with_fixture("m");
    cfg.kv_events = Some(KvEventsConfig {
        endpoint: bound.to_string(),
        ..KvEventsConfig::default()
    });
    let e = engine(cfg).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", e.base_url());
    let router = router_tokenizer();
    // PUB drops messages until the subscription has arrived, and a repeated prompt stores
    // nothing: send fresh chats until a batch lands.
    let messages = |i: u32| {
        json!([{"role": "user", "content": format!(
            "{i} The router caches prefix blocks, and the engine announces every block it stores."
        )}])
    };
    let mut got = None;
    for i in 0..40 {
        post(&c, &url, &json!({"messages": messages(i), "max_tokens": 1})).await;
        if let Some(b) = recv_batch(&mut sub).await {
            got = Some(b);
            break;
        }
    }
    let (_, _, batch) = got.expect("a KV-event batch");
    let stored = batch[1]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "BlockStored")
        .expect("BlockStored")
        .clone();
    let token_ids = ids(&stored["token_ids"]);
    assert!(token_ids.len() >= 32 && token_ids.len().is_multiple_of(16));
    // The prompt is the router's encode_chat of one of the chats sent.
    let prompt = (0..40)
        .map(|i| router.encode_chat(&messages(i).to_string()).unwrap())
        .find(|p| p.starts_with(&token_ids))
        .expect("the stored blocks are a prefix of a chat the router tokenized");
    assert_eq!(prompt[0], 4096, "<|begin_of_text|> written by the template");
    let h = BlockHasher::new(HashAlgo::Sha256, "vllm-none-hash");
    let mut parent = None;
    let mut hashes = Vec::new();
    for block in token_ids.chunks(16) {
        let b = h.hash_block(parent.as_ref(), block, &[]);
        hashes.push(published(&b));
        parent = Some(b);
    }
    assert_eq!(stored["block_hashes"], json!(hashes));
}

#[tokio::test]
async fn a_bad_tokenizer_directory_fails_at_start() {
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_llmstack-sim"))
            .args([
                "--tokenizer",
                "/nonexistent/llmstack-tokenizer",
                "--port",
                "0",
            ])
            .env_remove("VLLM_API_KEY")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--tokenizer /nonexistent/llmstack-tokenizer")
            && stderr.contains("/nonexistent/llmstack-tokenizer/tokenizer.json"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
