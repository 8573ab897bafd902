use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use llmstack_core::{RouteRequest, Tokenize};
use proptest::prelude::*;
use serde_json::{Value as Json, json};
use tokenizers::{AddedToken, Tokenizer};

use crate::{
    ContentFormat, ModelTokenizer, TokenizerConfig, TokenizerError, Tokenizers, find_in_hf_cache,
};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer")
}

fn fixture() -> ModelTokenizer {
    ModelTokenizer::from_dir(fixture_dir()).unwrap()
}

/// One fixture tokenizer shared by the property tests (its cache fills across cases).
fn shared() -> &'static ModelTokenizer {
    static SHARED: OnceLock<ModelTokenizer> = OnceLock::new();
    SHARED.get_or_init(|| fixture().with_cache_budget(16 << 10))
}

fn expected() -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap())
        .unwrap()
}

fn ids(v: &Json) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "llmstack-tokenize-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tokenizer_json() -> String {
    std::fs::read_to_string(fixture_dir().join("tokenizer.json")).unwrap()
}

#[test]
fn texts_encode_as_hugging_face_encodes_them() {
    let model = fixture();
    let mut tokenizers = Tokenizers::new();
    let model = {
        tokenizers.insert("m", model);
        tokenizers.get("m").unwrap().clone()
    };
    let expected = expected();
    for case in expected["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            model.encode(text, false).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
        let with_bos = ids(&case["ids_with_special_tokens"]);
        assert_eq!(model.encode(text, true).unwrap(), with_bos, "{text:?}");
        // The completions path of the router: BOS added by the post-processor.
        let body = json!({"model": "m", "prompt": text}).to_string();
        let req = RouteRequest::from_json(body.as_bytes(), None).unwrap();
        assert_eq!(&*tokenizers.tokenize("m", &req).unwrap().ids, &with_bos[..]);
    }
    assert!(model.is_piecewise());
    assert_eq!(model.stats().whole_encodes, 0);
}

#[test]
fn chats_render_and_encode_as_vllm_does() {
    let expected = expected();
    let default = Arc::new(fixture());
    assert_eq!(default.content_format(), Some(ContentFormat::OpenAi));
    for case in expected["chats"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let model = match case["template"].as_str().unwrap() {
            "default" => default.clone(),
            other => {
                let source = expected["templates"][other].as_str().unwrap();
                let model = fixture().with_chat_template(source).unwrap();
                assert_eq!(
                    model.content_format(),
                    Some(ContentFormat::String),
                    "{name}"
                );
                Arc::new(model)
            }
        };
        let messages = case["messages"].to_string();
        let prompt = model.render_chat(&messages, true).unwrap();
        assert_eq!(prompt, case["prompt"].as_str().unwrap(), "{name}");
        assert_eq!(
            model.encode_chat(&messages).unwrap(),
            ids(&case["ids"]),
            "{name}"
        );
        // And through the router's interface.
        let mut tokenizers = Tokenizers::new();
        tokenizers.insert("m", model.clone());
        let body = json!({"model": "m", "messages": case["messages"]}).to_string();
        let req = RouteRequest::from_json(body.as_bytes(), None).unwrap();
        assert_eq!(
            &*tokenizers.tokenize("m", &req).unwrap().ids,
            &ids(&case["ids"])[..],
            "{name}"
        );
    }
}

fn chat(turns: &[(&str, &str)]) -> String {
    Json::Array(
        turns
            .iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect(),
    )
    .to_string()
}

