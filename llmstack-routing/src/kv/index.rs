//! The index itself: block keys → holders, and per source the engine's hashes → keys.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use foldhash::fast::RandomState;
use llmstack_core::kv::{BlockRemoved, BlockStored, KvBatch, KvEvent, Medium};
use llmstack_core::{Endpoint, EndpointId, KvSink, KvSource};

use super::chain::{self, KeySpace, next_key};

/// Blocks one source may hold before the index stops trusting it (the engine must
/// have missed removals): without a capacity from [`KvIndex::set_capacity`].
const DEFAULT_MAX_BLOCKS: usize = 1 << 20;

/// Tier bits of a holder.
const GPU: u8 = 1;
const LOWER: u8 = 2;

/// Which engines hold which blocks, from their KV events: see the [module](super).
///
/// Writes come from the KV-event subscriber ([`KvSink`]: one batch under one write
/// lock); reads from the router ([`KvIndex::matches`], under a read lock). Memory is
/// bounded per source: a source announcing more blocks than its capacity (twice its
/// GPU blocks, from [`KvIndex::set_capacity`], or 2²⁰ blocks until then) must have
/// lost removals, and is reset.
#[derive(Debug, Default)]
pub struct KvIndex {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    slot_of: HashMap<KvSource, u32, RandomState>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Block key → which slots hold it, on which tiers.
    blocks: HashMap<u64, Holders, RandomState>,
    /// Engine → its GPU capacity in blocks (from the scrape).
    capacity: HashMap<EndpointId, usize, RandomState>,
}

#[derive(Debug)]
struct Slot {
    source: KvSource,
    /// Tokens per block (0 before the first `BlockStored`).
    block_size: u32,
    /// The engine's block hash → the router's key and the copies per tier.
    entries: HashMap<u64, Entry, RandomState>,
    gpu_blocks: usize,
    lower_blocks: usize,
    batches: u64,
    /// Stored blocks whose parent the index did not know (they cannot be keyed).
    orphans: u64,
    resets: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u64,
    gpu: u16,
    lower: u16,
}

