//! Block key → the sources holding it, and per source the engine's block hash → that
//! block, packed for memory (issue 15: at most 64 bytes per indexed block).
//!
//! Blocks live in one array of 16-byte entries (the router's key and its holders: one
//! holder inline, more in an arena), grown by an eighth at a time. Two hash tables point
//! into it with 4-byte indexes: [`HolderTable`]'s, by key (hashbrown's `HashTable` of
//! `u32`, 5 bytes a bucket), and each source's [`SlotKeys`], by the engine's hash (12-byte
//! entries, 13 bytes a bucket). A swiss table is at worst 7/16 full (just after it
//! doubled), so a block held by one source costs at most about 18 + 11.4 + 29.7 = 59
//! bytes, and about 43 on average. Two `HashMap<u64, u64>` cost 77 at worst.
//!
//! An entry lives while some source's [`SlotKeys`] names it (its reference count), so
//! an engine hash never names a reused entry. The router's keys are already xxh3 hashes
//! and are their own table hash; engine hashes go through foldhash.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// A value with this bit set holds an arena index.
const MANY: u64 = 1 << 63;
const GPU_MAX: u16 = 0x7fff;
/// Inline holders have 16-bit slots.
const SLOT_BITS: u32 = 16;
const REFS_SHIFT: u32 = 47;
const REFS_MAX: u64 = 0xffff;

/// One source's copies of one block, per tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Holder {
    pub(super) slot: u32,
    /// Copies in GPU memory (at most 32,767 counted).
    pub(super) gpu: u16,
    /// Copies in lower tiers.
    pub(super) lower: u16,
}

impl Holder {
    fn none(slot: u32) -> Self {
        Self {
            slot,
            gpu: 0,
            lower: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.gpu == 0 && self.lower == 0
    }
}

/// One block: the router's key and its holders. `value` packs, from bit 0: inline, the
/// holder's slot (16 bits), GPU copies (15), lower copies (16); or with [`MANY`], an
/// arena index (32). Bits 47–62: references from [`SlotKeys`].
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u64,
    value: u64,
}

impl Entry {
    fn refs(&self) -> u64 {
        (self.value & !MANY) >> REFS_SHIFT
    }

    fn set_refs(&mut self, refs: u64) {
        self.value = (self.value & (MANY | ((1 << REFS_SHIFT) - 1))) | refs << REFS_SHIFT;
    }

    /// The inline holder (`None`: the holders are in the arena).
    fn inline(&self) -> Option<Holder> {
        (self.value & MANY == 0).then_some(Holder {
            slot: (self.value as u32) & ((1 << SLOT_BITS) - 1),
            gpu: ((self.value >> SLOT_BITS) as u16) & GPU_MAX,
            lower: (self.value >> 31) as u16,
        })
    }

    fn set_inline(&mut self, h: Holder) {
        let refs = self.refs() << REFS_SHIFT;
        let h = if h.is_empty() { Holder::none(0) } else { h };
        self.value = u64::from(h.slot)
            | u64::from(h.gpu.min(GPU_MAX)) << SLOT_BITS
            | u64::from(h.lower) << 31
            | refs;
    }

    fn arena(&self) -> usize {
        (self.value as u32) as usize
    }

    fn set_arena(&mut self, at: u32) {
        self.value = MANY | (self.refs() << REFS_SHIFT) | u64::from(at);
    }
}

/// See the [module](self).
#[derive(Debug, Default)]
pub(super) struct HolderTable {
    by_key: HashTable<u32>,
    entries: Vec<Entry>,
    free_entries: Vec<u32>,
    arena: Vec<Vec<Holder>>,
    free: Vec<u32>,
}

impl HolderTable {
    /// Distinct blocks.
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    fn find(&self, key: u64) -> Option<&Entry> {
        let entries = &self.entries;
        self.by_key
            .find(key, |&at| entries[at as usize].key == key)
            .map(|&at| &entries[at as usize])
    }

