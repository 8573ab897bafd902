//! A model's Hugging Face tokenizer as the simulator uses it: loaded once per engine
//! configuration, plus what the simulated model says with it (ordinary words of the
//! vocabulary) and the token it stops with.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use llmstack_tokenize::{CONFIG_FILE, ModelTokenizer, TOKENIZER_FILE, TokenizerError};

use super::{Detokenizer, OUTPUT_WORDS};

/// End-of-sequence tokens tried in order when `tokenizer_config.json` names none (or
/// names one the vocabulary lacks): Llama 3 instruct and base, ChatML, GPT-2/Qwen,
/// SentencePiece models.
const EOS_NAMES: [&str; 5] = [
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "</s>",
];

/// Fewer single-token words than this and the model says the tokens of [`FALLBACK_TEXT`].
pub(super) const MIN_OUTPUT_WORDS: usize = 8;

/// What the simulated model draws its answer tokens from when its vocabulary has too few
/// of the output words as single tokens (a tiny or unusual vocabulary).
const FALLBACK_TEXT: &str = "The model reads the prompt and then it writes an answer one word \
                             at a time, so that each user sees the first token soon.";

/// One model's tokenizer with the simulator's additions.
pub(crate) struct HfTokenizer {
    model: ModelTokenizer,
    /// Where it was loaded from (for `Debug`).
    dir: Option<PathBuf>,
    eos: u32,
    /// Answer tokens, each one ordinary word (with its leading space).
    output: Vec<u32>,
    /// The largest id of the vocabulary, added tokens included.
    max_token_id: u32,
}

// === impl HfTokenizer ===

impl HfTokenizer {
    /// Loads `dir` (see [`super::Tokenizer::from_dir`]).
    pub(super) fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let file = dir.join(TOKENIZER_FILE);
        // Names the file and why it cannot be read (absent, not a directory, no access).
        if let Err(source) = std::fs::metadata(&file) {
            return Err(TokenizerError::Io { path: file, source });
        }
        let config = dir.join(CONFIG_FILE);
        if !config.is_file() {
            tracing::warn!(
                file = %config.display(),
                "no tokenizer configuration: the model has no chat template, chat requests will be rejected"
            );
        }
        let model = ModelTokenizer::from_dir(dir)?;
        Self::new(model, Some(dir.to_path_buf()))
    }

    /// Derives the EOS token, the answer tokens and the vocabulary's bound.
    pub(super) fn new(model: ModelTokenizer, dir: Option<PathBuf>) -> Result<Self, TokenizerError> {
        let tokenizer = model.tokenizer();
        let Some(eos) = eos_id(&model) else {
            let message = format!(
                "no end-of-sequence token: `eos_token` is not set (or not in the vocabulary) and the vocabulary has none of {}",
                EOS_NAMES.join(", ")
            );
            return Err(match &dir {
                Some(dir) => TokenizerError::InvalidFile {
                    path: dir.join(CONFIG_FILE),
                    message,
                },
                None => TokenizerError::Tokenizer {
                    path: None,
                    message,
                },
            });
        };
        let special: HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter_map(|(id, t)| t.special.then_some(id))
            .collect();
        let max_token_id = tokenizer
            .get_vocab(true)
            .into_values()
            .max()
            .unwrap_or_default()
            .max(eos);
        let mut hf = Self {
            model,
            dir,
            eos,
            output: Vec::new(),
            max_token_id,
        };
        hf.output = hf.output_words(&special);
        if hf.output.is_empty() {
            return Err(TokenizerError::Tokenizer {
                path: hf.dir.as_ref().map(|d| d.join(TOKENIZER_FILE)),
                message:
                    "no ordinary token to generate: English text encodes to special tokens only"
                        .into(),
            });
        }
        tracing::info!(
            dir = ?hf.dir,
            vocab = u64::from(hf.max_token_id) + 1,
            eos = hf.eos,
            output_words = hf.output.len(),
            "tokenizer loaded"
        );
        Ok(hf)
    }

    pub(super) fn model(&self) -> &ModelTokenizer {
        &self.model
    }

    pub(super) fn eos(&self) -> u32 {
        self.eos
    }

    pub(super) fn output(&self) -> &[u32] {
        &self.output
    }

    pub(super) fn max_token_id(&self) -> u32 {
        self.max_token_id
    }

    /// `tokenizer.decode(ids, skip_special_tokens)`; a decoder error (not seen with real
    /// tokenizers) gives "".
    pub(super) fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        self.model
            .tokenizer()
            .decode(ids, skip_special_tokens)
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "decode failed");
                String::new()
            })
    }

    /// The vocabulary entry of `id` ("" when there is none).
    pub(super) fn token_str(&self, id: u32) -> String {
        self.model.tokenizer().id_to_token(id).unwrap_or_default()
    }

    /// One step of Hugging Face's `DecodeStream` (skipping special tokens), the state
    /// kept in `d` so that it outlives any borrow of the tokenizer.
    pub(super) fn step(&self, d: &mut Detokenizer, id: u32, out: &mut String) {
        let result = tokenizers::step_decode_stream(
            &**self.model.tokenizer(),
            vec![id],
            true,
            &mut d.ids,
            &mut d.prefix,
            &mut d.prefix_index,
        );
        match result {
            Ok(Some(text)) => out.push_str(&text),
            Ok(None) => {}
            Err(e) => {
                // The decoded text stopped extending its prefix (a decoder that rewrites
                // earlier text): start over from this token, as vLLM does.
                tracing::debug!(error = %e, "incremental detokenization restarted");
                d.ids.clear();
                d.prefix.clear();
                d.prefix_index = 0;
                out.push_str(&self.decode(&[id], true));
            }
        }
    }

    /// The ids of the output words that are one token each and decode as a separate
    /// word after another (so `" the"` → `Ġthe`, or SentencePiece's `▁the`); too few,
    /// and the ordinary tokens of [`FALLBACK_TEXT`].
    fn output_words(&self, special: &HashSet<u32>) -> Vec<u32> {
        let single = |text: &str| match self.model.encode(text, false).ok()?.as_slice() {
            [id] if !special.contains(id) => Some(*id),
            _ => None,
        };
        let mut ids: Vec<u32> = Vec::with_capacity(OUTPUT_WORDS.len());
        for word in OUTPUT_WORDS {
            let Some(id) = single(word).or_else(|| single(word.trim_start())) else {
                continue;
            };
            let alone = self.decode(&[id], true);
            if self.decode(&[id, id], true) == format!("{alone}{word}") && !ids.contains(&id) {
                ids.push(id);
            }
        }
        if ids.len() >= MIN_OUTPUT_WORDS {
            return ids;
        }
        let mut ids = Vec::new();
        for id in self.model.encode(FALLBACK_TEXT, false).unwrap_or_default() {
            if !special.contains(&id) && !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("dir", &self.dir)
            .field("vocab", &(u64::from(self.max_token_id) + 1))
            .field("eos", &self.eos)
            .field("output_words", &self.output.len())
            .finish_non_exhaustive()
    }
}

/// The configuration's `eos_token` when the vocabulary has it, else the first of
/// [`EOS_NAMES`] it has.
fn eos_id(model: &ModelTokenizer) -> Option<u32> {
    let tokenizer = model.tokenizer();
    model
        .config()
        .eos_token
        .as_deref()
        .into_iter()
        .chain(EOS_NAMES)
        .find_map(|name| tokenizer.token_to_id(name))
}
