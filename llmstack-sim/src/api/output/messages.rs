//! Anthropic Messages API bodies and stream events (`/v1/messages`, vllm.md §3.6):
//! `message_start`, `content_block_start`, `content_block_delta`…, `content_block_stop`,
//! `message_delta` (stop reason and output tokens), `message_stop`, each as
//! `event: <type>` plus `data: <json>`.
//!
//! As vLLM serializes the non-streaming message with nulls dropped, `stop_sequence`
//! appears only when a stop sequence ended the answer.

use serde_json::{Value, json};

use super::{Assembly, StopReason, write_json, write_named_event};
use crate::finish::FinishReason;

/// Anthropic's `stop_reason` and `stop_sequence` for the choice.
fn stop(a: &Assembly) -> (&'static str, Option<&str>) {
    match a.choices.first().and_then(|c| c.finish.as_ref()) {
        Some((FinishReason::Length, _)) => ("max_tokens", None),
        Some((_, Some(StopReason::Text(s)))) => ("stop_sequence", Some(s.as_str())),
        _ => ("end_turn", None),
    }
}

/// The complete message.
pub(super) fn full_response(a: &Assembly) -> Vec<u8> {
    let (reason, sequence) = stop(a);
    let text = a.choices.first().map_or("", |c| c.text.as_str());
    let mut msg = json!({
        "id": a.ctx.id, "type": "message", "role": "assistant",
        "content": [{"type": "text", "text": text}], "model": a.ctx.model,
        "stop_reason": reason,
        "usage": {"input_tokens": a.ctx.prompt_tokens(), "output_tokens": a.completion_tokens()}
    });
    if let (Some(s), Some(m)) = (sequence, msg.as_object_mut()) {
        m.insert("stop_sequence".into(), json!(s));
    }
    let mut out = Vec::new();
    write_json(&msg, &mut out);
    out
}

fn event(kind: &str, fields: Value, out: &mut Vec<u8>) {
    let mut data = json!({"type": kind});
    if let (Some(d), Value::Object(f)) = (data.as_object_mut(), fields) {
        d.extend(f);
    }
    write_named_event(kind, &data, out);
}

/// `message_start` and `content_block_start` (once).
fn open(a: &mut Assembly, out: &mut Vec<u8>) -> usize {
    if !a.start(0) {
        return 0;
    }
    event(
        "message_start",
        json!({"message": {
            "id": a.ctx.id, "type": "message", "role": "assistant", "content": [],
            "model": a.ctx.model, "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": a.ctx.prompt_tokens(), "output_tokens": 0}
        }}),
        out,
    );
    event(
        "content_block_start",
        json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
        out,
    );
    2
}

/// The openers before the first text, then one `content_block_delta` with new text.
pub(super) fn write_step(a: &mut Assembly, out: &mut Vec<u8>) -> usize {
    let Some(range) = a.next_delta(0) else {
        return 0;
    };
    let mut events = open(a, out);
    if !range.is_empty() {
        event(
            "content_block_delta",
            json!({"index": 0, "delta": {"type": "text_delta", "text": &a.choices[0].text[range]}}),
            out,
        );
        events += 1;
    }
    events
}

/// `content_block_stop`, `message_delta`, `message_stop`.
pub(super) fn write_end(a: &mut Assembly, out: &mut Vec<u8>) -> usize {
    let events = open(a, out);
    let (reason, sequence) = stop(a);
    event("content_block_stop", json!({"index": 0}), out);
    event(
        "message_delta",
        json!({"delta": {"stop_reason": reason, "stop_sequence": sequence},
               "usage": {"output_tokens": a.completion_tokens()}}),
        out,
    );
    event("message_stop", json!({}), out);
    events + 3
}

/// An Anthropic `error` event (HTTP 200 already sent); the stream then ends.
pub(super) fn write_error(message: &str, out: &mut Vec<u8>) {
    event(
        "error",
        json!({"error": {"type": "InternalServerError", "message": message}}),
        out,
    );
}
