//! A chat template compiled once, in an environment set up as transformers sets up its
//! Jinja environment for `apply_chat_template`.

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, Value};
use serde_json::{Map, Value as Json};

use crate::content_format::{self, ContentFormat};
use crate::{TokenizerConfig, TokenizerError, conversation, pycompat};

const NAME: &str = "chat_template";

/// One compiled chat template with what vLLM derives from its source.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    format: ContentFormat,
    supports_developer: bool,
    /// The special tokens transformers passes to every render (`bos_token`, …).
    special: Map<String, Json>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("format", &self.format)
            .field("supports_developer", &self.supports_developer)
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
        Ok(Self {
            env,
            format: content_format::detect(source),
            supports_developer: source.contains("\"developer\"") || source.contains("'developer'"),
            special,
        })
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
        let conv = conversation::prepare(messages, self.format, self.supports_developer)?;
        let mut ctx = self.special.clone();
        ctx.insert("messages".into(), Json::Array(conv));
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(add_generation_prompt),
        );
        ctx.insert("tools".into(), Json::Null);
        ctx.insert("documents".into(), Json::Null);
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TokenizerError::render(e.to_string()))?;
        template
            .render(Value::from(minijinja::value::Serde(&Json::Object(ctx))))
            .map_err(|e| TokenizerError::render(format!("{e:#}")))
    }
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
