//! A fast path for the most common byte-level BPE tokenizers (Llama 3 and its family):
//! their pre-tokenizer's split pattern matched by hand instead of by a backtracking
//! regex, then the tokenizer's own BPE model.
//!
//! `tokenizers` pre-tokenizes with `fancy-regex`, because the pattern's `\s+(?!\S)`
//! needs a look-ahead, and tracks every byte's offsets through the byte-level mapping:
//! about 0.6–0.8 µs per token, most of a routing decision's time. The pattern is
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! and its leftmost-first alternation has a simple deterministic reading (each
//! alternative's backtracking resolved by hand in [`FastBpe::split`]). The character
//! classes are the `regex` crate's own Unicode tables (through `regex-syntax`, the
//! version `fancy-regex` uses), so letters, numbers and white space are what the regex
//! says they are. Each piece's bytes are then mapped to the byte-level alphabet and
//! given to the tokenizer's BPE model, as the pipeline does; the piece's ids are kept in
//! a word cache of this module's own (the model's `tokenize` builds a `String` per token
//! even when its own cache hits).
//!
//! Used only when the tokenizer is exactly that pipeline (no normalizer, this split
//! pattern with `Isolated`, byte-level without its own regex, a BPE model, no added token
//! matched after normalization), and when it gives the pipeline's ids on a probe text at
//! load; otherwise the `tokenizers` pipeline encodes. The tests compare the two on
//! random text.

use std::collections::HashMap;
use std::sync::{LazyLock, PoisonError, RwLock};

use foldhash::fast::RandomState;

use regex_syntax::hir::{Class, ClassUnicode, HirKind};
use serde_json::{Value, json};
use tokenizers::models::ModelWrapper;
use tokenizers::{Model, Tokenizer};

/// The Llama 3 split pattern.
const PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The longest run of digits one piece takes (`\p{N}{1,3}`).
const MAX_DIGITS: usize = 3;

/// A Unicode class as sorted ranges, with an ASCII table in front.
struct CharClass {
    ascii: [bool; 128],
    ranges: Vec<(char, char)>,
}

impl CharClass {
    fn new(pattern: &str) -> Self {
        let ranges: Vec<(char, char)> = match regex_syntax::parse(pattern).map(|h| h.into_kind()) {
            Ok(HirKind::Class(Class::Unicode(class))) => ranges_of(&class),
            // The three patterns below are fixed and valid: unreachable in practice, and an
            // empty class only disables the fast path (the load probe fails).
            _ => Vec::new(),
        };
        let mut ascii = [false; 128];
        for (c, slot) in ascii.iter_mut().enumerate() {
            let c = c as u8 as char;
            *slot = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        }
        Self { ascii, ranges }
    }

    fn contains(&self, c: char) -> bool {
        if c.is_ascii() {
            return self.ascii[c as usize];
        }
        self.ranges
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }
}

fn ranges_of(class: &ClassUnicode) -> Vec<(char, char)> {
    class
        .ranges()
        .iter()
        .map(|r| (r.start(), r.end()))
        .collect()
}

struct Classes {
    letter: CharClass,
    number: CharClass,
    space: CharClass,
}

static CLASSES: LazyLock<Classes> = LazyLock::new(|| Classes {
    letter: CharClass::new(r"\p{L}"),
    number: CharClass::new(r"\p{N}"),
    space: CharClass::new(r"\s"),
});

/// GPT-2's byte-to-character map of the byte-level pre-tokenizer, as UTF-8.
static BYTE_CHARS: LazyLock<[String; 256]> = LazyLock::new(|| {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    std::array::from_fn(|b| {
        let b = b as u8;
        let code = if printable(b) {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        char::from_u32(code).map(String::from).unwrap_or_default()
    })
});

/// Pieces the word cache keeps (then it stops adding, as the BPE model's own cache
/// does). Words of a few bytes and ids: about 4 MiB when full; at most about 13 MiB
/// (every piece 32 bytes).
const WORD_CACHE_CAPACITY: usize = 65_536;
/// Pieces longer than this are not cached (long runs of one class, seldom repeated).
const WORD_CACHE_MAX_LEN: usize = 32;

/// The fast path of one tokenizer: see the [module](self).
#[derive(Debug, Default)]
pub(crate) struct FastBpe {
    /// Piece (as in the text, before the byte-level mapping) → its ids.
    words: RwLock<HashMap<Box<str>, Box<[u32]>, RandomState>>,
}

impl FastBpe {
    /// The fast path for `tokenizer` when its pipeline is the one this module reads by
    /// hand; `None` otherwise.
    pub(crate) fn detect(tokenizer: &Tokenizer) -> Option<Self> {
        if tokenizer.get_normalizer().is_some() {
            return None;
        }
        let ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
            return None;
        };
        if bpe.dropout.is_some_and(|p| p > 0.0)
            || bpe.continuing_subword_prefix.is_some()
            || bpe.end_of_word_suffix.is_some()
        {
            return None;
        }
        // Added tokens matched after normalization are split by the pipeline only.
        if tokenizer
            .get_added_tokens_decoder()
            .values()
            .any(|t| t.normalized && !t.content.is_empty())
        {
            return None;
        }
        let pre = serde_json::to_value(tokenizer.get_pre_tokenizer()?).ok()?;
        let expected = json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
            ],
        });
        same_pipeline(&pre, &expected).then(Self::default)
    }

    /// Appends the ids of `text` (no added tokens in it) to `out`, as the pipeline
    /// encodes it without special tokens.
    pub(crate) fn encode(
        &self,
        model: &ModelWrapper,
        text: &str,
        out: &mut Vec<u32>,
    ) -> tokenizers::Result<()> {
        let mut mapped = String::new();
        let mut start = 0;
        let words = self.words.read().unwrap_or_else(PoisonError::into_inner);
        // New pieces: their bytes in `text` and their ids in `out`.
        let mut new: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> = Vec::new();
        while start < text.len() {
            let end = self.split(text, start);
            let piece = &text[start..end];
            if let Some(ids) = words.get(piece) {
                out.extend_from_slice(ids);
            } else {
                mapped.clear();
                for &b in piece.as_bytes() {
                    mapped.push_str(&BYTE_CHARS[usize::from(b)]);
                }
                let from = out.len();
                out.extend(model.tokenize(&mapped)?.into_iter().map(|t| t.id));
                if piece.len() <= WORD_CACHE_MAX_LEN {
                    new.push((start..end, from..out.len()));
                }
            }
            start = end;
        }
        let room = WORD_CACHE_CAPACITY.saturating_sub(words.len());
        drop(words);
        if !new.is_empty() && room > 0 {
            let mut words = self.words.write().unwrap_or_else(PoisonError::into_inner);
            for (piece, ids) in new.into_iter().take(room) {
                let piece = &text[piece];
                if !words.contains_key(piece) {
                    words.insert(piece.into(), out[ids].into());
                }
            }
        }
        Ok(())
    }

    /// The end of the piece of `s` that starts at byte `i` (< `s.len()`, on a char
    /// boundary): the pattern's leftmost-first match there.
    pub(crate) fn split(&self, s: &str, i: usize) -> usize {
        let classes = &*CLASSES;
        let letter = |c: char| classes.letter.contains(c);
        let number = |c: char| classes.number.contains(c);
        let space = |c: char| classes.space.contains(c);
        let at = |j: usize| s.get(j..).and_then(|t| t.chars().next());
        // The end of the run of chars matching `f` from byte `j`.
        let run = |mut j: usize, f: &dyn Fn(char) -> bool| {
            while let Some(c) = at(j).filter(|&c| f(c)) {
                j += c.len_utf8();
            }
            j
        };
        let Some(c) = at(i) else {
            return s.len();
        };
        let next = i + c.len_utf8();
        // (?i:'s|'t|'re|'ve|'m|'ll|'d): `ſ` folds to `s`.
        if c == '\'' {
            let lower = |j: usize| {
                at(j).map(|c| {
                    if c == 'ſ' {
                        's'
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
            };
            match lower(next) {
                Some('s' | 't' | 'm' | 'd') => return next + at(next).map_or(0, char::len_utf8),
                Some(first @ ('r' | 'v' | 'l')) => {
                    let second = if first == 'l' { 'l' } else { 'e' };
                    if lower(next + 1) == Some(second) {
                        return next + 2;
                    }
                }
                _ => {}
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if letter(c) {
            return run(next, &letter);
        }
        if c != '\r' && c != '\n' && !number(c) && at(next).is_some_and(letter) {
            return run(next, &letter);
        }
        // \p{N}{1,3}
        if number(c) {
            let mut end = next;
            for _ in 1..MAX_DIGITS {
                match at(end).filter(|&c| number(c)) {
                    Some(d) => end += d.len_utf8(),
                    None => break,
                }
            }
            return end;
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        let other = |c: char| !space(c) && !letter(c) && !number(c);
        let body = if c == ' ' { next } else { i };
        if at(body).is_some_and(other) {
            let end = run(body, &other);
            return run(end, &|c| c == '\r' || c == '\n');
        }
        // c is white space here (every other char matched above).
        let end = run(i, &space);
        // \s*[\r\n]+: up to the run's last line break.
        if let Some(last) = s[i..end].rfind(['\r', '\n']) {
            return i + last + 1;
        }
        // \s+(?!\S): the whole run at the end of the text, else all but its last char.
        if end == s.len() {
            return end;
        }
        let last = s[i..end].chars().next_back().map_or(0, char::len_utf8);
        if end - last > i {
            return end - last;
        }
        // \s+
        end
    }
}

/// Whether a pre-tokenizer's JSON is `expected`, ignoring `trim_offsets` (offsets only).
fn same_pipeline(actual: &Value, expected: &Value) -> bool {
    let mut actual = actual.clone();
    if let Some(steps) = actual
        .get_mut("pretokenizers")
        .and_then(Value::as_array_mut)
    {
        for step in steps {
            if let Some(map) = step.as_object_mut() {
                map.remove("trim_offsets");
            }
        }
    }
    actual == *expected
}

#[cfg(test)]
mod tests;
