//! One model's tokenizer: its `tokenizer.json`, its chat template and the segment cache.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokenizers::Tokenizer;

use crate::fast::FastBpe;
use crate::segments::{AddedTokenSplitter, Piece, SegmentCache};
use crate::template::ChatTemplate;
use crate::{ContentFormat, TokenizerConfig, TokenizerError};

/// The tokenizer file of a Hugging Face model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The default byte budget of a model's segment cache.
pub const DEFAULT_CACHE_BUDGET: usize = 64 << 20;

/// A text that exercises what can make piecewise encoding differ from whole-text
/// encoding: text right after and before added tokens, leading spaces, newlines, digits,
/// non-ASCII. `{0}`, `{1}`, `{2}` are replaced with added tokens.
const PROBE: &str = "{0}Hello world{1} leading space\n\n  indented{2}\nnext line 1234567{0} café 日本語 end {1}{2}tail";

/// Counters of a [`ModelTokenizer`]'s work, from [`ModelTokenizer::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenizerStats {
    /// Text pieces encoded by the tokenizer (segment-cache misses).
    pub segments_encoded: u64,
    /// Text pieces found in the segment cache.
    pub segments_cached: u64,
    /// Whole texts encoded without the cache (a model whose tokenizer is not
    /// piece-local, or a post-processor whose additions could not be derived).
    pub whole_encodes: u64,
    /// Pieces in the segment cache.
    pub cache_entries: usize,
    /// Bytes the segment cache accounts for.
    pub cache_bytes: usize,
}

#[derive(Default)]
struct Counters {
    encoded: AtomicU64,
    cached: AtomicU64,
    whole: AtomicU64,
}

/// What the post-processor adds around a single sequence when asked for special tokens
/// (Llama's BOS in front).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Affixes {
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