#[test]
fn the_next_turn_encodes_only_its_new_segments() {
    let model = fixture();
    let mut turns = vec![
        ("system", "You are a helpful assistant."),
        ("user", "What is the capital of France?"),
    ];
    model.encode_chat(&chat(&turns)).unwrap();
    let first = model.stats();
    // "system", "\n\n<system text>", "user", "\n\n<question>", "assistant", "\n\n" after the
    // generation prompt's header.
    assert_eq!(first.segments_encoded, 6);

    turns.push(("assistant", "Paris."));
    turns.push(("user", "And of Japan?"));
    let second_ids = model.encode_chat(&chat(&turns)).unwrap();
    let second = model.stats();
    assert_eq!(
        second.segments_encoded - first.segments_encoded,
        2,
        "only the two new contents"
    );
    assert_eq!(second.whole_encodes, 0);
    let prompt = model.render_chat(&chat(&turns), true).unwrap();
    assert_eq!(
        second_ids,
        model
            .tokenizer()
            .encode(prompt.as_str(), false)
            .unwrap()
            .get_ids()
    );

    // The same request again encodes nothing.
    model.encode_chat(&chat(&turns)).unwrap();
    assert_eq!(model.stats().segments_encoded, second.segments_encoded);
    assert!(model.stats().cache_entries >= 8);
}

#[test]
fn a_tokenizer_that_is_not_piece_local_encodes_whole_prompts() {
    // Metaspace with prepend_scheme "first" prepends "▁" to the first piece of a text
    // only: the piece after <s> encodes differently alone.
    let tokenizer: Tokenizer = r#"{
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<s>": 0, "[UNK]": 1, "▁Hello": 2, "Hello": 3, "▁world": 4},
                  "unk_token": "[UNK]"}
    }"#
    .parse()
    .unwrap();
    let whole = tokenizer
        .encode("<s>Hello world", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(whole, [0, 3, 4]);
    let model = ModelTokenizer::new(tokenizer, TokenizerConfig::default()).unwrap();
    assert!(!model.is_piecewise());
    assert_eq!(model.encode("<s>Hello world", false).unwrap(), whole);
    assert_eq!(model.stats().whole_encodes, 1);
    assert_eq!(model.content_format(), None);
    assert!(matches!(
        model.encode_chat("[]"),
        Err(TokenizerError::NoChatTemplate)
    ));
}

#[test]
fn lstrip_and_rstrip_tokens_split_as_hugging_face_splits() {
    let mut tokenizer = Tokenizer::from_file(fixture_dir().join("tokenizer.json")).unwrap();
    tokenizer.add_special_tokens(&[
        AddedToken::from("<mask>", true).lstrip(true).rstrip(true),
        AddedToken::from("[W]", true).single_word(true),
    ]);
    let model = ModelTokenizer::new(tokenizer.clone(), TokenizerConfig::default()).unwrap();
    assert!(model.is_piecewise());
    for text in [
        "a <mask> b",
        "a  \n<mask>\t\tb<mask><mask> c",
        "  <mask>",
        "<mask>  ",
        "x [W] y",
        "x[W]y [W]",
        "<|eot_id|> <mask> <|eot_id|>",
    ] {
        let want = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(model.encode(text, false).unwrap(), want, "{text:?}");
    }
}

/// Strings with what makes tokenization interesting: special and added token strings,
/// runs of spaces and newlines, digits, apostrophes, non-ASCII.
fn content() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        4 => "[a-zA-Z]{1,9}",
        3 => " {1,3}",
        1 => "[\n\t\r ]{1,4}",
        1 => "[0-9]{1,8}",
        1 => "[.,!?;:'\"()\\-]{1,2}",
        1 => Just("'s".to_owned()),
        1 => prop::sample::select(vec!["café", "日本語", "🙂", "—", "ü"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["<|eot_id|>", "<|start_header_id|>", "<tool_call>", "</tool_call>", "<|begin_of_text|>", "<|eot_id"])
            .prop_map(str::to_owned),
    ];
    prop::collection::vec(fragment, 0..24).prop_map(|parts| parts.concat())
}

