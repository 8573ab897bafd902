//! Settings of the forwarder and the retry layer.

use std::time::Duration;

/// Deadlines, retries and the body limit of the request path.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Deadline to establish a connection to an engine [default: 5 s].
    pub connect_timeout: Duration,
    /// Deadline for the engine's response head [default: 600 s].
    pub first_byte_timeout: Duration,
    /// Deadline between two body chunks; no total cap, so long streams are fine
    /// [default: 300 s].
    pub idle_timeout: Duration,
    /// Other engines tried after a failure before the response starts [default: 2].
    pub retries: u32,
    /// Largest request body, in bytes [default: 32 MiB].
    pub max_body: usize,
    /// Deadline for a request's whole body to arrive, from its head [default: 30 s].
    pub body_timeout: Duration,
    /// `Authorization` value put on every forwarded request in place of the client's
    /// (the engines' own key, vLLM `--api-key`) [default: none, the client's header
    /// goes through]. Build it with [`ProxyConfig::engine_key`]; `Debug` hides it.
    pub engine_authorization: Option<http::HeaderValue>,
    /// Idle engine connections kept for reuse, over all engines (each holds a file
    /// descriptor) [default: 1024].
    pub max_idle_connections: usize,
}

impl ProxyConfig {
    /// `Bearer <key>` as [`ProxyConfig::engine_authorization`], marked sensitive;
    /// `None` for a key that cannot be a header value.
    pub fn engine_key(key: &str) -> Option<http::HeaderValue> {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(300),
            retries: 2,
            max_body: 32 << 20,
            body_timeout: Duration::from_secs(30),
            engine_authorization: None,
            max_idle_connections: 1024,
        }
    }
}
