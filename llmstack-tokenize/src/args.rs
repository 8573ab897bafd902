//! The tokenizer settings as given: a flag, its environment variable or a file key.

use std::path::PathBuf;

use llmstack_core::SettingErrors;
use llmstack_core::settings::{comma_list, trimmed};

/// Where the router's tokenizers come from, as given; turned into
/// [`TokenizerSources`] by [`TokenizerArgs::resolve`]. With the `clap` feature it is a
/// `clap::Args` to flatten into a command line; the file key is `tokenizer`.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct TokenizerArgs {
    /// A model's tokenizer for KV-aware routing: `MODEL=PATH`, or `PATH` alone for
    /// every model without its own; PATH is a directory with the model's Hugging Face
    /// `tokenizer.json` and `tokenizer_config.json`. Repeatable (comma-separated in the
    /// variable). Needs --routing-logic kvaware [default: each model's files in the
    /// Hugging Face cache (HF_HUB_CACHE, HF_HOME, ~/.cache/huggingface/hub), looked up
    /// by its id and its card's `root`].
    #[cfg_attr(
        feature = "clap",
        arg(
            long,
            env = "LLMSTACK_TOKENIZER",
            value_delimiter = ',',
            value_name = "[MODEL=]PATH"
        )
    )]
    #[serde(
        deserialize_with = "comma_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub tokenizer: Option<Vec<String>>,
}

/// Where each model's tokenizer is, resolved from [`TokenizerArgs`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerSources {
    /// The directory for every model without its own entry (`--tokenizer PATH`).
    pub default: Option<PathBuf>,
    /// Per model name: its directory (`--tokenizer MODEL=PATH`), in the order given.
    pub models: Vec<(String, PathBuf)>,
}

// === impl TokenizerArgs ===

impl TokenizerArgs {
    /// Whether any tokenizer is given.
    pub fn is_set(&self) -> bool {
        self.tokenizer.as_ref().is_some_and(|list| !list.is_empty())
    }

    /// The sources these settings give, recording in `errors` an entry with an empty
    /// model or path, a model given twice, or two defaults. Directories are read when
    /// the tokenizers are loaded, not here.
    pub fn resolve(self, errors: &mut SettingErrors) -> TokenizerSources {
        let mut sources = TokenizerSources::default();
        for entry in trimmed(self.tokenizer) {
            let (model, path) = match entry.split_once('=') {
                Some((model, path)) => (Some(model.trim()), path.trim()),
                None => (None, entry.as_str()),
            };
            if path.is_empty() || model.is_some_and(str::is_empty) {
                errors.push(
                    "tokenizer",
                    format!("--tokenizer `{entry}` is not MODEL=PATH or PATH"),
                );
                continue;
            }
            match model {
                Some(model) if sources.models.iter().any(|(m, _)| m == model) => {
                    errors.push(
                        "tokenizer",
                        format!("--tokenizer names model `{model}` twice"),
                    );
                }
                Some(model) => sources.models.push((model.to_owned(), PathBuf::from(path))),
                None if sources.default.is_some() => errors.push(
                    "tokenizer",
                    "--tokenizer gives two PATHs for every model; name the model of each (MODEL=PATH)",
                ),
                None => sources.default = Some(PathBuf::from(path)),
            }
        }
        sources
    }
}
