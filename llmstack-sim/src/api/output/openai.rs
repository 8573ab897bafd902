//! Completions and chat bodies and SSE chunks exactly as vLLM 0.33 writes them (vllm.md
//! §3.1–3.4): compact JSON, every field in vLLM's order, nulls included.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Assembly, Kind, OutputCtx, StopReason, write_json};
use crate::finish::FinishReason;

fn usage(a: &Assembly, streaming: bool) -> Usage {
    let prompt = a.ctx.prompt_tokens();
    let completion = a.completion_tokens();
    Usage {
        prompt_tokens: prompt,
        total_tokens: prompt + completion,
        completion_tokens: completion,
        details: a.ctx.details.then_some(a.cached_tokens()),
        streaming,
    }
}

// === non-streaming ===

/// The complete completions or chat JSON response.
pub(super) fn full_response(a: &Assembly) -> Vec<u8> {
    let ctx = &a.ctx;
    let ids = ctx.sampling.return_token_ids;
    let prompt_ids = |i: usize| ids.then(|| &*ctx.prompts[i / ctx.sampling.n.max(1)]);
    let body = match ctx.kind {
        Kind::Completion => serde_json::to_vec(&CompletionResponse {
            id: &ctx.id,
            object: "text_completion",
            created: ctx.created,
            model: &ctx.model,
            choices: a
                .choices
                .iter()
                .enumerate()
                .map(|(i, c)| CompletionChoice {
                    index: i,
                    text: &c.text,
                    logprobs: None,
                    finish_reason: c.finish.as_ref().map(|f| f.0.as_str()),
                    stop_reason: c.finish.as_ref().and_then(|f| f.1.as_ref()),
                    token_ids: ids.then_some(&c.tokens[..]),
                    prompt_logprobs: None,
                    prompt_token_ids: prompt_ids(i),
                    routed_experts: None,
                    weight_versions: None,
                })
                .collect(),
            service_tier: None,
            system_fingerprint: &ctx.fingerprint,
            usage: usage(a, false),
            kv_transfer_params: None,
            ec_transfer_params: None,
            metrics: None,
        }),
        Kind::Chat | Kind::Responses | Kind::Messages => serde_json::to_vec(&ChatResponse {
            id: &ctx.id,
            object: "chat.completion",
            created: ctx.created,
            model: &ctx.model,
            choices: a
                .choices
                .iter()
                .enumerate()
                .map(|(i, c)| ChatChoice {
                    index: i,
                    message: ChatMessageOut {
                        role: "assistant",
                        content: &c.text,
                        refusal: None,
                        annotations: None,
                        audio: None,
                        function_call: None,
                        reasoning: None,
                    },
                    logprobs: None,
                    finish_reason: c.finish.as_ref().map(|f| f.0.as_str()),
                    stop_reason: c.finish.as_ref().and_then(|f| f.1.as_ref()),
                    token_ids: ids.then_some(&c.tokens[..]),
                    routed_experts: None,
                    weight_versions: None,
                })
                .collect(),
            service_tier: None,
            system_fingerprint: &ctx.fingerprint,
            usage: usage(a, false),
            prompt_logprobs: None,
            prompt_token_ids: prompt_ids(0),
            prompt_text: None,
            kv_transfer_params: None,
            ec_transfer_params: None,
            metrics: None,
        }),
    };
    body.unwrap_or_default()
}

// === streaming ===

/// Appends the SSE event(s) for choice `i` after an engine event: for chat the role chunk
/// before the first token, then one chunk with the new text. Returns events written.
pub(super) fn write_step(a: &mut Assembly, i: usize, out: &mut Vec<u8>) -> usize {
    let Some(range) = a.next_delta(i) else {
        return 0;
    };
    let first = a.start(i);
    let mut events = 0;
    let kind = a.ctx.kind;
    let usage = a.ctx.sampling.continuous_usage.then(|| usage(a, true));
    let prompt_ids = (first && a.ctx.sampling.return_token_ids)
        .then(|| &*a.ctx.prompts[i / a.ctx.sampling.n.max(1)]);
    if kind == Kind::Chat && first {
        write_role_chunk(&a.ctx, i, prompt_ids, usage.as_ref(), out);
        events += 1;
    }
    let c = &a.choices[i];
    let token_ids = a
        .ctx
        .sampling
        .return_token_ids
        .then(|| c.tokens.last().map_or(&[][..], std::slice::from_ref));
    let chunk = TokenChunk {
        index: i,
        delta: &c.text[range],
        finish: c.finish.as_ref(),
        token_ids,
        // Completions carry the prompt ids on the first chunk; chat on the role chunk.
        prompt_ids: prompt_ids.filter(|_| kind == Kind::Completion),
    };
    write_token_chunk(&a.ctx, &chunk, usage.as_ref(), out);
    events + 1
}

