#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use llmstack_core::{
    Endpoint, EndpointSet, ModelCard, RouteRequest, SettingErrors, Tokenize, Update,
};
use tokio::sync::watch;

use crate::{Found, LiveTokenizers, ModelTokenizer, TokenizerArgs, TokenizerSources};

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tokenizer"
    ))
}

/// A scratch directory unique to this test process and `name`, empty.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llmstack-tokenize-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Hugging Face cache under `root` holding the fixture as `org/name`.
fn hf_cache(root: &std::path::Path, id: &str) {
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    let snap = repo.join("snapshots").join("abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture().join(file), snap.join(file)).unwrap();
    }
}

fn chat(model: &str) -> Vec<u8> {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Hello there, how are you?"}}]}}"#)
        .into_bytes()
}

fn resolve(entries: &[&str]) -> (TokenizerSources, SettingErrors) {
    let mut errors = SettingErrors::default();
    let args = TokenizerArgs {
        tokenizer: Some(entries.iter().map(|s| (*s).to_owned()).collect()),
    };
    (args.resolve(&mut errors), errors)
}

#[test]
fn settings_name_models_and_one_default() {
    let (sources, errors) = resolve(&["llama=/models/llama", " /models/any ", "org/m = /x=y"]);
    assert!(errors.is_empty(), "{errors}");
    assert_eq!(sources.default, Some(PathBuf::from("/models/any")));
    assert_eq!(
        sources.models,
        vec![
            ("llama".to_owned(), PathBuf::from("/models/llama")),
            ("org/m".to_owned(), PathBuf::from("/x=y")),
        ]
    );
    assert!(!TokenizerArgs::default().is_set());
}

#[test]
fn settings_refuse_empty_duplicate_and_two_defaults() {
    for bad in [&["=/x"][..], &["m="], &["m=/a", "m=/b"], &["/a", "/b"]] {
        let (_, errors) = resolve(bad);
        assert!(!errors.is_empty(), "{bad:?} accepted");
        assert!(errors.to_string().contains("tokenizer"), "{errors}");
    }
}

#[test]
fn named_models_load_at_start_and_tokenize_as_the_model_does() {
    let sources = TokenizerSources {
        default: None,
        models: vec![("m".into(), fixture()), ("alias".into(), fixture())],
    };
    let live = LiveTokenizers::load(&sources, Some(&scratch("named"))).unwrap();
    assert!(live.knows("m") && live.knows("alias") && !live.knows("other"));
    // One directory is loaded once: both names share the tokenizer.
    let snap = live.snapshot();
    assert!(Arc::ptr_eq(
        snap.get("m").unwrap(),
        snap.get("alias").unwrap()
    ));
    let body = chat("m");
    let req = RouteRequest::from_json(&body, None).unwrap();
    let ids = live.tokenize("m", &req).unwrap().ids;
    let direct = ModelTokenizer::from_dir(fixture())
        .unwrap()
        .encode_chat(r#"[{"role":"user","content":"Hello there, how are you?"}]"#)
        .unwrap();
    assert_eq!(&ids[..], &direct[..]);
    assert!(live.tokenize("other", &req).is_none());
}

#[test]
fn a_directory_that_does_not_load_fails_naming_it() {
    let dir = scratch("missing");
    let sources = TokenizerSources {
        default: Some(dir.clone()),
        models: vec![],
    };
    let err = LiveTokenizers::load(&sources, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&dir.display().to_string()), "{err}");
}

#[test]
fn discovered_models_use_the_default_or_the_hf_cache_once() {
    let cache = scratch("cache");
    hf_cache(&cache, "org/base-model");
    let live = LiveTokenizers::load(&TokenizerSources::default(), Some(&cache)).unwrap();
    // Not cached at all: nothing, and not asked again.
    assert_eq!(live.discover("nowhere", None), None);
    assert!(!live.knows("nowhere"));
    // Served under another name whose card's root is the cached id.
    let found = live.discover("served-name", Some("org/base-model"));
    assert!(matches!(found, Some(Found::HfCache(_))), "{found:?}");
    assert!(live.knows("served-name"));
    // Asked before: no second lookup.
    assert_eq!(live.discover("served-name", Some("org/base-model")), None);

    let with_default = LiveTokenizers::load(
        &TokenizerSources {
            default: Some(fixture()),
            models: vec![],
        },
        Some(&cache),
    )
    .unwrap();
    // The default serves any model at once, named by discovery or not.
    assert!(with_default.knows("x"));
    let body = chat("x");
    let req = RouteRequest::from_json(&body, None).unwrap();
    assert!(with_default.tokenize("x", &req).is_some());
    assert_eq!(with_default.discover("x", None), Some(Found::Default));
    assert!(with_default.knows("x"));
}

#[tokio::test]
async fn follow_loads_models_as_discovery_finds_them() {
    let cache = scratch("follow");
    hf_cache(&cache, "org/late");
    let live = Arc::new(LiveTokenizers::load(&TokenizerSources::default(), Some(&cache)).unwrap());
    let (tx, rx) = watch::channel(EndpointSet::default());
    let task = tokio::spawn(Arc::clone(&live).follow(rx));
    assert!(!live.knows("org/late"));
    let mut ep = Endpoint::new("http://127.0.0.1:9".parse().unwrap());
    ep.models = vec![
        ModelCard::named("org/late"),
        ModelCard {
            id: "adapter".into(),
            parent: Some("org/late".into()),
            card: Default::default(),
        },
    ];
    tx.send_modify(|set| {
        set.apply(Update::Reset(vec![ep]));
    });
    for _ in 0..200 {
        if live.knows("org/late") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(live.knows("org/late"));
    // An adapter uses its base model's tokenizer: it is not looked up by itself.
    assert!(!live.knows("adapter"));
    drop(tx);
    task.await.unwrap();
}
