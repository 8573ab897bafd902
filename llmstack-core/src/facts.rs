//! Facts one layer of the request path leaves for another, in request or response
//! extensions, so that no layer parses a request twice or depends on another's crate.
//!
//! | type | put by | on | read by |
//! |---|---|---|---|
//! | [`RoutedTo`] | the routing layer | the request | the forwarder |
//! | [`Exclude`] | the retry layer | the request | the routing layer (never the same engine twice) |
//! | [`Avoid`] | outlier ejection | the request | the routing layer (other engines first) |
//! | [`RouteFacts`] | the routing layer | the response (also error responses) | accounting, retry |
//! | [`UpstreamFailure`] | the forwarder | the error response | retry, accounting |
//! | [`SeenModel`] | accounting (empty), filled by the routing layer | the request | accounting, even when the client left before any response |
//! | [`Tenant`] | authentication (an API key's tenant) | the request | rate limits, admission |
//! | [`HeldUntilDone`] | admission (its permit) | the request | the routing layer, which keeps it in the response body |
//! | [`OnUsage`] | a layer inside accounting that wants the token usage (rate limits) | the response | accounting, which calls it once the body ends |

use std::sync::{Arc, OnceLock};

use crate::{Endpoint, EndpointId, Error};

/// Where the routing layer sent a request: in the request's extensions for the service
/// that forwards it.
#[derive(Debug, Clone)]
pub struct RoutedTo {
    /// Where to send the request.
    pub endpoint: Arc<Endpoint>,
    /// Prompt tokens the engine probably has cached.
    pub cached_tokens: u32,
}

/// Engines that already failed this request: the routing layer never picks them again.
/// Put in the request's extensions by a retry layer.
#[derive(Debug, Clone, Default)]
pub struct Exclude(pub Vec<EndpointId>);

/// Engines to pass over while another candidate serves the request (ejected outliers):
/// put in the request's extensions by an outlier-ejection layer; the routing layer
/// still picks one of them when no other candidate is left.
#[derive(Debug, Clone, Default)]
pub struct Avoid(pub Vec<EndpointId>);

/// What the routing layer learnt and decided, in the extensions of every response that
/// went through it (routing errors included), for the layers outside it.
#[derive(Debug, Clone)]
pub struct RouteFacts {
    /// The requested model, only when some engine serves or served it (a bounded set:
    /// client strings never become metric labels).
    pub model: Option<Arc<str>>,
    /// The policy's name (`roundrobin`, `prefixaware`, …).
    pub policy: &'static str,
    /// Why this engine: `pinned`, `cached` (a prefix hit) or `picked`; for a routing
    /// error, the error's [`Error::label`].
    pub reason: &'static str,
    /// The engine the request went to, if routing succeeded.
    pub engine: Option<EndpointId>,
    /// Prompt tokens the router expected the engine to find in its prefix cache, for
    /// a cache-aware policy (`prefixaware`, `kvaware`); `None` for policies that do
    /// not predict. Compared with what engines report (`cached_tokens`) to tell
    /// whether cache-aware routing sees what the engines hold.
    pub predicted_cached_tokens: Option<u32>,
}

/// The forwarder's failure, in the extensions of the error response it answered with:
/// which engine failed, how, and whether another engine may be tried.
#[derive(Debug, Clone)]
pub struct UpstreamFailure {
    /// The engine that failed.
    pub endpoint: EndpointId,
    /// [`Error::label`] of the failure (`connect`, `upstream`, `timeout`).
    pub kind: &'static str,
    /// [`Error::is_retryable`]: no answer of the engine reached the router, so the
    /// request may go to another one.
    pub retryable: bool,
}

/// A slot for the request's model, filled by the routing layer once it knows some engine
/// serves or served the model (a bounded set, fit for metric labels). An outer layer
/// puts an empty one in the request's extensions and reads it when the request ends,
/// including when the client left before any response: the response's
/// [`RouteFacts`] never reach it then. Clones share the slot.
#[derive(Debug, Clone, Default)]
pub struct SeenModel(Arc<OnceLock<Arc<str>>>);

/// Something kept until the request's response body ends (an admission permit): put
/// in the request's extensions by an outer layer; the routing layer moves it into the
/// response body, which drops it when it ends, fails or is dropped (an error answered
/// without an engine drops it at once). Clones share it.
#[derive(Clone)]
pub struct HeldUntilDone(pub Arc<dyn Send + Sync>);

impl std::fmt::Debug for HeldUntilDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldUntilDone")
    }
}

/// Who is asking: the tenant an API key belongs to, with its priority class and rate
/// limits. Put in the request's extensions by an authentication layer; cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The tenant's name (a bounded set: the operator's keys file names them).
    pub name: Arc<str>,
    /// Its priority class.
    pub priority: Priority,
    /// Requests per minute it may send, if limited.
    pub rpm: Option<u64>,
    /// Tokens (prompt and completion) per minute it may use, if limited.
    pub tpm: Option<u64>,
}

/// A request's priority class: under contention a higher class is served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Served before the others.
    High,
    /// The default.
    #[default]
    Normal,
    /// Served when nothing else waits.
    Low,
}

/// The token usage of one request, as its response showed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// `usage.prompt_tokens` (or `input_tokens`), when the response had it.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens` (or `output_tokens`), when the response had it.
    pub completion_tokens: Option<u64>,
    /// Content-bearing stream events seen (about one token each), for streams without
    /// `usage`.
    pub content_events: u64,
}

/// Told the token usage of a request once its response body ends, fails or is dropped:
/// a layer inside accounting puts it in the response's extensions, and accounting
/// (`llmstack-metrics`' `Account`) calls it exactly once, for responses from an
/// engine. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct OnUsage(Arc<dyn Fn(Usage) + Send + Sync>);

// === impl OnUsage ===

impl OnUsage {
    /// A hook that calls `f`.
    pub fn new(f: impl Fn(Usage) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Reports `usage`.
    pub fn report(&self, usage: Usage) {
        (self.0)(usage);
    }
}

impl std::fmt::Debug for OnUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnUsage")
    }
}

// === impl Priority ===

impl Priority {
    /// Every class, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// Its name: `high`, `normal` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(Self::High),
            "normal" => Ok(Self::Normal),
            "low" => Ok(Self::Low),
            other => Err(format!("priority `{other}` is not high, normal or low")),
        }
    }
}

// === impl SeenModel ===

impl SeenModel {
    /// Fills the slot; the first value stays (retries name the same model).
    pub fn set(&self, model: Arc<str>) {
        let _first_stays = self.0.set(model);
    }

    /// The model, once known.
    pub fn get(&self) -> Option<&Arc<str>> {
        self.0.get()
    }
}

// === impl UpstreamFailure ===

impl UpstreamFailure {
    /// The failure that `err` (an error about `endpoint`) describes.
    pub fn of(endpoint: EndpointId, err: &Error) -> Self {
        Self {
            endpoint,
            kind: err.label(),
            retryable: err.is_retryable(),
        }
    }
}
