//! The forwarder's settings as given: flags, environment variables or file keys, with
//! production-stack's names.

use llmstack_core::SettingErrors;

use crate::ProxyConfig;

/// Forwarding, retry and body-limit settings as given, every one optional so that
/// flags, their environment variables (`LLMSTACK_<FLAG>`) and a file can be layered;
/// turned into a [`ProxyConfig`] by [`ProxyArgs::resolve`]. With the `clap` feature it
/// is a `clap::Args` to flatten into a command line; file keys are the field names.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct ProxyArgs {
    /// Seconds to establish a connection to an engine [default: 5].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_CONNECT_TIMEOUT"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<f64>,
    /// Seconds to wait for an engine's response head [default: 600].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_FIRST_BYTE_TIMEOUT"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<f64>,
    /// Seconds an engine may stay silent between two chunks of a body [default: 300].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_IDLE_TIMEOUT"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<f64>,
    /// Other engines to try when one fails before answering [default: 2].
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_MAX_INSTANCE_FAILOVER_REROUTE_ATTEMPTS")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_instance_failover_reroute_attempts: Option<u32>,
    /// Largest request body accepted, in bytes [default: 33554432].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_MAX_REQUEST_BODY_BYTES"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<usize>,
    /// Seconds a client has to send a request's whole body, from its head; a slower one
    /// is answered 408 [default: 30].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_REQUEST_BODY_TIMEOUT"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body_timeout: Option<f64>,
}

// === impl ProxyArgs ===

impl ProxyArgs {
    /// The config these settings give (defaults for what is not given), recording
    /// every invalid setting in `errors`: deadlines not in (0 s, a year], a zero body
    /// limit.
    pub fn resolve(self, errors: &mut SettingErrors) -> ProxyConfig {
        let defaults = ProxyConfig::default();
        let config = ProxyConfig {
            connect_timeout: errors.seconds(
                "connect-timeout",
                self.connect_timeout,
                defaults.connect_timeout,
            ),
            first_byte_timeout: errors.seconds(
                "first-byte-timeout",
                self.first_byte_timeout,
                defaults.first_byte_timeout,
            ),
            idle_timeout: errors.seconds("idle-timeout", self.idle_timeout, defaults.idle_timeout),
            retries: self
                .max_instance_failover_reroute_attempts
                .unwrap_or(defaults.retries),
            max_body: self.max_request_body_bytes.unwrap_or(defaults.max_body),
            body_timeout: errors.seconds(
                "request-body-timeout",
                self.request_body_timeout,
                defaults.body_timeout,
            ),
            engine_authorization: None,
            max_idle_connections: defaults.max_idle_connections,
        };
        if config.max_body == 0 {
            errors.push(
                "max-request-body-bytes",
                "--max-request-body-bytes must be greater than zero",
            );
        }
        config
    }
}
