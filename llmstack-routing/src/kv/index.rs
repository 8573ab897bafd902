//! The index itself: block keys → holders, and per source the engine's hashes → those blocks (packed in [`super::holders`]).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use foldhash::fast::RandomState;
use llmstack_core::kv::{BlockRemoved, BlockStored, KvBatch, KvEvent, Medium};
use llmstack_core::{Endpoint, EndpointId, KvSink, KvSource, StatsReader};
use tokio::time::Instant;

use super::chain::{self, KeySpace, next_key};
use super::holders::{Holder, HolderTable, SlotKeys};
use super::pending::Pending;

mod matching;

/// Blocks one source may hold before the index stops trusting it (the engine must
/// have missed removals): without a capacity from [`KvIndex::set_capacity`].
const DEFAULT_MAX_BLOCKS: usize = 1 << 20;

/// Which engines hold which blocks, from their KV events: blocks keyed by the router's
/// own hash chain over their token ids ([`block_keys`](super::block_keys)), so that every
/// replica applying the same events holds the same index.
///
/// Writes come from the KV-event subscriber ([`KvSink`]: one batch under one write
/// lock); reads from the router ([`KvIndex::matches`], under a read lock). Memory is
/// bounded per source: a source announcing more blocks than its capacity (twice its
/// GPU blocks, from [`KvIndex::set_capacity`], or 2²⁰ blocks until then) must have
/// lost removals, and is reset.
///
/// Over the events lies this replica's own overlay of *pending* blocks
/// ([`KvIndex::expect`]): prompts its engines accepted and have not announced yet.
/// They are kept under the same lock as the index, for two reasons: a match sees the
/// index and the overlay as one state, and a batch that clears an engine's cache
/// (`AllBlocksCleared`) drops its pending blocks in the same write, so no decision can
/// credit an engine with blocks it has just said it dropped. Recording a prompt is one
/// write of O(its blocks), as the engine's own announcement of those blocks will be.
#[derive(Debug, Default)]
pub struct KvIndex {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    slot_of: HashMap<KvSource, u32, RandomState>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Block key → which slots hold it, how many copies on which tier.
    blocks: HolderTable,
    /// Engine → its GPU capacity in blocks (from the scrape).
    capacity: HashMap<EndpointId, usize, RandomState>,
    /// Blocks this replica expects engines to announce: see [`super::pending`].
    pending: Pending,
}

#[derive(Debug)]
struct Slot {
    source: KvSource,
    /// Tokens per block (0 before the first `BlockStored`).
    block_size: u32,
    /// The engine's block hash → its block in the holder table.
    keys: SlotKeys,
    gpu_blocks: usize,
    lower_blocks: usize,
    batches: u64,
    /// Stored blocks whose parent the index did not know (they cannot be keyed).
    orphans: u64,
    resets: u64,
}

/// How much of one request's prompt one engine holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvMatch {
    /// Leading tokens held in GPU memory.
    pub gpu_tokens: u32,
    /// Leading tokens held in GPU or a lower tier (CPU offload); ≥ `gpu_tokens`.
    pub tokens: u32,
}

/// What one source has announced, for `/engines` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceBlocks {
    /// The source.
    pub source: KvSource,
    /// Blocks held in GPU memory.
    pub gpu_blocks: usize,
    /// Blocks held in a lower tier.
    pub lower_blocks: usize,
    /// Tokens per block (0 before the first stored block).
    pub block_size: u32,
    /// Batches applied.
    pub batches: u64,
    /// Stored blocks that could not be keyed: their parent was never announced (events
    /// from before the router subscribed).
    pub orphans: u64,
    /// Times the index forgot this source (gaps, restarts, overflows).
    pub resets: u64,
}

// === impl KvIndex ===

