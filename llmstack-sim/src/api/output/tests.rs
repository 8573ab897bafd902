//! Byte layouts checked against the hand-written samples of vllm.md §3.

use super::*;
use crate::finish::Finish;
use crate::tokenizer;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const FP: &str = "vllm-0.33.0-1a2b3c4d";

fn sampling(stream: bool, include_usage: bool, stop: &[&str]) -> Sampling {
    Sampling {
        n: 1,
        max_tokens: vec![16],
        min_tokens: 0,
        ignore_eos: false,
        stop: stop
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into(),
        include_stop: false,
        stop_token_ids: Arc::from(Vec::new()),
        stream,
        include_usage,
        continuous_usage: false,
        return_token_ids: false,
        seed: None,
        cache_salt: None,
    }
}

fn assembly(kind: Kind, id: &str, prompt_len: usize, s: Sampling) -> Assembly {
    Assembly::new(OutputCtx {
        kind,
        id: id.into(),
        created: 1_795_481_992,
        model: MODEL.into(),
        fingerprint: FP.into(),
        sampling: s,
        prompts: vec![vec![1u32; prompt_len].into()],
        tokenizer: Tokenizer::pseudo(),
        details: false,
        echo: false,
        chunk_prefix: Vec::new(),
        responses: None,
    })
}

fn step(text: &str, finish: Option<FinishReason>) -> SeqEvent {
    SeqEvent {
        index: 0,
        tokens: Emitted::All(tokenizer::encode(text, false)),
        finish: finish.map(|reason| Finish {
            reason,
            stop_token: None,
        }),
        cached_tokens: 0,
    }
}

fn text(buf: &[u8]) -> &str {
    std::str::from_utf8(buf).unwrap()
}

#[test]
fn completion_stream_bytes() {
    let mut a = assembly(
        Kind::Completion,
        "cmpl-4b1f0c9a7e2d3c55",
        5,
        sampling(true, true, &[]),
    );
    let mut buf = Vec::new();
    a.apply(step(" Paris", None));
    a.write_step(0, &mut buf);
    assert_eq!(
        text(&buf),
        concat!(
            r#"data: {"id":"cmpl-4b1f0c9a7e2d3c55","object":"text_completion","created":1795481992,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"text":" Paris","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null,"weight_versions":null}],"kv_transfer_params":null}"#,
            "\n\n"
        )
    );
    // Pad the completion to 16 tokens, finishing on the last one.
    a.apply(SeqEvent {
        index: 0,
        tokens: Emitted::All(vec![300; 16 - 3]),
        finish: None,
        cached_tokens: 0,
    });
    a.apply(SeqEvent {
        index: 0,
        tokens: Emitted::Nothing,
        finish: Some(Finish {
            reason: FinishReason::Length,
            stop_token: None,
        }),
        cached_tokens: 0,
    });
    assert!(a.done());
    buf.clear();
    a.write_end(&mut buf);
    assert_eq!(
        text(&buf),
        concat!(
            r#"data: {"id":"cmpl-4b1f0c9a7e2d3c55","object":"text_completion","created":1795481992,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[],"usage":{"prompt_tokens":5,"total_tokens":21,"completion_tokens":16},"system_fingerprint":"vllm-0.33.0-1a2b3c4d"}"#,
            "\n\ndata: [DONE]\n\n"
        )
    );
}