/// One model's tokenizer as vLLM uses it: the Hugging Face `tokenizer.json`, the chat
/// template rendered as transformers renders it, and a cache of encoded prompt pieces so
/// that a conversation's history is not encoded again on every turn.
///
/// Shared by reference between request tasks: every method takes `&self`; the cache's
/// lock is held for lookups and inserts only, never while encoding.
pub struct ModelTokenizer {
    tokenizer: Tokenizer,
    config: TokenizerConfig,
    template: Option<ChatTemplate>,
    splitter: Option<AddedTokenSplitter>,
    /// Whether encoding piece by piece equals encoding the whole text (probed at load).
    piecewise: bool,
    /// The hand-written pre-tokenizer for Llama-3-style byte-level BPE, when this
    /// tokenizer is one (and agrees with its pipeline on the probe).
    fast: Option<FastBpe>,
    /// `None`: the post-processor's additions could not be derived; encode whole texts
    /// when special tokens are asked for.
    affixes: Option<Affixes>,
    cache: SegmentCache,
    counters: Counters,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("template", &self.template)
            .field("piecewise", &self.piecewise)
            .field("affixes", &self.affixes)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ModelTokenizer {
    /// Loads `dir/tokenizer.json`, `dir/tokenizer_config.json` and, if present,
    /// `dir/chat_template.jinja` (which wins over the configuration's template).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(TokenizerError::NotFound {
                model: dir.display().to_string(),
                searched: Some(path),
            });
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| TokenizerError::Tokenizer {
            path: Some(path.clone()),
            message: e.to_string(),
        })?;
        let config = TokenizerConfig::from_dir(dir)?;
        Self::new(tokenizer, config).map_err(|e| match e {
            TokenizerError::Template { message } => TokenizerError::Template {
                message: format!("{}: {message}", dir.display()),
            },
            other => other,
        })
    }

    /// A model tokenizer from a loaded `tokenizers` tokenizer and its configuration.
    ///
    /// Truncation and padding are switched off (transformers switches them off for every
    /// call that does not ask for them). Probes whether piecewise encoding is exact for
    /// this tokenizer and derives what its post-processor adds.
    pub fn new(mut tokenizer: Tokenizer, config: TokenizerConfig) -> Result<Self, TokenizerError> {
        tokenizer
            .with_truncation(None)
            .map_err(|e| TokenizerError::Tokenizer {
                path: None,
                message: e.to_string(),
            })?;
        tokenizer.with_padding(None);
        let template = config
            .chat_template
            .as_deref()
            .map(|source| ChatTemplate::new(source, &config))
            .transpose()?;
        let mut model = Self {
            splitter: AddedTokenSplitter::new(&tokenizer),
            tokenizer,
            config,
            template,
            piecewise: true,
            fast: None,
            affixes: None,
            cache: SegmentCache::new(DEFAULT_CACHE_BUDGET),
            counters: Counters::default(),
        };
        let probe = model.probe_text();
        model.fast = FastBpe::detect(&model.tokenizer);
        if model.fast.is_some() && !model.check_fast(&probe) {
            tracing::warn!(
                "the fast byte-level pre-tokenizer disagrees with tokenizer.json's pipeline on the probe text: not used"
            );
            model.fast = None;
        }
        model.piecewise = model.check_piecewise(&probe);
        model.affixes = model.derive_affixes(&probe);
        if !model.piecewise {
            tracing::info!(
                "tokenizer is not piece-local (e.g. Metaspace prepend \"first\"): encoding whole prompts"
            );
        }
        Ok(model)
    }

    /// Replaces the chat template (vLLM's `--chat-template`).
    pub fn with_chat_template(mut self, source: impl Into<String>) -> Result<Self, TokenizerError> {
        let source = source.into();
        self.template = Some(ChatTemplate::new(&source, &self.config)?);
        self.config.chat_template = Some(source);
        Ok(self)
    }

    /// Sets the segment cache's byte budget (default [`DEFAULT_CACHE_BUDGET`]); empties
    /// the cache.
    pub fn with_cache_budget(mut self, bytes: usize) -> Self {
        self.cache = SegmentCache::new(bytes);
        self
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The tokenizer configuration (chat template, special tokens).
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// How vLLM hands message content to this model's template, if it has one.
    pub fn content_format(&self) -> Option<ContentFormat> {
        self.template.as_ref().map(ChatTemplate::format)
    }

    /// Whether prompts are encoded piece by piece through the segment cache (`false`:
    /// the tokenizer is not piece-local and whole prompts are encoded).
    pub fn is_piecewise(&self) -> bool {
        self.piecewise
    }

    /// The work counters and the cache's size.
    pub fn stats(&self) -> TokenizerStats {
        let (cache_entries, cache_bytes) = self.cache.usage();
        TokenizerStats {
            segments_encoded: self.counters.encoded.load(Ordering::Relaxed),
            segments_cached: self.counters.cached.load(Ordering::Relaxed),
            whole_encodes: self.counters.whole.load(Ordering::Relaxed),
            cache_entries,
            cache_bytes,
        }
    }

    /// The prompt text of a chat: the raw JSON of a request's `messages` rendered with
    /// the chat template as vLLM renders it (vLLM's message preparation and content
    /// format, transformers' template environment, no tools).
    pub fn render_chat(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.template
            .as_ref()
            .ok_or(TokenizerError::NoChatTemplate)?
            .render(messages_json, add_generation_prompt)
    }

    /// The token ids vLLM prefills for a chat request with these `messages`: the
    /// rendered prompt (with the generation prompt) encoded without special tokens.
    pub fn encode_chat(&self, messages_json: &str) -> Result<Vec<u32>, TokenizerError> {
        let prompt = self.render_chat(messages_json, true)?;
        self.encode(&prompt, false)
    }

    /// `text` encoded as `tokenizer.encode(text, add_special_tokens)` would encode it,
    /// through the segment cache when the tokenizer allows.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        if !self.piecewise {
            return self.encode_whole(text, add_special_tokens);
        }
        match (add_special_tokens, &self.affixes) {
            (false, _) => {
                let mut ids = Vec::with_capacity(text.len() / 3);
                self.encode_pieces(text, &mut ids, true)?;
                Ok(ids)
            }
            (true, Some(affixes)) => {
                let mut ids = affixes.prefix.clone();
                self.encode_pieces(text, &mut ids, true)?;
                ids.extend_from_slice(&affixes.suffix);
                Ok(ids)
            }
            (true, None) => self.encode_whole(text, true),
        }
    }

    fn encode_whole(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.counters.whole.fetch_add(1, Ordering::Relaxed);
        self.raw_encode(text, add_special_tokens)
    }

    fn raw_encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        if self.fast.is_some() && !add_special_tokens {
            let mut ids = Vec::with_capacity(text.len() / 3);
            let mut split = |p: Piece<'_>| -> Result<(), TokenizerError> {
                match p {
                    Piece::Token(id) => ids.push(id),
                    Piece::Text(t) => self.encode_text(t, &mut ids)?,
                }
                Ok(())
            };
            match &self.splitter {
                Some(splitter) => splitter.split(text, &mut split)?,
                None => split(Piece::Text(text))?,
            }
            return Ok(ids);
        }
        self.tokenizer
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode {
                message: e.to_string(),
            })
    }

    /// Appends the ids of `text`, a piece without added tokens, encoded without special
    /// tokens: by the fast path when this tokenizer has one, else by the pipeline.
    fn encode_text(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let encode_error = |e: tokenizers::Error| TokenizerError::Encode {
            message: e.to_string(),
        };
        match &self.fast {
            Some(fast) => fast
                .encode(self.tokenizer.get_model(), text, out)
                .map_err(encode_error),
            None => {
                let encoding = self
                    .tokenizer
                    .encode_fast(text, false)
                    .map_err(encode_error)?;
                out.extend_from_slice(encoding.get_ids());
                Ok(())
            }
        }
    }

    /// Appends the ids of `text` (no special tokens added) piece by piece.
    fn encode_pieces(
        &self,
        text: &str,
        out: &mut Vec<u32>,
        use_cache: bool,
    ) -> Result<(), TokenizerError> {
        let mut piece = |p: Piece<'_>| -> Result<(), TokenizerError> {
            match p {
                Piece::Token(id) => out.push(id),
                Piece::Text(t) if !use_cache => self.encode_text(t, out)?,
                Piece::Text(t) => {
                    let key = SegmentCache::key(t);
                    if let Some(ids) = self.cache.get(key, t.len()) {
                        self.counters.cached.fetch_add(1, Ordering::Relaxed);
                        out.extend_from_slice(&ids);
                    } else {
                        let mut ids = Vec::with_capacity(t.len() / 3);
                        self.encode_text(t, &mut ids)?;
                        let ids: Arc<[u32]> = ids.into();
                        self.counters.encoded.fetch_add(1, Ordering::Relaxed);
                        out.extend_from_slice(&ids);
                        self.cache.insert(key, t.len(), ids);
                    }
                }
            }
            Ok(())
        };
        match &self.splitter {
            Some(splitter) => splitter.split(text, piece),
            None if text.is_empty() => Ok(()),
            None => piece(Piece::Text(text)),
        }
    }

    /// The probe text with (up to) three of the tokenizer's special tokens.
    fn probe_text(&self) -> String {
        let mut tokens: Vec<_> = self
            .tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .collect();
        tokens.sort_by_key(|(id, t)| (!t.special, *id));
        let names: Vec<String> = tokens.into_iter().map(|(_, t)| t.content).take(3).collect();
        let name = |i: usize| {
            names
                .get(i % names.len().max(1))
                .cloned()
                .unwrap_or_default()
        };
        PROBE
            .replace("{0}", &name(0))
            .replace("{1}", &name(1))
            .replace("{2}", &name(2))
    }

    /// Whether the fast path gives the pipeline's ids for `probe` and a text of the
    /// pattern's corner cases.
    fn check_fast(&self, probe: &str) -> bool {
        let corners =
            " it's  'S x'll 'Ve \t\r\n  \n\n  3.14159 ½ Ⅻ ſ 'ſ e\u{301} 😀!!\n  \u{3000}x  ";
        [probe, corners].into_iter().all(|text| {
            let fast = self.raw_encode(text, false);
            let slow = self
                .tokenizer
                .encode_fast(text, false)
                .map(|e| e.get_ids().to_vec());
            matches!((fast, slow), (Ok(f), Ok(s)) if f == s)
        })
    }

    fn check_piecewise(&self, probe: &str) -> bool {
        let mut pieces = Vec::new();
        let whole = self.raw_encode(probe, false);
        match (whole, self.encode_pieces(probe, &mut pieces, false)) {
            (Ok(whole), Ok(())) => whole == pieces,
            _ => false,
        }
    }

    /// What `encode(_, true)` adds around `encode(_, false)`, checked on two texts.
    fn derive_affixes(&self, probe: &str) -> Option<Affixes> {
        let plain = self.raw_encode("Hello", false).ok()?;
        let special = self.raw_encode("Hello", true).ok()?;
        let at = (0..=special.len().checked_sub(plain.len())?)
            .find(|&i| special[i..i + plain.len()] == plain[..])?;
        let affixes = Affixes {
            prefix: special[..at].to_vec(),
            suffix: special[at + plain.len()..].to_vec(),
        };
        let mut expected = affixes.prefix.clone();
        expected.extend(self.raw_encode(probe, false).ok()?);
        expected.extend_from_slice(&affixes.suffix);
        (self.raw_encode(probe, true).ok()? == expected).then_some(affixes)
    }
}