impl KvIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets `endpoint`'s GPU capacity in blocks (its scraped `num_gpu_blocks`): a source
    /// of it holding more than twice that is reset.
    pub fn set_capacity(&self, endpoint: &EndpointId, gpu_blocks: u64) {
        let blocks = usize::try_from(gpu_blocks).unwrap_or(usize::MAX);
        if self.read().capacity.get(endpoint) != Some(&blocks) {
            self.write().capacity.insert(endpoint.clone(), blocks);
        }
    }

    /// Keeps every engine's capacity at its scraped `num_gpu_blocks`
    /// ([`KvIndex::set_capacity`]), reading `stats` every `every`. Runs until dropped.
    pub async fn follow_capacity(self: Arc<Self>, stats: StatsReader, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (id, engine) in stats.snapshot().iter() {
                if let Some(blocks) = engine.num_gpu_blocks {
                    self.set_capacity(id, blocks);
                }
            }
        }
    }

    /// Whether some source of `endpoint` has delivered at least one batch: the index
    /// knows that engine's cache.
    pub fn has_events(&self, endpoint: &EndpointId) -> bool {
        let inner = self.read();
        inner
            .slots
            .iter()
            .flatten()
            .any(|s| s.source.endpoint == *endpoint && s.batches > 0)
    }

    /// Whether some source of any engine in `endpoints` (sorted by id) has delivered at
    /// least one batch. One pass over the sources.
    pub fn any_events(&self, endpoints: &[Arc<Endpoint>]) -> bool {
        let inner = self.read();
        inner.slots.iter().flatten().any(|s| {
            s.batches > 0
                && endpoints
                    .binary_search_by(|ep| ep.id.cmp(&s.source.endpoint))
                    .is_ok()
        })
    }

    /// The tokens per block the engines use (the first known; `None` before any
    /// stored block). Engines of one deployment share it.
    pub fn block_size(&self) -> Option<u32> {
        let inner = self.read();
        inner
            .slots
            .iter()
            .flatten()
            .map(|s| s.block_size)
            .find(|&b| b > 0)
    }

    /// For each engine in `endpoints` (sorted by id, as the router's candidates are) that
    /// holds a leading part of `tokens` in `space`, its index in `endpoints` and how much
    /// it holds. An engine with several sources (data-parallel ranks) counts its best.
    ///
    /// A block pending on an engine ([`KvIndex::expect`]) counts as held on its GPU:
    /// the prefix may be announced up to some block and pending after it. Cost: one key
    /// hash a block of the match, and a table look-up per holding source per block (two
    /// while blocks are pending); the pending blocks themselves are never scanned.
    pub fn matches(
        &self,
        space: &KeySpace<'_>,
        tokens: &[u32],
        endpoints: &[Arc<Endpoint>],
    ) -> Vec<(usize, KvMatch)> {
        let inner = self.read();
        let mut out: Vec<(usize, KvMatch)> = Vec::new();
        let mut sizes: Vec<u32> = Vec::new();
        for slot in inner.slots.iter().flatten() {
            if slot.block_size > 0 && !sizes.contains(&slot.block_size) {
                sizes.push(slot.block_size);
            }
        }
        let pending = (!inner.pending.is_empty()).then(|| (&inner.pending, Instant::now()));
        for size in sizes {
            inner.match_size(space, tokens, size, endpoints, pending, &mut out);
        }
        out
    }

    /// Records the blocks keyed `keys` (a prompt's [`block_keys`](super::block_keys) at
    /// the engines' [`KvIndex::block_size`]) as *pending* on `endpoint`: it accepted the
    /// request and will announce them shortly. Until it does, or for at most 2 s (by
    /// then the events have come, or the engine did not keep the blocks),
    /// [`KvIndex::matches`] counts them as held on its GPU. Clearing the engine's cache, resetting or removing its
    /// source drops them.
    ///
    /// Pending blocks are this replica's own recent decisions, like its in-flight
    /// counts: they never leave it, and everything else the index reports (blocks,
    /// sources) is still only what the engines announced, the same on every replica.
    /// Memory: at most 65,536 pending keys over all engines (about 6 MiB), the oldest
    /// dropped first. Cost: one write lock, O(`keys`).
    pub fn expect(&self, endpoint: &EndpointId, keys: &[u64]) {
        let mut inner = self.write();
        // Blocks the index already has on this engine's GPU will not be announced again.
        let known = inner.gpu_depth(endpoint, keys);
        inner
            .pending
            .insert(endpoint, &keys[known..], Instant::now());
    }

    /// Keys pending over all engines (stale recordings included until they expire).
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.read().pending.len()
    }

    /// What each source has announced.
    pub fn sources(&self) -> Vec<SourceBlocks> {
        let inner = self.read();
        let mut out: Vec<SourceBlocks> = inner
            .slots
            .iter()
            .flatten()
            .map(|s| SourceBlocks {
                source: s.source.clone(),
                gpu_blocks: s.gpu_blocks,
                lower_blocks: s.lower_blocks,
                block_size: s.block_size,
                batches: s.batches,
                orphans: s.orphans,
                resets: s.resets,
            })
            .collect();
        out.sort_by(|a, b| a.source.cmp(&b.source));
        out
    }

    /// Bytes the index has allocated for its tables (their capacity, not their length),
    /// holder lists and the pending overlay included.
    pub fn memory_bytes(&self) -> usize {
        let inner = self.read();
        let keys: usize = inner
            .slots
            .iter()
            .flatten()
            .map(|s| s.keys.memory_bytes())
            .sum();
        inner.blocks.memory_bytes() + keys + inner.pending.memory_bytes()
    }

    /// Distinct blocks in the index (over all sources).
    pub fn len(&self) -> usize {
        self.read().blocks.len()
    }

    /// Whether the index holds no block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KvSink for KvIndex {
    fn apply(&self, source: &KvSource, batch: &KvBatch) {
        let mut inner = self.write();
        inner.pending.expire(Instant::now());
        let slot = inner.slot(source);
        for event in &batch.events {
            match event {
                KvEvent::BlockStored(stored) => inner.store(slot, stored),
                KvEvent::BlockRemoved(removed) => inner.remove_blocks(slot, removed),
                KvEvent::AllBlocksCleared => inner.clear(slot),
            }
        }
        let max = inner.max_blocks(slot);
        if let Some(s) = inner.slots[slot as usize].as_mut() {
            s.batches += 1;
            if s.gpu_blocks + s.lower_blocks > max {
                tracing::warn!(
                    source = %source,
                    blocks = s.gpu_blocks + s.lower_blocks,
                    max,
                    "KV index: more blocks than the engine can hold (removals were lost); forgetting them"
                );
                inner.clear(slot);
                if let Some(s) = inner.slots[slot as usize].as_mut() {
                    s.resets += 1;
                }
            }
        }
    }

    fn reset(&self, source: &KvSource) {
        let mut inner = self.write();
        inner.pending.forget(&source.endpoint);
        if let Some(&slot) = inner.slot_of.get(source) {
            inner.clear(slot);
            if let Some(s) = inner.slots[slot as usize].as_mut() {
                s.resets += 1;
                // Until the next batch, the index does not know this source's cache.
                s.batches = 0;
            }
        }
    }

    fn remove(&self, endpoint: &EndpointId) {
        let mut inner = self.write();
        let slots: Vec<u32> = inner
            .slot_of
            .iter()
            .filter(|(s, _)| s.endpoint == *endpoint)
            .map(|(_, &slot)| slot)
            .collect();
        for slot in slots {
            inner.clear(slot);
            if let Some(s) = inner.slots[slot as usize].take() {
                inner.slot_of.remove(&s.source);
            }
            inner.free.push(slot);
        }
        inner.capacity.remove(endpoint);
        inner.pending.forget(endpoint);
    }
}