fn message() -> impl Strategy<Value = Json> {
    let role = prop::sample::select(vec!["system", "user", "assistant", "tool"]);
    let parts = prop::collection::vec(content(), 1..3).prop_map(|texts| {
        Json::Array(
            texts
                .into_iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect(),
        )
    });
    let body =
        prop_oneof![3 => content().prop_map(Json::String), 1 => parts, 1 => Just(Json::Null)];
    (role, body).prop_map(|(role, content)| json!({"role": role, "content": content}))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn piecewise_encoding_equals_whole_text_encoding(messages in prop::collection::vec(message(), 1..10)) {
        let model = shared();
        let messages = Json::Array(messages).to_string();
        let prompt = model.render_chat(&messages, true).unwrap();
        let whole = model.tokenizer().encode(prompt.as_str(), false).unwrap().get_ids().to_vec();
        prop_assert_eq!(model.encode_chat(&messages).unwrap(), whole);
    }

    #[test]
    fn completions_encode_with_bos_as_hugging_face(text in content()) {
        let model = shared();
        let whole = model.tokenizer().encode(text.as_str(), true).unwrap().get_ids().to_vec();
        prop_assert_eq!(model.encode(&text, true).unwrap(), whole);
    }
}

#[test]
fn finds_snapshots_in_the_hub_cache_layout() {
    let tmp = TempDir::new("hub");
    let repo = "models--meta-llama--Llama-3.1-8B-Instruct";
    tmp.write(&format!("{repo}/snapshots/aaa/tokenizer.json"), "{}");
    tmp.write(&format!("{repo}/snapshots/bbb/config.json"), "{}");
    tmp.write(&format!("{repo}/refs/main"), "aaa\n");
    let root = Some(tmp.0.as_path());
    let found = find_in_hf_cache("meta-llama/Llama-3.1-8B-Instruct", root);
    assert_eq!(found, Some(tmp.0.join(repo).join("snapshots/aaa")));

    // refs/main names a snapshot without tokenizer files: the newest one that has them.
    tmp.write(&format!("{repo}/refs/main"), "bbb");
    tmp.write(&format!("{repo}/snapshots/ccc/tokenizer.json"), "{}");
    let newest = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::open(tmp.0.join(repo).join("snapshots/ccc"))
        .unwrap()
        .set_modified(newest)
        .unwrap();
    let found = find_in_hf_cache("meta-llama/Llama-3.1-8B-Instruct", root);
    assert_eq!(found, Some(tmp.0.join(repo).join("snapshots/ccc")));

    // No refs at all, an id without an organisation.
    tmp.write("models--gpt2/snapshots/r1/tokenizer.json", "{}");
    assert_eq!(
        find_in_hf_cache("gpt2", root),
        Some(tmp.0.join("models--gpt2/snapshots/r1"))
    );
    for missing in ["other/model", "", "../models--gpt2", "a//b"] {
        assert_eq!(find_in_hf_cache(missing, root), None, "{missing:?}");
    }

    // The registry loads by model id from the cache when given a root through a path.
    let mut tokenizers = Tokenizers::new();
    let dir = tmp.0.join("models--org--fixture/snapshots/r1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    let found = find_in_hf_cache("org/fixture", root).unwrap();
    tokenizers.load("fixture", Some(&found)).unwrap();
    assert!(tokenizers.knows("fixture"));
    assert!(!tokenizers.knows("org/fixture"));
}

#[test]
fn config_variants_load() {
    let tmp = TempDir::new("config");
    tmp.write("tokenizer.json", &tokenizer_json());
    let template = "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}{{ eos_token }}";
    let config = json!({
        "bos_token": {"__type": "AddedToken", "content": "<|begin_of_text|>", "lstrip": false},
        "eos_token": "<|eot_id|>",
        "model_max_length": 1e30,
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": template},
        ],
    });
    tmp.write("tokenizer_config.json", &config.to_string());
    let model = ModelTokenizer::from_dir(&tmp.0).unwrap();
    assert_eq!(
        model.config().bos_token.as_deref(),
        Some("<|begin_of_text|>")
    );
    assert_eq!(model.config().model_max_length, None);
    let messages = chat(&[("user", "hi")]);
    assert_eq!(
        model.render_chat(&messages, true).unwrap(),
        "<|begin_of_text|>user:hi;<|eot_id|>"
    );
    let ids = model.encode_chat(&messages).unwrap();
    assert_eq!((ids[0], ids[ids.len() - 1]), (4096, 4105));

    // chat_template.jinja wins over the configuration.
    tmp.write(
        "chat_template.jinja",
        "{% for m in messages %}[{{ m.content }}]{% endfor %}\n",
    );
    let model = ModelTokenizer::from_dir(&tmp.0).unwrap();
    assert_eq!(model.render_chat(&messages, true).unwrap(), "[hi]");
    std::fs::remove_file(tmp.0.join("chat_template.jinja")).unwrap();

    // Errors name the file and what is wrong.
    let path = tmp.write(
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#,
    );
    let err = ModelTokenizer::from_dir(&tmp.0).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string())
            && err.contains("\"rag\"")
            && err.contains("default"),
        "{err}"
    );
    tmp.write("tokenizer_config.json", r#"{"bos_token": 7}"#);
    let err = ModelTokenizer::from_dir(&tmp.0).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json: `bos_token` must be a string"),
        "{err}"
    );
    tmp.write("tokenizer_config.json", "{not json");
    let err = ModelTokenizer::from_dir(&tmp.0).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json: not valid JSON"),
        "{err}"
    );
    tmp.write("tokenizer_config.json", r#"{"chat_template": "{% for %}"}"#);
    let err = ModelTokenizer::from_dir(&tmp.0).unwrap_err().to_string();
    assert!(err.contains("chat template does not compile"), "{err}");
    tmp.write("tokenizer.json", "{}");
    let err = ModelTokenizer::from_dir(&tmp.0).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json: not a tokenizer"), "{err}");
    std::fs::remove_file(tmp.0.join("tokenizer.json")).unwrap();
    let err = ModelTokenizer::from_dir(&tmp.0).unwrap_err();
    assert!(matches!(err, TokenizerError::NotFound { .. }), "{err}");
}

