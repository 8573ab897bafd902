//! Request bodies of the OpenAI routes and their checks, as vLLM 0.33 applies them.

use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;
use crate::config::{ContextOverflow, EngineConfig, LoraModule};
use crate::scheduler::LoraRef;
use crate::tokenizer::{self, ChatTurn};

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
            let path = e.path().to_string();
            let inner = e.into_inner();
            let (kind, loc) = match inner.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    ("json_invalid", String::new())
                }
                _ if inner.to_string().starts_with("missing field") => ("missing", path),
                _ => ("value_error", path),
            };
            let loc = if loc == "." { String::new() } else { loc };
            Err(ApiError::validation(kind, &loc, &inner.to_string()))
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
    pub(crate) fn tokenize(
        &self,
        add_special_tokens: bool,
        param: &str,
    ) -> Result<Vec<Vec<u32>>, ApiError> {
        let out: Vec<Vec<u32>> = match self {
            Self::Text(s) => vec![tokenizer::encode(s, add_special_tokens && !s.is_empty())],
            Self::Texts(v) => v
                .iter()
                .map(|s| tokenizer::encode(s, add_special_tokens && !s.is_empty()))
                .collect(),
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
            if let Some(bad) = p.iter().find(|&&t| !tokenizer::is_valid(t)) {
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
                    ("text" | "input_text", Some(t)) => t.clone(),
                    (kind, _) => format!("<{kind}>"),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// Renders chat messages with the template.
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

/// Sampling parameters after every check.
#[derive(Debug, Clone)]
pub(crate) struct Sampling {
    pub(crate) n: usize,
    /// Per prompt, clamped to the context.
    pub(crate) max_tokens: Vec<usize>,
    pub(crate) min_tokens: usize,
    pub(crate) ignore_eos: bool,
    pub(crate) stop: Arc<[String]>,
    pub(crate) include_stop: bool,
    pub(crate) stop_token_ids: Arc<[u32]>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) continuous_usage: bool,
    pub(crate) return_token_ids: bool,
    pub(crate) seed: Option<u64>,
    pub(crate) cache_salt: Option<Arc<str>>,
}

fn non_negative(v: Option<i64>, param: &str, min: i64) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x < min => Err(ApiError::validation(
            "greater_than_equal",
            param,
            &format!("Input should be greater than or equal to {min}"),
        )),
        Some(x) => Ok(Some(usize::try_from(x).unwrap_or(usize::MAX))),
    }
}

/// vLLM's `SamplingParams` range checks (values otherwise have no effect here).
fn check_ranges(f: &SamplingFields) -> Result<(), ApiError> {
    let bad = |param: &str, rule: &str, v: f64| {
        Err(ApiError::bad_request(
            format!("{param} must be {rule}, got {v}."),
            Some(param),
        ))
    };
    if let Some(t) = f.temperature
        && t < 0.0
    {
        return bad("temperature", "non-negative", t);
    }
    if let Some(p) = f.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return bad("top_p", "in (0, 1]", p);
    }
    if let Some(k) = f.top_k
        && k < -1
    {
        return bad(
            "top_k",
            "-1 (disable), 0 (disable), or at least 1",
            k as f64,
        );
    }
    if let Some(m) = f.min_p
        && !(0.0..=1.0).contains(&m)
    {
        return bad("min_p", "in [0, 1]", m);
    }
    for (param, v) in [
        ("frequency_penalty", f.frequency_penalty),
        ("presence_penalty", f.presence_penalty),
    ] {
        if let Some(v) = v
            && !(-2.0..=2.0).contains(&v)
        {
            return bad(param, "in [-2, 2]", v);
        }
    }
    if let Some(r) = f.repetition_penalty
        && r <= 0.0
    {
        return bad("repetition_penalty", "greater than zero", r);
    }
    Ok(())
}

