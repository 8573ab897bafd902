//! The prefix index itself: its nodes and tables, and what it answers: which engines
//! hold how much of a prompt's chain.

use std::collections::HashMap;
use std::fmt;

use hashbrown::HashTable;
use llmstack_core::EndpointId;

use super::config::PrefixConfig;

/// No node: the end of a list.
pub(super) const NIL: u32 = u32::MAX;

/// The key of a (chunk hash, engine slot) pair in [`PrefixIndex::pairs`].
pub(super) fn pair_key(hash: u64, slot: u32) -> u64 {
    hash ^ u64::from(slot)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// One (prefix chunk, engine) pair: 24 bytes.
#[derive(Clone, Copy)]
pub(super) struct Node {
    pub(super) hash: u64,
    pub(super) slot: u32,
    /// Toward the engine's most recently used chunk.
    pub(super) prev: u32,
    /// Toward its least recently used chunk.
    pub(super) next: u32,
    /// The next engine holding the same hash (a circular list: the last points back to
    /// the first).
    pub(super) holder_next: u32,
}

/// One engine's share of the index.
pub(super) struct Slot {
    pub(super) id: EndpointId,
    pub(super) budget: usize,
    pub(super) used: usize,
    /// Most recently used node.
    pub(super) head: u32,
    /// Least recently used node: evicted first.
    pub(super) tail: u32,
}

/// Which engines were recently sent which prompt prefixes.
///
/// Memory is bounded: each engine holds at most its budget of chunks (its KV capacity
/// in chunks, or the configured default), evicting its least recently used chunk
/// first; within one prompt the tail chunks are older than the head ones, so a prefix
/// is dropped from its end, as vLLM's cache does. Each indexed (chunk, engine) pair
/// costs one 24-byte node plus its share of two 5-byte-per-bucket hash tables (hash →
/// holders, (hash, engine) → node): about 50 bytes with growth slack.
/// Not thread-safe by itself: the router holds it in a mutex, for microseconds.
pub struct PrefixIndex {
    config: PrefixConfig,
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) slot_ids: HashMap<EndpointId, u32, foldhash::fast::RandomState>,
    pub(super) nodes: Vec<Node>,
    pub(super) free_nodes: u32,
    /// Entry node of each hash's circular holder list (the holder touched last),
    /// looked up by the node's hash.
    pub(super) table: HashTable<u32>,
    /// Every node, looked up by (hash, engine): touching a chunk that a thousand
    /// engines hold must not walk its holder list.
    pub(super) pairs: HashTable<u32>,
    pub(super) live: usize,
}

// === impl PrefixIndex ===

