//! OpenAI Responses API objects and stream events (`/v1/responses`, vllm.md §3.6): each
//! event is `event: <type>` plus `data: <json>` carrying the same `type` and a
//! `sequence_number`; the stream ends with `response.completed` and no `[DONE]`.
//!
//! The response holds one `message` output item with one `output_text` part. A request
//! cut by `max_output_tokens` has status `incomplete` with
//! `incomplete_details.reason = "max_output_tokens"`.

use serde_json::{Value, json};

use super::{Assembly, write_json, write_named_event};
use crate::finish::FinishReason;

/// Request fields the response object repeats.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResponsesEcho {
    /// `instructions` (rendered as a system turn).
    pub(crate) instructions: Option<String>,
    /// `max_output_tokens` as requested.
    pub(crate) max_output_tokens: Option<i64>,
    /// `previous_response_id` (not resolved: the simulator keeps no store).
    pub(crate) previous_response_id: Option<String>,
    /// `temperature` (the object says 1.0 when absent).
    pub(crate) temperature: Option<f64>,
    /// `top_p` (the object says 1.0 when absent).
    pub(crate) top_p: Option<f64>,
}

/// The output message item's id, derived from the response id.
fn item_id(a: &Assembly) -> String {
    let id = &a.ctx.id;
    format!("msg_{}", id.strip_prefix("resp_").unwrap_or(id))
}

fn text(a: &Assembly) -> &str {
    a.choices.first().map_or("", |c| c.text.as_str())
}

fn output_text(a: &Assembly) -> Value {
    json!({"type": "output_text", "text": text(a), "annotations": []})
}

/// The message item; `done` gives its full content, otherwise it is empty.
fn message_item(a: &Assembly, done: bool) -> Value {
    let (status, content) = if done {
        ("completed", json!([output_text(a)]))
    } else {
        ("in_progress", json!([]))
    };
    json!({"id": item_id(a), "type": "message", "status": status, "role": "assistant", "content": content})
}

fn usage(a: &Assembly) -> Value {
    let input = a.ctx.prompt_tokens();
    let output = a.completion_tokens();
    json!({
        "input_tokens": input, "input_tokens_details": {"cached_tokens": a.cached_tokens()},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output
    })
}

/// The response object: in progress (no output, no usage) or final.
fn response(a: &Assembly, done: bool) -> Value {
    let finish = a
        .choices
        .first()
        .and_then(|c| c.finish.as_ref())
        .map(|f| f.0);
    let (status, incomplete) = match finish {
        _ if !done => ("in_progress", Value::Null),
        Some(FinishReason::Length) => ("incomplete", json!({"reason": "max_output_tokens"})),
        _ => ("completed", Value::Null),
    };
    let echo = a.ctx.responses.clone().unwrap_or_default();
    let output = if done {
        json!([message_item(a, true)])
    } else {
        json!([])
    };
    json!({
        "id": a.ctx.id, "object": "response", "created_at": a.ctx.created, "status": status,
        "background": false, "error": null, "incomplete_details": incomplete,
        "instructions": echo.instructions, "max_output_tokens": echo.max_output_tokens,
        "model": a.ctx.model, "output": output, "parallel_tool_calls": true,
        "previous_response_id": echo.previous_response_id,
        "temperature": echo.temperature.unwrap_or(1.0), "tool_choice": "auto", "tools": [],
        "top_p": echo.top_p.unwrap_or(1.0), "truncation": "disabled",
        "usage": if done { usage(a) } else { Value::Null }, "user": null
    })
}

/// The complete response object.
pub(super) fn full_response(a: &Assembly) -> Vec<u8> {
    let mut out = Vec::new();
    write_json(&response(a, true), &mut out);
    out
}

/// Appends one event of `kind` with `fields` after `type` and `sequence_number`.
fn event(a: &mut Assembly, kind: &str, fields: Value, out: &mut Vec<u8>) {
    let mut data = json!({"type": kind, "sequence_number": a.next_sequence});
    if let (Some(d), Value::Object(f)) = (data.as_object_mut(), fields) {
        d.extend(f);
    }
    a.next_sequence += 1;
    write_named_event(kind, &data, out);
}

/// `response.created` and `response.in_progress`.
pub(super) fn write_start(a: &mut Assembly, out: &mut Vec<u8>) -> usize {
    let r = response(a, false);
    event(a, "response.created", json!({"response": r}), out);
    let r = response(a, false);
    event(a, "response.in_progress", json!({"response": r}), out);
    2
}

/// Opens the message item and its text part (once).
fn open_item(a: &mut Assembly, out: &mut Vec<u8>) -> usize {
    if !a.start(0) {
        return 0;
    }
    let item = message_item(a, false);
    event(
        a,
        "response.output_item.added",
        json!({"output_index": 0, "item": item}),
        out,
    );
    let item_id = item_id(a);
    event(
        a,
        "response.content_part.added",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "text": "", "annotations": []}}),
        out,
    );
    2
}

/// The item and part openers before the first text, then `response.output_text.delta`.
pub(super) fn write_step(a: &mut Assembly, out: &mut Vec<u8>) -> usize {
    let Some(range) = a.next_delta(0) else {
        return 0;
    };
    let mut events = open_item(a, out);
    if !range.is_empty() {
        let delta = a.choices[0].text[range].to_owned();
        let item_id = item_id(a);
        event(
            a,
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}),
            out,
        );
        events += 1;
    }
    events
}

/// Closes the text part and the item, then `response.completed` with the final object.
pub(super) fn write_end(a: &mut Assembly, out: &mut Vec<u8>) -> usize {
    let mut events = open_item(a, out);
    let item_id = item_id(a);
    let full = text(a).to_owned();
    event(
        a,
        "response.output_text.done",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": full, "logprobs": []}),
        out,
    );
    let part = output_text(a);
    event(
        a,
        "response.content_part.done",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
        out,
    );
    let item = message_item(a, true);
    event(
        a,
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
        out,
    );
    let r = response(a, true);
    event(a, "response.completed", json!({"response": r}), out);
    events += 4;
    events
}

/// An `error` event (HTTP 200 already sent); the stream then ends.
pub(super) fn write_error(a: &mut Assembly, message: &str, out: &mut Vec<u8>) {
    event(
        a,
        "error",
        json!({"code": "InternalServerError", "message": message, "param": null}),
        out,
    );
}
