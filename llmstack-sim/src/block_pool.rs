//! The KV-cache block pool: vLLM V1's `BlockPool` and free-block queue.
//!
//! Blocks hold `block_size` tokens of KV. A block is *held* while a request references it
//! (`ref_cnt > 0`) and *free* otherwise; a free block may still be *cached* (its hash is
//! registered), and a later request whose prefix hashes to it reuses it. Free blocks wait
//! in one queue: allocation pops from the front, evicting the cached content it reuses, so
//! the queue is an LRU over unreferenced blocks. Freed uncached blocks go to the front
//! (reused first), freed cached ones to the back, each request's blocks in reverse order
//! (its tail is evicted first). Block 0 is vLLM's reserved null block and never used.

use std::collections::HashMap;

use crate::hash::{BlockHash, published};
use crate::kv_events::KvEvent;

/// Index of a block in the pool.
pub(crate) type BlockId = u32;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Block {
    ref_cnt: u32,
    /// Free-queue links (`NIL` when not queued).
    prev: u32,
    next: u32,
    queued: bool,
    /// The registered hash when the block is cached.
    hash: Option<BlockHash>,
}

/// Blocks registered under one hash: usually one; two requests computing the same content
/// at the same time each cache a copy, as in vLLM.
#[derive(Debug)]
enum Copies {
    One(BlockId),
    Many(Vec<BlockId>),
}

impl Copies {
    fn first(&self) -> BlockId {
        match self {
            Self::One(b) => *b,
            Self::Many(v) => v[0],
        }
    }
}

/// What a `BlockStored` event says besides hashes and tokens.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StoredExtra<'a> {
    pub(crate) block_size: usize,
    pub(crate) lora_name: Option<&'a str>,
    pub(crate) cache_salt: Option<&'a str>,
}

/// The block pool of one engine. Not thread-safe: owned by the engine's step loop.
#[derive(Debug)]
pub(crate) struct BlockPool {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, Copies>,
    num_cached_blocks: usize,
    enable_caching: bool,
    /// Pending KV events, drained by the engine after each step (when enabled).
    events: Option<Vec<KvEvent>>,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks (block 0 reserved). `record_events` turns on KV-event
    /// collection; `enable_caching` off makes every lookup miss and nothing get registered.
    pub(crate) fn new(num_blocks: usize, enable_caching: bool, record_events: bool) -> Self {
        let n = num_blocks.max(2);
        let mut blocks = vec![
            Block {
                ref_cnt: 0,
                prev: NIL,
                next: NIL,
                queued: false,
                hash: None
            };
            n
        ];
        // Queue 1..n in order.
        for (i, b) in blocks.iter_mut().enumerate().skip(1) {
            b.prev = if i == 1 { NIL } else { (i - 1) as u32 };
            b.next = if i + 1 == n { NIL } else { (i + 1) as u32 };
            b.queued = true;
        }
        Self {
            blocks,
            head: 1,
            tail: (n - 1) as u32,
            num_free: n - 1,
            cached: HashMap::new(),
            num_cached_blocks: 0,
            enable_caching,
            events: record_events.then(Vec::new),
        }
    }

    /// Whether prefix caching is on.
    pub(crate) fn caching_enabled(&self) -> bool {
        self.enable_caching
    }

    /// Usable blocks (excluding the null block).
    pub(crate) fn capacity(&self) -> usize {
        self.blocks.len() - 1
    }

    /// Free blocks, cached-but-unreferenced ones included.
    pub(crate) fn num_free(&self) -> usize {
        self.num_free
    }

    /// Blocks whose hash is registered (held or free).
    pub(crate) fn num_cached(&self) -> usize {
        self.num_cached_blocks
    }

    /// `vllm:kv_cache_usage_perc`: the fraction of blocks held by requests.
    pub(crate) fn usage(&self) -> f64 {
        let cap = self.capacity();
        if cap == 0 {
            0.0
        } else {
            1.0 - self.num_free as f64 / cap as f64
        }
    }

    /// The longest run of cached blocks matching `hashes` from the start, at most
    /// `max_blocks` long. Pure lookup: nothing is referenced yet.
    pub(crate) fn lookup(&self, hashes: &[BlockHash], max_blocks: usize) -> Vec<BlockId> {
        if !self.enable_caching {
            return Vec::new();
        }
        hashes
            .iter()
            .take(max_blocks)
            .map_while(|h| self.cached.get(h).map(Copies::first))
            .collect()
    }

    /// How many of `blocks` are currently unreferenced (and so sit in the free queue).
    pub(crate) fn count_unreferenced(&self, blocks: &[BlockId]) -> usize {
        blocks
            .iter()
            .filter(|&&b| self.blocks[b as usize].ref_cnt == 0)
            .count()
    }

