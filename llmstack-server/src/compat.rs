//! production-stack router flags this router does not act on: accepted, so existing
//! deployments start unchanged, and reported with a warning.

use clap::{Arg, ArgAction, ArgMatches, Command};

/// Flags taking a value, with what happens instead.
const WITH_VALUE: &[(&str, &str)] = &[
    (
        "root-path",
        "serve the router at / behind a path-rewriting ingress",
    ),
    ("feature-gates", "no feature gates exist"),
    ("callbacks", "Python callbacks cannot run in this router"),
    ("request-rewriter", "requests are forwarded unchanged"),
    (
        "static-model-types",
        "engines are probed with GET /v1/models, which needs no model type",
    ),
    (
        "static-backend-health-check-timeout-seconds",
        "use --backend-health-check-timeout-seconds",
    ),
    (
        "external-providers-config",
        "external providers are not supported",
    ),
    (
        "kv-aware-threshold",
        "KV-aware routing is not in this build yet",
    ),
    (
        "lmcache-controller-port",
        "KV-aware routing is not in this build yet",
    ),
    (
        "lmcache-controller-reply-port",
        "KV-aware routing is not in this build yet",
    ),
    (
        "lmcache-controller-heartbeat-port",
        "KV-aware routing is not in this build yet",
    ),
    (
        "lmcache-health-check-interval",
        "KV-aware routing is not in this build yet",
    ),
    (
        "lmcache-worker-timeout",
        "KV-aware routing is not in this build yet",
    ),
    (
        "prefill-model-labels",
        "disaggregated prefill is not in this build yet",
    ),
    (
        "decode-model-labels",
        "disaggregated prefill is not in this build yet",
    ),
    ("request-stats-window", "request statistics come later"),
    ("log-stats-interval", "request statistics come later"),
    ("sentry-dsn", "Sentry is not supported"),
    ("sentry-traces-sample-rate", "Sentry is not supported"),
    (
        "sentry-profile-session-sample-rate",
        "Sentry is not supported",
    ),
    ("file-storage-class", "the batch API is not supported"),
    ("file-storage-path", "the batch API is not supported"),
    ("batch-processor", "the batch API is not supported"),
    ("dynamic-config-yaml", "use --config (read at start)"),
    ("dynamic-config-json", "use --config (read at start)"),
    (
        "semantic-cache-model",
        "the semantic cache is not supported",
    ),
    ("semantic-cache-dir", "the semantic cache is not supported"),
    (
        "semantic-cache-threshold",
        "the semantic cache is not supported",
    ),
];

/// Switches (no value).
const SWITCHES: &[(&str, &str)] = &[
    (
        "static-backend-health-checks",
        "engines are always probed with GET /v1/models",
    ),
    ("log-stats", "request statistics come later"),
    (
        "otel-secure",
        "spans are exported over OTLP/HTTP, plain text",
    ),
    ("enable-batch-api", "the batch API is not supported"),
];

/// Adds the accepted-but-ignored flags to `cmd` (hidden from `--help`).
pub(crate) fn add_flags(mut cmd: Command) -> Command {
    for (name, _) in WITH_VALUE {
        cmd = cmd.arg(
            Arg::new(*name)
                .long(*name)
                .hide(true)
                .num_args(1)
                .action(ArgAction::Set),
        );
    }
    for (name, _) in SWITCHES {
        cmd = cmd.arg(
            Arg::new(*name)
                .long(*name)
                .hide(true)
                .action(ArgAction::SetTrue),
        );
    }
    cmd
}

/// One warning per ignored flag that was given.
pub(crate) fn warnings(matches: &ArgMatches) -> Vec<String> {
    let with_value = WITH_VALUE
        .iter()
        .filter(|(name, _)| matches.get_one::<String>(name).is_some());
    let switches = SWITCHES.iter().filter(|(name, _)| matches.get_flag(name));
    with_value
        .chain(switches)
        .map(|(name, why)| {
            format!("--{name} is accepted for production-stack compatibility and ignored: {why}")
        })
        .collect()
}