/// Appends the closing events: the usage chunk when asked for, then `[DONE]`.
pub(super) fn write_end(a: &Assembly, out: &mut Vec<u8>) -> usize {
    let mut events = 1;
    if a.ctx.sampling.include_usage {
        let ctx = &a.ctx;
        out.extend_from_slice(&ctx.chunk_prefix);
        out.extend_from_slice(b"[],\"usage\":");
        write_json(&usage(a, true), out);
        out.extend_from_slice(b",\"system_fingerprint\":");
        write_json(&*ctx.fingerprint, out);
        out.extend_from_slice(b"}\n\n");
        events += 1;
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    events
}

/// Appends an in-stream error event (HTTP 200 already sent), then `[DONE]`.
pub(super) fn write_error(a: &Assembly, message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    let msg = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    // The completions stream uses Python json.dumps spacing; chat is compact.
    let body = if a.ctx.kind == Kind::Completion {
        format!(
            r#"{{"error": {{"message": {msg}, "type": "InternalServerError", "param": null, "code": 500}}}}"#
        )
    } else {
        format!(
            r#"{{"error":{{"message":{msg},"type":"InternalServerError","param":null,"code":500}}}}"#
        )
    };
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
}

/// `data: {"id":…,"object":…,"created":…,"model":…,"choices":` (choices value follows).
pub(super) fn chunk_prefix(ctx: &OutputCtx) -> Vec<u8> {
    let mut out = Vec::with_capacity(ctx.id.len() + ctx.model.len() + 96);
    let out = &mut out;
    out.extend_from_slice(b"data: {\"id\":");
    write_json(&ctx.id, out);
    out.extend_from_slice(match ctx.kind {
        Kind::Completion => b",\"object\":\"text_completion\",\"created\":".as_slice(),
        Kind::Chat | Kind::Responses | Kind::Messages => {
            b",\"object\":\"chat.completion.chunk\",\"created\":".as_slice()
        }
    });
    let mut num = String::new();
    let _ = write!(num, "{}", ctx.created);
    out.extend_from_slice(num.as_bytes());
    out.extend_from_slice(b",\"model\":");
    write_json(&ctx.model, out);
    out.extend_from_slice(b",\"choices\":");
    std::mem::take(out)
}

fn write_role_chunk(
    ctx: &OutputCtx,
    i: usize,
    prompt_ids: Option<&[u32]>,
    usage: Option<&Usage>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&ctx.chunk_prefix);
    let _ = write!(
        Cursor(out),
        "[{{\"index\":{i},\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]"
    );
    if let Some(u) = usage {
        out.extend_from_slice(b",\"usage\":");
        write_json(u, out);
    }
    out.extend_from_slice(b",\"prompt_token_ids\":");
    write_json(&prompt_ids, out);
    out.extend_from_slice(b",\"prompt_text\":null}\n\n");
}

/// One choice's chunk after an engine step.
struct TokenChunk<'a> {
    index: usize,
    delta: &'a str,
    finish: Option<&'a (FinishReason, Option<StopReason>)>,
    token_ids: Option<&'a [u32]>,
    prompt_ids: Option<&'a [u32]>,
}

