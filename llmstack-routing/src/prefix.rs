//! The prefix index: which engine was recently sent which prompt prefixes, bounded by
//! each engine's KV capacity and evicted least-recently-used first, like the engine's
//! own prefix cache.
//!
//! Prompts are rendered canonically (chat: role and text of each message, in order;
//! completions: the prompt text or token ids), cut into fixed-size chunks, and each
//! chunk is hashed together with the hash of everything before it (a hash chain, like
//! vLLM's block hashes). A chain hash therefore names a whole prefix, and a
//! conversation's next turn extends the chain of the previous one.

use std::collections::HashMap;
use std::fmt;

use hashbrown::HashTable;
use llmstack_core::{Content, EndpointId, Prompt, PromptView, RouteRequest};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The largest KV capacity believed of one engine, in tokens (2^27: far beyond any
/// GPU's, about 100 MB of index at the default chunk size).
pub const MAX_CAPACITY_TOKENS: u64 = 1 << 27;

/// Settings of the prefix index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixConfig {
    /// Bytes of canonical prompt per chunk (default 256: about 64 tokens, four vLLM blocks).
    pub chunk_bytes: usize,
    /// Prompt bytes per token, to turn bytes into token estimates (default 4).
    pub bytes_per_token: f64,
    /// Tokens of cache assumed per engine until its scrape reports
    /// `num_gpu_blocks × block_size` (default 262 144).
    pub default_capacity_tokens: u64,
    /// Fraction of an engine's KV capacity the index assumes holds reusable prefixes
    /// (default 0.75): the rest holds running requests' blocks and answers, and covers
    /// the error of estimating tokens from bytes. Overestimating the cache makes the
    /// router keep sending conversations to an engine whose LRU cache cycles through
    /// them, missing every time.
    pub cache_share: f64,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        Self {
            chunk_bytes: 256,
            bytes_per_token: 4.0,
            default_capacity_tokens: 262_144,
            cache_share: 0.75,
        }
    }
}

impl PrefixConfig {
    /// Estimated tokens per chunk (at least 1).
    pub fn chunk_tokens(&self) -> f64 {
        (self.chunk_bytes as f64 / self.bytes_per_token).max(1.0)
    }

    /// How many chunks an engine with `tokens` of KV capacity holds.
    /// (`tokens` × [`PrefixConfig::cache_share`], in chunks). Capacities are capped at
    /// [`MAX_CAPACITY_TOKENS`], so a bogus `num_gpu_blocks` cannot unbound the index.
    pub fn chunks_for(&self, tokens: u64) -> usize {
        let tokens = tokens.min(MAX_CAPACITY_TOKENS);
        (tokens as f64 * self.cache_share.clamp(0.0, 1.0) / self.chunk_tokens()).floor() as usize
    }
}

/// The chain hashes of one prompt's full chunks, and its size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptHashes {
    /// One hash per full chunk, each covering the whole prefix up to its chunk's end.
    pub hashes: Vec<u64>,
    /// Bytes of canonical rendering (full chunks and the partial tail).
    pub bytes: usize,
}

impl PromptHashes {
    /// Hashes the canonical rendering of `req`'s prompt in `chunk_bytes` chunks. The
    /// chain is seeded with the model name (another model or adapter never shares a
    /// cache). A request without a (parsable) prompt gives no hashes. Non-text content
    /// parts (images, audio) are rendered by their type alone: two prompts differing
    /// only in an image look alike here, and their size is not counted.
    pub fn of(req: &RouteRequest<'_>, chunk_bytes: usize) -> Self {
        let model = req.model().unwrap_or_default();
        let mut chunker = Chunker::new(chunk_bytes.max(1), xxh3_64_with_seed(model.as_bytes(), 0));
        match req.prompt_view() {
            Some(PromptView::Chat(messages)) => {
                for m in &messages {
                    chunker.feed(m.role.as_bytes());
                    chunker.feed(b"\x1f");
                    match &m.content {
                        Content::None => {}
                        Content::Text(text) => chunker.feed(text.as_bytes()),
                        Content::Parts(parts) => {
                            for part in parts {
                                match &part.text {
                                    Some(text) => chunker.feed(text.as_bytes()),
                                    None => chunker.feed(part.kind.as_bytes()),
                                }
                                chunker.feed(b"\x1e");
                            }
                        }
                    }
                    chunker.feed(b"\x1d");
                }
            }
            Some(PromptView::Completion(p) | PromptView::Input(p)) => match p {
                Prompt::Text(text) => chunker.feed(text.as_bytes()),
                Prompt::Texts(texts) => {
                    for text in &texts {
                        chunker.feed(text.as_bytes());
                        chunker.feed(b"\x1d");
                    }
                }
                Prompt::Tokens(tokens) => chunker.tokens(&tokens),
                Prompt::TokenLists(lists) => {
                    for tokens in &lists {
                        chunker.tokens(tokens);
                        chunker.feed(b"\x1d");
                    }
                }
            },
            None => {}
        }
        chunker.finish()
    }
}

