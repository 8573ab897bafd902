//! What the subscriber knows about each publisher, for `/engines`-style views.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use llmstack_core::EndpointId;
use llmstack_core::kv::KvSource;

/// Where a publisher's subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvSourceState {
    /// Asking the engine where it publishes (`GET /kv_event_sources`).
    #[default]
    Discovering,
    /// The engine publishes no KV events (none reported, no port configured); asked
    /// again every discovery interval.
    Unavailable,
    /// Connecting the SUB socket.
    Connecting,
    /// Subscribed: batches are applied as they arrive.
    Connected,
    /// Waiting before the next attempt after a failure or a lost connection.
    Backoff,
}

/// One publisher (an engine's data-parallel rank) as its subscriber sees it. Counters
/// start at zero when the engine enters the endpoint set.
#[derive(Debug, Clone, PartialEq)]
pub struct KvSourceStatus {
    /// The engine and rank.
    pub source: KvSource,
    /// The ZMQ endpoint subscribed to (`None` until discovered).
    pub publisher: Option<String>,
    /// Where the subscription stands.
    pub state: KvSourceState,
    /// Sequence number of the last batch applied.
    pub last_seq: Option<u64>,
    /// Batches applied (live and replayed).
    pub batches: u64,
    /// Events applied.
    pub events: u64,
    /// Sequence gaps seen (batches lost between two received ones).
    pub gaps: u64,
    /// Replays asked for (to fill a gap, or to catch up with a publisher seen anew).
    pub replays: u64,
    /// Times the sink was told to forget this source.
    pub resets: u64,
    /// Batches that could not be decoded.
    pub decode_errors: u64,
    /// Seconds between the last applied batch's publish time and its application.
    pub last_lag_seconds: Option<f64>,
    /// The last connection or discovery failure, if any since the last success.
    pub last_error: Option<String>,
}

/// Every source's status, shared by the engine tasks and readers; one short lock per
/// update.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sources: Mutex<HashMap<KvSource, KvSourceStatus>>,
}

// === impl KvSourceState ===

impl KvSourceState {
    /// The state's name: `discovering`, `unavailable`, `connecting`, `connected` or
    /// `backoff`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discovering => "discovering",
            Self::Unavailable => "unavailable",
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Backoff => "backoff",
        }
    }
}

// === impl KvSourceStatus ===

impl KvSourceStatus {
    /// A source not discovered yet.
    pub fn new(source: KvSource) -> Self {
        Self {
            source,
            publisher: None,
            state: KvSourceState::Discovering,
            last_seq: None,
            batches: 0,
            events: 0,
            gaps: 0,
            replays: 0,
            resets: 0,
            decode_errors: 0,
            last_lag_seconds: None,
            last_error: None,
        }
    }
}

// === impl Registry ===

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KvSource, KvSourceStatus>> {
        // A panic elsewhere leaves counters that are still worth reading.
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Updates `source`'s status, creating it if needed.
    pub(crate) fn update(&self, source: &KvSource, f: impl FnOnce(&mut KvSourceStatus)) {
        let mut sources = self.lock();
        match sources.get_mut(source) {
            Some(status) => f(status),
            None => {
                let mut status = KvSourceStatus::new(source.clone());
                f(&mut status);
                sources.insert(source.clone(), status);
            }
        }
    }

    /// Sets the state of every source of `endpoint`.
    pub(crate) fn set_state(&self, endpoint: &EndpointId, state: KvSourceState) {
        for status in self.lock().values_mut() {
            if status.source.endpoint == *endpoint {
                status.state = state;
            }
        }
    }

    /// Keeps only the sources of `endpoint` whose rank `keep` accepts.
    pub(crate) fn retain(&self, endpoint: &EndpointId, keep: impl Fn(u32) -> bool) {
        self.lock()
            .retain(|s, _| s.endpoint != *endpoint || keep(s.dp_rank));
    }

    /// Every source's status, ordered by engine and rank.
    pub(crate) fn snapshot(&self) -> Vec<KvSourceStatus> {
        let mut all: Vec<KvSourceStatus> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.source.cmp(&b.source));
        all
    }
}