fn write_token_chunk(
    ctx: &OutputCtx,
    chunk: &TokenChunk<'_>,
    usage: Option<&Usage>,
    out: &mut Vec<u8>,
) {
    let TokenChunk {
        index: i,
        delta,
        finish,
        token_ids,
        prompt_ids,
    } = *chunk;
    out.extend_from_slice(&ctx.chunk_prefix);
    let _ = write!(Cursor(out), "[{{\"index\":{i},");
    match ctx.kind {
        Kind::Completion => {
            out.extend_from_slice(b"\"text\":");
            write_json(delta, out);
            out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
            write_json(&finish.map(|f| f.0.as_str()), out);
            out.extend_from_slice(b",\"stop_reason\":");
            write_json(&finish.and_then(|f| f.1.as_ref()), out);
            out.extend_from_slice(b",\"prompt_token_ids\":");
            write_json(&prompt_ids, out);
            out.extend_from_slice(b",\"token_ids\":");
            write_json(&token_ids, out);
            out.extend_from_slice(b",\"weight_versions\":null}]");
        }
        Kind::Chat | Kind::Responses | Kind::Messages => {
            out.extend_from_slice(b"\"delta\":{\"content\":");
            write_json(delta, out);
            out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":");
            write_json(&finish.map(|f| f.0.as_str()), out);
            if let Some(f) = finish {
                out.extend_from_slice(b",\"stop_reason\":");
                write_json(&f.1, out);
                out.extend_from_slice(b",\"token_ids\":");
                write_json(&token_ids, out);
                out.extend_from_slice(b",\"weight_versions\":null}]");
            } else {
                out.extend_from_slice(b",\"token_ids\":");
                write_json(&token_ids, out);
                out.extend_from_slice(b"}]");
            }
        }
    }
    if finish.is_some() && !ctx.sampling.include_usage {
        out.extend_from_slice(b",\"system_fingerprint\":");
        write_json(&*ctx.fingerprint, out);
    }
    if let Some(u) = usage {
        out.extend_from_slice(b",\"usage\":");
        write_json(u, out);
    }
    out.extend_from_slice(b",\"kv_transfer_params\":null}\n\n");
}

/// `write!` into a byte buffer.
struct Cursor<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

// === response shapes (field order is vLLM's) ===

/// `usage`: key order prompt, total, completion; details null unless enabled. In stream
/// chunks null fields are dropped.
#[derive(Debug)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
    completion_tokens: usize,
    details: Option<u32>,
    streaming: bool,
}

impl Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("prompt_tokens", &self.prompt_tokens)?;
        m.serialize_entry("total_tokens", &self.total_tokens)?;
        m.serialize_entry("completion_tokens", &self.completion_tokens)?;
        match (self.details, self.streaming) {
            (Some(c), true) => {
                m.serialize_entry("prompt_tokens_details", &CachedOnly { cached_tokens: c })?
            }
            (Some(c), false) => m.serialize_entry(
                "prompt_tokens_details",
                &PromptDetails {
                    cached_tokens: c,
                    created_cache_tokens: None,
                    multimodal_tokens: None,
                },
            )?,
            (None, true) => {}
            (None, false) => m.serialize_entry("prompt_tokens_details", &None::<()>)?,
        }
        if !self.streaming {
            m.serialize_entry("completion_tokens_details", &None::<()>)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct CachedOnly {
    cached_tokens: u32,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u32,
    created_cache_tokens: Option<u32>,
    multimodal_tokens: Option<u32>,
}

#[derive(Serialize)]
struct CompletionResponse<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<CompletionChoice<'a>>,
    service_tier: Option<()>,
    system_fingerprint: &'a str,
    usage: Usage,
    kv_transfer_params: Option<()>,
    ec_transfer_params: Option<()>,
    metrics: Option<()>,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: usize,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
    stop_reason: Option<&'a StopReason>,
    token_ids: Option<&'a [u32]>,
    prompt_logprobs: Option<()>,
    prompt_token_ids: Option<&'a [u32]>,
    routed_experts: Option<()>,
    weight_versions: Option<()>,
}

#[derive(Serialize)]
struct ChatResponse<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChatChoice<'a>>,
    service_tier: Option<()>,
    system_fingerprint: &'a str,
    usage: Usage,
    prompt_logprobs: Option<()>,
    prompt_token_ids: Option<&'a [u32]>,
    prompt_text: Option<()>,
    kv_transfer_params: Option<()>,
    ec_transfer_params: Option<()>,
    metrics: Option<()>,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: usize,
    message: ChatMessageOut<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
    stop_reason: Option<&'a StopReason>,
    token_ids: Option<&'a [u32]>,
    routed_experts: Option<()>,
    weight_versions: Option<()>,
}

#[derive(Serialize)]
struct ChatMessageOut<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
    annotations: Option<()>,
    audio: Option<()>,
    function_call: Option<()>,
    reasoning: Option<()>,
}
