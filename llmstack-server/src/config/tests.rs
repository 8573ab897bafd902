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
fn production_stack_flags_without_an_effect_here_stop_the_start_saying_why() {
    let base = ["--static-backends", "http://a:1"];
    for (flag, value, needle) in [
        ("--callbacks", Some("x.y"), "tower layer"),
        (
            "--external-providers-config",
            Some("p.yaml"),
            "--static-backends",
        ),
        ("--kv-aware-threshold", Some("2000"), "remove the flag"),
        (
            "--lmcache-controller-port",
            Some("9000"),
            "--kv-events-config",
        ),
        ("--prefill-model-labels", Some("p"), "disaggregated prefill"),
        ("--request-stats-window", Some("60"), "PromQL"),
        ("--sentry-dsn", Some("https://x"), "--otel-endpoint"),
        ("--enable-batch-api", None, "not supported"),
        ("--request-rewriter", Some("fancy"), "noop"),
        (
            "--feature-gates",
            Some("SemanticCache=true"),
            "semantic cache",
        ),
        ("--feature-gates", Some("PII=true"), "unknown gate"),
        ("--root-path", Some("vllm"), "must start with"),
    ] {
        let mut list = base.to_vec();
        list.push(flag);
        list.extend(value);
        let err = serve(&list).unwrap_err();
        assert!(err.contains(needle), "{flag}: {err}");
    }
    for accepted in [
        &["--request-rewriter", "noop"][..],
        &["--file-storage-path", "/tmp/x"],
        &["--semantic-cache-threshold", "0.9"],
        &["--log-stats-interval", "10"],
    ] {
        let mut list = base.to_vec();
        list.extend(accepted);
        let (_, notes) = serve(&list).unwrap();
        assert_eq!(notes.len(), 1, "{accepted:?}: {notes:?}");
    }
}

