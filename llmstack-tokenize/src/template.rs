//! A chat template compiled once, in an environment set up as transformers sets up its
//! Jinja environment for `apply_chat_template`.

use std::borrow::Cow;

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, Value};
use serde_json::{Map, Value as Json};

use crate::content_format::{self, ContentFormat};
use crate::{TokenizerConfig, TokenizerError, conversation, pycompat};

mod by_message;

use by_message::MessageFormat;

const NAME: &str = "chat_template";

/// One compiled chat template with what vLLM derives from its source.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    format: ContentFormat,
    supports_developer: bool,
    /// The special tokens transformers passes to every render (`bos_token`, …).
    special: Map<String, Json>,
    /// The template's plain conversations as plain text, when it renders them message
    /// by message ([`by_message`]).
    by_message: Option<MessageFormat>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("format", &self.format)
            .field("supports_developer", &self.supports_developer)
            .field("by_message", &self.by_message.is_some())
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` with `config`'s special tokens.
    pub(crate) fn new(source: &str, config: &TokenizerConfig) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        // transformers: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True),
        // keep_trailing_newline left at Jinja's default (off), no autoescape.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| TokenizerError::Template {
                message: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(pycompat::formatter);
        env.add_filter("tojson", pycompat::tojson);
        env.add_function("raise_exception", pycompat::raise_exception);
        env.add_function("strftime_now", pycompat::strftime_now);
        env.add_template_owned(NAME, without_generation_tags(source))
            .map_err(|e| TokenizerError::Template {
                message: format!("{e:#}"),
            })?;
        let mut special = Map::new();
        for (key, value) in [
            ("bos_token", &config.bos_token),
            ("eos_token", &config.eos_token),
            ("unk_token", &config.unk_token),
            ("pad_token", &config.pad_token),
        ] {
            if let Some(v) = value {
                special.insert(key.into(), Json::String(v.clone()));
            }
        }
        let mut template = Self {
            env,
            format: content_format::detect(source),
            supports_developer: source.contains("\"developer\"") || source.contains("'developer'"),
            special,
            by_message: None,
        };
        template.by_message = MessageFormat::learn(source, |conv, generation| {
            let list = PlainMessage::from_pairs(conv);
            template
                .render_plain(plain_values(&list, template.format), generation)
                .ok()
        });
        Ok(template)
    }

    /// The content format vLLM's auto-detection picks for this template.
    pub(crate) fn format(&self) -> ContentFormat {
        self.format
    }

    /// Renders the raw JSON of a request's `messages` as vLLM does: the conversation
    /// prepared by vLLM's rules, no tools, the special tokens.
    pub(crate) fn render(
        &self,
        messages: &str,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let Some(list) = plain_messages(messages) else {
            return self.render_prepared(messages, add_generation_prompt);
        };
        if let Some(text) = self
            .by_message
            .as_ref()
            .and_then(|f| f.render(&list, add_generation_prompt))
        {
            return Ok(text);
        }
        self.render_plain(plain_values(&list, self.format), add_generation_prompt)
    }

    fn template(&self) -> Result<minijinja::Template<'_, '_>, TokenizerError> {
        self.env
            .get_template(NAME)
            .map_err(|e| TokenizerError::render(e.to_string()))
    }

    /// [`ChatTemplate::render`] for a conversation of plain messages, given as template
    /// values ([`plain_values`]).
    fn render_plain(
        &self,
        conv: Value,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let mut ctx: Vec<(&str, Value)> = self
            .special
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from(v.as_str().unwrap_or_default())))
            .collect();
        ctx.push(("messages", conv));
        ctx.push(("add_generation_prompt", Value::from(add_generation_prompt)));
        ctx.push(("tools", Value::from(())));
        ctx.push(("documents", Value::from(())));
        self.template()?
            .render(Value::from_pairs(ctx))
            .map_err(|e| TokenizerError::render(format!("{e:#}")))
    }

    /// [`ChatTemplate::render`] by vLLM's full preparation of any conversation.
    fn render_prepared(
        &self,
        messages: &str,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let conv = conversation::prepare(messages, self.format, self.supports_developer)?;
        let mut ctx = self.special.clone();
        ctx.insert("messages".into(), Json::Array(conv));
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(add_generation_prompt),
        );
        ctx.insert("tools".into(), Json::Null);
        ctx.insert("documents".into(), Json::Null);
        self.template()?
            .render(Value::from(minijinja::value::Serde(&Json::Object(ctx))))
            .map_err(|e| TokenizerError::render(format!("{e:#}")))
    }
}

/// One message of the common conversation: a system, user or assistant role and text
/// (or null) content, nothing else.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainMessage<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

impl<'a> PlainMessage<'a> {
    /// Messages from `(role, content)` pairs.
    fn from_pairs(conv: &[(&'a str, &'a str)]) -> Vec<Self> {
        conv.iter()
            .map(|&(role, content)| Self {
                role: role.into(),
                content: Some(content.into()),
            })
            .collect()
    }
}

/// The template's `messages` for a conversation of [`PlainMessage`]s only, built as
/// template values directly: what [`conversation::prepare`] gives for it (one parse, no
/// JSON tree, no conversion of one). `None` for anything else (content parts, tool
/// calls, names, a developer or tool role), which takes the full path.
#[cfg(test)]
fn plain_conversation(messages: &str, format: ContentFormat) -> Option<Value> {
    plain_messages(messages).map(|list| plain_values(&list, format))
}

/// The raw JSON of `messages` as [`PlainMessage`]s; `None` unless every message is one.
fn plain_messages(messages: &str) -> Option<Vec<PlainMessage<'_>>> {
    let list: Vec<PlainMessage<'_>> = serde_json::from_str(messages).ok()?;
    list.iter()
        .all(|m| matches!(&*m.role, "system" | "user" | "assistant"))
        .then_some(list)
}

/// The template's `messages` for plain messages, in content format `format`.
fn plain_values(list: &[PlainMessage<'_>], format: ContentFormat) -> Value {
    list.iter()
        .map(|m| {
            let text = m.content.as_deref().map(Value::from);
            let content = match format {
                ContentFormat::String => text.unwrap_or_else(|| Value::from("")),
                ContentFormat::OpenAi => text
                    .map(|t| {
                        Value::from_iter([Value::from_pairs([
                            ("type", Value::from("text")),
                            ("text", t),
                        ])])
                    })
                    .unwrap_or_else(|| Value::from(Vec::<Value>::new())),
            };
            Value::from_pairs([("role", Value::from(&*m.role)), ("content", content)])
        })
        .collect()
}

/// transformers' `{% generation %}…{% endgeneration %}` extension only marks assistant
/// text for training masks; rendering ignores it. The tags become an always-true `if`
/// with the same whitespace control, which minijinja knows.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let (lead, body) = split_modifier_start(inner);
        let (body, trail) = split_modifier_end(body);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(lead);
                out.push(' ');
                out.push_str(r);
                out.push(' ');
                out.push_str(trail);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn split_modifier_start(s: &str) -> (&str, &str) {
    match s.as_bytes().first() {
        Some(b'-' | b'+') => s.split_at(1),
        _ => ("", s),
    }
}

fn split_modifier_end(s: &str) -> (&str, &str) {
    match s.as_bytes().last() {
        Some(b'-' | b'+') => s.split_at(s.len() - 1),
        _ => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain path renders what the full preparation renders, in both content formats.
    #[test]
    fn plain_conversations_render_as_the_full_preparation_does() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");
        let config = TokenizerConfig::from_dir(std::path::Path::new(dir)).unwrap();
        let source = config.chat_template.clone().unwrap();
        // The fixture's template takes both (a string, or text parts).
        let string = ChatTemplate {
            format: ContentFormat::String,
            ..ChatTemplate::new(&source, &config).unwrap()
        };
        let openai = ChatTemplate {
            format: ContentFormat::OpenAi,
            ..ChatTemplate::new(&source, &config).unwrap()
        };
        let conversations = [
            r#"[{"role":"user","content":"Hi"}]"#,
            r#"[{"role":"system","content":"  Be brief.\n"},{"role":"user","content":"caf\u00e9 \"x\""},
                {"role":"assistant","content":null},{"role":"user"},{"role":"assistant","content":""}]"#,
            r#"[]"#,
        ];
        for template in [&string, &openai] {
            for conv in conversations {
                let plain = plain_conversation(conv, template.format).expect(conv);
                for generation in [true, false] {
                    assert_eq!(
                        template.render_plain(plain.clone(), generation).unwrap(),
                        template.render_prepared(conv, generation).unwrap(),
                        "{conv}"
                    );
                }
            }
        }
        // Anything else takes the full path.
        for other in [
            r#"[{"role":"user","content":[{"type":"text","text":"a"}]}]"#,
            r#"[{"role":"user","content":"a","name":"bob"}]"#,
            r#"[{"role":"developer","content":"a"}]"#,
            r#"[{"role":"tool","content":"a","tool_call_id":"1"}]"#,
            r#"[{"role":"assistant","content":"a","tool_calls":[]}]"#,
            r#"{"role":"user"}"#,
        ] {
            assert!(
                plain_conversation(other, ContentFormat::String).is_none(),
                "{other}"
            );
        }
    }
}
