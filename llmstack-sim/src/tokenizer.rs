//! A deterministic pseudo-tokenizer and a Llama-3-style chat template.
//!
//! No model weights or vocabulary files exist on our machines, yet everything a router
//! observes about tokens must behave like a real model: prompt lengths of about four
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

use std::fmt::Write as _;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_text() {
        for s in [
            "",
            "Hello, world!",
            " the quick brown fox jumps over 13 lazy dogs",
            "ünïcödé ✓ 日本語\n\ttabs",
            "UPPER lower 0123456789 a b c  double  spaces",
        ] {
            assert_eq!(decode(&encode(s, false), false), s, "{s:?}");
        }
    }

    #[test]
    fn about_four_characters_per_token_on_prose() {
        let text = "the model reads the prompt and then it writes an answer one word at a time \
                    so that each user sees the first token soon and the rest at a steady pace";
        let n = encode(text, false).len();
        let ratio = text.len() as f64 / n as f64;
        assert!((3.6..=4.6).contains(&ratio), "{ratio} chars/token");
    }

    #[test]
    fn ids_are_stable_and_in_vocab() {
        assert_eq!(
            encode(" the", false),
            vec![256 + 475_254 + 702 + (19 * 26 + 7) * 26 + 4]
        );
        assert_eq!(
            encode("2026", false),
            vec![NUMBER_BASE + 110 + 202, NUMBER_BASE + 6]
        );
        assert_eq!(encode("H", false), vec![u32::from(b'H')]);
        for id in encode("any text at all, ÄÖÜ 123 zzz", true) {
            assert!(is_valid(id));
        }
        assert_eq!(encode("x", true)[0], BOS);
    }

    #[test]
    fn chat_turns_extend_the_token_prefix() {
        let one = [ChatTurn {
            role: "user",
            content: "What is the capital of France?",
        }];
        let two = [
            one[0],
            ChatTurn {
                role: "assistant",
                content: "Paris.",
            },
            ChatTurn {
                role: "user",
                content: "And of Spain?",
            },
        ];
        let a = render_chat(one, false);
        let b = render_chat(two, true);
        assert!(b.starts_with(&a));
        assert_eq!(a[0], BOS);
        assert_eq!(*a.last().unwrap(), EOT);
        assert_eq!(b[b.len() - 3], END_HEADER);
        let text = decode(&b, false);
        assert!(
            text.contains("<|start_header_id|>assistant<|end_header_id|>\n\n"),
            "{text}"
        );
    }

    #[test]
    fn output_words_are_single_tokens() {
        assert_eq!(output_vocab().len(), OUTPUT_WORDS.len());
        for id in output_vocab() {
            assert!(token_text(id).starts_with(' '));
        }
    }

    #[test]
    fn special_tokens_skip_or_render() {
        assert_eq!(decode(&[BOS, 104, EOT], true), "h");
        assert_eq!(decode(&[EOT], false), "<|eot_id|>");
        assert_eq!(
            decode(&[BOS + 100], false),
            "<|reserved_special_token_100|>"
        );
    }
}
