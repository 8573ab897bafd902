//! Request bodies of the OpenAI routes and their checks, as vLLM 0.33 applies them.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;
use crate::config::{EngineConfig, LoraModule};
use crate::scheduler::LoraRef;
use crate::tokenizer::{self, ChatTurn, Tokenizer};

mod sampling;

pub(crate) use sampling::{Sampling, check_sampling};

/// Largest number of sequences (prompts × `n`) one request may start.
pub(crate) const MAX_SEQS_PER_REQUEST: usize = 4096;

/// Parses a JSON body, mapping failures to vLLM's 400 validation errors with the path of
/// the offending field.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => de.end().map(|()| v).map_err(|e| {
            ApiError::validation("json_invalid", "", &format!("JSON decode error: {e}"))
        }),
        Err(e) => {
            // serde_path_to_error writes `a[0].b`; pydantic's dotted loc is `a.0.b`.
            let path = e.path().to_string().replace('[', ".").replace(']', "");
            let path = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            let message = inner.to_string();
            let (kind, loc) = match inner.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    ("json_invalid", String::new())
                }
                // serde names the missing field in the message; pydantic's loc ends with it.
                _ if message.starts_with("missing field") => {
                    let field = message.split('`').nth(1).unwrap_or_default();
                    let loc = match (path.is_empty(), field.is_empty()) {
                        (_, true) => path,
                        (true, false) => field.to_owned(),
                        (false, false) => format!("{path}.{field}"),
                    };
                    ("missing", loc)
                }
                _ => ("value_error", path),
            };
            Err(ApiError::validation(kind, &loc, &message))
        }
    }
}

/// `prompt` / `input`: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

