//! `tokenizer_config.json` and `chat_template.jinja`: the chat template and the special
//! tokens a template sees.

use std::path::Path;

use serde_json::Value as Json;

use crate::TokenizerError;

/// What a model's tokenizer configuration tells a renderer: the chat template and the
/// special tokens transformers hands the template (`bos_token`, `eos_token`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// The Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
    /// `bos_token`.
    pub bos_token: Option<String>,
    /// `eos_token`.
    pub eos_token: Option<String>,
    /// `unk_token`.
    pub unk_token: Option<String>,
    /// `pad_token`.
    pub pad_token: Option<String>,
    /// `model_max_length` (absent, or too large to mean anything, as
    /// transformers' 1e30 placeholder: `None`).
    pub model_max_length: Option<u64>,
}

/// The configuration file of a Hugging Face tokenizer.
pub const CONFIG_FILE: &str = "tokenizer_config.json";
/// The file newer Hugging Face repositories keep the chat template in; it wins over the
/// configuration's `chat_template`.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json` (an absent file is an empty configuration) and
    /// `dir/chat_template.jinja`, which wins over the configuration's template when
    /// present.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join(CONFIG_FILE);
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_json(&text, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(source) => return Err(TokenizerError::Io { path, source }),
        };
        let template = dir.join(TEMPLATE_FILE);
        match std::fs::read_to_string(&template) {
            Ok(text) => config.chat_template = Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TokenizerError::Io {
                    path: template,
                    source,
                });
            }
        }
        Ok(config)
    }

    /// Parses the text of a `tokenizer_config.json`; `path` names it in errors.
    ///
    /// `chat_template` is a string, or a list of `{"name", "template"}` of which the one
    /// named `default` is used (as transformers does without an explicit choice). The
    /// special tokens are strings or `{"content": …}` objects.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, TokenizerError> {
        let json: Json = serde_json::from_str(text)
            .map_err(|e| TokenizerError::invalid(path, format!("not valid JSON: {e}")))?;
        let Json::Object(map) = json else {
            return Err(TokenizerError::invalid(path, "not a JSON object"));
        };
        let token = |key: &str| -> Result<Option<String>, TokenizerError> {
            match map.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Ok(Some(s.clone())),
                Some(Json::Object(o)) => match o.get("content") {
                    Some(Json::String(s)) => Ok(Some(s.clone())),
                    _ => Err(TokenizerError::invalid(
                        path,
                        format!("`{key}` is an object without a string `content`"),
                    )),
                },
                Some(other) => Err(TokenizerError::invalid(
                    path,
                    format!(
                        "`{key}` must be a string or an object with `content`, not {}",
                        kind(other)
                    ),
                )),
            }
        };
        let chat_template = match map.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Array(list)) => Some(default_template(list, path)?),
            Some(other) => {
                return Err(TokenizerError::invalid(
                    path,
                    format!(
                        "`chat_template` must be a string or a list of {{name, template}}, not {}",
                        kind(other)
                    ),
                ));
            }
        };
        let model_max_length = match map.get("model_max_length") {
            None | Some(Json::Null) => None,
            Some(Json::Number(n)) => n.as_u64(),
            Some(other) => {
                return Err(TokenizerError::invalid(
                    path,
                    format!("`model_max_length` must be a number, not {}", kind(other)),
                ));
            }
        };
        Ok(Self {
            chat_template,
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            unk_token: token("unk_token")?,
            pad_token: token("pad_token")?,
            model_max_length,
        })
    }
}

fn default_template(list: &[Json], path: &Path) -> Result<String, TokenizerError> {
    let mut names = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let (Some(Json::String(name)), Some(Json::String(template))) =
            (item.get("name"), item.get("template"))
        else {
            return Err(TokenizerError::invalid(
                path,
                format!("`chat_template[{i}]` must be an object with string `name` and `template`"),
            ));
        };
        if name == "default" {
            return Ok(template.clone());
        }
        names.push(name.as_str());
    }
    Err(TokenizerError::invalid(
        path,
        format!("`chat_template` lists templates {names:?} but none named \"default\""),
    ))
}

fn kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}
