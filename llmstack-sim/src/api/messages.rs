//! `POST /v1/messages` and `/v1/messages/count_tokens`, the Anthropic Messages API:
//! `system` and `messages` render with the chat template, `max_tokens` is required,
//! `stop_sequences` are stop strings, and the request runs through the engine like chat.
//!
//! As in vLLM, a body that fails validation gets the usual OpenAI-style 400, while errors
//! raised after it (unknown model, length rules, busy engine, injected faults) use
//! Anthropic's `{"type":"error","error":{"type","message"}}` with the same status.

use serde::Deserialize;
use serde_json::json;

use super::{EngineApp, Res, ok_json, request_id};
use crate::api::error::ApiError;
use crate::api::generate::GenSpec;
use crate::api::output::Kind;
use crate::api::request::{
    ChatContent, ChatMessage, SamplingFields, StopInput, check_sampling, encode_messages, parse,
    resolve_model,
};
use crate::tokenizer::Tokenizer;

/// `POST /v1/messages` (and, without `max_tokens`, `/v1/messages/count_tokens`).
#[derive(Debug, Deserialize)]
struct MessagesRequest {
    model: String,
    messages: Vec<ChatMessage>,
    max_tokens: Option<i64>,
    system: Option<ChatContent>,
    stream: Option<bool>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    // Accepted with their types but without effect.
    #[allow(dead_code)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[allow(dead_code)]
    tools: Option<Vec<serde_json::Value>>,
    #[allow(dead_code)]
    tool_choice: Option<serde_json::Value>,
    #[allow(dead_code)]
    thinking: Option<serde_json::Value>,
}

impl MessagesRequest {
    /// The prompt: `system` as a system turn, then the messages.
    fn prompt(&mut self, tok: &Tokenizer) -> Result<Vec<u32>, ApiError> {
        let mut turns = Vec::with_capacity(self.messages.len() + 1);
        if let Some(system) = self.system.take() {
            turns.push(ChatMessage {
                role: "system".into(),
                content: Some(system),
            });
        }
        turns.append(&mut self.messages);
        encode_messages(tok, &turns, None, true, false)
    }
}

impl EngineApp {
    /// `POST /v1/messages`.
    pub(super) async fn messages(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Res, ApiError> {
        let mut r: MessagesRequest = parse(body)?;
        let Some(max_tokens) = r.max_tokens else {
            return Err(ApiError::validation(
                "missing",
                "max_tokens",
                "Field required",
            ));
        };
        let spec = self.message_spec(&mut r, max_tokens, headers);
        let answer = match spec {
            Ok(spec) => self.run(spec).await,
            Err(e) => Err(e),
        };
        Ok(answer.unwrap_or_else(ApiError::into_anthropic_response))
    }

    /// Everything a message request needs checked after parsing.
    fn message_spec(
        &self,
        r: &mut MessagesRequest,
        max_tokens: i64,
        headers: &http::HeaderMap,
    ) -> Result<GenSpec, ApiError> {
        let cfg = &self.shared.config;
        let model = resolve_model(Some(&r.model), cfg, &self.shared.loras())?;
        let prompts = vec![r.prompt(&cfg.tokenizer)?];
        let fields = SamplingFields {
            stream: r.stream,
            stop: r.stop_sequences.take().map(StopInput::Many),
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            ..SamplingFields::default()
        };
        let max = ("max_tokens", Some(max_tokens));
        let sampling = check_sampling(&fields, max, None, &prompts, cfg)?;
        Ok(GenSpec {
            kind: Kind::Messages,
            model,
            prompts,
            sampling,
            echo: false,
            request_id: request_id(headers, None),
            responses: None,
        })
    }

    /// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`.
    pub(super) fn count_message_tokens(&self, body: &[u8]) -> Result<Res, ApiError> {
        let mut r: MessagesRequest = parse(body)?;
        if let Err(e) = resolve_model(Some(&r.model), &self.shared.config, &self.shared.loras()) {
            return Ok(e.into_anthropic_response());
        }
        match r.prompt(&self.shared.config.tokenizer) {
            Ok(prompt) => Ok(ok_json(&json!({"input_tokens": prompt.len()}))),
            Err(e) => Ok(e.into_anthropic_response()),
        }
    }
}
