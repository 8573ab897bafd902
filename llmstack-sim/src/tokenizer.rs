//! The engine's tokenizer: a deterministic pseudo-tokenizer with a Llama-3-style chat
//! template, or a model's own Hugging Face tokenizer.
//!
//! Without a model's files (our machines have none by default), everything a router
//! observes about tokens must still behave like a real model: prompt lengths of about four
//! characters per token, stable ids, and conversations whose turns extend the same token
//! prefix. The scheme, fixed and documented so that tests and other tools can rely on it:
//!
//! * ids `0..256` are byte tokens (the byte fallback for anything below);
//! * a *word piece* is an optional single leading space followed by one to four lowercase
//!   letters `[a-z]`; its id is `256 + space·475254 + offset(len) + base26(letters)` with
//!   `offset = 0, 26, 702, 18278` for lengths 1–4. So `" the"` and `" that"` are one token
//!   each and `"Hello"` is `H`, `ello`;
//! * a *number piece* is one to three digits (Llama 3 splits numbers the same way): id
//!   `950764 + offset(len) + value` with `offset = 0, 10, 110`;
//! * special tokens sit above, at Llama 3's offsets from [`BOS`] (`<|begin_of_text|>`,
//!   `<|end_of_text|>` +1, `<|start_header_id|>` +6, `<|end_header_id|>` +7, `<|eot_id|>`
//!   +9); the vocabulary size is [`VOCAB_SIZE`].
//!
//! Encoding is greedy left to right and decoding is exact: `decode(encode(s)) == s` for any
//! UTF-8 string, so `/detokenize` round-trips `/tokenize`. English prose averages close to
//! four characters per token, as with Llama 3's tokenizer.
//!
//! An engine started with `--tokenizer DIR` uses a model's Hugging Face files instead:
//! [`Tokenizer`] is that choice, held in the engine's configuration and handed to every
//! place that tokenizes, renders a chat or detokenizes. The free functions here are the
//! pseudo-tokenizer and stay the default.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use llmstack_tokenize::{ModelTokenizer, TokenizerError};

mod hf;

use hf::HfTokenizer;

const LETTERS: u32 = 26;
const LETTER_OFFSET: [u32; 5] = [0, 0, 26, 26 + 676, 26 + 676 + 17_576];
/// Word pieces per value of the leading-space flag: 26 + 26² + 26³ + 26⁴.
const WORDS_PER_SPACE_FLAG: u32 = 26 + 676 + 17_576 + 456_976;
const WORD_BASE: u32 = 256;
const NUMBER_BASE: u32 = WORD_BASE + 2 * WORDS_PER_SPACE_FLAG;
const NUMBER_OFFSET: [u32; 4] = [0, 0, 10, 110];
const NUMBER_END: u32 = NUMBER_BASE + 1110;

/// `<|begin_of_text|>`, prepended to completion prompts and chat renderings.
pub const BOS: u32 = 951_936;
/// `<|end_of_text|>`.
pub const END_OF_TEXT: u32 = BOS + 1;
/// `<|start_header_id|>`.
pub const START_HEADER: u32 = BOS + 6;
/// `<|end_header_id|>`.
pub const END_HEADER: u32 = BOS + 7;
/// `<|eot_id|>`: ends a chat turn; also the EOS token the simulated model emits.
pub const EOT: u32 = BOS + 9;
/// Size of the vocabulary (256 special-token slots above [`BOS`]); larger ids are rejected.
pub const VOCAB_SIZE: u32 = BOS + 256;

const SPECIALS: [(u32, &str); 5] = [
    (BOS, "<|begin_of_text|>"),
    (END_OF_TEXT, "<|end_of_text|>"),
    (START_HEADER, "<|start_header_id|>"),
    (END_HEADER, "<|end_header_id|>"),
    (EOT, "<|eot_id|>"),
];

/// Length of the run of bytes at the start of `bytes` satisfying `pred`, at most `max`.
fn run(bytes: &[u8], max: usize, pred: impl Fn(u8) -> bool) -> usize {
    bytes.iter().take(max).take_while(|&&b| pred(b)).count()
}