#[test]
fn the_dynamic_config_file_is_read_at_start_in_production_stack_forms() {
    let dir = std::env::temp_dir().join(format!("llmstack-dyn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = dir.join("dynamic.yaml");
    std::fs::write(
        &yaml,
        "service_discovery: static\nrouting_logic: session\nsession_key: x-user-id\nstatic_models:\n  m1:\n    static_backends: [http://a:8000, http://b:8000]\n    static_model_type: chat\nstatic_aliases:\n  gpt-4: m1\ncallbacks: null\n",
    )
    .unwrap();
    let (config, _) = serve(&["--dynamic-config-yaml", yaml.to_str().unwrap()]).unwrap();
    assert_eq!(config.routing.routing_logic, RoutingLogic::Session);
    assert_eq!(config.discovery.static_models, ["m1", "m1"]);
    assert_eq!(config.routing.static_aliases["gpt-4"], "m1");
    assert_eq!(
        config.discovery.static_file.as_deref(),
        Some(yaml.as_path())
    );
    assert_eq!(
        config.dynamic.as_ref().map(|d| d.path.clone()),
        Some(yaml.clone())
    );
    // Flags win over the file.
    let (config, _) = serve(&[
        "--dynamic-config-yaml",
        yaml.to_str().unwrap(),
        "--routing-logic",
        "roundrobin",
    ])
    .unwrap();
    assert_eq!(config.routing.routing_logic, RoutingLogic::Roundrobin);
    // JSON, as production-stack writes it.
    let json = dir.join("dynamic.json");
    std::fs::write(
        &json,
        r#"{"service_discovery": "static", "routing_logic": "prefixaware", "static_backends": "http://a:8000,http://b:8000", "static_models": "m1,m2", "session_key": null}"#,
    )
    .unwrap();
    let (config, _) = serve(&["--dynamic-config-json", json.to_str().unwrap()]).unwrap();
    assert_eq!(config.routing.routing_logic, RoutingLogic::Prefixaware);
    assert_eq!(config.discovery.static_models, ["m1", "m2"]);
    // One file at a time; a refused production-stack key stops the start.
    let err = serve(&[
        "--dynamic-config-json",
        json.to_str().unwrap(),
        "--dynamic-config-yaml",
        yaml.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(err.contains("cannot be used with"), "{err}");
    std::fs::write(&yaml, "static_backends: [http://a:1]\ncallbacks: my.cb\n").unwrap();
    let err = serve(&["--dynamic-config-yaml", yaml.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("callbacks"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
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
fn otel_endpoints_in_production_stack_form_are_grpc() {
    let otel = |extra: &[&str]| {
        let mut list = vec!["--static-backends", "http://a:1", "--otel-endpoint"];
        list.extend(extra);
        serve(&list).map(|(c, _)| c.otel.map(|o| (o.endpoint, o.protocol)))
    };
    if !cfg!(feature = "otel") {
        return;
    }
    let grpc = |url: &str| Ok(Some((url.to_owned(), OtelProtocol::Grpc)));
    let http = |url: &str| Ok(Some((url.to_owned(), OtelProtocol::HttpProtobuf)));
    assert_eq!(
        otel(&["otel-collector:4317"]),
        grpc("http://otel-collector:4317")
    );
    assert_eq!(
        otel(&["otel-collector:4317", "--otel-secure"]),
        grpc("https://otel-collector:4317")
    );
    assert_eq!(
        otel(&["otel-collector:4317", "--otel-secure", "false"]),
        grpc("http://otel-collector:4317")
    );
    assert_eq!(otel(&["http://c:4317"]), grpc("http://c:4317"));
    assert_eq!(
        otel(&["https://c:443", "--otel-protocol", "grpc"]),
        grpc("https://c:443")
    );
    assert!(otel(&["https://c:443"]).unwrap_err().contains("OTLP/gRPC"));
    assert_eq!(
        otel(&["http://c:4318", "--otel-protocol", "grpc"]),
        grpc("http://c:4318")
    );
    assert_eq!(otel(&["http://c:4318"]), http("http://c:4318"));
    assert!(
        otel(&["http://c:4318", "--otel-secure"])
            .unwrap_err()
            .contains("OTLP/gRPC")
    );
    assert!(
        otel(&["c:4317", "--otel-protocol", "thrift"])
            .unwrap_err()
            .contains("thrift")
    );
    assert!(otel(&["::::"]).unwrap_err().contains("not host:port"));
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

/// production-stack's router flags at its 2026-08 snapshot (from its argparse parser).
const PRODUCTION_STACK_FLAGS: &[&str] = &[
    "host",
    "port",
    "root-path",
    "log-level",
    "log-format",
    "version",
    "feature-gates",
    "callbacks",
    "request-rewriter",
    "service-discovery",
    "k8s-service-discovery-type",
    "static-backends",
    "static-models",
    "static-aliases",
    "static-model-types",
    "static-model-labels",
    "static-backend-health-checks",
    "static-backend-health-check-interval",
    "static-backend-health-check-timeout-seconds",
    "k8s-port",
    "k8s-namespace",
    "k8s-label-selector",
    "k8s-watcher-timeout-seconds",
    "backend-health-check-timeout-seconds",
    "external-providers-config",
    "routing-logic",
    "session-key",
    "prefix-min-match-length",
    "kv-aware-threshold",
    "lmcache-controller-port",
    "lmcache-controller-reply-port",
    "lmcache-controller-heartbeat-port",
    "lmcache-health-check-interval",
    "lmcache-worker-timeout",
    "prefill-model-labels",
    "decode-model-labels",
    "max-instance-failover-reroute-attempts",
    "engine-stats-interval",
    "request-stats-window",
    "log-stats",
    "log-stats-interval",
    "sentry-dsn",
    "sentry-traces-sample-rate",
    "sentry-profile-session-sample-rate",
    "otel-endpoint",
    "otel-service-name",
    "otel-secure",
    "enable-batch-api",
    "file-storage-class",
    "file-storage-path",
    "batch-processor",
    "dynamic-config-yaml",
    "dynamic-config-json",
    "semantic-cache-model",
    "semantic-cache-dir",
    "semantic-cache-threshold",
];

#[test]
fn production_stack_flags_are_all_documented() {
    use clap::CommandFactory;
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/production-stack.md"),
    )
    .unwrap();
    let ours = crate::cli::Cli::command();
    let ours: Vec<String> = ours
        .get_arguments()
        .flat_map(|a| a.get_long_and_visible_aliases().into_iter().flatten())
        .chain(
            ours.get_arguments()
                .flat_map(|a| a.get_all_aliases().into_iter().flatten()),
        )
        .map(str::to_owned)
        .chain(["version".to_owned()])
        .collect();
    let compat: std::collections::BTreeMap<&str, bool> = crate::compat::all().collect();
    for flag in PRODUCTION_STACK_FLAGS {
        let row = format!("| `--{flag}` | ");
        let Some(at) = doc.find(&row) else {
            panic!("docs/production-stack.md has no row for --{flag}");
        };
        let status = doc[at + row.len()..].split(' ').next().unwrap();
        let expected = match compat.get(flag) {
            Some(true) => "accepted",
            Some(false) => "refused",
            None => {
                assert!(
                    ours.iter().any(|o| o == flag),
                    "--{flag} is no flag of ours"
                );
                "works"
            }
        };
        assert_eq!(status, expected, "--{flag}");
    }
    for flag in compat.keys() {
        assert!(
            PRODUCTION_STACK_FLAGS.contains(flag),
            "--{flag} is not production-stack's"
        );
    }
}
