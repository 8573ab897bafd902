//! The pseudo-tokenizer's scheme and the [`Tokenizer`] choice.

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

// === Tokenizer with the fixture's Hugging Face files ===

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");

fn fixture() -> Tokenizer {
    Tokenizer::from_dir(FIXTURE).unwrap()
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(format!("{FIXTURE}/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn fixture_encodes_as_expected() {
    let t = fixture();
    for case in expected()["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = |key: &str| -> Vec<u32> { serde_json::from_value(case[key].clone()).unwrap() };
        assert_eq!(t.encode(text, false).unwrap(), ids("ids"), "{text:?}");
        assert_eq!(
            t.encode(text, true).unwrap(),
            ids("ids_with_special_tokens"),
            "{text:?}"
        );
    }
}

#[test]
fn fixture_output_words_are_ordinary_and_eos_is_eot() {
    let t = fixture();
    let hf = t.model().unwrap().tokenizer();
    assert_eq!(t.eos_token_id(), hf.token_to_id("<|eot_id|>").unwrap());
    let ids = t.output_token_ids();
    assert!(ids.len() >= hf::MIN_OUTPUT_WORDS, "{ids:?}");
    let specials = hf.get_added_tokens_decoder();
    for id in ids {
        let word = t.decode(&[id], true);
        assert!(OUTPUT_WORDS.contains(&word.as_str()), "{id}: {word:?}");
        assert!(!specials.contains_key(&id));
    }
    // The pseudo-tokenizer's choice is its own vocabulary.
    assert_eq!(Tokenizer::pseudo().output_token_ids(), output_vocab());
    assert_eq!(Tokenizer::pseudo().eos_token_id(), EOT);
}

/// Feeds `ids` one by one; returns the pieces.
fn stream_pieces(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut d = Detokenizer::default();
    ids.iter()
        .map(|&id| {
            let mut piece = String::new();
            d.push(t, id, &mut piece);
            piece
        })
        .collect()
}

#[test]
fn incremental_text_concatenates_to_the_decoded_text() {
    let t = fixture();
    let mut ids = t
        .encode("Bonjour café, 日本語のテキスト and ✓ emoji 🦀 end.", true)
        .unwrap();
    ids.extend(t.output_token_ids());
    ids.push(t.eos_token_id());
    let pieces = stream_pieces(&t, &ids);
    assert_eq!(pieces.concat(), t.decode(&ids, true));
    // Multi-byte characters split over byte tokens: some tokens settle no text yet.
    assert!(pieces.iter().any(String::is_empty), "{pieces:?}");
    assert!(!pieces.concat().contains('\u{fffd}'));
    // The pseudo-tokenizer streams each token's own text, as before.
    let p = Tokenizer::pseudo();
    let words = output_vocab();
    assert_eq!(
        stream_pieces(&p, &words).concat(),
        words.iter().map(|&w| token_text(w)).collect::<String>()
    );
}

#[test]
fn token_strings_and_vocabulary_bounds() {
    let t = fixture();
    let the = t.encode(" the", false).unwrap();
    assert_eq!(the.len(), 1);
    assert_eq!(t.token_str(the[0]), "Ġthe");
    assert_eq!(t.token_str(t.eos_token_id()), "<|eot_id|>");
    let last = t.model().unwrap().tokenizer().get_vocab_size(true) as u32 - 1;
    assert!(t.is_valid(0) && t.is_valid(last));
    assert!(!t.is_valid(last + 1));
    assert!(Tokenizer::pseudo().is_valid(BOS) && !Tokenizer::pseudo().is_valid(VOCAB_SIZE));
}

#[test]
fn equal_when_pseudo_or_the_same_load() {
    let a = fixture();
    assert_eq!(a, a.clone());
    assert_ne!(a, fixture());
    assert_ne!(a, Tokenizer::pseudo());
    assert_eq!(Tokenizer::pseudo(), Tokenizer::default());
    assert!(format!("{a:?}").contains("eos: 4105"), "{a:?}");
}

#[test]
fn a_directory_without_tokenizer_json_is_named_in_the_error() {
    let e = Tokenizer::from_dir("/nonexistent/llmstack-tokenizer").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/llmstack-tokenizer/tokenizer.json"),
        "{msg}"
    );
    // A directory holding only the configuration.
    let dir = std::env::temp_dir().join(format!("llmstack-sim-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        format!("{FIXTURE}/tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    let msg = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        msg.contains(&dir.join("tokenizer.json").display().to_string()),
        "{msg}"
    );
}