/// Appends the token ids of `text` to `out` (no special tokens added).
pub fn encode_into(text: &str, out: &mut Vec<u32>) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() / 4 + 1);
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let space = rest[0] == b' ' && rest.get(1).is_some_and(u8::is_ascii_lowercase);
        let word = &rest[usize::from(space)..];
        let letters = run(word, 4, |b| b.is_ascii_lowercase());
        if letters > 0 {
            let value = word[..letters]
                .iter()
                .fold(0, |v, &b| v * LETTERS + u32::from(b - b'a'));
            out.push(
                WORD_BASE
                    + u32::from(space) * WORDS_PER_SPACE_FLAG
                    + LETTER_OFFSET[letters]
                    + value,
            );
            i += usize::from(space) + letters;
            continue;
        }
        let digits = run(rest, 3, |b| b.is_ascii_digit());
        if digits > 0 {
            let value = rest[..digits]
                .iter()
                .fold(0, |v, &b| v * 10 + u32::from(b - b'0'));
            out.push(NUMBER_BASE + NUMBER_OFFSET[digits] + value);
            i += digits;
            continue;
        }
        out.push(u32::from(rest[0]));
        i += 1;
    }
}

/// The token ids of `text`, with `<|begin_of_text|>` first when `add_special_tokens`.
pub fn encode(text: &str, add_special_tokens: bool) -> Vec<u32> {
    let mut out = Vec::new();
    if add_special_tokens {
        out.push(BOS);
    }
    encode_into(text, &mut out);
    out
}

/// Whether `id` is a token of the vocabulary.
pub fn is_valid(id: u32) -> bool {
    id < VOCAB_SIZE
}

/// Writes the `len` base-`radix` digits of `v` (most significant first) using `digit`.
fn push_digits(mut v: u32, len: usize, radix: u32, first: u8, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    for slot in buf[..len].iter_mut().rev() {
        *slot = first + (v % radix) as u8;
        v /= radix;
    }
    out.extend_from_slice(&buf[..len]);
}

/// The largest `len` with `offsets[len] <= v` (offsets ascending from index 1).
fn length_for(v: u32, offsets: &[u32]) -> usize {
    (1..offsets.len())
        .rev()
        .find(|&l| v >= offsets[l])
        .unwrap_or(1)
}

/// Appends the bytes token `id` decodes to. Ids that are neither bytes, pieces nor known
/// special tokens decode to `<|reserved_special_token_N|>` as in Llama 3.
fn decode_token_into(id: u32, out: &mut Vec<u8>) {
    if id < WORD_BASE {
        out.push(id as u8);
    } else if id < NUMBER_BASE {
        let rel = id - WORD_BASE;
        if rel >= WORDS_PER_SPACE_FLAG {
            out.push(b' ');
        }
        let v = rel % WORDS_PER_SPACE_FLAG;
        let len = length_for(v, &LETTER_OFFSET);
        push_digits(v - LETTER_OFFSET[len], len, LETTERS, b'a', out);
    } else if id < NUMBER_END {
        let v = id - NUMBER_BASE;
        let len = length_for(v, &NUMBER_OFFSET);
        push_digits(v - NUMBER_OFFSET[len], len, 10, b'0', out);
    } else if let Some((_, s)) = SPECIALS.iter().find(|(sid, _)| *sid == id) {
        out.extend_from_slice(s.as_bytes());
    } else {
        let mut s = String::new();
        let _infallible = write!(s, "<|reserved_special_token_{}|>", id.saturating_sub(BOS));
        out.extend_from_slice(s.as_bytes());
    }
}