    /// References cache-hit blocks, taking free ones out of the free queue.
    pub(crate) fn touch(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            if self.blocks[b as usize].ref_cnt == 0 {
                self.unlink(b);
            }
            self.blocks[b as usize].ref_cnt += 1;
        }
    }

    /// Takes `n` blocks from the front of the free queue, evicting cached content, or
    /// `None` (taking nothing) when fewer than `n` are free.
    pub(crate) fn allocate(&mut self, n: usize, out: &mut Vec<BlockId>) -> bool {
        if n > self.num_free {
            return false;
        }
        for _ in 0..n {
            let b = self.head;
            self.unlink(b);
            self.evict(b);
            self.blocks[b as usize].ref_cnt = 1;
            out.push(b);
        }
        true
    }

    /// Releases a request's blocks (given in request order).
    pub(crate) fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let blk = &mut self.blocks[b as usize];
            blk.ref_cnt = blk.ref_cnt.saturating_sub(1);
            if blk.ref_cnt == 0 {
                if blk.hash.is_some() {
                    self.push_back(b);
                } else {
                    self.push_front(b);
                }
            }
        }
    }

    /// Registers full blocks of one request in the cache: `blocks[i]` gets `hashes[i]`.
    /// One `BlockStored` event covers them, with `tokens` their token ids, `parent` the
    /// hash of the block before the first (None at block 0) and `extra` their keys.
    pub(crate) fn cache_blocks(
        &mut self,
        blocks: &[BlockId],
        hashes: &[BlockHash],
        parent: Option<&BlockHash>,
        tokens: &[u32],
        extra: StoredExtra<'_>,
    ) {
        if !self.enable_caching || blocks.is_empty() {
            return;
        }
        for (&b, h) in blocks.iter().zip(hashes) {
            let blk = &mut self.blocks[b as usize];
            if blk.hash.is_some() {
                continue;
            }
            blk.hash = Some(*h);
            self.num_cached_blocks += 1;
            match self.cached.get_mut(h) {
                None => {
                    self.cached.insert(*h, Copies::One(b));
                }
                Some(Copies::One(first)) => {
                    let first = *first;
                    self.cached.insert(*h, Copies::Many(vec![first, b]));
                }
                Some(Copies::Many(v)) => v.push(b),
            }
        }
        if let Some(events) = &mut self.events {
            let first_is_block0 = parent.is_none();
            events.push(KvEvent::BlockStored {
                block_hashes: hashes.iter().map(published).collect(),
                parent_block_hash: parent.map(published),
                token_ids: tokens.to_vec(),
                block_size: extra.block_size as u32,
                lora_name: extra.lora_name.map(str::to_owned),
                extra_keys: (0..blocks.len())
                    .map(|i| {
                        let mut keys = Vec::new();
                        keys.extend(extra.lora_name.map(str::to_owned));
                        if i == 0 && first_is_block0 {
                            keys.extend(extra.cache_salt.map(str::to_owned));
                        }
                        (!keys.is_empty()).then_some(keys)
                    })
                    .collect(),
            });
        }
    }

    /// Drops every cached hash (`/reset_prefix_cache`, sleep). Fails, changing nothing,
    /// while any block is still held by a request.
    pub(crate) fn reset(&mut self) -> bool {
        if self.num_free != self.capacity() {
            return false;
        }
        for b in &mut self.blocks {
            b.hash = None;
        }
        self.cached.clear();
        self.num_cached_blocks = 0;
        if let Some(events) = &mut self.events {
            events.push(KvEvent::AllBlocksCleared);
        }
        true
    }

    /// Takes the KV events recorded since the last call.
    pub(crate) fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Published hashes of all cached blocks, for `/sim/state`.
    pub(crate) fn cached_hashes(&self) -> Vec<u64> {
        self.cached.keys().map(published).collect()
    }

    fn evict(&mut self, b: BlockId) {
        let Some(h) = self.blocks[b as usize].hash.take() else {
            return;
        };
        self.num_cached_blocks -= 1;
        let now_empty = match self.cached.get_mut(&h) {
            Some(Copies::One(_)) | None => true,
            Some(Copies::Many(v)) => {
                v.retain(|&x| x != b);
                if v.len() == 1 {
                    let last = v[0];
                    self.cached.insert(h, Copies::One(last));
                }
                false
            }
        };
        if now_empty {
            self.cached.remove(&h);
        }
        if let Some(events) = &mut self.events {
            events.push(KvEvent::BlockRemoved {
                block_hashes: vec![published(&h)],
            });
        }
    }

    fn unlink(&mut self, b: BlockId) {
        let (prev, next) = {
            let blk = &mut self.blocks[b as usize];
            debug_assert!(blk.queued);
            blk.queued = false;
            (
                std::mem::replace(&mut blk.prev, NIL),
                std::mem::replace(&mut blk.next, NIL),
            )
        };
        if prev == NIL {
            self.head = next
        } else {
            self.blocks[prev as usize].next = next
        }
        if next == NIL {
            self.tail = prev
        } else {
            self.blocks[next as usize].prev = prev
        }
        self.num_free -= 1;
    }

    fn push_back(&mut self, b: BlockId) {
        let tail = self.tail;
        {
            let blk = &mut self.blocks[b as usize];
            blk.prev = tail;
            blk.next = NIL;
            blk.queued = true;
        }
        if tail == NIL {
            self.head = b
        } else {
            self.blocks[tail as usize].next = b
        }
        self.tail = b;
        self.num_free += 1;
    }

    fn push_front(&mut self, b: BlockId) {
        let head = self.head;
        {
            let blk = &mut self.blocks[b as usize];
            blk.prev = NIL;
            blk.next = head;
            blk.queued = true;
        }
        if head == NIL {
            self.tail = b
        } else {
            self.blocks[head as usize].prev = b
        }
        self.head = b;
        self.num_free += 1;
    }
}

#[cfg(test)]
mod tests;
