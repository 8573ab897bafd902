//! `POST /v1/responses`, the OpenAI Responses API: `input` (a string or a list of message
//! items) and `instructions` render with the chat template, `max_output_tokens` bounds the
//! answer, and the request runs through the engine like chat. Created responses are
//! kept, as vLLM does with `VLLM_ENABLE_RESPONSES_API_STORE=1` (their id and model, the
//! last 10,000): `GET /v1/responses/{id}` answers a stored one (a short object:
//! id, model, status), its cancel route answers vLLM's 400 for a response that is not
//! running in the background, and an unknown `previous_response_id` or id is vLLM's
//! 404.

use serde::Deserialize;

use http::StatusCode;

use super::{EngineApp, Res, ok_json, request_id};
use crate::api::error::ApiError;
use crate::api::generate::GenSpec;
use crate::api::output::{Kind, ResponsesEcho};
use crate::api::request::{
    ChatContent, ChatMessage, SamplingFields, check_sampling, encode_messages, parse, resolve_model,
};

/// `POST /v1/responses`.
#[derive(Debug, Deserialize)]
struct ResponsesRequest {
    model: Option<String>,
    input: ResponsesInput,
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    stream: Option<bool>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    request_id: Option<String>,
    previous_response_id: Option<String>,
    // Accepted with their types but without effect.
    #[allow(dead_code)]
    store: Option<bool>,
    #[allow(dead_code)]
    background: Option<bool>,
    #[allow(dead_code)]
    user: Option<String>,
    #[allow(dead_code)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[allow(dead_code)]
    tools: Option<Vec<serde_json::Value>>,
    #[allow(dead_code)]
    tool_choice: Option<serde_json::Value>,
    #[allow(dead_code)]
    parallel_tool_calls: Option<bool>,
    #[allow(dead_code)]
    text: Option<serde_json::Value>,
    #[allow(dead_code)]
    reasoning: Option<serde_json::Value>,
    #[allow(dead_code)]
    truncation: Option<String>,
}

/// `input`: one user message, or a list of items.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ResponsesInput {
    Text(String),
    Items(Vec<InputItem>),
}

/// An input item: a message (`role` + `content`), or another item type (a tool call or
/// its output…), rendered as a user turn with a `<type>` placeholder.
#[derive(Debug, Deserialize)]
struct InputItem {
    #[serde(rename = "type")]
    kind: Option<String>,
    role: Option<String>,
    content: Option<ChatContent>,
}

impl ResponsesRequest {
    /// The conversation the template renders: instructions as a system turn, then input.
    fn messages(&mut self) -> Vec<ChatMessage> {
        let mut out = Vec::new();
        if let Some(i) = &self.instructions {
            out.push(ChatMessage {
                role: "system".into(),
                content: Some(ChatContent::Text(i.clone())),
            });
        }
        match &mut self.input {
            ResponsesInput::Text(t) => out.push(ChatMessage {
                role: "user".into(),
                content: Some(ChatContent::Text(std::mem::take(t))),
            }),
            ResponsesInput::Items(items) => {
                out.extend(items.drain(..).map(|item| match item.role {
                    Some(role) => ChatMessage {
                        role,
                        content: item.content,
                    },
                    None => ChatMessage {
                        role: "user".into(),
                        content: Some(ChatContent::Text(format!(
                            "<{}>",
                            item.kind.as_deref().unwrap_or("item")
                        ))),
                    },
                }));
            }
        }
        out
    }
}

impl EngineApp {
    /// `POST /v1/responses`.
    pub(super) async fn responses(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Res, ApiError> {
        let mut r: ResponsesRequest = parse(body)?;
        if let Some(previous) = &r.previous_response_id
            && self.stored_response(previous).is_none()
        {
            return Err(response_not_found(previous));
        }
        let cfg = &self.shared.config;
        let model = resolve_model(r.model.as_deref(), cfg, &self.shared.loras())?;
        let prompts = vec![encode_messages(
            &cfg.tokenizer,
            &r.messages(),
            None,
            true,
            false,
        )?];
        let fields = SamplingFields {
            stream: r.stream,
            temperature: r.temperature,
            top_p: r.top_p,
            ..SamplingFields::default()
        };
        let max = ("max_output_tokens", r.max_output_tokens);
        let sampling = check_sampling(&fields, max, None, &prompts, cfg)?;
        let request_id = request_id(headers, r.request_id.take());
        let stored =
            (r.store != Some(false)).then(|| (format!("resp_{request_id}"), model.name.clone()));
        let res = self
            .run(GenSpec {
                kind: Kind::Responses,
                model,
                prompts,
                sampling,
                echo: false,
                request_id,
                responses: Some(ResponsesEcho {
                    instructions: r.instructions,
                    max_output_tokens: r.max_output_tokens,
                    previous_response_id: r.previous_response_id,
                    temperature: r.temperature,
                    top_p: r.top_p,
                }),
            })
            .await?;
        if res.status().is_success()
            && let Some(entry) = stored
        {
            let mut store = self
                .shared
                .responses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            store.push_back(entry);
            if store.len() > STORED_RESPONSES {
                store.pop_front();
            }
        }
        Ok(res)
    }

    /// The model of stored response `id`.
    fn stored_response(&self, id: &str) -> Option<String> {
        let store = self
            .shared
            .responses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        store.iter().find(|(i, _)| i == id).map(|(_, m)| m.clone())
    }

    /// `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` (`rest` is the
    /// path after `/v1/responses/`).
    pub(super) fn stored(
        &self,
        rest: &str,
        get: bool,
        post: bool,
    ) -> Option<Result<Res, ApiError>> {
        let (id, cancel) = match rest.strip_suffix("/cancel") {
            Some(id) => (id, true),
            None => (rest, false),
        };
        if id.is_empty() || id.contains('/') || (cancel && !post) || (!cancel && !get) {
            return None;
        }
        let Some(model) = self.stored_response(id) else {
            return Some(Err(response_not_found(id)));
        };
        if cancel {
            return Some(Err(ApiError::status(
                StatusCode::BAD_REQUEST,
                "Cannot cancel a synchronous response.",
            )));
        }
        Some(Ok(ok_json(&serde_json::json!({
            "id": id, "object": "response", "model": model, "status": "completed",
        }))))
    }
}

/// Responses kept.
const STORED_RESPONSES: usize = 10_000;

/// vLLM's 404 for a response it does not hold.
fn response_not_found(id: &str) -> ApiError {
    ApiError::status(
        StatusCode::NOT_FOUND,
        format!("Response with id '{id}' not found."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::request::render_messages;
    use crate::tokenizer;

    fn rendered(body: &str) -> Vec<u32> {
        let mut r: ResponsesRequest = serde_json::from_str(body).unwrap();
        render_messages(&r.messages(), true)
    }

    #[test]
    fn string_input_renders_like_one_chat_turn() {
        let chat = render_messages(
            &[ChatMessage {
                role: "user".into(),
                content: Some(ChatContent::Text("hi".into())),
            }],
            true,
        );
        assert_eq!(rendered(r#"{"input": "hi"}"#), chat);
        assert_eq!(
            rendered(
                r#"{"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}"#
            ),
            chat
        );
    }

    #[test]
    fn instructions_and_other_items_are_rendered() {
        let text = tokenizer::decode(
            &rendered(
                r#"{"instructions": "be brief", "input": [{"type": "function_call_output", "output": "42"}]}"#,
            ),
            false,
        );
        assert!(
            text.contains("system<|end_header_id|>\n\nbe brief"),
            "{text}"
        );
        assert!(text.contains("<function_call_output>"), "{text}");
    }
}
