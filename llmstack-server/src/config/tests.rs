use super::*;
use crate::cli::{Action, parse};

fn args(list: &[&str]) -> Vec<String> {
    std::iter::once("llmstack-server")
        .chain(list.iter().copied())
        .map(str::to_owned)
        .collect()
}

fn serve(list: &[&str]) -> Result<(ServerConfig, Vec<String>), String> {
    match parse(args(list)) {
        Ok((Action::Serve(config), warnings)) => Ok((*config, warnings)),
        Ok((Action::Demo(_), _)) => Err("demo".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn production_stack_flags_work_unchanged() {
    let (config, warnings) = serve(&[
        "--host",
        "127.0.0.1",
        "--port",
        "9000",
        "--service-discovery",
        "static",
        "--static-backends",
        "http://a:8000,http://b:8000",
        "--static-models",
        "m1,m2",
        "--static-aliases",
        "gpt-4:m1",
        "--routing-logic",
        "roundrobin",
        "--session-key",
        "x-user-id",
        "--engine-stats-interval",
        "15",
        "--log-level",
        "debug",
        "--k8s-namespace",
        "prod",
        "--static-model-types",
        "chat,chat",
        "--log-stats",
        "--root-path",
        "/vllm/",
        "--static-backend-health-checks",
        "--feature-gates",
        "SemanticCache=false",
        "--static-backend-health-check-timeout-seconds",
        "3",
    ])
    .unwrap();
    assert_eq!(config.discovery.probe.timeout, Duration::from_secs(3));
    assert_eq!(config.root_path.as_deref(), Some("/vllm"));
    assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(
        config.discovery.static_backends,
        ["http://a:8000", "http://b:8000"]
    );
    assert_eq!(config.discovery.static_models, ["m1", "m2"]);
    assert_eq!(config.routing.static_aliases["gpt-4"], "m1");
    assert_eq!(config.routing.session_key.as_deref(), Some("x-user-id"));
    assert_eq!(config.scrape.interval, Duration::from_secs(15));
    assert_eq!(
        config.discovery.probe.interval,
        Duration::from_secs(5),
        "default"
    );
    assert_eq!(config.log_filter, "debug");
    assert_eq!(
        config.discovery.k8s.namespace, "prod",
        "taken, unused by static"
    );
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].contains("--static-model-types"));
}

#[test]
fn invalid_settings_are_all_reported() {
    let err = serve(&[
        "--static-backends",
        "ftp://x",
        "--static-aliases",
        "nocolon",
        "--connect-timeout=-1",
        "--idle-timeout=1e30",
        "--log-level",
        "loud",
    ])
    .unwrap_err();
    for needle in [
        "http://",
        "alias:model",
        "connect-timeout",
        "idle-timeout",
        "loud",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    let err = serve(&[
        "--static-backends",
        "http://a:1",
        "--routing-logic",
        "disaggregated_prefill",
    ])
    .unwrap_err();
    assert!(err.contains("not available yet"), "{err}");
    let (config, _) = serve(&[
        "--static-backends",
        "http://a:1",
        "--routing-logic",
        "prefixaware",
        "--prefix-min-match-length",
        "256",
        "--prefix-chunk-size",
        "64",
    ])
    .unwrap();
    assert_eq!(config.routing.router().policy_name(), "prefixaware");
    assert_eq!(config.routing.prefix_min_match_length, 256);
    assert_eq!(config.routing.prefix_chunk_size, 64);
    let err = serve(&[
        "--static-backends",
        "http://a:1",
        "--prefix-chunk-size",
        "0",
    ])
    .unwrap_err();
    assert!(err.contains("prefix-chunk-size"), "{err}");
    for logic in [
        "random",
        "leastloaded",
        "loadaware",
        "power_of_two",
        "session",
    ] {
        let (config, _) =
            serve(&["--static-backends", "http://a:1", "--routing-logic", logic]).unwrap();
        let name = config.routing.router().policy_name();
        assert_eq!(
            name,
            if logic == "loadaware" {
                "leastloaded"
            } else {
                logic
            }
        );
    }
    let (config, _) = serve(&[
        "--static-backends",
        "http://a:1",
        "--routing-logic",
        "session",
        "--session-key",
        "x-user-id",
    ])
    .unwrap();
    assert_eq!(config.routing.router().policy_name(), "session");
    let err = serve(&[
        "--static-backends",
        "http://a:1",
        "--routing-logic",
        "bogus",
    ])
    .unwrap_err();
    assert!(err.contains("bogus"), "{err}");
    assert!(serve(&[]).unwrap_err().contains("--static-backends"));
}

#[test]
fn file_then_flags() {
    let dir = std::env::temp_dir().join(format!("llmstack-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("router.yaml");
    std::fs::write(
        &path,
        "port: 7000\nstatic_backends: [\"http://a:1\", \"http://b:2\"]\nstatic_models: m,m\nfirst_byte_timeout: 2.5\nbackend_health_check_timeout_seconds: 0.5\n",
    )
    .unwrap();
    let (config, _) = serve(&["--config", path.to_str().unwrap(), "--port", "7001"]).unwrap();
    assert_eq!(config.listen.port(), 7001, "the flag wins");
    assert_eq!(config.discovery.static_models, ["m", "m"]);
    assert_eq!(config.proxy.first_byte_timeout, Duration::from_millis(2500));
    assert_eq!(config.discovery.probe.timeout, Duration::from_millis(500));
    std::fs::write(&path, "prot: 7000\n").unwrap();
    let err = serve(&["--config", path.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("prot"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_is_a_subcommand() {
    match parse(args(&["demo", "--port", "0", "--engines", "2"])) {
        Ok((Action::Demo(d), _)) => assert_eq!((d.port, d.engines), (0, 2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn otel_needs_the_feature() {
    let result = serve(&[
        "--static-backends",
        "http://a:1",
        "--otel-endpoint",
        "http://collector:4318",
    ]);
    if cfg!(feature = "otel") {
        let (config, _) = result.unwrap();
        let otel = config.otel.unwrap();
        assert_eq!(otel.endpoint, "http://collector:4318");
        assert_eq!(otel.service_name, "llmstack-server");
    } else {
        assert!(result.unwrap_err().contains("`otel` feature"));
    }
    let (config, _) = serve(&["--static-backends", "http://a:1"]).unwrap();
    assert_eq!(config.otel, None);
}

#[test]
fn a_static_list_from_the_config_file_is_reloaded_unless_flags_fix_it() {
    let dir = std::env::temp_dir().join(format!("llmstack-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("router.yaml");
    std::fs::write(
        &file,
        "static_backends: [http://a:8000]\nstatic_models: m\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (config, _) = serve(&["--config", path]).unwrap();
    assert_eq!(
        config.discovery.static_file.as_deref(),
        Some(file.as_path())
    );
    for fixed in [
        ["--static-backends", "http://b:8000"],
        ["--static-models", "n"],
        ["--static-model-labels", "l"],
    ] {
        let (config, _) = serve(&["--config", path, fixed[0], fixed[1]]).unwrap();
        assert_eq!(config.discovery.static_file, None, "{fixed:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kv_event_and_tokenizer_flags_need_kvaware() {
    let (config, _) = serve(&[
        "--static-backends",
        "http://a:1",
        "--routing-logic",
        "kvaware",
        "--kv-events-port",
        "5557",
        "--kv-events-replay-port",
        "5558",
        "--kv-events-topic",
        "kv",
        "--tokenizer",
        "llama=/models/llama",
        "--tokenizer",
        "/models/any",
    ])
    .unwrap();
    let kv = config.kv.unwrap();
    assert_eq!(kv.events.port, Some(5557));
    assert_eq!(kv.events.replay_port, Some(5558));
    assert_eq!(kv.events.topic, "kv");
    assert_eq!(kv.tokenizers.default, Some("/models/any".into()));
    assert_eq!(
        kv.tokenizers.models,
        [("llama".into(), "/models/llama".into())]
    );
    // kvaware alone: engines' own /kv_event_sources, the Hugging Face cache.
    let (config, _) = serve(&[
        "--static-backends",
        "http://a:1",
        "--routing-logic",
        "kvaware",
    ])
    .unwrap();
    assert_eq!(config.kv, Some(KvConfig::default()));
    for flags in [
        &["--kv-events-port", "5557"][..],
        &["--tokenizer", "/models/any"],
    ] {
        let mut list = vec![
            "--static-backends",
            "http://a:1",
            "--routing-logic",
            "prefixaware",
        ];
        list.extend_from_slice(flags);
        let err = serve(&list).unwrap_err();
        assert!(err.contains("add --routing-logic kvaware"), "{err}");
    }
    let err = serve(&[
        "--static-backends",
        "http://a:1",
        "--routing-logic",
        "kvaware",
        "--kv-events-replay-port",
        "5558",
    ])
    .unwrap_err();
    assert!(err.contains("goes with --kv-events-port"), "{err}");
}

#[test]
fn peers_need_a_policy_that_reads_load_and_host_port_entries() {
    let (config, _) = serve(&[
        "--static-backends",
        "http://a:1",
        "--routing-logic",
        "kvaware",
        "--peers",
        "router-peers.default.svc:7072, 10.0.0.7:7100",
        "--peer-port",
        "7100",
    ])
    .unwrap();
    assert_eq!(
        config.routing.peers,
        ["router-peers.default.svc:7072", "10.0.0.7:7100"]
    );
    assert_eq!(config.routing.peer_port, 7100);
    let (config, _) = serve(&["--static-backends", "http://a:1"]).unwrap();
    assert!(config.routing.peers.is_empty());
    assert_eq!(
        config.routing.peer_port,
        llmstack_routing::DEFAULT_PEER_PORT
    );
    // Round robin reads no load: sharing it would do nothing, so it is refused.
    let err = serve(&["--static-backends", "http://a:1", "--peers", "r:7072"]).unwrap_err();
    assert!(
        err.contains("--peers") && err.contains("roundrobin"),
        "{err}"
    );
    let err = serve(&[
        "--static-backends",
        "http://a:1",
        "--routing-logic",
        "leastloaded",
        "--peers",
        "no-port",
    ])
    .unwrap_err();
    assert!(err.contains("not host:port"), "{err}");
}

mod production_stack;
