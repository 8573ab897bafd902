//! Turning engine events into vLLM 0.33's JSON responses and SSE chunks, byte for byte.
//!
//! Stop strings are the frontend's job, as in vLLM's output processor: each choice keeps
//! its text, streams it while holding back a possible stop-string prefix, and on a match
//! truncates and asks the engine to end the sequence.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use crate::api::request::Sampling;
use crate::scheduler::{Emitted, FinishReason, SeqEvent};
use crate::tokenizer;

/// Which OpenAI endpoint the response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Completion,
    Chat,
}

/// Why a choice stopped, as the `stop_reason` field reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum StopReason {
    Token(u32),
    Text(String),
}

/// Facts every chunk and response of one request repeats.
#[derive(Debug)]
pub(crate) struct OutputCtx {
    pub(crate) kind: Kind,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) fingerprint: Arc<str>,
    pub(crate) sampling: Sampling,
    /// Prompt token ids per prompt.
    pub(crate) prompts: Vec<Arc<[u32]>>,
    /// `--enable-prompt-tokens-details`.
    pub(crate) details: bool,
    /// Completions `echo`: each choice's text starts with its prompt.
    pub(crate) echo: bool,
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":`, built once by
    /// [`Assembly::new`] (every chunk starts with it).
    pub(crate) chunk_prefix: Vec<u8>,
}

impl OutputCtx {
    fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(|p| p.len()).sum()
    }
}

/// One choice being assembled.
#[derive(Debug, Default)]
pub(crate) struct Choice {
    text: String,
    sent: usize,
    tokens: Vec<u32>,
    pub(crate) finish: Option<(FinishReason, Option<StopReason>)>,
    cached: u32,
    /// Whether the choice's first chunk went out (chat: the role chunk).
    started: bool,
    /// Where generated text starts (after an echoed prompt).
    gen_start: usize,
}

/// All choices of a request plus the bookkeeping to emit them.
#[derive(Debug)]
pub(crate) struct Assembly {
    pub(crate) ctx: OutputCtx,
    pub(crate) choices: Vec<Choice>,
    max_stop_len: usize,
    unfinished: usize,
}

impl Assembly {
    pub(crate) fn new(mut ctx: OutputCtx) -> Self {
        ctx.chunk_prefix = chunk_prefix(&ctx);
        let count = ctx.prompts.len() * ctx.sampling.n;
        let max_stop_len = ctx.sampling.stop.iter().map(String::len).max().unwrap_or(0);
        let n = ctx.sampling.n.max(1);
        let choices = (0..count)
            .map(|i| {
                let text = if ctx.echo {
                    tokenizer::decode(&ctx.prompts[i / n], true)
                } else {
                    String::new()
                };
                Choice {
                    gen_start: text.len(),
                    text,
                    ..Choice::default()
                }
            })
            .collect();
        Self {
            ctx,
            choices,
            max_stop_len,
            unfinished: count,
        }
    }

    /// Whether every choice has finished.
    pub(crate) fn done(&self) -> bool {
        self.unfinished == 0
    }

    /// Applies one engine event. Returns the choice index when a stop string ended it, so
    /// the caller can end the engine sequence.
    pub(crate) fn apply(&mut self, ev: SeqEvent) -> Option<usize> {
        let i = ev.index as usize;
        let max_stop_len = self.max_stop_len;
        let sampling = &self.ctx.sampling;
        let c = self.choices.get_mut(i)?;
        if c.finish.is_some() {
            return None;
        }
        let new: &[u32] = match &ev.tokens {
            Emitted::One(t) => std::slice::from_ref(t),
            Emitted::All(v) => v,
            Emitted::Nothing => &[],
        };
        c.cached = ev.cached_tokens;
        let mut stopped = None;
        for &t in new {
            c.tokens.push(t);
            let before = c.text.len();
            c.text.push_str(&tokenizer::token_text(t));
            // As vLLM: stop strings apply to generated text only, once min_tokens are out.
            if max_stop_len > 0
                && c.tokens.len() >= sampling.min_tokens
                && let Some((pos, stop)) = find_stop(
                    &c.text,
                    before.saturating_sub(max_stop_len - 1).max(c.gen_start),
                    &sampling.stop,
                )
            {
                let end = if sampling.include_stop {
                    pos + stop.len()
                } else {
                    pos
                };
                c.text.truncate(end);
                c.sent = c.sent.min(end);
                stopped = Some(StopReason::Text(stop.to_owned()));
                break;
            }
        }
        if let Some(reason) = stopped {
            c.finish = Some((FinishReason::Stop, Some(reason)));
            self.unfinished -= 1;
            return Some(i);
        }
        if let Some(f) = ev.finish {
            c.finish = Some((f.reason, f.stop_token.map(StopReason::Token)));
            self.unfinished -= 1;
        }
        None
    }

    /// Marks every unfinished choice aborted (the engine went away).
    pub(crate) fn abort_rest(&mut self) {
        for c in &mut self.choices {
            if c.finish.is_none() {
                c.finish = Some((FinishReason::Abort, None));
            }
        }
        self.unfinished = 0;
    }

    fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.tokens.len()).sum()
    }

    fn cached_tokens(&self) -> u32 {
        // One value per prompt (its first choice), summed over prompts.
        self.choices
            .iter()
            .step_by(self.ctx.sampling.n.max(1))
            .map(|c| c.cached)
            .sum()
    }

    fn usage(&self, streaming: bool) -> Usage {
        let prompt = self.ctx.prompt_tokens();
        let completion = self.completion_tokens();
        Usage {
            prompt_tokens: prompt,
            total_tokens: prompt + completion,
            completion_tokens: completion,
            details: self.ctx.details.then_some(self.cached_tokens()),
            streaming,
        }
    }

    // === non-streaming ===

    /// The complete JSON response.
    pub(crate) fn full_response(&self) -> Vec<u8> {
        let ctx = &self.ctx;
        let ids = ctx.sampling.return_token_ids;
        let prompt_ids = |i: usize| ids.then(|| &*ctx.prompts[i / ctx.sampling.n.max(1)]);
        let body = match ctx.kind {
            Kind::Completion => serde_json::to_vec(&CompletionResponse {
                id: &ctx.id,
                object: "text_completion",
                created: ctx.created,
                model: &ctx.model,
                choices: self
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
                usage: self.usage(false),
                kv_transfer_params: None,
                ec_transfer_params: None,
                metrics: None,
            }),
            Kind::Chat => serde_json::to_vec(&ChatResponse {
                id: &ctx.id,
                object: "chat.completion",
                created: ctx.created,
                model: &ctx.model,
                choices: self
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
                usage: self.usage(false),
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

    /// Appends the SSE event(s) for choice `i` after an engine event: for chat the role
    /// chunk before the first token, then one chunk with the new text. Returns events
    /// written.
    pub(crate) fn write_step(&mut self, i: usize, out: &mut Vec<u8>) -> usize {
        let mut events = 0;
        let kind = self.ctx.kind;
        let continuous = self.ctx.sampling.continuous_usage;
        let usage = continuous.then(|| self.usage(true));
        let held = if self.ctx.sampling.stop.is_empty() {
            0
        } else {
            self.max_stop_len - 1
        };
        let Some(c) = self.choices.get_mut(i) else {
            return 0;
        };
        let first = !std::mem::replace(&mut c.started, true);
        let prompt_ids = (first && self.ctx.sampling.return_token_ids)
            .then(|| &*self.ctx.prompts[i / self.ctx.sampling.n.max(1)]);
        if kind == Kind::Chat && first {
            write_role_chunk(&self.ctx, i, prompt_ids, usage.as_ref(), out);
            events += 1;
        }
        let Some(c) = self.choices.get_mut(i) else {
            return events;
        };
        let end = if c.finish.is_some() {
            c.text.len()
        } else {
            c.text
                .floor_char_boundary(c.text.len().saturating_sub(held))
                .max(c.sent)
        };
        let delta = &c.text[c.sent..end];
        let token_ids = self
            .ctx
            .sampling
            .return_token_ids
            .then(|| c.tokens.last().map_or(&[][..], std::slice::from_ref));
        let chunk = TokenChunk {
            index: i,
            delta,
            finish: c.finish.as_ref(),
            token_ids,
            // Completions carry the prompt ids on the first chunk; chat on the role chunk.
            prompt_ids: prompt_ids.filter(|_| kind == Kind::Completion),
        };
        write_token_chunk(&self.ctx, &chunk, usage.as_ref(), out);
        c.sent = end;
        events + 1
    }

    /// Appends the closing events: the usage chunk when asked for, then `[DONE]`.
    pub(crate) fn write_end(&self, out: &mut Vec<u8>) -> usize {
        let mut events = 1;
        if self.ctx.sampling.include_usage {
            let ctx = &self.ctx;
            out.extend_from_slice(&ctx.chunk_prefix);
            out.extend_from_slice(b"[],\"usage\":");
            write_json(&self.usage(true), out);
            out.extend_from_slice(b",\"system_fingerprint\":");
            write_json(&*ctx.fingerprint, out);
            out.extend_from_slice(b"}\n\n");
            events += 1;
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        events
    }

    /// Appends an in-stream error event (HTTP 200 already sent), then `[DONE]`.
    pub(crate) fn write_error(&self, message: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        let msg = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
        // The completions stream uses Python json.dumps spacing; chat is compact.
        let body = match self.ctx.kind {
            Kind::Completion => format!(
                r#"{{"error": {{"message": {msg}, "type": "InternalServerError", "param": null, "code": 500}}}}"#
            ),
            Kind::Chat => format!(
                r#"{{"error":{{"message":{msg},"type":"InternalServerError","param":null,"code":500}}}}"#
            ),
        };
        out.extend_from_slice(body.as_bytes());
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    }
}

/// Earliest occurrence of any stop string in `text` at or after byte `from`.
fn find_stop<'a>(text: &str, from: usize, stops: &'a [String]) -> Option<(usize, &'a str)> {
    let from = text.floor_char_boundary(from);
    stops
        .iter()
        .filter_map(|s| {
            text[from..]
                .find(s.as_str())
                .map(|p| (from + p, s.as_str()))
        })
        .min_by_key(|(p, _)| *p)
}

fn write_json<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// `data: {"id":…,"object":…,"created":…,"model":…,"choices":` (choices value follows).
fn chunk_prefix(ctx: &OutputCtx) -> Vec<u8> {
    let mut out = Vec::with_capacity(ctx.id.len() + ctx.model.len() + 96);
    let out = &mut out;
    out.extend_from_slice(b"data: {\"id\":");
    write_json(&ctx.id, out);
    out.extend_from_slice(match ctx.kind {
        Kind::Completion => b",\"object\":\"text_completion\",\"created\":".as_slice(),
        Kind::Chat => b",\"object\":\"chat.completion.chunk\",\"created\":".as_slice(),
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
        Kind::Chat => {
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

#[cfg(test)]
mod tests;
