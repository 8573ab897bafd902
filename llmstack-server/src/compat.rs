//! production-stack router flags this router has no setting of its own for: the ones
//! whose effect there is none here either are accepted (production-stack's command
//! lines start unchanged), the others stop the start with what to do instead. The full
//! table, with the flags that work as they do there: docs/production-stack.md.

use clap::{Arg, ArgAction, ArgMatches, Command};

/// What happens to a flag.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Accepted without effect: production-stack's own effect is none in that setting,
    /// or is what this router always does. The text says why (logged at debug level).
    Accepted(&'static str),
    /// Refused at start with this text: what to use instead.
    Refused(&'static str),
}

use Fate::{Accepted, Refused};

/// Flags taking a value.
const WITH_VALUE: &[(&str, Fate)] = &[
    (
        "request-rewriter",
        Accepted("`noop` is production-stack's only rewriter: requests are forwarded unchanged"),
    ),
    (
        "static-model-types",
        Accepted("engines are probed with GET /health and /v1/models, which need no model type"),
    ),
    (
        "log-stats-interval",
        Accepted(
            "--log-stats only logs; engine and router statistics are on /engines and /metrics",
        ),
    ),
    (
        "file-storage-class",
        Accepted("only used by the batch API (--enable-batch-api), which is refused"),
    ),
    (
        "file-storage-path",
        Accepted("only used by the batch API (--enable-batch-api), which is refused"),
    ),
    (
        "batch-processor",
        Accepted("only used by the batch API (--enable-batch-api), which is refused"),
    ),
    (
        "semantic-cache-model",
        Accepted("only used with --feature-gates SemanticCache=true, which is refused"),
    ),
    (
        "semantic-cache-dir",
        Accepted("only used with --feature-gates SemanticCache=true, which is refused"),
    ),
    (
        "semantic-cache-threshold",
        Accepted("only used with --feature-gates SemanticCache=true, which is refused"),
    ),
    (
        "callbacks",
        Refused(
            "Python callbacks cannot run in this router: put the logic in a tower layer of \
             a gateway embedding llmstack-routing, or in front of the router",
        ),
    ),
    (
        "external-providers-config",
        Refused(
            "external providers are not supported: list OpenAI-compatible servers as \
             --static-backends (with --static-models) instead",
        ),
    ),
    (
        "kv-aware-threshold",
        Refused(
            "llmstack's kvaware weighs each engine's cached tokens (from vLLM's KV events) \
             against its load; there is no threshold: remove the flag",
        ),
    ),
    (
        "lmcache-controller-port",
        Refused(
            "llmstack's kvaware subscribes to vLLM's KV events, not an LMCache controller: \
             remove the flag and start vLLM with --kv-events-config (see --kv-events-port)",
        ),
    ),
    (
        "lmcache-controller-reply-port",
        Refused(
            "llmstack's kvaware subscribes to vLLM's KV events, not an LMCache controller: \
             remove the flag (see --kv-events-replay-port)",
        ),
    ),
    (
        "lmcache-controller-heartbeat-port",
        Refused(
            "llmstack's kvaware subscribes to vLLM's KV events, not an LMCache controller: \
             remove the flag",
        ),
    ),
    (
        "lmcache-health-check-interval",
        Refused(
            "llmstack's kvaware subscribes to vLLM's KV events, not an LMCache controller: \
             remove the flag (engines are probed every --static-backend-health-check-interval)",
        ),
    ),
    (
        "lmcache-worker-timeout",
        Refused(
            "llmstack's kvaware subscribes to vLLM's KV events, not an LMCache controller: \
             remove the flag",
        ),
    ),
    (
        "prefill-model-labels",
        Refused(
            "disaggregated prefill is not in llmstack yet: serve with --routing-logic \
             prefixaware or kvaware",
        ),
    ),
    (
        "decode-model-labels",
        Refused(
            "disaggregated prefill is not in llmstack yet: serve with --routing-logic \
             prefixaware or kvaware",
        ),
    ),
    (
        "request-stats-window",
        Refused(
            "llmstack routes on live in-flight counts, not a windowed QPS, and exports \
             histograms (llmstack_request_duration_seconds) to window in PromQL: remove \
             the flag",
        ),
    ),
    (
        "sentry-dsn",
        Refused("Sentry is not supported: export traces with --otel-endpoint instead"),
    ),
    (
        "sentry-traces-sample-rate",
        Refused("Sentry is not supported: export traces with --otel-endpoint instead"),
    ),
    (
        "sentry-profile-session-sample-rate",
        Refused("Sentry is not supported: export traces with --otel-endpoint instead"),
    ),
];

/// Switches (no value).
const SWITCHES: &[(&str, Fate)] = &[
    (
        "static-backend-health-checks",
        Accepted("engines are always probed (GET /health and /v1/models)"),
    ),
    (
        "log-stats",
        Accepted("it only logs; engine and router statistics are on /engines and /metrics"),
    ),
    (
        "enable-batch-api",
        Refused(
            "the files and batch API is not supported (production-stack's fails to start \
             with it): send the requests with a batch client such as `vllm run-batch`",
        ),
    ),
];

/// Adds the production-stack flags without a setting here to `cmd` (hidden from
/// `--help`), and `--feature-gates`.
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
    cmd.arg(
        Arg::new("feature-gates")
            .long("feature-gates")
            .hide(true)
            .num_args(1)
            .action(ArgAction::Set),
    )
}