    /// `slot`'s copies of block `key`.
    pub(super) fn get(&self, key: u64, slot: u32) -> Option<Holder> {
        let entry = self.find(key)?;
        match entry.inline() {
            Some(h) => (!h.is_empty() && h.slot == slot).then_some(h),
            None => self.arena[entry.arena()]
                .iter()
                .find(|h| h.slot == slot)
                .copied(),
        }
    }

    /// Calls `f` for every holder of `key`; false when nobody holds it.
    pub(super) fn for_each(&self, key: u64, mut f: impl FnMut(Holder)) -> bool {
        let Some(entry) = self.find(key) else {
            return false;
        };
        match entry.inline() {
            Some(h) if h.is_empty() => false,
            Some(h) => {
                f(h);
                true
            }
            None => {
                self.arena[entry.arena()].iter().copied().for_each(f);
                true
            }
        }
    }

    /// Whether anybody holds `key`.
    pub(super) fn contains(&self, key: u64) -> bool {
        self.find(key)
            .is_some_and(|e| e.inline().is_none_or(|h| !h.is_empty()))
    }

    /// The key of the entry at `at`.
    pub(super) fn key(&self, at: u32) -> u64 {
        self.entries[at as usize].key
    }

    /// The entry of block `key`, created without holders if new, with one more
    /// reference: the caller names it in a [`SlotKeys`] until [`HolderTable::release`].
    pub(super) fn acquire(&mut self, key: u64) -> u32 {
        let entries = &mut self.entries;
        let at = match self.by_key.find(key, |&at| entries[at as usize].key == key) {
            Some(&at) => at,
            None => {
                let entry = Entry { key, value: 0 };
                let at = match self.free_entries.pop() {
                    Some(at) => {
                        entries[at as usize] = entry;
                        at
                    }
                    None => {
                        if entries.len() == entries.capacity() {
                            // Grown by an eighth: at most 12.5 % unused.
                            entries.reserve_exact(entries.len() / 8 + 64);
                        }
                        entries.push(entry);
                        (entries.len() - 1) as u32
                    }
                };
                self.by_key
                    .insert_unique(key, at, |&at| entries[at as usize].key);
                at
            }
        };
        let entry = &mut self.entries[at as usize];
        entry.set_refs((entry.refs() + 1).min(REFS_MAX));
        at
    }

    /// One reference fewer to the entry at `at`; the last one frees it.
    pub(super) fn release(&mut self, at: u32) {
        let entry = &mut self.entries[at as usize];
        let refs = entry.refs().saturating_sub(1);
        entry.set_refs(refs);
        if refs > 0 {
            return;
        }
        let key = entry.key;
        if entry.inline().is_none() {
            let list = entry.arena();
            self.arena[list] = Vec::new();
            self.free.push(list as u32);
        }
        if let Ok(found) = self.by_key.find_entry(key, |&i| i == at) {
            found.remove();
        }
        self.free_entries.push(at);
    }

    /// Applies `change` to `slot`'s copies of the block at `at` (starting from none) and
    /// returns the holder before and after; a holder left with no copies is dropped.
    pub(super) fn update(
        &mut self,
        at: u32,
        slot: u32,
        change: impl FnOnce(&mut Holder),
    ) -> (Holder, Holder) {
        let entry = self.entries[at as usize];
        let Some(inline) = entry.inline() else {
            let list = &mut self.arena[entry.arena()];
            let (old, h) = match list.iter().position(|h| h.slot == slot) {
                Some(i) => {
                    let old = list[i];
                    change(&mut list[i]);
                    let h = list[i];
                    if h.is_empty() {
                        list.swap_remove(i);
                    }
                    (old, h)
                }
                None => {
                    let mut h = Holder::none(slot);
                    change(&mut h);
                    if !h.is_empty() {
                        list.push(h);
                    }
                    (Holder::none(slot), h)
                }
            };
            let last = match list.as_slice() {
                [] => Some(Holder::none(0)),
                [only] if only.slot >> SLOT_BITS == 0 => Some(*only),
                _ => None,
            };
            if let Some(last) = last {
                self.inline_again(at, last);
            }
            return (old, h);
        };
        let mine = !inline.is_empty() && inline.slot == slot;
        let old = if mine { inline } else { Holder::none(slot) };
        let mut h = old;
        change(&mut h);
        if mine || inline.is_empty() {
            if h.is_empty() || slot >> SLOT_BITS == 0 {
                self.entries[at as usize].set_inline(h);
            } else {
                let list = self.alloc(vec![h]);
                self.entries[at as usize].set_arena(list);
            }
        } else if !h.is_empty() {
            let list = self.alloc(vec![inline, h]);
            self.entries[at as usize].set_arena(list);
        }
        (old, h)
    }

