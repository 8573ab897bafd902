//! The tokenizers of every served model, behind [`llmstack_core::Tokenize`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use llmstack_core::{PromptTokens, RequestKind, RouteRequest, Tokenize};
use serde_json::Value as Json;

use crate::{ModelTokenizer, TokenizerError, find_in_hf_cache, hf_cache_root};

/// One tokenizer per served model name, loaded once at start-up; the router's
/// [`Tokenize`].
///
/// - chat requests: `messages` rendered with the model's chat template (generation
///   prompt on) and encoded without special tokens, as vLLM does;
/// - completions with one string prompt (or a list of one): encoded with special tokens
///   (the post-processor's BOS);
/// - completions with one prompt of token ids (or a list of one): those ids;
/// - anything else (batches, embeddings `input`, no prompt, a template error, non-text
///   content): `None`, logged at debug level (the first time per model and reason, then
///   every 1000th).
///
/// What a request can change but [`RouteRequest`] does not carry is rendered with
/// vLLM's defaults: `add_generation_prompt`, `continue_final_message`, `tools`,
/// `chat_template_kwargs` and a per-request `chat_template`.
#[derive(Debug, Default)]
pub struct Tokenizers {
    models: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    tokenizer: Arc<ModelTokenizer>,
    /// Per reason of [`Skip`]: how many requests were not tokenized.
    skipped: [AtomicU64; Skip::COUNT],
}

#[derive(Debug, Clone, Copy)]
enum Skip {
    NoPrompt,
    Batch,
    Render,
    Encode,
}

impl Skip {
    const COUNT: usize = 4;

    fn as_str(self) -> &'static str {
        match self {
            Self::NoPrompt => "no prompt this tokenizer renders",
            Self::Batch => "a batch of prompts",
            Self::Render => "the chat could not be rendered",
            Self::Encode => "the prompt could not be encoded",
        }
    }
}

impl Tokenizers {
    /// No models.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `model` with `tokenizer` (an `Arc` shares one tokenizer between several
    /// names). Replaces an earlier one.
    pub fn insert(&mut self, model: impl Into<String>, tokenizer: impl Into<Arc<ModelTokenizer>>) {
        self.models.insert(
            model.into(),
            Entry {
                tokenizer: tokenizer.into(),
                skipped: Default::default(),
            },
        );
    }

    /// Loads the tokenizer of `model` from `path` (a directory with `tokenizer.json`),
    /// or without a path from the Hugging Face hub cache by the model's id
    /// ([`find_in_hf_cache`]), and serves `model` with it.
    pub fn load(&mut self, model: &str, path: Option<&Path>) -> Result<(), TokenizerError> {
        let dir = match path {
            Some(path) => path.to_path_buf(),
            None => find_in_hf_cache(model, None).ok_or_else(|| TokenizerError::NotFound {
                model: model.to_owned(),
                searched: hf_cache_root(),
            })?,
        };
        let tokenizer = ModelTokenizer::from_dir(&dir)?;
        tracing::info!(model, dir = %dir.display(), piecewise = tokenizer.is_piecewise(), "tokenizer loaded");
        self.insert(model, tokenizer);
        Ok(())
    }

    /// The tokenizer serving `model`.
    pub fn get(&self, model: &str) -> Option<&Arc<ModelTokenizer>> {
        self.models.get(model).map(|e| &e.tokenizer)
    }

    /// The model names served, in no particular order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    fn skip(
        entry: &Entry,
        model: &str,
        reason: Skip,
        detail: Option<&dyn std::fmt::Display>,
    ) -> Option<PromptTokens> {
        let n = entry.skipped[reason as usize].fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            match detail {
                Some(detail) => {
                    tracing::debug!(model, skipped = n + 1, %detail, "not tokenized: {}", reason.as_str())
                }
                None => {
                    tracing::debug!(model, skipped = n + 1, "not tokenized: {}", reason.as_str())
                }
            }
        }
        None
    }
}

/// A completions `prompt`: one text, one list of ids, or something else.
enum CompletionPrompt {
    Text(String),
    Ids(Vec<u32>),
    Batch,
    Invalid,
}

fn completion_prompt(raw: &str) -> CompletionPrompt {
    let Ok(json) = serde_json::from_str::<Json>(raw) else {
        return CompletionPrompt::Invalid;
    };
    let ids = |items: &[Json]| -> Option<Vec<u32>> {
        items
            .iter()
            .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    };
    match json {
        Json::String(s) => CompletionPrompt::Text(s),
        Json::Array(items) => match items.as_slice() {
            [] => CompletionPrompt::Invalid,
            [Json::String(s)] => CompletionPrompt::Text(s.clone()),
            [Json::Array(inner)] => {
                ids(inner).map_or(CompletionPrompt::Invalid, CompletionPrompt::Ids)
            }
            [Json::String(_) | Json::Array(_), ..] => CompletionPrompt::Batch,
            all => ids(all).map_or(CompletionPrompt::Invalid, CompletionPrompt::Ids),
        },
        _ => CompletionPrompt::Invalid,
    }
}

impl Tokenize for Tokenizers {
    fn tokenize(&self, model: &str, req: &RouteRequest<'_>) -> Option<PromptTokens> {
        let entry = self.models.get(model)?;
        let tok = &entry.tokenizer;
        let ids = match req.kind() {
            Some(RequestKind::Chat) => {
                let messages = req.messages_raw()?;
                match tok.encode_chat(messages) {
                    Ok(ids) => ids,
                    Err(e @ TokenizerError::Encode { .. }) => {
                        return Self::skip(entry, model, Skip::Encode, Some(&e));
                    }
                    Err(e) => return Self::skip(entry, model, Skip::Render, Some(&e)),
                }
            }
            Some(RequestKind::Completion) => match completion_prompt(req.prompt_raw()?) {
                CompletionPrompt::Text(text) => match tok.encode(&text, true) {
                    Ok(ids) => ids,
                    Err(e) => return Self::skip(entry, model, Skip::Encode, Some(&e)),
                },
                CompletionPrompt::Ids(ids) => ids,
                CompletionPrompt::Batch => return Self::skip(entry, model, Skip::Batch, None),
                CompletionPrompt::Invalid => return Self::skip(entry, model, Skip::NoPrompt, None),
            },
            Some(RequestKind::Input) | None => {
                return Self::skip(entry, model, Skip::NoPrompt, None);
            }
        };
        Some(PromptTokens { ids: ids.into() })
    }

    fn knows(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }
}
