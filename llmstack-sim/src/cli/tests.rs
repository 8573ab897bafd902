//! Command-line flags and config files turned into engine configs.

use super::*;

#[test]
fn flags_map_to_engine_configs() {
    let a = Args::try_parse_from([
        "llmstack-sim",
        "--engines",
        "3",
        "--model",
        "a",
        "--model",
        "b",
        "--profile",
        "instant",
        "--lora-modules",
        "sql=/p",
        "--max-num-seqs",
        "8",
        "--kv-events-endpoint",
        "tcp://*:0",
        "--kv-events-layout",
        "array",
        "--fault-error-rate",
        "0.5",
    ])
    .unwrap();
    let (_, port, c) = a.engine_configs().unwrap();
    assert_eq!(port, 8000);
    assert_eq!(
        c.iter().map(|c| c.model.as_str()).collect::<Vec<_>>(),
        ["a", "b", "a"]
    );
    assert_eq!(c[0].profile.name, "instant");
    assert!(c[0].enable_lora);
    assert_eq!(c[0].max_num_seqs(), 8);
    assert_eq!(
        c[0].kv_events.as_ref().unwrap().layout,
        KvEventsLayout::Array
    );
    assert_eq!(c[0].faults.error_rate, 0.5);
    assert!(
        Args::try_parse_from(["llmstack-sim", "--profile", "nope"])
            .unwrap()
            .engine_configs()
            .is_err()
    );
}

#[test]
fn config_file_describes_engines_one_by_one() {
    let dir = std::env::temp_dir().join(format!("llmstack-sim-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("engines.toml");
    std::fs::write(
        &file,
        r#"
                port = 9100
                [[engine]]
                model = "llama-8b"
                lora_modules = [{ name = "sql", path = "/a/sql" }]
                max_num_seqs = 64
                [[engine]]
                model = "qwen"
                profile = "instant"
                faults = { error_rate = 0.25 }
            "#,
    )
    .unwrap();
    let a = Args::try_parse_from([
        "llmstack-sim",
        "--config",
        file.to_str().unwrap(),
        "--seed",
        "7",
    ])
    .unwrap();
    let (_, port, c) = a.engine_configs().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(port, 9100);
    assert_eq!(c.len(), 2, "one engine per table, whatever --engines says");
    assert_eq!(
        (c[0].model.as_str(), c[1].model.as_str()),
        ("llama-8b", "qwen")
    );
    assert!(c[0].enable_lora && c[0].lora_modules[0].name == "sql");
    assert_eq!(c[0].max_num_seqs(), 64);
    assert_eq!(
        c[0].profile.name, "llama3-8b-h100",
        "flags give the defaults"
    );
    assert_eq!(c[1].profile.name, "instant");
    assert_eq!(c[1].faults.error_rate, 0.25);
    assert_eq!(c[1].seed, 7);
    let bad = dir.with_extension("bad.toml");
    std::fs::write(&bad, "[[engine]]\nmodle = \"typo\"\n").unwrap();
    let err = Args::try_parse_from(["llmstack-sim", "--config", bad.to_str().unwrap()])
        .unwrap()
        .engine_configs();
    std::fs::remove_file(&bad).unwrap();
    assert!(
        err.unwrap_err().contains("modle"),
        "unknown keys are reported"
    );
}

#[test]
fn vllm_kv_events_config_json() {
    let a = Args::try_parse_from([
        "llmstack-sim",
        "--kv-events-config",
        r#"{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:6000","topic":"kv"}"#,
    ]);
    // Unknown keys like `publisher` are vLLM's; they must not be rejected.
    let kv = a.unwrap().kv_events().unwrap().unwrap();
    assert_eq!(
        (kv.endpoint.as_str(), kv.topic.as_str()),
        ("tcp://*:6000", "kv")
    );
}

#[test]
fn api_keys_repeat_split_on_commas_and_drop_empties() {
    // Flags beat `VLLM_API_KEY`, so the test environment cannot leak in.
    let a = Args::try_parse_from([
        "llmstack-sim",
        "--engines",
        "2",
        "--api-key",
        "k1,k2",
        "--api-key",
        "k3",
        "k4",
        "--api-key",
        "",
    ])
    .unwrap();
    assert!(!format!("{a:?}").contains("k1"), "keys are redacted");
    let (_, _, c) = a.engine_configs().unwrap();
    for engine in &c {
        assert_eq!(
            engine
                .api_keys
                .iter()
                .map(ApiKey::expose)
                .collect::<Vec<_>>(),
            ["k1", "k2", "k3", "k4"]
        );
    }
}

#[test]
fn tokenizer_directories_load_once_and_name_the_path_on_error() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");
    let a = Args::try_parse_from(["llmstack-sim", "--engines", "3", "--tokenizer", fixture]);
    let (_, _, c) = a.unwrap().engine_configs().unwrap();
    assert!(c[0].tokenizer.model().is_some());
    assert!(
        c.iter().all(|e| e.tokenizer == c[0].tokenizer),
        "one load, shared"
    );
    let (_, _, c) = Args::try_parse_from(["llmstack-sim"])
        .unwrap()
        .engine_configs()
        .unwrap();
    assert_eq!(c[0].tokenizer, Tokenizer::pseudo(), "the default");

    // A config-file engine can name its own directory.
    let file = std::env::temp_dir().join(format!("llmstack-sim-tok-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        format!("[[engine]]\ntokenizer = {fixture:?}\n[[engine]]\nmodel = \"other\"\n"),
    )
    .unwrap();
    let a = Args::try_parse_from(["llmstack-sim", "--config", file.to_str().unwrap()]);
    let configs = a.unwrap().engine_configs();
    std::fs::remove_file(&file).unwrap();
    let (_, _, c) = configs.unwrap();
    assert!(c[0].tokenizer.model().is_some());
    assert_eq!(c[1].tokenizer, Tokenizer::pseudo());

    let err = Args::try_parse_from(["llmstack-sim", "--tokenizer", "/nonexistent/tok"])
        .unwrap()
        .engine_configs()
        .unwrap_err();
    assert!(
        err.starts_with("--tokenizer /nonexistent/tok: ")
            && err.contains("/nonexistent/tok/tokenizer.json"),
        "{err}"
    );
}