impl PrefixIndex {
    /// An empty index.
    pub fn new(config: PrefixConfig) -> Self {
        Self {
            config,
            slots: Vec::new(),
            slot_ids: HashMap::default(),
            nodes: Vec::new(),
            free_nodes: NIL,
            table: HashTable::new(),
            pairs: HashTable::new(),
            live: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &PrefixConfig {
        &self.config
    }

    /// Indexed (chunk, engine) pairs.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Chunks indexed for `id`, and its budget.
    pub fn usage(&self, id: &EndpointId) -> Option<(usize, usize)> {
        self.slot_of(id)
            .and_then(|s| self.slots[s as usize].as_ref())
            .map(|s| (s.used, s.budget))
    }

    /// Bytes allocated by the index's tables: nodes, the hash table, and the
    /// per-engine slots (allocated capacity, not just what is in use).
    pub fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node>()
            + self.table.allocation_size()
            + self.pairs.allocation_size()
            + self.slots.capacity() * size_of::<Option<Slot>>()
            + self.slot_ids.capacity() * (size_of::<(EndpointId, u32)>() + 1)
    }

    fn slot_of(&self, id: &EndpointId) -> Option<u32> {
        self.slot_ids.get(id).copied()
    }

    pub(super) fn head_of(&self, hash: u64) -> Option<u32> {
        self.table
            .find(hash, |&n| self.nodes[n as usize].hash == hash)
            .copied()
    }
    /// The (at most `limit`) engines holding the longest prefixes of `hashes`: each
    /// one's id and how many leading chunks it holds (≥ 1), deepest first, at most one
    /// entry per engine.
    ///
    /// Each engine's chunks of one chain are evicted tail first, so an engine holding
    /// chunk `i` of a chain holds chunks `0..i` too. The deepest chunk held anywhere is
    /// therefore found by binary search; holders are then collected walking back down
    /// the chain, at the deepest level and then 1, 2, 4, 8, … levels lower (never
    /// more than half the remaining depth at once), most recently touched holder first
    /// at each level, until `limit` are found. Depths are
    /// exact for the holders of the deepest level and at most a factor of two short for
    /// the others. Cost: O(log n) lookups and at most about `limit` steps per level
    /// visited, whatever the number of holders.
    pub fn matches(&self, hashes: &[u64], limit: usize) -> Vec<(&EndpointId, usize)> {
        let held = |i: usize| self.head_of(hashes[i]).is_some();
        if limit == 0 || hashes.is_empty() || !held(0) {
            return Vec::new();
        }
        // The deepest level any engine holds: held(lo) is true, held(hi) false.
        let (mut lo, mut hi) = (0, hashes.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if held(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let mut found: Vec<(u32, usize)> = Vec::new();
        let mut level = lo;
        let mut step = 1;
        while let Some(start) = self.head_of(hashes[level]) {
            // Holders already found are met again at every lower level: look at a
            // bounded number of nodes per level.
            let mut node = start;
            let mut visited = 0;
            loop {
                let n = &self.nodes[node as usize];
                if !found.iter().any(|f| f.0 == n.slot) {
                    found.push((n.slot, level + 1));
                    if found.len() == limit {
                        return self.named(found);
                    }
                }
                visited += 1;
                node = n.holder_next;
                if node == start || visited >= 2 * limit.min(1024) {
                    break;
                }
            }
            if level == 0 {
                break;
            }
            // Steps of 1, 2, 4, … levels, never more than half of the depth left, so a
            // holder met lower than its deepest level is credited at least half of it.
            level -= step.min(level.div_ceil(2)).max(1);
            step *= 2;
        }
        self.named(found)
    }

    fn named(&self, found: Vec<(u32, usize)>) -> Vec<(&EndpointId, usize)> {
        found
            .into_iter()
            .filter_map(|(slot, depth)| Some((&self.slots[slot as usize].as_ref()?.id, depth)))
            .collect()
    }

    /// Records that `id` was sent a prompt with these chain hashes: every chunk becomes
    /// its most recently used, the first chunk most of all; then its oldest chunks are
    /// evicted down to its budget. `capacity_tokens` (the engine's KV capacity, when
    /// known) sets that budget.
    pub fn insert(&mut self, id: &EndpointId, hashes: &[u64], capacity_tokens: Option<u64>) {
        let budget = self
            .config
            .chunks_for(capacity_tokens.unwrap_or(self.config.default_capacity_tokens));
        let slot = match self.slot_of(id) {
            Some(slot) => slot,
            None => self.add_slot(id),
        };
        if let Some(s) = self.slots[slot as usize].as_mut() {
            s.budget = budget;
        }
        // Never more chunks than the budget: the head of a longer prompt is what stays.
        let take = hashes.len().min(budget);
        for &hash in hashes[..take].iter().rev() {
            self.touch(slot, hash);
        }
        self.evict(slot);
    }

    /// Drops every engine for which `keep` is false, with all its chunks.
    pub fn retain(&mut self, mut keep: impl FnMut(&EndpointId) -> bool) {
        for slot in 0..self.slots.len() {
            let gone = self.slots[slot].as_ref().is_some_and(|s| !keep(&s.id));
            if gone {
                while let Some(tail) = self.slots[slot].as_ref().map(|s| s.tail)
                    && tail != NIL
                {
                    self.remove(tail);
                }
                if let Some(s) = self.slots[slot].take() {
                    self.slot_ids.remove(&s.id);
                }
            }
        }
    }

    /// The chain hashes `id` holds, most recently used first (for tests and debugging).
    pub fn held(&self, id: &EndpointId) -> Vec<u64> {
        let mut out = Vec::new();
        if let Some(s) = self
            .slot_of(id)
            .and_then(|s| self.slots[s as usize].as_ref())
        {
            let mut node = s.head;
            while node != NIL {
                out.push(self.nodes[node as usize].hash);
                node = self.nodes[node as usize].next;
            }
        }
        out
    }
}

impl fmt::Debug for PrefixIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixIndex")
            .field("config", &self.config)
            .field("chunks", &self.live)
            .field("engines", &self.slots.iter().flatten().count())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}