#[test]
fn the_router_interface_covers_the_prompt_shapes() {
    let mut tokenizers = Tokenizers::new();
    tokenizers.insert("m", fixture());
    let tokenize = |body: Json| {
        let body = body.to_string();
        let req = RouteRequest::from_json(body.as_bytes(), None).unwrap();
        tokenizers.tokenize("m", &req).map(|t| t.ids.to_vec())
    };
    let hello = tokenize(json!({"model": "m", "prompt": "Hello world"})).unwrap();
    assert_eq!(hello[0], 4096);
    assert_eq!(
        tokenize(json!({"model": "m", "prompt": ["Hello world"]})).unwrap(),
        hello
    );
    assert_eq!(
        tokenize(json!({"model": "m", "prompt": [1, 2, 3]})).unwrap(),
        [1, 2, 3]
    );
    assert_eq!(
        tokenize(json!({"model": "m", "prompt": [[5, 6]]})).unwrap(),
        [5, 6]
    );
    assert_eq!(tokenize(json!({"model": "m", "prompt": ["a", "b"]})), None);
    assert_eq!(tokenize(json!({"model": "m", "prompt": [[1], [2]]})), None);
    assert_eq!(tokenize(json!({"model": "m", "prompt": [-1]})), None);
    assert_eq!(tokenize(json!({"model": "m", "input": "embed me"})), None);
    assert_eq!(tokenize(json!({"model": "m"})), None);
    let image =
        json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]);
    assert_eq!(tokenize(json!({"model": "m", "messages": image})), None);
    assert_eq!(
        tokenize(json!({"model": "m", "messages": "not a list"})),
        None
    );
    let raising = fixture()
        .with_chat_template("{{ raise_exception('no') }}")
        .unwrap();
    let err = raising.render_chat("[]", true).unwrap_err().to_string();
    assert!(err.contains("no"), "{err}");
    let req = RouteRequest::from_json(br#"{"model":"x","prompt":"hi"}"#, None).unwrap();
    assert_eq!(tokenizers.tokenize("x", &req), None);
    assert!(tokenizers.knows("m") && !tokenizers.knows("x"));
    assert_eq!(tokenizers.models().collect::<Vec<_>>(), ["m"]);
}

