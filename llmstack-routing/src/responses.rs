//! Which engine created each response of the Responses API: `GET /v1/responses/{id}`,
//! its cancel route and `previous_response_id` follow-ups must reach that engine, the
//! only one holding the response (vLLM keeps it in the server's memory).
//!
//! The map is per router replica: an id is learned from the answer to the
//! `POST /v1/responses` this replica forwarded (the first `"id"` of the JSON body, or of
//! the first streamed event, `response.created`). Behind several replicas, a client
//! following up through another replica gets a 404 naming the way out (`?id=<engine>`),
//! or keeps its replica with session affinity on the Service.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use llmstack_core::EndpointId;

/// Responses remembered by default (about 100 bytes each).
pub const DEFAULT_RESPONSES: usize = 100_000;

/// Bytes of a response read for its id before giving up (the id comes first in vLLM's
/// bodies and events).
const SCAN_LIMIT: usize = 8 * 1024;

/// Response id → the engine that created it, bounded: the oldest ids are forgotten
/// first once `capacity` are held.
#[derive(Debug)]
pub(crate) struct ResponseOwners {
    inner: Mutex<Owners>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Owners {
    by_id: HashMap<Box<str>, EndpointId>,
    order: VecDeque<Box<str>>,
}

impl ResponseOwners {
    /// An empty map holding at most `capacity` ids.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Owners::default()),
            capacity,
        }
    }

    /// Records that `engine` created response `id`.
    pub(crate) fn record(&self, id: &str, engine: EndpointId) {
        if self.capacity == 0 {
            return;
        }
        let mut o = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if o.by_id.insert(id.into(), engine).is_none() {
            o.order.push_back(id.into());
        }
        while o.order.len() > self.capacity {
            if let Some(old) = o.order.pop_front() {
                o.by_id.remove(&old);
            }
        }
    }

    /// The engine that created response `id`, if this replica saw it created.
    pub(crate) fn owner(&self, id: &str) -> Option<EndpointId> {
        let o = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        o.by_id.get(id).cloned()
    }

    /// Ids held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .len()
    }
}

/// Reads a response's id from the first bytes of the engine's answer to
/// `POST /v1/responses`, then records it for the engine.
pub(crate) struct Capture {
    owners: Arc<ResponseOwners>,
    engine: EndpointId,
    seen: Vec<u8>,
}

impl Capture {
    /// Captures for `engine`.
    pub(crate) fn new(owners: Arc<ResponseOwners>, engine: EndpointId) -> Self {
        Self {
            owners,
            engine,
            seen: Vec::new(),
        }
    }

    /// Reads the next bytes of the body; `true` once done (the id was recorded, or
    /// none came within the scan limit).
    pub(crate) fn feed(&mut self, data: &[u8]) -> bool {
        let take = data.len().min(SCAN_LIMIT.saturating_sub(self.seen.len()));
        self.seen.extend_from_slice(&data[..take]);
        if let Some(id) = first_id(&self.seen) {
            self.owners.record(id, self.engine.clone());
            return true;
        }
        self.seen.len() >= SCAN_LIMIT
    }
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// The string value of the first `"id"` key in `json` (whitespace allowed around the
/// colon); `None` until it has arrived whole. Ids are plain ASCII (`resp_…`); one with
/// an escape is not taken.
fn first_id(json: &[u8]) -> Option<&str> {
    let at = memchr::memmem::find(json, b"\"id\"")?;
    let rest = &json[at + 4..];
    let rest = rest.trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[end] != b'"' || end == 0 {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_a_body_or_an_event() {
        assert_eq!(
            first_id(br#"{"id":"resp_1","object":"response"}"#),
            Some("resp_1")
        );
        assert_eq!(
            first_id(b"event: response.created\ndata: {\"response\": {\"id\" : \"resp_2\", \"output\": [{\"id\":\"msg_1\"}]}}"),
            Some("resp_2")
        );
        // Not whole yet.
        assert_eq!(first_id(br#"{"id":"resp_"#), None);
        assert_eq!(first_id(br#"{"id""#), None);
        assert_eq!(first_id(br#"{"object":"x"}"#), None);
    }

    #[test]
    fn the_oldest_ids_are_forgotten_first() {
        let owners = ResponseOwners::new(2);
        let owner = |id| owners.owner(id).map(|e| e.as_str().to_owned());
        owners.record("a", EndpointId::new("e1"));
        owners.record("b", EndpointId::new("e2"));
        owners.record("a", EndpointId::new("e3")); // a known id moves to its new engine
        assert_eq!(owner("a").as_deref(), Some("e3"));
        owners.record("c", EndpointId::new("e1"));
        assert_eq!(owners.len(), 2);
        assert_eq!(owner("a"), None);
        assert_eq!(owner("b").as_deref(), Some("e2"));
        assert_eq!(owner("c").as_deref(), Some("e1"));
    }
}