impl PromptInput {
    /// Tokenized prompts (`add_special_tokens` applies to text prompts only).
    ///
    /// The pseudo-tokenizer adds no BOS to an empty text, so an empty prompt is vLLM's
    /// "cannot be empty" 400; a real tokenizer encodes exactly as `tokenizer.encode`
    /// (Llama: `""` is `[BOS]`), as vLLM and the router do.
    pub(crate) fn tokenize(
        &self,
        tok: &Tokenizer,
        add_special_tokens: bool,
        param: &str,
    ) -> Result<Vec<Vec<u32>>, ApiError> {
        let text = |s: &str| {
            let special = add_special_tokens && (tok.model().is_some() || !s.is_empty());
            tok.encode(s, special).map_err(tokenizer_error)
        };
        let out: Vec<Vec<u32>> = match self {
            Self::Text(s) => vec![text(s)?],
            Self::Texts(v) => v.iter().map(|s| text(s)).collect::<Result<_, _>>()?,
            Self::Tokens(t) => vec![t.clone()],
            Self::TokenLists(v) => v.clone(),
        };
        if out.is_empty() {
            return Err(ApiError::bad_request(
                format!("{param} must not be an empty list"),
                Some(param),
            ));
        }
        for p in &out {
            if let Some(bad) = p.iter().find(|&&t| !tok.is_valid(t)) {
                return Err(ApiError::bad_request(
                    format!("Token id {bad} is out of vocabulary"),
                    Some(param),
                ));
            }
        }
        Ok(out)
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StopInput {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: Option<bool>,
    #[serde(default)]
    pub(crate) continuous_usage_stats: Option<bool>,
}

/// Fields shared by completions and chat, after parsing.
#[derive(Debug, Default)]
pub(crate) struct SamplingFields {
    pub(crate) model: Option<String>,
    pub(crate) stream: Option<bool>,
    pub(crate) stream_options: Option<StreamOptions>,
    pub(crate) n: Option<i64>,
    pub(crate) max_tokens: Option<i64>,
    pub(crate) min_tokens: Option<i64>,
    pub(crate) ignore_eos: Option<bool>,
    pub(crate) stop: Option<StopInput>,
    pub(crate) stop_token_ids: Option<Vec<u32>>,
    pub(crate) include_stop_str_in_output: Option<bool>,
    pub(crate) seed: Option<i64>,
    pub(crate) cache_salt: Option<String>,
    pub(crate) return_token_ids: Option<bool>,
    pub(crate) request_id: Option<String>,
    pub(crate) priority: Option<i64>,
    pub(crate) temperature: Option<f64>,
    pub(crate) top_p: Option<f64>,
    pub(crate) top_k: Option<i64>,
    pub(crate) min_p: Option<f64>,
    pub(crate) frequency_penalty: Option<f64>,
    pub(crate) presence_penalty: Option<f64>,
    pub(crate) repetition_penalty: Option<f64>,
}

/// Declares a request body with its own fields plus the [`SamplingFields`], inline:
/// `#[serde(flatten)]` would lose the field path that vLLM's 400s report.
macro_rules! request_with_sampling {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        pub(crate) struct $name {
            $($(#[$fmeta])* pub(crate) $field: $ty,)*
            model: Option<String>,
            stream: Option<bool>,
            stream_options: Option<StreamOptions>,
            n: Option<i64>,
            max_tokens: Option<i64>,
            min_tokens: Option<i64>,
            ignore_eos: Option<bool>,
            stop: Option<StopInput>,
            stop_token_ids: Option<Vec<u32>>,
            include_stop_str_in_output: Option<bool>,
            seed: Option<i64>,
            cache_salt: Option<String>,
            return_token_ids: Option<bool>,
            request_id: Option<String>,
            priority: Option<i64>,
            temperature: Option<f64>,
            top_p: Option<f64>,
            top_k: Option<i64>,
            min_p: Option<f64>,
            frequency_penalty: Option<f64>,
            presence_penalty: Option<f64>,
            repetition_penalty: Option<f64>,
            // Accepted with their OpenAI/vLLM types (a wrong type is a 400, as in vLLM)
            // but without effect on the simulated output.
            #[allow(dead_code)]
            user: Option<String>,
            #[allow(dead_code)]
            logit_bias: Option<std::collections::HashMap<String, f64>>,
            #[allow(dead_code)]
            skip_special_tokens: Option<bool>,
            #[allow(dead_code)]
            spaces_between_special_tokens: Option<bool>,
            #[allow(dead_code)]
            truncate_prompt_tokens: Option<i64>,
            #[allow(dead_code)]
            prompt_logprobs: Option<i64>,
            #[allow(dead_code)]
            response_format: Option<serde_json::Map<String, serde_json::Value>>,
            #[allow(dead_code)]
            kv_transfer_params: Option<serde_json::Map<String, serde_json::Value>>,
            #[allow(dead_code)]
            vllm_xargs: Option<serde_json::Map<String, serde_json::Value>>,
            #[allow(dead_code)]
            session_id: Option<String>,
            #[allow(dead_code)]
            use_beam_search: Option<bool>,
        }

        impl $name {
            /// Moves the shared fields out.
            pub(crate) fn take_fields(&mut self) -> SamplingFields {
                SamplingFields {
                    model: self.model.take(),
                    stream: self.stream.take(),
                    stream_options: self.stream_options.take(),
                    n: self.n.take(),
                    max_tokens: self.max_tokens.take(),
                    min_tokens: self.min_tokens.take(),
                    ignore_eos: self.ignore_eos.take(),
                    stop: self.stop.take(),
                    stop_token_ids: self.stop_token_ids.take(),
                    include_stop_str_in_output: self.include_stop_str_in_output.take(),
                    seed: self.seed.take(),
                    cache_salt: self.cache_salt.take(),
                    return_token_ids: self.return_token_ids.take(),
                    request_id: self.request_id.take(),
                    priority: self.priority.take(),
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    frequency_penalty: self.frequency_penalty,
                    presence_penalty: self.presence_penalty,
                    repetition_penalty: self.repetition_penalty,
                }
            }
        }
    };
}

request_with_sampling! {
    /// `POST /v1/completions`.
    CompletionRequest {
        prompt: PromptInput,
        echo: Option<bool>,
        // Typed but without effect, like the ignored fields of the macro.
        #[allow(dead_code)]
        logprobs: Option<i64>,
        #[allow(dead_code)]
        suffix: Option<String>,
        #[allow(dead_code)]
        best_of: Option<i64>,
    }
}

request_with_sampling! {
    /// `POST /v1/chat/completions`.
    ChatRequest {
        messages: Vec<ChatMessage>,
        max_completion_tokens: Option<i64>,
        add_generation_prompt: Option<bool>,
        // Typed but without effect, like the ignored fields of the macro.
        #[allow(dead_code)]
        logprobs: Option<bool>,
        #[allow(dead_code)]
        top_logprobs: Option<i64>,
        #[allow(dead_code)]
        tools: Option<Vec<serde_json::Value>>,
        #[allow(dead_code)]
        tool_choice: Option<serde_json::Value>,
        #[allow(dead_code)]
        parallel_tool_calls: Option<bool>,
        #[allow(dead_code)]
        continue_final_message: Option<bool>,
        #[allow(dead_code)]
        chat_template: Option<String>,
        #[allow(dead_code)]
        chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
        #[allow(dead_code)]
        reasoning_effort: Option<String>,
        #[allow(dead_code)]
        include_reasoning: Option<bool>,
        #[allow(dead_code)]
        echo: Option<bool>,
    }
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage {
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) content: Option<ChatContent>,
}

/// A message's `content`: a string or a list of parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ChatContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One content part; non-text parts render as a placeholder naming their type.
#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) text: Option<String>,
}

impl ChatContent {
    /// The text the template sees (parts joined with newlines, as Llama's template does).
    pub(crate) fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Parts(parts) => parts
                .iter()
                .map(|p| match (&*p.kind, &p.text) {
                    ("text" | "input_text" | "output_text", Some(t)) => t.clone(),
                    (kind, _) => format!("<{kind}>"),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The prompt of a chat: with a real tokenizer, the raw JSON of the request's
/// `messages` (`raw`, as the client sent it; else `messages` as role + text) rendered with
/// the model's chat template and encoded without special tokens (unless
/// `add_special_tokens`, which only `/tokenize` may ask for), exactly as vLLM and the
/// router's `llmstack-tokenize` do; with the pseudo-tokenizer, [`render_messages`].
///
/// A template that fails on the messages (or a model without one) is a 400.
pub(crate) fn encode_messages(
    tok: &Tokenizer,
    messages: &[ChatMessage],
    raw: Option<&str>,
    add_generation_prompt: bool,
    add_special_tokens: bool,
) -> Result<Vec<u32>, ApiError> {
    let Some(model) = tok.model() else {
        return Ok(render_messages(messages, add_generation_prompt));
    };
    let built;
    let json = match raw {
        Some(raw) => raw,
        None => {
            built = messages_json(messages);
            &built
        }
    };
    if add_generation_prompt && !add_special_tokens {
        model.encode_chat(json)
    } else {
        model
            .render_chat(json, add_generation_prompt)
            .and_then(|prompt| model.encode(&prompt, add_special_tokens))
    }
    .map_err(tokenizer_error)
}

/// `messages` as chat-completions JSON, each content as its text (for the APIs whose
/// conversation is built from other fields: Responses, Anthropic Messages).
fn messages_json(messages: &[ChatMessage]) -> String {
    let list: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            serde_json::json!({
                "role": m.role,
                "content": m.content.as_ref().map(ChatContent::text).unwrap_or_default(),
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// The raw JSON of a body's `messages` field (the body already parsed as a request).
pub(crate) fn raw_messages(body: &[u8]) -> Option<&str> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        messages: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_slice::<Raw<'_>>(body)
        .ok()?
        .messages
        .map(serde_json::value::RawValue::get)
}

/// A tokenizer's failure on a request's text or messages: vLLM's 400.
pub(crate) fn tokenizer_error(e: llmstack_tokenize::TokenizerError) -> ApiError {
    ApiError::bad_request(e.to_string(), None)
}

/// Renders chat messages with the pseudo-tokenizer's Llama 3 template.
pub(crate) fn render_messages(messages: &[ChatMessage], add_generation_prompt: bool) -> Vec<u32> {
    let texts: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            (
                m.role.clone(),
                m.content
                    .as_ref()
                    .map(ChatContent::text)
                    .unwrap_or_default(),
            )
        })
        .collect();
    tokenizer::render_chat(
        texts
            .iter()
            .map(|(role, content)| ChatTurn { role, content }),
        add_generation_prompt,
    )
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingRequest {
    #[serde(default)]
    pub(crate) model: Option<String>,
    pub(crate) input: PromptInput,
    #[serde(default)]
    pub(crate) encoding_format: Option<String>,
    #[serde(default)]
    pub(crate) dimensions: Option<i64>,
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenizeRequest {
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) prompt: Option<String>,
    #[serde(default)]
    pub(crate) messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub(crate) add_special_tokens: Option<bool>,
    #[serde(default)]
    pub(crate) add_generation_prompt: Option<bool>,
    #[serde(default)]
    pub(crate) return_token_strs: Option<bool>,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub(crate) struct DetokenizeRequest {
    #[serde(default)]
    pub(crate) model: Option<String>,
    pub(crate) tokens: Vec<u32>,
}

/// The model a request addressed: a served name, or a LoRA adapter of it.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedModel {
    /// The name responses report.
    pub(crate) name: String,
    pub(crate) lora: Option<LoraRef>,
}

/// Resolves `model` (absent: the base model) against served names and adapters.
pub(crate) fn resolve_model(
    requested: Option<&str>,
    config: &EngineConfig,
    loras: &[LoraModule],
) -> Result<ResolvedModel, ApiError> {
    let primary = config.primary_name();
    let Some(name) = requested else {
        return Ok(ResolvedModel {
            name: primary,
            lora: None,
        });
    };
    let served = config.served_names();
    if served.iter().any(|s| s == name) {
        return Ok(ResolvedModel {
            name: primary,
            lora: None,
        });
    }
    if let Some(l) = loras.iter().find(|l| l.name == name) {
        return Ok(ResolvedModel {
            name: l.name.clone(),
            lora: Some(LoraRef {
                name: l.name.as_str().into(),
                path: l.path.as_str().into(),
            }),
        });
    }
    let mut valid = served;
    valid.extend(loras.iter().map(|l| l.name.clone()));
    Err(ApiError::model_not_found(name, &valid))
}

#[cfg(test)]
mod tests;