#[test]
fn chat_stream_bytes() {
    let mut a = assembly(Kind::Chat, "chatcmpl-x", 42, sampling(true, true, &[]));
    let mut buf = Vec::new();
    a.apply(step(" Paris", None));
    assert_eq!(
        a.write_step(0, &mut buf),
        2,
        "the role chunk goes out with the first token"
    );
    let prefix = r#"data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1795481992,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":"#;
    let expected = format!(
        "{prefix}{}\n\n{prefix}{}\n\n",
        r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}"#,
        r#"[{"index":0,"delta":{"content":" Paris"},"logprobs":null,"finish_reason":null,"token_ids":null}],"kv_transfer_params":null}"#,
    );
    assert_eq!(text(&buf), expected);
    buf.clear();
    a.apply(step(".", Some(FinishReason::Stop)));
    a.write_step(0, &mut buf);
    assert_eq!(
        text(&buf),
        format!(
            "{prefix}{}\n\n",
            r#"[{"index":0,"delta":{"content":"."},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":null,"weight_versions":null}],"kv_transfer_params":null}"#
        )
    );
    buf.clear();
    a.write_end(&mut buf);
    assert!(text(&buf).starts_with(&format!(r#"{prefix}[],"usage":{{"prompt_tokens":42,"total_tokens":46,"completion_tokens":4}},"system_fingerprint":"{FP}"}}"#)));
}

#[test]
fn final_chunk_carries_fingerprint_without_usage() {
    let mut a = assembly(Kind::Chat, "chatcmpl-x", 3, sampling(true, false, &[]));
    let mut buf = Vec::new();
    a.apply(step(" ok", Some(FinishReason::Length)));
    a.write_step(0, &mut buf);
    assert!(text(&buf).contains(r#""weight_versions":null}],"system_fingerprint":"vllm-0.33.0-1a2b3c4d","kv_transfer_params":null}"#), "{}", text(&buf));
    buf.clear();
    a.write_end(&mut buf);
    assert_eq!(text(&buf), "data: [DONE]\n\n");
}

#[test]
fn completion_json_matches_vllm_sample() {
    let mut a = assembly(
        Kind::Completion,
        "cmpl-4b1f0c9a7e2d3c55",
        5,
        sampling(false, false, &[]),
    );
    let mut ev = step(
        " Paris, the capital of France, is",
        Some(FinishReason::Length),
    );
    if let Emitted::All(v) = &mut ev.tokens {
        v.resize(16, 300); // 16 completion tokens as in the sample; text keeps its pieces
    }
    a.apply(ev);
    let body = String::from_utf8(a.full_response()).unwrap();
    let text_json = serde_json::to_string(&a.choices[0].text).unwrap();
    let expected = format!(
        r#"{{"id":"cmpl-4b1f0c9a7e2d3c55","object":"text_completion","created":1795481992,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{{"index":0,"text":{text_json},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null,"prompt_logprobs":null,"prompt_token_ids":null,"routed_experts":null,"weight_versions":null}}],"service_tier":null,"system_fingerprint":"vllm-0.33.0-1a2b3c4d","usage":{{"prompt_tokens":5,"total_tokens":21,"completion_tokens":16,"prompt_tokens_details":null,"completion_tokens_details":null}},"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}}"#
    );
    assert_eq!(body, expected);
    assert!(
        a.choices[0]
            .text
            .starts_with(" Paris, the capital of France, is")
    );
}

#[test]
fn chat_json_matches_vllm_sample() {
    let mut a = assembly(
        Kind::Chat,
        "chatcmpl-9f0c2d41a7b3e516",
        42,
        sampling(false, false, &[]),
    );
    a.apply(step("Paris.", Some(FinishReason::Stop)));
    let body = String::from_utf8(a.full_response()).unwrap();
    assert_eq!(
        body,
        r#"{"id":"chatcmpl-9f0c2d41a7b3e516","object":"chat.completion","created":1795481992,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Paris.","refusal":null,"annotations":null,"audio":null,"function_call":null,"reasoning":null},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":null,"routed_experts":null,"weight_versions":null}],"service_tier":null,"system_fingerprint":"vllm-0.33.0-1a2b3c4d","usage":{"prompt_tokens":42,"total_tokens":45,"completion_tokens":3,"prompt_tokens_details":null,"completion_tokens_details":null},"prompt_logprobs":null,"prompt_token_ids":null,"prompt_text":null,"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}"#
    );
}

#[test]
fn cached_tokens_details_when_enabled() {
    let mut a = assembly(Kind::Chat, "chatcmpl-x", 40, sampling(false, false, &[]));
    a.ctx.details = true;
    a.apply(SeqEvent {
        index: 0,
        tokens: Emitted::All(vec![300]),
        finish: Some(Finish {
            reason: FinishReason::Length,
            stop_token: None,
        }),
        cached_tokens: 32,
    });
    let body = String::from_utf8(a.full_response()).unwrap();
    assert!(body.contains(r#""prompt_tokens_details":{"cached_tokens":32,"created_cache_tokens":null,"multimodal_tokens":null}"#), "{body}");
    let mut b = assembly(Kind::Chat, "chatcmpl-x", 40, sampling(true, true, &[]));
    b.ctx.details = true;
    b.apply(SeqEvent {
        index: 0,
        tokens: Emitted::One(300),
        finish: Some(Finish {
            reason: FinishReason::Length,
            stop_token: None,
        }),
        cached_tokens: 32,
    });
    let mut buf = Vec::new();
    b.write_end(&mut buf);
    assert!(text(&buf).contains(r#""usage":{"prompt_tokens":40,"total_tokens":41,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":32}}"#), "{}", text(&buf));
}

#[test]
fn stop_strings_truncate_and_report() {
    let mut a = assembly(
        Kind::Completion,
        "cmpl-x",
        3,
        sampling(false, false, &["sat"]),
    );
    let ended = a.apply(step(" the cat sat on the mat", None));
    assert_eq!(ended, Some(0), "the engine sequence must be ended");
    assert!(a.done());
    assert_eq!(a.choices[0].text, " the cat ");
    assert_eq!(
        a.choices[0].finish,
        Some((FinishReason::Stop, Some(StopReason::Text("sat".into()))))
    );
    let body = String::from_utf8(a.full_response()).unwrap();
    assert!(body.contains(r#""finish_reason":"stop","stop_reason":"sat""#));

    let mut s = sampling(false, false, &["sat"]);
    s.include_stop = true;
    let mut b = assembly(Kind::Completion, "cmpl-x", 3, s);
    b.apply(step(" the cat sat on", None));
    assert_eq!(b.choices[0].text, " the cat sat");
}

/// Streamed deltas never leak the start of a stop string that later matches.
#[test]
fn streaming_holds_back_possible_stop_prefixes() {
    let mut a = assembly(
        Kind::Chat,
        "chatcmpl-x",
        3,
        sampling(true, false, &["on the"]),
    );
    let mut streamed = String::new();
    for word in [" the", " cat", " sat", " on", " the", " mat"] {
        let mut buf = Vec::new();
        let stopped = a.apply(SeqEvent {
            index: 0,
            tokens: Emitted::All(tokenizer::encode(word, false)),
            finish: None,
            cached_tokens: 0,
        });
        a.write_step(0, &mut buf);
        for line in text(&buf)
            .split("\n\n")
            .filter(|l| l.starts_with("data: {"))
        {
            let v: serde_json::Value = serde_json::from_str(&line[6..]).unwrap();
            streamed.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        if stopped.is_some() {
            break;
        }
    }
    assert!(a.done());
    assert_eq!(streamed, " the cat sat ");
}

#[test]
fn in_stream_errors_use_each_endpoints_json_style() {
    let mut a = assembly(Kind::Completion, "cmpl-x", 3, sampling(true, false, &[]));
    let mut buf = Vec::new();
    a.write_error("Internal server error", &mut buf);
    assert_eq!(
        text(&buf),
        "data: {\"error\": {\"message\": \"Internal server error\", \"type\": \"InternalServerError\", \"param\": null, \"code\": 500}}\n\ndata: [DONE]\n\n"
    );
    let mut c = assembly(Kind::Chat, "chatcmpl-x", 3, sampling(true, false, &[]));
    buf.clear();
    c.write_error("Internal server error", &mut buf);
    assert!(text(&buf).starts_with(r#"data: {"error":{"message":"Internal server error","type":"InternalServerError","param":null,"code":500}}"#));
}

#[test]
fn n_choices_and_multi_prompt_usage() {
    let mut s = sampling(false, false, &[]);
    s.n = 2;
    let mut a = Assembly::new(OutputCtx {
        kind: Kind::Completion,
        id: "cmpl-x".into(),
        created: 1,
        model: MODEL.into(),
        fingerprint: FP.into(),
        sampling: s,
        prompts: vec![vec![1u32; 4].into(), vec![1u32; 6].into()],
        tokenizer: Tokenizer::pseudo(),
        details: false,
        echo: false,
        chunk_prefix: Vec::new(),
        responses: None,
    });
    for i in 0..4 {
        a.apply(SeqEvent {
            index: i,
            tokens: Emitted::All(vec![300; 3]),
            finish: Some(Finish {
                reason: FinishReason::Length,
                stop_token: None,
            }),
            cached_tokens: 0,
        });
    }
    let v: serde_json::Value = serde_json::from_slice(&a.full_response()).unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 4);
    assert_eq!(v["choices"][3]["index"], 3);
    // Prompts count once each; completions over all choices.
    assert_eq!(v["usage"]["prompt_tokens"], 10);
    assert_eq!(v["usage"]["completion_tokens"], 12);
}
