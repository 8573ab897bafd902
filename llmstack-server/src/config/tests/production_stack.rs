//! production-stack's router flags, dynamic-config files and OTLP endpoint form.

use super::*;

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
    // Gates off and the `noop` rewriter are what this router does; other rewriters stop it.
    std::fs::write(
        &yaml,
        "static_backends: [http://a:1]\nfeature_gates: false\nrequest_rewriter: noop\n",
    )
    .unwrap();
    let (config, _) = serve(&["--dynamic-config-yaml", yaml.to_str().unwrap()]).unwrap();
    assert_eq!(config.discovery.static_backends.len(), 1);
    std::fs::write(
        &yaml,
        "static_backends: [http://a:1]\nfeature_gates: \"SemanticCache=false\"\n",
    )
    .unwrap();
    serve(&["--dynamic-config-yaml", yaml.to_str().unwrap()]).unwrap();
    std::fs::write(
        &yaml,
        "static_backends: [http://a:1]\nrequest_rewriter: fancy\n",
    )
    .unwrap();
    let err = serve(&["--dynamic-config-yaml", yaml.to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("request_rewriter `fancy`") && err.contains("noop"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
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
