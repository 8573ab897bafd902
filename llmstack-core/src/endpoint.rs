//! One engine as the router knows it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use serde_json::{Map, Value};

/// The identity of an endpoint: a short opaque name, stable for as long as the
/// discovery source keeps describing the same engine (never a raw URL).
///
/// Cloning is cheap (a reference count). Compared, ordered and hashed by the name.
#[derive(Clone)]
pub struct EndpointId {
    name: Arc<str>,
    /// FNV-1a of the name, computed once.
    hash: u64,
}

impl PartialEq for EndpointId {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.name == other.name
    }
}

impl Eq for EndpointId {}

impl PartialOrd for EndpointId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EndpointId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(&other.name)
    }
}

impl std::hash::Hash for EndpointId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// What an engine does in a disaggregated (prefill/decode) deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A whole engine (the default).
    #[default]
    Any,
    /// Runs prefills only.
    Prefill,
    /// Runs decodes only.
    Decode,
}

/// Whether an endpoint may receive traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Discovered but not probed yet. Routable (discovery vouched for it) but not
    /// counted as ready by the router's readiness check.
    #[default]
    Pending,
    /// The last probe succeeded.
    Ready,
    /// The last probe failed: never routed to.
    Unready,
}

/// One model an endpoint serves: a base model or a LoRA adapter (which has a parent).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    /// The model name requests use.
    pub id: String,
    /// For a LoRA adapter, the base model it extends.
    pub parent: Option<String>,
    /// The engine's whole `/v1/models` card (`max_model_len`, `root`, …), kept verbatim
    /// for the router's own `/v1/models`. Empty when the model was configured, not probed.
    pub card: Map<String, Value>,
}

/// An engine: its id, where it listens, what it serves and how it is labelled.
///
/// Immutable once built; a new version of an endpoint is a new value with the same id.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The endpoint's identity.
    pub id: EndpointId,
    /// Base URL (`http://host:port` plus an optional path prefix).
    pub url: Uri,
    /// Models served, LoRA adapters included.
    pub models: Vec<ModelCard>,
    /// Free-form labels (Kubernetes labels, `--static-model-labels`).
    pub labels: BTreeMap<String, String>,
    /// Prefill/decode role.
    pub role: Role,
    /// Whether it may receive traffic.
    pub state: EndpointState,
}

// === impl EndpointId ===

impl EndpointId {
    /// An id from any string.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        let name: Arc<str> = id.into();
        Self {
            hash: fnv1a(name.bytes()),
            name,
        }
    }

    /// The id derived from a base URL: `e` + 8 hex digits of a stable hash (FNV-1a) of
    /// the URL, so the same URL gets the same id on every start and in every replica.
    pub fn for_url(url: &Uri) -> Self {
        let hash = fnv1a(url.to_string().trim_end_matches('/').bytes());
        Self::new(format!("e{:08x}", (hash >> 32) ^ (hash & 0xffff_ffff)))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// A 64-bit hash of the id (FNV-1a of its text): the same in every process and
    /// version, so policies hashing it (session affinity) agree across router replicas.
    pub fn stable_hash(&self) -> u64 {
        self.hash
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl serde::Serialize for EndpointId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

// === impl ModelCard ===

impl ModelCard {
    /// A base model known only by name (configured, not probed).
    pub fn named(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            parent: None,
            card: Map::new(),
        }
    }

    /// A card from one entry of an engine's `/v1/models` `data` list; `None` when the
    /// entry has no string `id`.
    pub fn from_card(card: Map<String, Value>) -> Option<Self> {
        let id = card.get("id")?.as_str()?.to_owned();
        let parent = card
            .get("parent")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(Self { id, parent, card })
    }

    /// Whether this is a LoRA adapter.
    pub fn is_adapter(&self) -> bool {
        self.parent.is_some()
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// An endpoint at `url` with the id derived from the URL, no models, no labels,
    /// role [`Role::Any`] and state [`EndpointState::Pending`].
    pub fn new(url: Uri) -> Self {
        Self {
            id: EndpointId::for_url(&url),
            url,
            models: Vec::new(),
            labels: BTreeMap::new(),
            role: Role::Any,
            state: EndpointState::Pending,
        }
    }

    /// Adds a base model known by name.
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        let model = model.into();
        if !self.serves(&model) {
            self.models.push(ModelCard::named(model));
        }
        self
    }

    /// Sets the state.
    #[must_use]
    pub fn with_state(mut self, state: EndpointState) -> Self {
        self.state = state;
        self
    }

    /// Whether the endpoint serves `model` (a base model or an adapter).
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.id == model)
    }

    /// Whether requests may be sent to it.
    pub fn is_routable(&self) -> bool {
        self.state != EndpointState::Unready
    }

    /// The URI of `path_and_query` on this endpoint (the base URL's path is a prefix).
    ///
    /// `None` when the base URL has no authority or the joined path is not a valid URI
    /// path (discovery only builds endpoints from absolute `http(s)` URLs).
    pub fn uri_for(&self, path_and_query: &str) -> Option<Uri> {
        let scheme = self.url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = self.url.authority()?.clone();
        let pq = self.path_for(path_and_query).ok()?;
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(pq)
            .build()
            .ok()
    }

    /// `path_and_query` under the base URL's path prefix, as an origin-form request
    /// target. Fails when the joined text is not a valid URI path.
    pub fn path_for(&self, path_and_query: &str) -> Result<PathAndQuery, http::uri::InvalidUri> {
        let prefix = self.url.path().trim_end_matches('/');
        if prefix.is_empty() {
            PathAndQuery::try_from(path_and_query)
        } else {
            PathAndQuery::try_from(format!("{prefix}{path_and_query}"))
        }
    }

    /// The authority (`host:port`) requests carry as `Host`.
    pub fn authority(&self) -> Option<&Authority> {
        self.url.authority()
    }
}