    /// Puts the last holder (or none) of the entry at `at` back inline.
    fn inline_again(&mut self, at: u32, h: Holder) {
        let list = self.entries[at as usize].arena();
        self.arena[list] = Vec::new();
        self.free.push(list as u32);
        let entry = &mut self.entries[at as usize];
        let refs = entry.refs();
        entry.value = 0;
        entry.set_refs(refs);
        entry.set_inline(h);
    }

    fn alloc(&mut self, list: Vec<Holder>) -> u32 {
        match self.free.pop() {
            Some(at) => {
                self.arena[at as usize] = list;
                at
            }
            None => {
                self.arena.push(list);
                (self.arena.len() - 1) as u32
            }
        }
    }

    /// Bytes allocated: the entries and the table at their capacity, and the arena.
    pub(super) fn memory_bytes(&self) -> usize {
        let lists: usize = self
            .arena
            .iter()
            .map(|l| l.capacity() * std::mem::size_of::<Holder>())
            .sum();
        table_bytes::<u32>(self.by_key.capacity())
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + (self.free_entries.capacity() + self.free.capacity()) * 4
            + self.arena.capacity() * std::mem::size_of::<Vec<Holder>>()
            + lists
    }
}

/// One source's engine block hash → its block's entry in the [`HolderTable`].
#[derive(Debug, Default)]
pub(super) struct SlotKeys {
    table: HashTable<KeyRef>,
    hasher: RandomState,
}

/// 12 bytes, 4-aligned (a `(u64, u32)` would take 16).
#[derive(Debug, Clone, Copy)]
struct KeyRef {
    hash: [u32; 2],
    at: u32,
}

impl KeyRef {
    fn hash(&self) -> u64 {
        u64::from(self.hash[0]) | u64::from(self.hash[1]) << 32
    }
}

impl SlotKeys {
    /// The entry engine hash `hash` names.
    pub(super) fn get(&self, hash: u64) -> Option<u32> {
        self.table
            .find(self.hasher.hash_one(hash), |k| k.hash() == hash)
            .map(|k| k.at)
    }

    /// Names entry `at` by `hash` (not named yet).
    pub(super) fn insert(&mut self, hash: u64, at: u32) {
        let hasher = &self.hasher;
        let key = KeyRef {
            hash: [hash as u32, (hash >> 32) as u32],
            at,
        };
        self.table
            .insert_unique(hasher.hash_one(hash), key, |k| hasher.hash_one(k.hash()));
    }

    /// Forgets `hash`; the entry it named.
    pub(super) fn remove(&mut self, hash: u64) -> Option<u32> {
        let found = self
            .table
            .find_entry(self.hasher.hash_one(hash), |k| k.hash() == hash)
            .ok()?;
        Some(found.remove().0.at)
    }

    /// Every named entry, emptying the map (and freeing its memory).
    pub(super) fn take(&mut self) -> Vec<u32> {
        let table = std::mem::take(&mut self.table);
        table.into_iter().map(|k| k.at).collect()
    }

    /// Bytes allocated.
    pub(super) fn memory_bytes(&self) -> usize {
        table_bytes::<KeyRef>(self.table.capacity())
    }
}

/// Bytes a swiss table of `T` with room for `capacity` items allocates (its buckets and
/// their control bytes).
pub(super) fn table_bytes<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (std::mem::size_of::<T>() + 1)
}

#[cfg(test)]
mod tests;
