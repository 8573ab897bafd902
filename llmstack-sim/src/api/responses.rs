//! `POST /v1/responses`, the OpenAI Responses API: `input` (a string or a list of message
//! items) and `instructions` render with the chat template, `max_output_tokens` bounds the
//! answer, and the request runs through the engine like chat. The simulator keeps no
//! response store: `previous_response_id` is repeated but not resolved.

use serde::Deserialize;

use super::{EngineApp, Res, request_id};
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
        self.run(GenSpec {
            kind: Kind::Responses,
            model,
            prompts,
            sampling,
            echo: false,
            request_id: request_id(headers, r.request_id.take()),
            responses: Some(ResponsesEcho {
                instructions: r.instructions,
                max_output_tokens: r.max_output_tokens,
                previous_response_id: r.previous_response_id,
                temperature: r.temperature,
                top_p: r.top_p,
            }),
        })
        .await
    }
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
