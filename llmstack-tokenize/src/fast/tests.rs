//! The fast path against the `tokenizers` pipeline it stands in for, on the fixture
//! tokenizer (a Llama-3-style byte-level BPE) and random text built from the split
//! pattern's corner cases.

use std::sync::LazyLock;

use proptest::prelude::*;
use tokenizers::Tokenizer;

use super::FastBpe;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizer/tokenizer.json"
);

/// Loaded once: a proptest case is a few microseconds, loading the file milliseconds.
static FIXTURE_TOKENIZER: LazyLock<Tokenizer> =
    LazyLock::new(|| Tokenizer::from_file(FIXTURE).unwrap());

/// One fast path for every case, so its word cache fills and hits across cases.
static FIXTURE_FAST: LazyLock<FastBpe> = LazyLock::new(|| {
    FastBpe::detect(&FIXTURE_TOKENIZER).expect("the fixture is a Llama-3-style pipeline")
});

fn fixture() -> (&'static Tokenizer, &'static FastBpe) {
    (&*FIXTURE_TOKENIZER, &*FIXTURE_FAST)
}

/// The fast path's ids, encoded twice: the second time its word cache holds every
/// short piece, and must give the same ids.
fn fast_ids(tokenizer: &Tokenizer, fast: &FastBpe, text: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    fast.encode(tokenizer.get_model(), text, &mut ids).unwrap();
    let mut again = Vec::new();
    fast.encode(tokenizer.get_model(), text, &mut again)
        .unwrap();
    assert_eq!(again, ids, "cached pieces give other ids: {text:?}");
    ids
}

fn pipeline_ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer
        .encode_fast(text, false)
        .unwrap()
        .get_ids()
        .to_vec()
}

/// Pieces that exercise each alternative of the pattern and its backtracking:
/// contractions (with `ſ`, which folds to `s`), letters after one non-letter, digit runs
/// (Nd, Nl, No), punctuation runs with line breaks, runs of spaces before words and at
/// the end, tabs, CR/LF, no-break and ideographic spaces, combining marks, emoji.
const ATOMS: &[&str] = &[
    "a", "Zed", "café", "日本", "ſ", "'", "s", "S", "t", "re", "RE", "ve", "ll", "Ll", "m", "d",
    "x", " ", "  ", "\t", "\n", "\r", "\r\n", "\n\n", "1", "23", "4567", "٣", "Ⅻ", "½", "!", "?.",
    "-", "😀", "\u{a0}", "\u{3000}", "\u{301}", "\u{200b}", "(", ")", "\"", ",", "$", "_", "#",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_fast_path_gives_the_pipelines_ids(atoms in prop::collection::vec(0..ATOMS.len(), 0..40)) {
        let (tokenizer, fast) = fixture();
        let text: String = atoms.iter().map(|&i| ATOMS[i]).collect();
        prop_assert_eq!(fast_ids(tokenizer, fast, &text), pipeline_ids(tokenizer, &text), "{:?}", text);
    }

    #[test]
    fn the_fast_path_gives_the_pipelines_ids_on_any_text(text in "[\\PC\\s]{0,40}") {
        let (tokenizer, fast) = fixture();
        prop_assert_eq!(fast_ids(tokenizer, fast, &text), pipeline_ids(tokenizer, &text), "{:?}", text);
    }

    #[test]
    fn any_text_splits_into_pieces_that_cover_it(text in "\\PC{0,60}") {
        let (_, fast) = fixture();
        let mut i = 0;
        while i < text.len() {
            let end = fast.split(&text, i);
            prop_assert!(end > i && text.is_char_boundary(end), "{:?} at {}", text, i);
            i = end;
        }
    }
}

#[test]
fn the_fast_path_matches_the_pipeline_on_prose_and_code() {
    let (tokenizer, fast) = fixture();
    let texts = [
        "The router's KV index isn't shared; they'll see it. I'M SURE we'd've known.",
        "fn main() {\n    let x = 1234567;\n\n\n    println!(\"{x}\");\n}\n",
        "  leading and trailing   \n\t\ttabs\r\nand CRLF  ",
        "Ünïcödé façade — naïve coöperation; 東京は晴れ。 Привет, мир! 42km ½ Ⅻ",
        "'s 's's 'S 'ſ x'LL y'Ve z'rE",
    ];
    for text in texts {
        assert_eq!(
            fast_ids(tokenizer, fast, text),
            pipeline_ids(tokenizer, text),
            "{text:?}"
        );
    }
}

#[test]
fn other_pipelines_are_not_taken() {
    let mut tokenizer = Tokenizer::from_file(FIXTURE).unwrap();
    tokenizer.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    assert!(FastBpe::detect(&tokenizer).is_none());
}