/// Streams bytes into fixed-size chunks and chain-hashes each full one.
struct Chunker {
    size: usize,
    buf: Vec<u8>,
    prev: u64,
    out: PromptHashes,
}

impl Chunker {
    fn new(size: usize, seed: u64) -> Self {
        Self {
            size,
            buf: Vec::new(),
            prev: seed,
            out: PromptHashes::default(),
        }
    }

    fn hash(&mut self, chunk: &[u8]) {
        self.prev = xxh3_64_with_seed(chunk, self.prev);
        self.out.hashes.push(self.prev);
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        self.out.bytes += bytes.len();
        if !self.buf.is_empty() {
            let take = (self.size - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() < self.size {
                return;
            }
            let chunk = std::mem::take(&mut self.buf);
            self.hash(&chunk);
            self.buf = chunk;
            self.buf.clear();
        }
        let mut chunks = bytes.chunks_exact(self.size);
        for chunk in chunks.by_ref() {
            self.hash(chunk);
        }
        self.buf.extend_from_slice(chunks.remainder());
    }

    fn tokens(&mut self, tokens: &[u32]) {
        for t in tokens {
            self.feed(&t.to_le_bytes());
        }
    }

    fn finish(self) -> PromptHashes {
        self.out
    }
}

const NIL: u32 = u32::MAX;

/// The key of a (chunk hash, engine slot) pair in [`PrefixIndex::pairs`].
fn pair_key(hash: u64, slot: u32) -> u64 {
    hash ^ u64::from(slot)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// One (prefix chunk, engine) pair: 24 bytes.
#[derive(Clone, Copy)]
struct Node {
    hash: u64,
    slot: u32,
    /// Toward the engine's most recently used chunk.
    prev: u32,
    /// Toward its least recently used chunk.
    next: u32,
    /// The next engine holding the same hash (a circular list: the last points back to
    /// the first).
    holder_next: u32,
}

/// One engine's share of the index.
struct Slot {
    id: EndpointId,
    budget: usize,
    used: usize,
    /// Most recently used node.
    head: u32,
    /// Least recently used node: evicted first.
    tail: u32,
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
    slots: Vec<Option<Slot>>,
    slot_ids: HashMap<EndpointId, u32, foldhash::fast::RandomState>,
    nodes: Vec<Node>,
    free_nodes: u32,
    /// Entry node of each hash's circular holder list (the holder touched last),
    /// looked up by the node's hash.
    table: HashTable<u32>,
    /// Every node, looked up by (hash, engine): touching a chunk that a thousand
    /// engines hold must not walk its holder list.
    pairs: HashTable<u32>,
    live: usize,
}

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

    fn head_of(&self, hash: u64) -> Option<u32> {
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

    fn add_slot(&mut self, id: &EndpointId) -> u32 {
        let slot = Slot {
            id: id.clone(),
            budget: 0,
            used: 0,
            head: NIL,
            tail: NIL,
        };
        let i = match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(slot);
                i as u32
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.slot_ids.insert(id.clone(), i);
        i
    }

    /// Makes (hash, slot) the slot's most recently used node, adding it if absent.
    fn touch(&mut self, slot: u32, hash: u64) {
        let nodes = &self.nodes;
        let found = self.pairs.find(pair_key(hash, slot), |&n| {
            nodes[n as usize].hash == hash && nodes[n as usize].slot == slot
        });
        let node;
        if let Some(&n) = found {
            node = n;
            self.unlink_lru(node);
        } else {
            let entry = self.head_of(hash);
            node = self.alloc(Node {
                hash,
                slot,
                prev: NIL,
                next: NIL,
                holder_next: NIL,
            });
            match entry {
                // Spliced in after the entry node of the circular list.
                Some(e) => {
                    self.nodes[node as usize].holder_next = self.nodes[e as usize].holder_next;
                    self.nodes[e as usize].holder_next = node;
                }
                None => {
                    self.nodes[node as usize].holder_next = node;
                    let nodes = &self.nodes;
                    self.table
                        .insert_unique(hash, node, |&n| nodes[n as usize].hash);
                }
            }
            let nodes = &self.nodes;
            self.pairs.insert_unique(pair_key(hash, slot), node, |&n| {
                pair_key(nodes[n as usize].hash, nodes[n as usize].slot)
            });
            self.live += 1;
            if let Some(s) = self.slots[slot as usize].as_mut() {
                s.used += 1;
            }
        }
        // The touched holder becomes the entry of its hash's list: walks meet the
        // engines that were sent this prefix most recently first.
        let nodes = &self.nodes;
        if let Some(entry) = self
            .table
            .find_mut(hash, |&n| nodes[n as usize].hash == hash)
        {
            *entry = node;
        }
        self.push_front(slot, node);
    }

    fn alloc(&mut self, node: Node) -> u32 {
        if self.free_nodes != NIL {
            let i = self.free_nodes;
            self.free_nodes = self.nodes[i as usize].next;
            self.nodes[i as usize] = node;
            return i;
        }
        if self.nodes.len() == self.nodes.capacity() {
            // Grow by a quarter, not double: the node table is most of the memory.
            self.nodes.reserve_exact((self.nodes.len() / 4).max(1024));
        }
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
    }

    fn push_front(&mut self, slot: u32, node: u32) {
        let Some(s) = self.slots[slot as usize].as_mut() else {
            return;
        };
        let old = s.head;
        s.head = node;
        if s.tail == NIL {
            s.tail = node;
        }
        self.nodes[node as usize].prev = NIL;
        self.nodes[node as usize].next = old;
        if old != NIL {
            self.nodes[old as usize].prev = node;
        }
    }

    fn unlink_lru(&mut self, node: u32) {
        let Node {
            slot, prev, next, ..
        } = self.nodes[node as usize];
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        if let Some(s) = self.slots[slot as usize].as_mut() {
            if s.head == node {
                s.head = next;
            }
            if s.tail == node {
                s.tail = prev;
            }
        }
    }

    /// Removes `node` from its LRU list and its hash's holder list, and frees it.
    fn remove(&mut self, node: u32) {
        self.unlink_lru(node);
        let Node {
            hash,
            slot,
            holder_next,
            ..
        } = self.nodes[node as usize];
        if let Ok(entry) = self.pairs.find_entry(pair_key(hash, slot), |&n| n == node) {
            entry.remove();
        }
        if holder_next == node {
            // The only holder: the hash leaves the table.
            let nodes = &self.nodes;
            if let Ok(entry) = self
                .table
                .find_entry(hash, |&n| n == node && nodes[n as usize].hash == hash)
            {
                entry.remove();
            }
        } else {
            // Unlink from the circular list (the predecessor is found by walking it),
            // and move the entry off the node if it was there.
            let mut at = holder_next;
            while self.nodes[at as usize].holder_next != node {
                at = self.nodes[at as usize].holder_next;
            }
            self.nodes[at as usize].holder_next = holder_next;
            let nodes = &self.nodes;
            if let Some(entry) = self
                .table
                .find_mut(hash, |&n| n == node && nodes[n as usize].hash == hash)
            {
                *entry = holder_next;
            }
        }
        if let Some(s) = self.slots[slot as usize].as_mut() {
            s.used -= 1;
        }
        self.live -= 1;
        self.nodes[node as usize].next = self.free_nodes;
        self.nodes[node as usize].hash = 0;
        self.free_nodes = node;
    }

    fn evict(&mut self, slot: u32) {
        while let Some(s) = self.slots[slot as usize].as_ref()
            && s.used > s.budget
            && s.tail != NIL
        {
            self.remove(s.tail);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(body: &str) -> PromptHashes {
        let req = RouteRequest::from_json(body.as_bytes(), None).unwrap();
        PromptHashes::of(&req, 16)
    }

    #[test]
    fn a_conversation_turn_extends_the_chain() {
        let sys = "You are a helpful assistant who answers briefly.";
        let turn1 = format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{sys}"}},{{"role":"user","content":"What is the capital of France?"}}]}}"#
        );
        let turn2 = format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{sys}"}},{{"role":"user","content":"What is the capital of France?"}},{{"role":"assistant","content":"Paris."}},{{"role":"user","content":"And of Italy?"}}]}}"#
        );
        let (a, b) = (hashes(&turn1), hashes(&turn2));
        assert!(a.hashes.len() >= 4);
        assert_eq!(
            a.hashes[..],
            b.hashes[..a.hashes.len()],
            "same chain prefix"
        );
        assert!(b.hashes.len() > a.hashes.len());
        // Another model, or the same text under another role, is another chain.
        let other = hashes(&turn1.replace(r#""model":"m""#, r#""model":"n""#));
        assert_ne!(a.hashes[0], other.hashes[0]);
        let role = hashes(&turn1.replace("system", "user"));
        assert_ne!(a.hashes[0], role.hashes[0]);
        // Prompt shapes: text, batched text, token ids.
        assert_eq!(
            hashes(r#"{"model":"m","prompt":"0123456789abcdef0"}"#)
                .hashes
                .len(),
            1
        );
        assert_eq!(hashes(r#"{"model":"m","prompt":[1,2,3,4,5]}"#).bytes, 20);
        assert_eq!(hashes(r#"{"model":"m","prompt":["ab","cd"]}"#).bytes, 6);
        assert!(hashes(r#"{"model":"m"}"#).hashes.is_empty());
    }

    #[test]
    fn split_feeds_hash_like_one_feed() {
        let mut a = Chunker::new(8, 1);
        a.feed(b"abcdefghijklmnopqrstu");
        let mut b = Chunker::new(8, 1);
        for piece in [&b"abc"[..], b"defghij", b"k", b"lmnopqrstu"] {
            b.feed(piece);
        }
        assert_eq!(a.finish(), b.finish());
    }

    fn index(budget_chunks: usize) -> PrefixIndex {
        PrefixIndex::new(PrefixConfig {
            chunk_bytes: 4,
            bytes_per_token: 1.0,
            default_capacity_tokens: budget_chunks as u64 * 4,
            cache_share: 1.0,
        })
    }

    #[test]
    fn matches_report_each_holders_depth() {
        let mut idx = index(100);
        let (a, b) = (EndpointId::new("a"), EndpointId::new("b"));
        idx.insert(&a, &[1, 2, 3], None);
        idx.insert(&b, &[1, 2], None);
        idx.insert(&b, &[1, 9], None);
        let mut m = idx.matches(&[1, 2, 3, 4], usize::MAX);
        m.sort();
        assert_eq!(m, [(&a, 3), (&b, 2)]);
        assert_eq!(idx.matches(&[5, 2], usize::MAX), []);
        assert_eq!(
            idx.matches(&[1, 2, 3, 4], 1),
            [(&a, 3)],
            "the deepest first"
        );
        assert_eq!(idx.len(), 6);
        idx.retain(|id| id != &a);
        assert_eq!(idx.matches(&[1, 2, 3], usize::MAX), [(&b, 2)]);
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.usage(&a), None);
    }

    #[test]
    fn long_chains_credit_shallow_holders_at_least_half_and_prefer_recent_ones() {
        let mut idx = index(1000);
        let chain: Vec<u64> = (1..=64).collect();
        let ids: Vec<EndpointId> = (0..6).map(|i| EndpointId::new(format!("e{i}"))).collect();
        // Engine i holds the first 64 >> i chunks.
        for (i, id) in ids.iter().enumerate() {
            idx.insert(id, &chain[..64 >> i], None);
        }
        let m = idx.matches(&chain, usize::MAX);
        assert_eq!(m.len(), 6);
        assert_eq!((m[0].0, m[0].1), (&ids[0], 64), "the deepest is exact");
        for (id, depth) in m {
            let i = ids.iter().position(|x| x == id).unwrap();
            let truth = 64 >> i;
            assert!(
                depth <= truth && 2 * depth >= truth,
                "{id}: {depth} of {truth}"
            );
        }
        // Equal holders: the one sent the prefix last comes first.
        let mut idx = index(1000);
        for id in &ids[..3] {
            idx.insert(id, &[7, 8], None);
        }
        assert_eq!(idx.matches(&[7, 8], 1), [(&ids[2], 2)]);
        idx.insert(&ids[0], &[7, 8], None);
        assert_eq!(idx.matches(&[7, 8], 1), [(&ids[0], 2)]);
        idx.retain(|id| id != &ids[0]);
        assert_eq!(idx.matches(&[7, 8], 3).len(), 2);
    }

    #[test]
    fn eviction_takes_the_oldest_and_the_tail_first() {
        let mut idx = index(4);
        let a = EndpointId::new("a");
        idx.insert(&a, &[1, 2, 3], None);
        idx.insert(&a, &[7, 8], None);
        // Budget 4: the oldest prompt loses its tail chunk first.
        assert_eq!(idx.held(&a), [7, 8, 1, 2]);
        idx.insert(&a, &[1, 2], None); // touched again: now the newest
        idx.insert(&a, &[5], None);
        assert_eq!(idx.held(&a), [5, 1, 2, 7]);
        assert_eq!(idx.usage(&a), Some((4, 4)));
        // A capacity reported later resizes the budget.
        idx.insert(&a, &[5], Some(8));
        assert_eq!(idx.usage(&a), Some((2, 2)));
    }
}