/// One or more holders of a block: (slot, tier bits).
#[derive(Debug)]
enum Holders {
    One(u32, u8),
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer keeps a holder at 16 bytes: most blocks have one holder"
    )]
    Many(Box<Vec<(u32, u8)>>),
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

    /// Tokens `endpoint` holds in GPU memory over all its sources (blocks × block size).
    pub fn gpu_tokens(&self, endpoint: &EndpointId) -> u64 {
        let inner = self.read();
        inner
            .slots
            .iter()
            .flatten()
            .filter(|s| s.source.endpoint == *endpoint)
            .map(|s| s.gpu_blocks as u64 * u64::from(s.block_size))
            .sum()
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
        for size in sizes {
            inner.match_size(space, tokens, size, endpoints, &mut out);
        }
        out
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
            entries: HashMap::default(),
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
                    .and_then(|s| s.entries.get(&parent))
                    .map(|e| e.key);
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
        let tier = if stored.medium == Medium::Gpu {
            GPU
        } else {
            LOWER
        };
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
            self.add(slot, hash, key, tier);
        }
    }

    fn add(&mut self, slot: u32, hash: u64, key: u64, tier: u8) {
        let Some(s) = self.slots[slot as usize].as_mut() else {
            return;
        };
        let entry = s.entries.entry(hash).or_insert(Entry {
            key,
            gpu: 0,
            lower: 0,
        });
        let first_on_tier = match tier {
            GPU => {
                entry.gpu = entry.gpu.saturating_add(1);
                entry.gpu == 1
            }
            _ => {
                entry.lower = entry.lower.saturating_add(1);
                entry.lower == 1
            }
        };
        if !first_on_tier {
            return;
        }
        let key = entry.key;
        if tier == GPU {
            s.gpu_blocks += 1;
        } else {
            s.lower_blocks += 1;
        }
        match self.blocks.get_mut(&key) {
            None => {
                self.blocks.insert(key, Holders::One(slot, tier));
            }
            Some(holders) => holders.set(slot, tier),
        }
    }

    fn remove_blocks(&mut self, slot: u32, removed: &BlockRemoved) {
        if removed.group_idx != 0 {
            return;
        }
        let tier = if removed.medium == Medium::Gpu {
            GPU
        } else {
            LOWER
        };
        for &hash in &removed.block_hashes {
            let Some(s) = self.slots[slot as usize].as_mut() else {
                return;
            };
            let Some(entry) = s.entries.get_mut(&hash) else {
                continue;
            };
            let count = if tier == GPU {
                &mut entry.gpu
            } else {
                &mut entry.lower
            };
            if *count == 0 {
                continue;
            }
            *count -= 1;
            if *count > 0 {
                continue;
            }
            let key = entry.key;
            if entry.gpu == 0 && entry.lower == 0 {
                s.entries.remove(&hash);
            }
            if tier == GPU {
                s.gpu_blocks -= 1;
            } else {
                s.lower_blocks -= 1;
            }
            if let Some(holders) = self.blocks.get_mut(&key)
                && holders.unset(slot, tier)
            {
                self.blocks.remove(&key);
            }
        }
    }

    fn clear(&mut self, slot: u32) {
        let Some(s) = self.slots[slot as usize].as_mut() else {
            return;
        };
        let entries = std::mem::take(&mut s.entries);
        s.gpu_blocks = 0;
        s.lower_blocks = 0;
        for entry in entries.values() {
            if let Some(holders) = self.blocks.get_mut(&entry.key)
                && holders.unset(slot, GPU | LOWER)
            {
                self.blocks.remove(&entry.key);
            }
        }
    }

    fn match_size(
        &self,
        space: &KeySpace<'_>,
        tokens: &[u32],
        size: u32,
        endpoints: &[Arc<Endpoint>],
        out: &mut Vec<(usize, KvMatch)>,
    ) {
        let size_us = size as usize;
        // Slots still matching: (slot, gpu prefix still unbroken, blocks on GPU, blocks).
        let mut alive: Vec<(u32, bool, u32, u32)> = Vec::new();
        let mut prev = space.seed();
        for (depth, block) in tokens.chunks_exact(size_us).enumerate() {
            prev = next_key(prev, block);
            let Some(holders) = self.blocks.get(&prev) else {
                break;
            };
            if depth == 0 {
                holders.for_each(|slot, tiers| {
                    let of_size = self.slots[slot as usize]
                        .as_ref()
                        .is_some_and(|s| s.block_size == size);
                    if of_size {
                        let gpu = tiers & GPU != 0;
                        alive.push((slot, gpu, u32::from(gpu), 1));
                    }
                });
            } else {
                let mut any = false;
                for a in &mut alive {
                    if a.3 as usize != depth {
                        continue;
                    }
                    if let Some(tiers) = holders.get(a.0) {
                        a.1 &= tiers & GPU != 0;
                        a.2 += u32::from(a.1);
                        a.3 += 1;
                        any = true;
                    }
                }
                if !any {
                    break;
                }
            }
            if alive.is_empty() {
                break;
            }
        }
        for (slot, _, gpu_blocks, blocks) in alive {
            let Some(s) = self.slots[slot as usize].as_ref() else {
                continue;
            };
            let Ok(i) = endpoints.binary_search_by(|ep| ep.id.cmp(&s.source.endpoint)) else {
                continue;
            };
            let m = KvMatch {
                gpu_tokens: gpu_blocks.saturating_mul(size),
                tokens: blocks.saturating_mul(size),
            };
            match out.iter_mut().find(|(j, _)| *j == i) {
                Some((_, best)) if (m.gpu_tokens, m.tokens) > (best.gpu_tokens, best.tokens) => {
                    *best = m;
                }
                Some(_) => {}
                None => out.push((i, m)),
            }
        }
    }
}

// === impl Holders ===

impl Holders {
    fn get(&self, slot: u32) -> Option<u8> {
        match self {
            Self::One(s, t) => (*s == slot).then_some(*t),
            Self::Many(v) => v.iter().find(|(s, _)| *s == slot).map(|&(_, t)| t),
        }
    }

    fn for_each(&self, mut f: impl FnMut(u32, u8)) {
        match self {
            Self::One(s, t) => f(*s, *t),
            Self::Many(v) => v.iter().for_each(|&(s, t)| f(s, t)),
        }
    }

    fn set(&mut self, slot: u32, tier: u8) {
        match self {
            Self::One(s, t) if *s == slot => *t |= tier,
            Self::One(s, t) => *self = Self::Many(Box::new(vec![(*s, *t), (slot, tier)])),
            Self::Many(v) => match v.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, t)) => *t |= tier,
                None => v.push((slot, tier)),
            },
        }
    }

    /// Clears `tiers` of `slot`; true when no holder is left.
    fn unset(&mut self, slot: u32, tiers: u8) -> bool {
        match self {
            Self::One(s, t) => {
                if *s == slot {
                    *t &= !tiers;
                }
                *t == 0
            }
            Self::Many(v) => {
                if let Some(at) = v.iter().position(|(s, _)| *s == slot) {
                    v[at].1 &= !tiers;
                    if v[at].1 == 0 {
                        v.swap_remove(at);
                    }
                }
                if let [(s, t)] = v.as_slice() {
                    *self = Self::One(*s, *t);
                    return false;
                }
                v.is_empty()
            }
        }
    }
}