/// Checks the production-stack flags given: notes for the accepted ones (to log), or
/// the first refusal's text.
pub(crate) fn check(matches: &ArgMatches) -> Result<Vec<String>, String> {
    let with_value = WITH_VALUE
        .iter()
        .filter(|(name, _)| matches.get_one::<String>(name).is_some());
    let switches = SWITCHES.iter().filter(|(name, _)| matches.get_flag(name));
    let mut notes = Vec::new();
    for (name, fate) in with_value.chain(switches) {
        match fate {
            Accepted(why) => notes.push(format!("--{name} is accepted without effect: {why}")),
            Refused(what) => return Err(format!("--{name}: {what}")),
        }
    }
    if let Some(rewriter) = matches.get_one::<String>("request-rewriter") {
        request_rewriter(Some(rewriter)).map_err(|e| format!("--request-rewriter {e}"))?;
    }
    if let Some(gates) = matches.get_one::<String>("feature-gates") {
        feature_gates(gates)?;
    }
    Ok(notes)
}

/// production-stack's only request rewriter, `noop`, is what this router does: any
/// other is refused.
fn request_rewriter(name: Option<&str>) -> Result<(), String> {
    match name {
        Some("noop") => Ok(()),
        Some(other) => Err(format!(
            "`{other}`: production-stack's only rewriter is `noop`"
        )),
        None => Err("expects a rewriter name: production-stack's only one is `noop`".into()),
    }
}

/// `Name=true|false,...`: any gate off is what this router does; `SemanticCache=true`
/// (production-stack's only gate) is refused.
fn feature_gates(gates: &str) -> Result<(), String> {
    for gate in gates.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let Some((name, on)) = gate.split_once('=') else {
            return Err(format!(
                "--feature-gates: `{gate}` is not `Name=true` or `Name=false`"
            ));
        };
        match on.trim().to_ascii_lowercase().as_str() {
            "false" => {}
            "true" if name.trim() == "SemanticCache" => {
                return Err(
                    "--feature-gates SemanticCache=true: the semantic cache is not \
                            supported: remove the gate"
                        .into(),
                );
            }
            "true" => {
                return Err(format!(
                    "--feature-gates: unknown gate `{}` (production-stack's only gate is \
                     SemanticCache)",
                    name.trim()
                ));
            }
            _ => {
                return Err(format!(
                    "--feature-gates: `{gate}` is not `Name=true` or `Name=false`"
                ));
            }
        }
    }
    Ok(())
}

/// Every flag name handled here with whether it is accepted (for the docs test).
#[cfg(test)]
pub(crate) fn all() -> impl Iterator<Item = (&'static str, bool)> {
    WITH_VALUE
        .iter()
        .chain(SWITCHES)
        .map(|(name, fate)| (*name, matches!(fate, Accepted(_))))
        .chain([("feature-gates", true)])
}

/// A settings-file key (a flag name with underscores) that is one of these flags:
/// `Ok(Some(note))` when accepted (or `false`/`null` for a switch: not given),
/// `Err(text)` when refused, `Ok(None)` when it is no such flag.
pub(crate) fn file_key(key: &str, value: &serde_yaml_ng::Value) -> Result<Option<String>, String> {
    let flag = key.replace('_', "-");
    let off = matches!(
        value,
        serde_yaml_ng::Value::Null | serde_yaml_ng::Value::Bool(false)
    );
    if flag == "feature-gates" {
        return match value.as_str() {
            Some(gates) => feature_gates(gates).map(|()| Some(format!("{key}: accepted"))),
            None if off => Ok(Some(format!("{key}: not set"))),
            None => Err(format!(
                "{key}: expected a string such as `SemanticCache=false`"
            )),
        };
    }
    let Some((name, fate)) = WITH_VALUE
        .iter()
        .chain(SWITCHES)
        .find(|(name, _)| *name == flag)
    else {
        return Ok(None);
    };
    if off {
        return Ok(Some(format!("{key}: not set")));
    }
    if *name == "request-rewriter" {
        request_rewriter(value.as_str()).map_err(|e| format!("{key} {e}"))?;
    }
    match fate {
        Accepted(why) => Ok(Some(format!("{key} is accepted without effect: {why}"))),
        Refused(what) => Err(format!("{key}: {what}")),
    }
}