/// Decodes token ids to text; invalid UTF-8 from byte tokens becomes U+FFFD.
/// `skip_special_tokens` drops special tokens as vLLM does when generating text.
pub fn decode(ids: &[u32], skip_special_tokens: bool) -> String {
    let mut bytes = Vec::with_capacity(ids.len() * 4);
    for &id in ids {
        if skip_special_tokens && id >= NUMBER_END {
            continue;
        }
        decode_token_into(id, &mut bytes);
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// The text of one token, as streamed in an SSE delta (special tokens decode to "").
/// Generated words are static strings: no allocation per streamed token.
pub fn token_text(id: u32) -> std::borrow::Cow<'static, str> {
    static WORDS: std::sync::OnceLock<Vec<(u32, &'static str)>> = std::sync::OnceLock::new();
    let words = WORDS.get_or_init(|| {
        let mut v: Vec<(u32, &'static str)> = OUTPUT_WORDS
            .iter()
            .filter_map(|w| match encode(w, false)[..] {
                [id] => Some((id, *w)),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v
    });
    if let Ok(i) = words.binary_search_by_key(&id, |(t, _)| *t) {
        return std::borrow::Cow::Borrowed(words[i].1);
    }
    if id >= NUMBER_END {
        return std::borrow::Cow::Borrowed("");
    }
    std::borrow::Cow::Owned(decode(&[id], true))
}

/// One chat message as the template sees it: a role and its text.
#[derive(Debug, Clone, Copy)]
pub struct ChatTurn<'a> {
    /// `system`, `user`, `assistant`, `tool`…
    pub role: &'a str,
    /// The message text (parts already joined).
    pub content: &'a str,
}

/// Renders a conversation as Llama 3 does:
/// `<|begin_of_text|>` then per message `<|start_header_id|>role<|end_header_id|>\n\n`
/// + content + `<|eot_id|>`, and the assistant header when `add_generation_prompt`.
///
/// Each turn is tokenized on its own, so a conversation extended by new turns keeps the
/// exact token prefix of the shorter one, as with a real model.
pub fn render_chat<'a>(
    turns: impl IntoIterator<Item = ChatTurn<'a>>,
    add_generation_prompt: bool,
) -> Vec<u32> {
    let mut out = vec![BOS];
    for turn in turns {
        push_header(turn.role, &mut out);
        encode_into(turn.content, &mut out);
        out.push(EOT);
    }
    if add_generation_prompt {
        push_header("assistant", &mut out);
    }
    out
}

fn push_header(role: &str, out: &mut Vec<u32>) {
    out.push(START_HEADER);
    encode_into(role, out);
    out.push(END_HEADER);
    encode_into("\n\n", out);
}

/// Words the simulated model "says": each is a single word piece (a space and up to four
/// letters), so generated text decodes token by token without merging.
pub(crate) const OUTPUT_WORDS: [&str; 64] = [
    " the", " of", " and", " to", " in", " is", " it", " you", " that", " was", " for", " on",
    " are", " as", " with", " his", " they", " at", " be", " this", " have", " from", " or",
    " one", " had", " by", " word", " but", " not", " what", " all", " were", " we", " when",
    " your", " can", " said", " use", " an", " each", " she", " do", " how", " if", " will", " up",
    " many", " out", " then", " them", " so", " some", " her", " make", " like", " him", " into",
    " time", " has", " look", " two", " more", " go", " see",
];

/// Token ids of [`OUTPUT_WORDS`] whose text is one token (" the" etc.); the generator
/// draws only from these so every generated token is a whole word piece.
pub(crate) fn output_vocab() -> Vec<u32> {
    OUTPUT_WORDS
        .iter()
        .filter_map(|w| {
            let ids = encode(w, false);
            (ids.len() == 1).then(|| ids[0])
        })
        .collect()
}

/// The tokenizer of an engine: the built-in pseudo-tokenizer (the default: this module's
/// functions), or a model's Hugging Face `tokenizer.json` and `tokenizer_config.json`
/// (`--tokenizer DIR`), which tokenize prompts and render chats exactly as vLLM and the
/// router's `llmstack-tokenize` do, so prompt token ids, KV-event `token_ids` and block
/// hashes are the ones the router computes.
///
/// With a real tokenizer the simulated model says ordinary words of its vocabulary (common
/// English words that are one token each) and ends with the
/// configuration's `eos_token` (else `<|eot_id|>`, `<|end_of_text|>`, `<|im_end|>`,
/// `<|endoftext|>` or `</s>`, whichever the vocabulary has).
///
/// Cheap to clone (one `Arc`); two values are equal when both are the pseudo-tokenizer or
/// both share one load.
#[derive(Clone, Default)]
pub struct Tokenizer(Choice);

#[derive(Clone, Default)]
enum Choice {
    #[default]
    Pseudo,
    Hf(Arc<HfTokenizer>),
}

/// Incremental detokenization of one choice's generated tokens: each token's text as it
/// becomes complete, so the pieces concatenate to the decoded text (special tokens
/// skipped, as vLLM does by default). With a real tokenizer this is Hugging Face's
/// `DecodeStream`, vLLM's own incremental detokenizer: a token that ends inside a UTF-8
/// sequence (or that a decoder would render differently once followed) yields nothing
/// until its text is settled.
#[derive(Debug, Default)]
pub(crate) struct Detokenizer {
    /// Tokens not yet settled into `prefix` (Hugging Face only).
    ids: Vec<u32>,
    /// The text of `ids[..prefix_index]`.
    prefix: String,
    prefix_index: usize,
}

// === impl Tokenizer ===

impl Tokenizer {
    /// The built-in pseudo-tokenizer (the default).
    pub fn pseudo() -> Self {
        Self(Choice::Pseudo)
    }

    /// Loads a model's tokenizer from `dir`: `tokenizer.json` (required),
    /// `tokenizer_config.json` (the chat template and special tokens; without it chat
    /// requests are rejected, as vLLM rejects them for a model without a template) and
    /// `chat_template.jinja` when present.
    ///
    /// Fails when `dir/tokenizer.json` cannot be read (the error names that file), when
    /// a file is not what it should be, when the chat template does not compile, or when
    /// no EOS token can be found. Costs a parse of `tokenizer.json` (the slow part with a
    /// large vocabulary) and a few probing encodes.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        HfTokenizer::from_dir(dir.as_ref()).map(|t| Self(Choice::Hf(Arc::new(t))))
    }

    /// A loaded model tokenizer; fails only when it has no EOS token (see
    /// [`Tokenizer::from_dir`]).
    pub fn from_model(model: ModelTokenizer) -> Result<Self, TokenizerError> {
        HfTokenizer::new(model, None).map(|t| Self(Choice::Hf(Arc::new(t))))
    }

    /// The model's tokenizer; `None` for the pseudo-tokenizer.
    pub fn model(&self) -> Option<&ModelTokenizer> {
        match &self.0 {
            Choice::Pseudo => None,
            Choice::Hf(hf) => Some(hf.model()),
        }
    }

    /// The token the simulated model ends its answers with ([`EOT`] for the
    /// pseudo-tokenizer).
    pub fn eos_token_id(&self) -> u32 {
        match &self.0 {
            Choice::Pseudo => EOT,
            Choice::Hf(hf) => hf.eos(),
        }
    }

    /// The tokens the simulated model draws its answers from, each one ordinary word.
    pub fn output_token_ids(&self) -> Vec<u32> {
        match &self.0 {
            Choice::Pseudo => output_vocab(),
            Choice::Hf(hf) => hf.output().to_vec(),
        }
    }

    /// `text` as token ids, with the tokenizer's special tokens (BOS) when
    /// `add_special_tokens`. The pseudo-tokenizer never fails.
    pub(crate) fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        match &self.0 {
            Choice::Pseudo => Ok(encode(text, add_special_tokens)),
            Choice::Hf(hf) => hf.model().encode(text, add_special_tokens),
        }
    }

    /// The text of `ids` (special tokens dropped when `skip_special_tokens`).
    pub(crate) fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        match &self.0 {
            Choice::Pseudo => decode(ids, skip_special_tokens),
            Choice::Hf(hf) => hf.decode(ids, skip_special_tokens),
        }
    }

    /// The token's string as `/tokenize` reports it: its text for the pseudo-tokenizer,
    /// the vocabulary entry (`convert_ids_to_tokens`, e.g. `Ġthe`) for a real one.
    pub(crate) fn token_str(&self, id: u32) -> String {
        match &self.0 {
            Choice::Pseudo => decode(&[id], false),
            Choice::Hf(hf) => hf.token_str(id),
        }
    }

    /// Whether `id` is a token of the vocabulary (vLLM rejects prompts with larger ids).
    pub(crate) fn is_valid(&self, id: u32) -> bool {
        match &self.0 {
            Choice::Pseudo => is_valid(id),
            Choice::Hf(hf) => id <= hf.max_token_id(),
        }
    }
}

impl PartialEq for Tokenizer {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Choice::Pseudo, Choice::Pseudo) => true,
            (Choice::Hf(a), Choice::Hf(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Choice::Pseudo => f.write_str("Tokenizer::Pseudo"),
            Choice::Hf(hf) => f.debug_tuple("Tokenizer::Hf").field(hf).finish(),
        }
    }
}

// === impl Detokenizer ===

impl Detokenizer {
    /// Appends to `out` the text token `id` settles (often its whole text, sometimes
    /// nothing yet, sometimes held-back text of earlier tokens too).
    pub(crate) fn push(&mut self, tokenizer: &Tokenizer, id: u32, out: &mut String) {
        match &tokenizer.0 {
            Choice::Pseudo => out.push_str(&token_text(id)),
            Choice::Hf(hf) => hf.step(self, id, out),
        }
    }
}

#[cfg(test)]
mod tests;
