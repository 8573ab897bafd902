//! Forwards routed requests to vLLM engines and streams the answers back: the
//! innermost [`Forward`] service, plus the layers around routing that every router
//! needs ([`RetryLayer`], [`ReadBodyLayer`], [`RequestIdLayer`]).
//!
//! It sits at both ends of the request path. Outside the routing layer
//! (`llmstack-routing`'s `RouteLayer`), [`RequestIdLayer`] names the request and
//! [`ReadBodyLayer`] reads its body (bounded) so routing can look at it;
//! [`RetryLayer`] sends a request whose engine failed before answering to another one.
//! Inside it, [`Forward`] takes the engine routing chose (the
//! [`RoutedTo`](llmstack_core::RoutedTo) extension) and does the HTTP:
//!
//! ```text
//!  RequestId → (Accounting, llmstack-metrics) → ReadBody → Retry → Route (llmstack-routing) → Forward
//! ```
//!
//! | behaviour | where |
//! |---|---|
//! | pooled HTTP/1 engine connections driven from the request's task | `pool.rs` |
//! | request target, headers, first-byte deadline, error responses | `forward.rs` |
//! | streaming pass-through, coalesced writes, idle deadline, SSE error termination | `body.rs` |
//! | hop-by-hop headers, `X-Request-Id` | `headers.rs`, `request_id.rs` |
//! | retry before the first byte, never on the engine that failed | `retry.rs` |
//! | body limit (413) | `read_body.rs` |
//! | W3C trace context in and out (feature `otel`) | `otel.rs` |
//!
//! Failures are answered, never raised: every service here has the OpenAI error
//! response ([`Error::to_response`](llmstack_core::Error::to_response)) as its one
//! mapping from error to HTTP, and leaves an
//! [`UpstreamFailure`](llmstack_core::UpstreamFailure) extension for the retry layer.

mod args;
mod body;
mod config;
mod forward;
mod headers;
#[cfg(feature = "otel")]
mod otel;
mod pool;
mod read_body;
mod request_id;
mod retry;

use std::sync::atomic::AtomicU64;

pub use args::ProxyArgs;
pub use body::ForwardBody;
pub use config::ProxyConfig;
pub use forward::{Forward, ForwardFuture};
pub use headers::{REQUEST_ID, request_id, strip_hop_by_hop};
pub use read_body::{ReadBody, ReadBodyFuture, ReadBodyLayer};
pub use request_id::{RequestId, RequestIdFuture, RequestIdLayer};
pub use retry::{Retry, RetryFuture, RetryLayer};

/// Router-wide event counts of the request path, for a health view (the same events
/// are also Prometheus series).
#[derive(Debug, Default)]
pub struct Counters {
    /// Attempts sent to another engine after a failure ([`RetryLayer::counting`]).
    pub retries: AtomicU64,
    /// Engine responses that broke off mid-body.
    pub broken_streams: AtomicU64,
    /// Deadlines missed (first byte or idle).
    pub timeouts: AtomicU64,
}