// === impl Inner ===

impl Inner {
    fn slot(&mut self, source: &KvSource) -> u32 {
        if let Some(&slot) = self.slot_of.get(source) {
            return slot;
        }
        let new = Slot {
            source: source.clone(),
            block_size: 0,
            keys: SlotKeys::default(),
            gpu_blocks: 0,
            lower_blocks: 0,
            batches: 0,
            orphans: 0,
            resets: 0,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(new);
                slot
            }
            None => {
                self.slots.push(Some(new));
                (self.slots.len() - 1) as u32
            }
        };
        self.slot_of.insert(source.clone(), slot);
        slot
    }

    fn max_blocks(&self, slot: u32) -> usize {
        let Some(s) = self.slots[slot as usize].as_ref() else {
            return DEFAULT_MAX_BLOCKS;
        };
        self.capacity
            .get(&s.source.endpoint)
            .map_or(DEFAULT_MAX_BLOCKS, |&c| c.saturating_mul(2).max(1024))
    }

    fn store(&mut self, slot: u32, stored: &BlockStored) {
        if !stored.full_attention || stored.group_idx != 0 || stored.block_size == 0 {
            return;
        }
        let Some(s) = self.slots[slot as usize].as_mut() else {
            return;
        };
        if s.block_size != stored.block_size {
            if s.block_size != 0 {
                // The engine changed its block size (a restart with other flags).
                self.clear(slot);
            }
            if let Some(s) = self.slots[slot as usize].as_mut() {
                s.block_size = stored.block_size;
            }
        }
        let lora = stored.lora_name.as_deref();
        let extra_of = |i: usize| stored.extra_keys.get(i).and_then(Option::as_deref);
        let (mut prev, root) = match stored.parent_block_hash {
            None => {
                let salt = extra_of(0).and_then(|e| chain::root_salt(e, lora));
                (KeySpace { lora, salt }.seed(), true)
            }
            Some(parent) => {
                let known = self.slots[slot as usize]
                    .as_ref()
                    .and_then(|s| s.keys.get(parent))
                    .map(|at| self.blocks.key(at));
                match known {
                    Some(key) => (key, false),
                    None => {
                        if let Some(s) = self.slots[slot as usize].as_mut() {
                            s.orphans += stored.block_hashes.len() as u64;
                        }
                        return;
                    }
                }
            }
        };
        let size = stored.block_size as usize;
        let gpu = stored.medium == Medium::Gpu;
        // Announced on the GPU: no longer pending, and removable from here on.
        let tag = self.slots[slot as usize]
            .as_ref()
            .and_then(|s| self.pending.tag(&s.source.endpoint))
            .filter(|_| gpu);
        for (i, (&hash, tokens)) in stored
            .block_hashes
            .iter()
            .zip(stored.token_ids.chunks_exact(size))
            .enumerate()
        {
            let mut key = next_key(prev, tokens);
            if let Some(extra) = extra_of(i) {
                key = chain::with_extra(key, extra, lora, root && i == 0);
            }
            prev = key;
            self.add(slot, hash, key, gpu);
            if let Some(tag) = tag {
                self.pending.confirm(key, tag);
            }
        }
    }

    /// One more copy of block `hash` (keyed `key`) on `slot`.
    fn add(&mut self, slot: u32, hash: u64, key: u64, gpu: bool) {
        let Some(s) = self.slots[slot as usize].as_mut() else {
            return;
        };
        // The engine's hash names the same content for as long as it is cached.
        let at = match s.keys.get(hash) {
            Some(at) => at,
            None => {
                let at = self.blocks.acquire(key);
                s.keys.insert(hash, at);
                at
            }
        };
        let (old, new) = self.blocks.update(at, slot, |h| {
            if gpu {
                h.gpu = h.gpu.saturating_add(1);
            } else {
                h.lower = h.lower.saturating_add(1);
            }
        });
        s.count(old, new);
    }

    fn remove_blocks(&mut self, slot: u32, removed: &BlockRemoved) {
        if removed.group_idx != 0 {
            return;
        }
        let gpu = removed.medium == Medium::Gpu;
        for &hash in &removed.block_hashes {
            let Some(s) = self.slots[slot as usize].as_mut() else {
                return;
            };
            let Some(at) = s.keys.get(hash) else {
                continue;
            };
            let (old, new) = self.blocks.update(at, slot, |h| {
                if gpu {
                    h.gpu = h.gpu.saturating_sub(1);
                } else {
                    h.lower = h.lower.saturating_sub(1);
                }
            });
            s.count(old, new);
            if new.gpu == 0 && new.lower == 0 {
                s.keys.remove(hash);
                self.blocks.release(at);
            }
        }
    }

    /// Forgets what `slot` holds, and what its engine was expected to announce.
    fn clear(&mut self, slot: u32) {
        let Some(s) = self.slots[slot as usize].as_mut() else {
            return;
        };
        self.pending.forget(&s.source.endpoint);
        let named = s.keys.take();
        s.gpu_blocks = 0;
        s.lower_blocks = 0;
        for at in named {
            self.blocks.update(at, slot, |h| {
                h.gpu = 0;
                h.lower = 0;
            });
            self.blocks.release(at);
        }
    }
}

// === impl Slot ===

impl Slot {
    /// Counts a holder's tier changes in the slot's block counts.
    fn count(&mut self, old: Holder, new: Holder) {
        match (old.gpu > 0, new.gpu > 0) {
            (false, true) => self.gpu_blocks += 1,
            (true, false) => self.gpu_blocks -= 1,
            _ => {}
        }
        match (old.lower > 0, new.lower > 0) {
            (false, true) => self.lower_blocks += 1,
            (true, false) => self.lower_blocks -= 1,
            _ => {}
        }
    }
}
