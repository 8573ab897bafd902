//! Turning engine events into each text API's JSON responses and SSE events.
//!
//! [`Assembly`] is the one place that follows a request's choices: their tokens, text and
//! finish. Stop strings are the frontend's job, as in vLLM's output processor: each
//! choice keeps its text, streams it while holding back a possible stop-string prefix,
//! and on a match truncates and asks the engine to end the sequence. The wire formats
//! live in one module per API: `openai` (completions and chat, vLLM 0.33's bytes),
//! `responses` (OpenAI Responses) and `messages` (Anthropic Messages).

use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

use crate::api::request::Sampling;
use crate::finish::FinishReason;
use crate::scheduler::{Emitted, SeqEvent};
use crate::tokenizer::{Detokenizer, Tokenizer};

mod messages;
mod openai;
mod responses;

pub(crate) use responses::ResponsesEcho;

/// Which API the response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `/v1/completions`.
    Completion,
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/responses` (one choice).
    Responses,
    /// `/v1/messages` (one choice).
    Messages,
}

impl Kind {
    /// What the response id starts with.
    pub(crate) fn id_prefix(self) -> &'static str {
        match self {
            Self::Completion => "cmpl-",
            Self::Chat => "chatcmpl-",
            Self::Responses => "resp_",
            Self::Messages => "msg_",
        }
    }
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
    /// The engine's tokenizer (generated text, echoed prompts).
    pub(crate) tokenizer: Tokenizer,
    /// `--enable-prompt-tokens-details`.
    pub(crate) details: bool,
    /// Completions `echo`: each choice's text starts with its prompt.
    pub(crate) echo: bool,
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":`, built once by
    /// [`Assembly::new`] (every completions and chat chunk starts with it).
    pub(crate) chunk_prefix: Vec<u8>,
    /// Request fields a Responses API object repeats.
    pub(crate) responses: Option<ResponsesEcho>,
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
    /// Turns generated tokens into text as they come.
    detok: Detokenizer,
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
    /// Responses API: `sequence_number` of the next stream event.
    next_sequence: u64,
}

impl Assembly {
    pub(crate) fn new(mut ctx: OutputCtx) -> Self {
        if matches!(ctx.kind, Kind::Completion | Kind::Chat) {
            ctx.chunk_prefix = openai::chunk_prefix(&ctx);
        }
        let count = ctx.prompts.len() * ctx.sampling.n;
        let max_stop_len = ctx.sampling.stop.iter().map(String::len).max().unwrap_or(0);
        let n = ctx.sampling.n.max(1);
        let choices = (0..count)
            .map(|i| {
                let text = if ctx.echo {
                    ctx.tokenizer.decode(&ctx.prompts[i / n], true)
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
            next_sequence: 0,
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
        let tokenizer = &self.ctx.tokenizer;
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
            c.detok.push(tokenizer, t, &mut c.text);
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

    /// The range of choice `i`'s text to stream now, holding back a possible stop-string
    /// prefix until the choice ends; marks it sent.
    fn next_delta(&mut self, i: usize) -> Option<Range<usize>> {
        let held = if self.ctx.sampling.stop.is_empty() {
            0
        } else {
            self.max_stop_len - 1
        };
        let c = self.choices.get_mut(i)?;
        let end = if c.finish.is_some() {
            c.text.len()
        } else {
            c.text
                .floor_char_boundary(c.text.len().saturating_sub(held))
                .max(c.sent)
        };
        let start = std::mem::replace(&mut c.sent, end);
        Some(start..end)
    }

    /// Marks choice `i` started; returns whether it was not yet.
    fn start(&mut self, i: usize) -> bool {
        self.choices
            .get_mut(i)
            .is_some_and(|c| !std::mem::replace(&mut c.started, true))
    }

    // === wire formats ===

    /// The complete JSON response.
    pub(crate) fn full_response(&self) -> Vec<u8> {
        match self.ctx.kind {
            Kind::Completion | Kind::Chat => openai::full_response(self),
            Kind::Responses => responses::full_response(self),
            Kind::Messages => messages::full_response(self),
        }
    }

    /// Appends the events that open a stream before any token (Responses:
    /// `response.created`, `response.in_progress`). Returns events written.
    pub(crate) fn write_start(&mut self, out: &mut Vec<u8>) -> usize {
        match self.ctx.kind {
            Kind::Responses => responses::write_start(self, out),
            Kind::Completion | Kind::Chat | Kind::Messages => 0,
        }
    }

    /// Appends the SSE event(s) for choice `i` after an engine event (the events that open
    /// a choice before its first text, then the new text). Returns events written.
    pub(crate) fn write_step(&mut self, i: usize, out: &mut Vec<u8>) -> usize {
        match self.ctx.kind {
            Kind::Completion | Kind::Chat => openai::write_step(self, i, out),
            Kind::Responses => responses::write_step(self, out),
            Kind::Messages => messages::write_step(self, out),
        }
    }

    /// Appends the closing events once every choice finished. Returns events written.
    pub(crate) fn write_end(&mut self, out: &mut Vec<u8>) -> usize {
        match self.ctx.kind {
            Kind::Completion | Kind::Chat => openai::write_end(self, out),
            Kind::Responses => responses::write_end(self, out),
            Kind::Messages => messages::write_end(self, out),
        }
    }

    /// Appends an in-stream error event (HTTP 200 already sent) and the API's end marker.
    pub(crate) fn write_error(&mut self, message: &str, out: &mut Vec<u8>) {
        match self.ctx.kind {
            Kind::Completion | Kind::Chat => openai::write_error(self, message, out),
            Kind::Responses => responses::write_error(self, message, out),
            Kind::Messages => messages::write_error(message, out),
        }
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

/// Appends one named SSE event (`event: <name>` + `data: <json>`), as the Responses and
/// Messages streams send them.
fn write_named_event<T: Serialize + ?Sized>(name: &str, data: &T, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    write_json(data, out);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests;
