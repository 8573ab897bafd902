//! Splitting a prompt where Hugging Face splits it, and the cache of encoded pieces.
//!
//! `tokenizers` encodes a text in two steps: it first cuts the text at its added tokens
//! that match on the raw text (`normalized: false`: every special token of a chat
//! model), then normalizes, pre-tokenizes and encodes each piece between them on its own.
//! [`AddedTokenSplitter`] makes the same first cut (the same Aho-Corasick leftmost-longest
//! search, with the tokens' `single_word`, `lstrip` and `rstrip` rules), so the encoding
//! of a text is the added tokens' ids and the encodings of its pieces, each of which can
//! be cached: a conversation's earlier turns are the same pieces in every request.
//!
//! The one thing that breaks this is a pre-tokenizer that looks at where a piece sits in
//! the whole text (Metaspace with `prepend_scheme: "first"`); the model tokenizer probes
//! for it at load and encodes whole texts instead.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use tokenizers::Tokenizer;

/// A piece of a text: a run of text, or an added token matched on the raw text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'t> {
    Text(&'t str),
    Token(u32),
}

#[derive(Debug, Clone, Copy)]
struct Rules {
    id: u32,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
}

/// Finds a tokenizer's raw-text added tokens in a text, as its `AddedVocabulary` does.
#[derive(Debug)]
pub(crate) struct AddedTokenSplitter {
    ac: AhoCorasick,
    rules: Vec<Rules>,
}

impl AddedTokenSplitter {
    /// The splitter of `tokenizer`'s added tokens that match before normalization;
    /// `None` when it has none.
    pub(crate) fn new(tokenizer: &Tokenizer) -> Option<Self> {
        let skip_special = tokenizer.get_encode_special_tokens();
        let mut tokens: Vec<_> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| !(t.normalized || t.content.is_empty() || (skip_special && t.special)))
            .collect();
        if tokens.is_empty() {
            return None;
        }
        tokens.sort_unstable_by_key(|(id, _)| *id);
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|(_, t)| t.content.as_str()))
            .ok()?;
        let rules = tokens
            .iter()
            .map(|(id, t)| Rules {
                id: *id,
                single_word: t.single_word,
                lstrip: t.lstrip,
                rstrip: t.rstrip,
            })
            .collect();
        Some(Self { ac, rules })
    }

    /// Calls `f` with each piece of `text` in order (`tokenizers`' `find_matches`).
    pub(crate) fn split<'t, E>(
        &self,
        text: &'t str,
        mut f: impl FnMut(Piece<'t>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut done = 0;
        for m in self.ac.find_iter(text) {
            let rules = self.rules[m.pattern().as_usize()];
            let (mut start, mut stop) = (m.start(), m.end());
            if rules.single_word {
                let free_left =
                    start == 0 || !text[..start].chars().next_back().is_some_and(is_word);
                let free_right =
                    stop == text.len() || !text[stop..].chars().next().is_some_and(is_word);
                if !free_left || !free_right {
                    continue;
                }
            }
            if rules.lstrip {
                let trimmed = text[..start].trim_end_matches(char::is_whitespace).len();
                start = trimmed.max(done);
            }
            if rules.rstrip {
                stop +=
                    text[stop..].len() - text[stop..].trim_start_matches(char::is_whitespace).len();
            }
            if done < start {
                f(Piece::Text(&text[done..start]))?;
            }
            f(Piece::Token(rules.id))?;
            done = stop;
        }
        if done < text.len() {
            f(Piece::Text(&text[done..]))?;
        }
        Ok(())
    }
}

/// `\w` of the regex `tokenizers` uses for `single_word` (letters, digits, marks, `_`),
/// without the rare joiners.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || (!c.is_ascii() && is_mark(c))
}

fn is_mark(c: char) -> bool {
    matches!(c, '\u{300}'..='\u{36f}' | '\u{1ab0}'..='\u{1aff}' | '\u{1dc0}'..='\u{1dff}' | '\u{20d0}'..='\u{20ff}' | '\u{fe20}'..='\u{fe2f}')
}

/// A map keyed by hashes already: the key is its own hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap = HashMap<u64, Entry, BuildHasherDefault<KeyHasher>>;

struct Entry {
    text_len: usize,
    ids: Arc<[u32]>,
}

/// Bookkeeping bytes counted per entry besides its ids (the map slot, the `Arc` header).
const ENTRY_OVERHEAD: usize = 64;

fn cost(ids: &[u32]) -> usize {
    ENTRY_OVERHEAD + 4 * ids.len()
}

/// Encoded pieces keyed by the xxh3 hash of their text (and its length), in two
/// generations within a byte budget: new entries go to the young one; when it holds half
/// the budget it becomes the old one and the previous old one is dropped; a hit in the
/// old generation moves the entry back to the young one. So what a conversation keeps
/// using stays, and memory never exceeds the budget (plus one entry).
pub(crate) struct SegmentCache {
    budget: usize,
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    young: KeyMap,
    old: KeyMap,
    young_bytes: usize,
    old_bytes: usize,
}

impl SegmentCache {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::default(),
        }
    }

    pub(crate) fn key(text: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }

    /// The cached ids of the text with hash `key` and length `text_len`.
    pub(crate) fn get(&self, key: u64, text_len: usize) -> Option<Arc<[u32]>> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = g.young.get(&key) {
            return (e.text_len == text_len).then(|| e.ids.clone());
        }
        let e = g.old.remove(&key)?;
        g.old_bytes -= cost(&e.ids);
        if e.text_len != text_len {
            return None;
        }
        let ids = e.ids.clone();
        g.insert(key, e, self.budget);
        Some(ids)
    }

    /// Caches `ids` as the encoding of the text with hash `key` and length `text_len`.
    pub(crate) fn insert(&self, key: u64, text_len: usize, ids: Arc<[u32]>) {
        if cost(&ids) > self.budget / 2 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.insert(key, Entry { text_len, ids }, self.budget);
    }

    /// (entries, bytes) held.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (g.young.len() + g.old.len(), g.young_bytes + g.old_bytes)
    }
}

impl Generations {
    fn insert(&mut self, key: u64, entry: Entry, budget: usize) {
        let bytes = cost(&entry.ids);
        if let Some(prev) = self.young.insert(key, entry) {
            self.young_bytes -= cost(&prev.ids);
        }
        self.young_bytes += bytes;
        if self.young_bytes > budget / 2 {
            self.old = std::mem::take(&mut self.young);
            self.old_bytes = std::mem::take(&mut self.young_bytes);
        }
    }
}
