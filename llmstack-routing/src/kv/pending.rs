//! Blocks this router expects engines to announce shortly: the prompts of its own recent
//! `kvaware` decisions that the engines accepted.
//!
//! An engine announces the blocks of a prompt some milliseconds after it computed them
//! (ZMQ, then the subscriber's batch), and a streamed answer's head can come before the
//! prefill: a conversation's next turn, or a request sharing a new prefix, can arrive
//! before the index knows that the engine holds those blocks. So when an
//! engine accepts a request, the router records the prompt's full-block keys as
//! *pending* on that engine. [`KvIndex::matches`](super::KvIndex::matches) counts them as
//! held on its GPU until the engine announces them (the store confirms them) or
//! [`PENDING_TTL`] passes (the engine did not keep them).
//!
//! Pending blocks are this replica's own recent decisions, like its in-flight counts:
//! they are not shared and are not events. The index converged from events stays the same
//! on every replica.

use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;
use llmstack_core::EndpointId;
use tokio::time::{Duration, Instant};

/// How long a pending block counts: by then its engine has announced it, or did not
/// keep it. Events take milliseconds, so this is ample.
pub(crate) const PENDING_TTL: Duration = Duration::from_secs(2);

/// Pending keys kept over all engines; the oldest go first. At 32 bytes a key in the
/// table and 32 in the queue this is about 6 MiB at most.
pub(crate) const MAX_PENDING: usize = 1 << 16;

/// See the [module](self).
///
/// Each engine with pending blocks has a *tag*: a number never given out twice (until
/// 2³² forgets). Forgetting an engine drops its tag, which turns all its entries dead
/// at once without a scan; the dead entries leave with the queue.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// (block key, engine tag) → when it was last recorded.
    entries: HashMap<(u64, u32), Instant, RandomState>,
    /// Every recording in order, so in expiry order (one TTL for all). A recording
    /// whose time is no longer its entry's (recorded again, confirmed, forgotten) is
    /// stale and only leaves the queue.
    queue: VecDeque<(u64, u32, Instant)>,
    /// Engine → its current tag.
    tags: HashMap<EndpointId, u32, RandomState>,
    next_tag: u32,
}

// === impl Pending ===

impl Pending {
    /// Whether no block is pending (the matcher's fast path).
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Recordings held, stale ones included: what [`MAX_PENDING`] bounds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// `endpoint`'s current tag, if it has pending blocks.
    pub(super) fn tag(&self, endpoint: &EndpointId) -> Option<u32> {
        self.tags.get(endpoint).copied()
    }

    /// The engines with pending blocks, and their tags.
    pub(super) fn tags(&self) -> impl Iterator<Item = (&EndpointId, u32)> {
        self.tags.iter().map(|(id, &tag)| (id, tag))
    }

    /// Whether block `key` is pending on the engine tagged `tag` at `now`.
    pub(super) fn holds(&self, key: u64, tag: u32, now: Instant) -> bool {
        self.entries
            .get(&(key, tag))
            .is_some_and(|&at| now.saturating_duration_since(at) < PENDING_TTL)
    }

    /// Records `keys` as pending on `endpoint` at `now`, dropping expired recordings
    /// and then the oldest beyond [`MAX_PENDING`]. O(keys), amortized.
    pub(super) fn insert(&mut self, endpoint: &EndpointId, keys: &[u64], now: Instant) {
        self.expire(now);
        if keys.is_empty() {
            return;
        }
        let tag = match self.tags.get(endpoint) {
            Some(&tag) => tag,
            None => {
                let tag = self.next_tag;
                self.next_tag = self.next_tag.wrapping_add(1);
                self.tags.insert(endpoint.clone(), tag);
                tag
            }
        };
        // A prompt longer than the cap keeps its first blocks: the ones later turns
        // share. Room is made first, so the tables never grow past the cap.
        let keys = &keys[..keys.len().min(MAX_PENDING)];
        while self.queue.len() + keys.len() > MAX_PENDING {
            self.pop();
        }
        for &key in keys {
            // Recorded again at the same instant: one recording covers both.
            if self.entries.insert((key, tag), now) != Some(now) {
                self.queue.push_back((key, tag, now));
            }
        }
    }

    /// The engine tagged `tag` announced block `key`: the index holds it now, and its
    /// removal must count from here on.
    pub(super) fn confirm(&mut self, key: u64, tag: u32) {
        self.entries.remove(&(key, tag));
    }

    /// Drops `endpoint`'s pending blocks (its cache was cleared, its source reset, or
    /// it is gone). O(1): its tag dies with it.
    pub(super) fn forget(&mut self, endpoint: &EndpointId) {
        self.tags.remove(endpoint);
    }

    /// Drops the recordings older than [`PENDING_TTL`].
    pub(super) fn expire(&mut self, now: Instant) {
        while self
            .queue
            .front()
            .is_some_and(|&(_, _, at)| now.saturating_duration_since(at) >= PENDING_TTL)
        {
            self.pop();
        }
        if self.queue.is_empty() && !self.tags.is_empty() {
            // Nothing pending: forget the tags too, so they cannot pile up.
            self.entries.clear();
            self.tags.clear();
        }
    }

    fn pop(&mut self) {
        if let Some((key, tag, at)) = self.queue.pop_front()
            && self.entries.get(&(key, tag)) == Some(&at)
        {
            self.entries.remove(&(key, tag));
        }
    }

    /// Bytes allocated for the tables.
    pub(super) fn memory_bytes(&self) -> usize {
        super::holders::table_bytes::<((u64, u32), Instant)>(self.entries.capacity())
            + self.queue.capacity() * std::mem::size_of::<(u64, u32, Instant)>()
            + super::holders::table_bytes::<(EndpointId, u32)>(self.tags.capacity())
    }
}