/// Applies vLLM's length rules (vllm.md §2.4) and the other field checks.
pub(crate) fn check_sampling(
    f: &SamplingFields,
    max_tokens_field: (&str, Option<i64>),
    default_max_tokens: Option<usize>,
    prompts: &[Vec<u32>],
    config: &EngineConfig,
) -> Result<Sampling, ApiError> {
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::validation(
            "value_error",
            "stream_options",
            "Value error, Stream options can only be defined when `stream=True`.",
        ));
    }
    if f.priority.unwrap_or(0) != 0 {
        return Err(ApiError::bad_request(
            "Priority scheduling is not enabled. Please set --scheduling-policy to priority.",
            Some("priority"),
        ));
    }
    if let Some(salt) = &f.cache_salt
        && (salt.is_empty() || salt.len() > 1024)
    {
        return Err(ApiError::validation(
            "value_error",
            "cache_salt",
            "Value error, cache_salt must be 1..1024 characters",
        ));
    }
    let n = non_negative(f.n, "n", 1)?.unwrap_or(1);
    if n.saturating_mul(prompts.len()) > MAX_SEQS_PER_REQUEST {
        return Err(ApiError::bad_request(
            format!(
                "n × prompts must be at most {MAX_SEQS_PER_REQUEST} (got {})",
                n.saturating_mul(prompts.len())
            ),
            Some("n"),
        ));
    }
    let (field, value) = max_tokens_field;
    let requested = non_negative(value, field, 1)?.or(default_max_tokens);
    let max_len = config.max_model_len();
    if let Some(m) = requested
        && m > max_len
    {
        return Err(ApiError::bad_request(
            format!(
                "max_tokens={m} cannot be greater than max_model_len={max_len}. Please request fewer output tokens."
            ),
            Some(field),
        ));
    }
    let mut max_tokens = Vec::with_capacity(prompts.len());
    for p in prompts {
        let len = p.len();
        if len == 0 {
            return Err(ApiError::bad_request(
                "The decoder prompt cannot be empty",
                Some("prompt"),
            ));
        }
        if len > max_len {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {max_len} tokens. However, your prompt contains {len} input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt."
                ),
                Some("input_tokens"),
            ));
        }
        if len == max_len {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {max_len} tokens. However, your request has {len} input tokens, which plus the number of requested output tokens (at least 1) is longer than the maximum model length. Please reduce the length of the input prompt."
                ),
                Some("input_tokens"),
            ));
        }
        let room = max_len - len;
        let want = requested.unwrap_or(room);
        if want > room && config.context_overflow == ContextOverflow::Reject {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {max_len} tokens. However, you requested {want} output tokens and your prompt contains at least {len} input tokens, for a total of at least {} tokens. Please reduce the length of the input prompt or the number of requested output tokens.",
                    want + len
                ),
                Some(field),
            ));
        }
        max_tokens.push(want.min(room));
    }
    let stop: Vec<String> = match &f.stop {
        None => Vec::new(),
        Some(StopInput::One(s)) => vec![s.clone()],
        Some(StopInput::Many(v)) => v.clone(),
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let opts = f.stream_options.as_ref();
    let include_usage = opts.and_then(|o| o.include_usage).unwrap_or(false);
    check_ranges(f)?;
    let min_tokens = non_negative(f.min_tokens, "min_tokens", 0)?.unwrap_or(0);
    if let Some(max) = requested
        && min_tokens > max
    {
        return Err(ApiError::bad_request(
            format!("min_tokens must be less than or equal to max_tokens={max}, got {min_tokens}."),
            Some("min_tokens"),
        ));
    }
    Ok(Sampling {
        n,
        max_tokens,
        min_tokens,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        stop: stop.into(),
        include_stop: f.include_stop_str_in_output.unwrap_or(false),
        stop_token_ids: f.stop_token_ids.clone().unwrap_or_default().into(),
        stream,
        include_usage,
        continuous_usage: include_usage
            && opts.and_then(|o| o.continuous_usage_stats).unwrap_or(false),
        return_token_ids: f.return_token_ids.unwrap_or(false),
        seed: f.seed.map(|s| s as u64),
        cache_salt: f.cache_salt.as_deref().map(Arc::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> SamplingFields {
        let mut r: CompletionRequest =
            serde_json::from_str(&json.replacen('{', r#"{"prompt":"x","#, 1)).unwrap();
        r.take_fields()
    }

    #[test]
    fn parse_reports_paths() {
        let e = parse::<CompletionRequest>(br#"{"prompt":"x","max_tokens":"lots"}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse::<ChatRequest>(br#"{"model":"m"}"#).unwrap_err();
        assert!(e.message.contains("'missing'"), "{}", e.message);
        let e = parse::<ChatRequest>(b"{not json").unwrap_err();
        assert!(e.message.contains("json_invalid"), "{}", e.message);
        let e = parse::<ChatRequest>(br#"{"messages":[{"role":"user","content":7}]}"#).unwrap_err();
        assert_eq!(e.kind, "Bad Request");
    }

    #[test]
    fn length_rules() {
        let mut c = EngineConfig::new("m");
        c.max_model_len = Some(100);
        let f = fields(r#"{"max_tokens": 50}"#);
        let ok = check_sampling(
            &f,
            ("max_tokens", f.max_tokens),
            Some(16),
            &[vec![1; 80]],
            &c,
        )
        .unwrap();
        assert_eq!(ok.max_tokens, vec![20], "clamped to the room left");
        let e =
            check_sampling(&f, ("max_tokens", Some(101)), None, &[vec![1; 10]], &c).unwrap_err();
        assert!(
            e.message
                .starts_with("max_tokens=101 cannot be greater than max_model_len=100")
        );
        let e = check_sampling(&f, ("max_tokens", None), None, &[vec![1; 101]], &c).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input_tokens"));
        let e = check_sampling(&f, ("max_tokens", None), None, &[vec![1; 100]], &c).unwrap_err();
        assert!(e.message.contains("at least 1"));
        let e = check_sampling(&f, ("max_tokens", None), None, &[vec![]], &c).unwrap_err();
        assert_eq!(e.message, "The decoder prompt cannot be empty");
        c.context_overflow = ContextOverflow::Reject;
        assert!(check_sampling(&f, ("max_tokens", Some(50)), None, &[vec![1; 80]], &c).is_err());
        let f = fields(r#"{"stream_options": {"include_usage": true}}"#);
        assert_eq!(
            check_sampling(&f, ("max_tokens", None), None, &[vec![1]], &c)
                .unwrap_err()
                .param
                .as_deref(),
            Some("stream_options")
        );
        let f = fields(r#"{"max_tokens": 0}"#);
        assert!(check_sampling(&f, ("max_tokens", f.max_tokens), None, &[vec![1]], &c).is_err());
    }

    #[test]
    fn chat_content_parts_render_like_strings() {
        let a: ChatRequest =
            serde_json::from_str(r#"{"messages":[{"role":"user","content":"hi there"}]}"#).unwrap();
        let b: ChatRequest = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi there"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            render_messages(&a.messages, true),
            render_messages(&b.messages, true)
        );
    }

    #[test]
    fn models_resolve_to_base_or_adapter() {
        let mut c = EngineConfig::new("base");
        c.served_model_names = vec!["alias".into(), "other".into()];
        let loras = vec![LoraModule {
            name: "sql".into(),
            path: "/a/sql".into(),
        }];
        assert_eq!(
            resolve_model(Some("other"), &c, &loras).unwrap().name,
            "alias"
        );
        assert_eq!(resolve_model(None, &c, &loras).unwrap().name, "alias");
        let l = resolve_model(Some("sql"), &c, &loras).unwrap();
        assert_eq!(
            (l.name.as_str(), l.lora.unwrap().path.as_ref()),
            ("sql", "/a/sql")
        );
        let e = resolve_model(Some("nope"), &c, &loras).unwrap_err();
        assert_eq!(e.status, 404);
        assert!(e.message.contains("alias, other, sql"));
    }
}