#[test]
fn template_environment_is_pythonic() {
    let model = fixture()
        .with_chat_template(
            "{% generation %}{{ strftime_now('%Y') | length }}{% endgeneration %} \
             {{ {'a': [1, none]} | tojson }} {{ messages[0].content.split(',') }} {{ 'x'.upper() }}",
        )
        .unwrap();
    let out = model.render_chat(&chat(&[("user", "b,c")]), true).unwrap();
    assert_eq!(out, "4 {\"a\": [1, null]} ['b', 'c'] X");
    // Tool-call arguments are parsed; `developer` becomes `system` where unknown.
    let model = fixture()
        .with_chat_template("{% for m in messages %}{{ m.role }}={{ m.tool_calls[0].function.arguments.k if m.tool_calls else m.content }};{% endfor %}")
        .unwrap();
    let messages = json!([
        {"role": "developer", "content": "d"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"k\": 7}"}}]},
    ]);
    assert_eq!(
        model.render_chat(&messages.to_string(), false).unwrap(),
        "system=d;assistant=7;"
    );
}

mod timing {
    use super::*;

    fn turn_text(seed: &mut u64, words: usize) -> String {
        const WORDS: &[&str] = &[
            "the",
            "router",
            "caches",
            "prefix",
            "blocks",
            "and",
            "engine",
            "announces",
            "them",
            "while",
            "a",
            "request",
            "waits",
            "for",
            "its",
            "first",
            "token",
            "latency",
            "matters",
            "more",
            "than",
            "throughput",
            "when",
            "users",
            "chat",
            "with",
            "model",
            "Paris",
            "1234",
            "café",
            "because",
            "of",
            "what",
        ];
        let mut out = Vec::with_capacity(words);
        for i in 0..words {
            *seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let w = WORDS[usize::try_from(*seed >> 33).unwrap() % WORDS.len()];
            out.push(if i % 17 == 16 {
                format!("{w}.")
            } else {
                w.to_owned()
            });
        }
        out.join(" ")
    }

    /// Prints the time to tokenize an ~8k-token, 20-turn chat cold and warm (the same
    /// chat plus one turn). `cargo test --release -p llmstack-tokenize -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing report, not a check"]
    #[expect(
        clippy::disallowed_types,
        reason = "wall-clock timing of synchronous code; no tokio runtime here"
    )]
    fn chat_of_8k_tokens_cold_and_warm() {
        let mut seed = 15;
        let mut turns: Vec<(String, String)> = vec![("system".into(), turn_text(&mut seed, 60))];
        for i in 0..20 {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            turns.push((role.into(), turn_text(&mut seed, 260)));
        }
        let json_of = |turns: &[(String, String)]| {
            Json::Array(
                turns
                    .iter()
                    .map(|(r, c)| json!({"role": r, "content": c}))
                    .collect(),
            )
            .to_string()
        };
        let messages = json_of(&turns);
        turns.push(("user".into(), turn_text(&mut seed, 40)));
        let next = json_of(&turns);

        let model = fixture();
        let time = |f: &mut dyn FnMut() -> usize| {
            let start = std::time::Instant::now();
            let n = f();
            (start.elapsed(), n)
        };
        let (render, _) = time(&mut || model.render_chat(&next, true).unwrap().len());
        let prompt = model.render_chat(&messages, true).unwrap();
        let (whole, n_whole) = time(&mut || {
            model
                .tokenizer()
                .encode_fast(prompt.as_str(), false)
                .unwrap()
                .len()
        });
        let (cold, n_cold) = time(&mut || model.encode_chat(&messages).unwrap().len());
        let (warm, n_warm) = time(&mut || model.encode_chat(&next).unwrap().len());
        let (again, _) = time(&mut || model.encode_chat(&next).unwrap().len());
        assert_eq!(n_whole, n_cold);
        let stats = model.stats();
        println!(
            "20-turn chat: {n_cold} tokens ({} bytes of prompt)\n\
             render only (21 turns):          {render:?}\n\
             whole-text encode (no cache):    {whole:?}\n\
             cold (render + encode, 20 turns): {cold:?}\n\
             warm (21 turns, +{} tokens):     {warm:?}\n\
             repeat (21 turns, all cached):   {again:?}\n\
             {stats:?}",
            prompt.len(),
            n_warm - n_cold,
        );
    }
}
