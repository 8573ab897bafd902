//! The router's tokenizers while engines come and go: loaded at start from the
//! settings, and for models discovered later from the settings' default or the Hugging
//! Face cache, without a restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use llmstack_core::{EndpointSet, PromptTokens, RouteRequest, Tokenize};
use tokio::sync::watch;

use crate::{ModelTokenizer, TokenizerError, TokenizerSources, Tokenizers, find_in_hf_cache};

/// [`Tokenizers`] that grow as models are discovered: the router's [`Tokenize`].
///
/// Each request reads the current set (a shared lock held for an `Arc` clone); adding
/// a model copies the set (model → tokenizer pointers) and swaps it in. A model is
/// looked up once: [`LiveTokenizers::follow`] tries each base model the endpoint set
/// names (LoRA adapters use their base model's tokenizer) the first time it appears,
/// with the default directory if one was given, else the Hugging Face cache by the
/// model's name and then its card's `root`; the outcome is logged either way.
/// With a default directory, every model is served by it from the start (also one
/// discovery has not named yet).
#[derive(Debug)]
pub struct LiveTokenizers {
    current: RwLock<Arc<Tokenizers>>,
    default: Option<Arc<ModelTokenizer>>,
    /// The default tokenizer alone, under [`DEFAULT`]: serves a model before
    /// [`LiveTokenizers::follow`] has named it.
    fallback: Option<Tokenizers>,
    cache_root: Option<PathBuf>,
    tried: Mutex<HashSet<String>>,
}

/// How a model discovered by [`LiveTokenizers::follow`] got its tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The settings' directory for every model.
    Default,
    /// This snapshot of the Hugging Face cache.
    HfCache(PathBuf),
}

// === impl LiveTokenizers ===

impl LiveTokenizers {
    /// Loads every tokenizer `sources` names (each directory once, even when several
    /// models share it). Fails on the first directory that does not load, naming it.
    /// `cache_root` overrides the Hugging Face cache location (default: the
    /// environment's, see [`crate::hf_cache_root`]).
    pub fn load(
        sources: &TokenizerSources,
        cache_root: Option<&Path>,
    ) -> Result<Self, TokenizerError> {
        let mut loaded: Vec<(PathBuf, Arc<ModelTokenizer>)> = Vec::new();
        let mut load = |dir: &Path| -> Result<Arc<ModelTokenizer>, TokenizerError> {
            if let Some((_, tok)) = loaded.iter().find(|(d, _)| d == dir) {
                return Ok(Arc::clone(tok));
            }
            let tok = Arc::new(ModelTokenizer::from_dir(dir)?);
            loaded.push((dir.to_owned(), Arc::clone(&tok)));
            Ok(tok)
        };
        let mut tokenizers = Tokenizers::new();
        for (model, dir) in &sources.models {
            let tok = load(dir)?;
            tracing::info!(model, dir = %dir.display(), "tokenizer loaded");
            tokenizers.insert(model.clone(), tok);
        }
        let default = match &sources.default {
            Some(dir) => {
                let tok = load(dir)?;
                tracing::info!(dir = %dir.display(), "tokenizer loaded for every model without its own");
                Some(tok)
            }
            None => None,
        };
        let fallback = default.as_ref().map(|tok| {
            let mut one = Tokenizers::new();
            one.insert(DEFAULT, Arc::clone(tok));
            one
        });
        Ok(Self {
            fallback,
            tried: Mutex::new(tokenizers.models().map(str::to_owned).collect()),
            current: RwLock::new(Arc::new(tokenizers)),
            default,
            cache_root: cache_root.map(Path::to_path_buf),
        })
    }

    /// The tokenizers now.
    pub fn snapshot(&self) -> Arc<Tokenizers> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Serves `model` with `tokenizer` from now on (replacing an earlier one).
    pub fn insert(&self, model: &str, tokenizer: Arc<ModelTokenizer>) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Tokenizers::new();
        for name in current.models() {
            if let Some(tok) = current.get(name) {
                next.insert(name, Arc::clone(tok));
            }
        }
        next.insert(model, tokenizer);
        *current = Arc::new(next);
    }

    /// Finds a tokenizer for `model` (whose card names `root`, if any) the first time
    /// it is asked: the default directory, else the Hugging Face cache. Blocking (reads
    /// and parses files). `None` when it was asked before or nothing was found.
    pub fn discover(&self, model: &str, root: Option<&str>) -> Option<Found> {
        if !self
            .tried
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(model.to_owned())
        {
            return None;
        }
        if let Some(tok) = &self.default {
            self.insert(model, Arc::clone(tok));
            tracing::info!(model, "tokenizer: the default one");
            return Some(Found::Default);
        }
        let root = root.filter(|r| *r != model);
        let dir = std::iter::once(model)
            .chain(root)
            .find_map(|id| find_in_hf_cache(id, self.cache_root.as_deref()));
        let Some(dir) = dir else {
            tracing::warn!(
                model,
                root,
                "kvaware: no tokenizer for this model (give --tokenizer MODEL=PATH or put it in the Hugging Face cache); routing it by the router's prefix index"
            );
            return None;
        };
        match ModelTokenizer::from_dir(&dir) {
            Ok(tok) => {
                tracing::info!(model, dir = %dir.display(), "tokenizer loaded from the Hugging Face cache");
                self.insert(model, Arc::new(tok));
                Some(Found::HfCache(dir))
            }
            Err(e) => {
                tracing::warn!(model, dir = %dir.display(), error = %e, "kvaware: the cached tokenizer does not load; routing this model by the router's prefix index");
                None
            }
        }
    }

    /// Follows `endpoints`: every base model that appears gets [`Self::discover`]ed
    /// (on the blocking pool). Ends when the sender is dropped.
    pub async fn follow(self: Arc<Self>, mut endpoints: watch::Receiver<EndpointSet>) {
        loop {
            let models = new_models(&endpoints.borrow_and_update(), &self);
            if !models.is_empty() {
                let this = Arc::clone(&self);
                let found = tokio::task::spawn_blocking(move || {
                    for (model, root) in models {
                        this.discover(&model, root.as_deref());
                    }
                });
                if let Err(e) = found.await {
                    tracing::warn!(error = %e, "tokenizer discovery failed");
                }
            }
            if endpoints.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Base models of `set` (with their card's `root`) not tried yet.
fn new_models(set: &EndpointSet, live: &LiveTokenizers) -> Vec<(String, Option<String>)> {
    let tried = live.tried.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for ep in set.iter() {
        for card in ep.models.iter().filter(|c| c.parent.is_none()) {
            if tried.contains(&card.id) || out.iter().any(|(m, _)| *m == card.id) {
                continue;
            }
            let root = card
                .card
                .get("root")
                .and_then(|r| r.as_str())
                .map(str::to_owned);
            out.push((card.id.clone(), root));
        }
    }
    out
}

/// The name the default tokenizer serves under before a model is named.
const DEFAULT: &str = "*";

impl Tokenize for LiveTokenizers {
    fn tokenize(&self, model: &str, req: &RouteRequest<'_>) -> Option<PromptTokens> {
        let current = self.snapshot();
        if current.knows(model) {
            return current.tokenize(model, req);
        }
        self.fallback.as_ref()?.tokenize(DEFAULT, req)
    }

    fn knows(&self, model: &str) -> bool {
        self.fallback.is_some()
            || self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .knows(model)
    }
}

#[cfg(test)]
mod tests;
