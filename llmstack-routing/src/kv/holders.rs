//! Block key → the sources holding it, packed: one holder inline in the table's 8-byte
//! value (most blocks have one), more in an arena.

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// A value with this bit set is an arena index.
const MANY: u64 = 1 << 63;
const GPU_MAX: u16 = 0x7fff;

/// One source's copies of one block, per tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Holder {
    pub(super) slot: u32,
    /// Copies in GPU memory (at most 32,767 counted).
    pub(super) gpu: u16,
    /// Copies in lower tiers.
    pub(super) lower: u16,
}

/// See the [module](self).
#[derive(Debug, Default)]
pub(super) struct HolderTable {
    map: HashMap<u64, u64, RandomState>,
    arena: Vec<Vec<Holder>>,
    free: Vec<u32>,
}

fn pack(h: Holder) -> u64 {
    u64::from(h.slot) | u64::from(h.gpu.min(GPU_MAX)) << 32 | u64::from(h.lower) << 47
}

fn unpack(v: u64) -> Holder {
    Holder {
        slot: v as u32,
        gpu: ((v >> 32) as u16) & GPU_MAX,
        lower: (v >> 47) as u16,
    }
}

impl HolderTable {
    /// Distinct blocks.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// `slot`'s copies of block `key`.
    pub(super) fn get(&self, key: u64, slot: u32) -> Option<Holder> {
        let v = *self.map.get(&key)?;
        if v & MANY == 0 {
            let h = unpack(v);
            return (h.slot == slot).then_some(h);
        }
        self.arena[(v as u32) as usize]
            .iter()
            .find(|h| h.slot == slot)
            .copied()
    }

    /// Calls `f` for every holder of `key`; false when nobody holds it.
    pub(super) fn for_each(&self, key: u64, mut f: impl FnMut(Holder)) -> bool {
        let Some(&v) = self.map.get(&key) else {
            return false;
        };
        if v & MANY == 0 {
            f(unpack(v));
        } else {
            self.arena[(v as u32) as usize].iter().copied().for_each(f);
        }
        true
    }

    /// Whether anybody holds `key`.
    pub(super) fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    /// Applies `change` to `slot`'s copies of `key` (starting from none) and returns
    /// the holder before and after; a holder left with no copies is dropped.
    pub(super) fn update(
        &mut self,
        key: u64,
        slot: u32,
        change: impl FnOnce(&mut Holder),
    ) -> (Holder, Holder) {
        let none = Holder {
            slot,
            gpu: 0,
            lower: 0,
        };
        let empty = |h: &Holder| h.gpu == 0 && h.lower == 0;
        match self.map.get(&key).copied() {
            None => {
                let mut h = none;
                change(&mut h);
                if !empty(&h) {
                    self.map.insert(key, pack(h));
                }
                (none, h)
            }
            Some(v) if v & MANY == 0 => {
                let old = unpack(v);
                if old.slot == slot {
                    let mut h = old;
                    change(&mut h);
                    if empty(&h) {
                        self.map.remove(&key);
                    } else {
                        self.map.insert(key, pack(h));
                    }
                    return (old, h);
                }
                let mut h = none;
                change(&mut h);
                if !empty(&h) {
                    let at = self.alloc(vec![old, h]);
                    self.map.insert(key, MANY | u64::from(at));
                }
                (none, h)
            }
            Some(v) => {
                let at = (v as u32) as usize;
                let list = &mut self.arena[at];
                let (old, h) = match list.iter().position(|h| h.slot == slot) {
                    Some(i) => {
                        let old = list[i];
                        change(&mut list[i]);
                        let h = list[i];
                        if empty(&h) {
                            list.swap_remove(i);
                        }
                        (old, h)
                    }
                    None => {
                        let mut h = none;
                        change(&mut h);
                        if !empty(&h) {
                            list.push(h);
                        }
                        (none, h)
                    }
                };
                if let [only] = list.as_slice() {
                    let only = pack(*only);
                    self.release(at);
                    self.map.insert(key, only);
                }
                (old, h)
            }
        }
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

    fn release(&mut self, at: usize) {
        self.arena[at] = Vec::new();
        self.free.push(at as u32);
    }

    /// Bytes allocated: the table at its capacity, and the arena.
    pub(super) fn memory_bytes(&self) -> usize {
        let lists: usize = self
            .arena
            .iter()
            .map(|l| l.capacity() * std::mem::size_of::<Holder>())
            .sum();
        super::index::table_bytes::<u64, u64>(self.map.capacity())
            + self.arena.capacity() * std::mem::size_of::<Vec<Holder>>()
            + lists
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_inline_many_in_the_arena_and_back() {
        let mut t = HolderTable::default();
        let add_gpu = |h: &mut Holder| h.gpu += 1;
        assert_eq!(t.update(7, 1, add_gpu).1.gpu, 1);
        assert_eq!(t.update(7, 1, add_gpu).1.gpu, 2);
        t.update(7, 2, |h| h.lower += 1);
        assert_eq!(t.get(7, 1).map(|h| h.gpu), Some(2));
        assert_eq!(t.get(7, 2).map(|h| h.lower), Some(1));
        let mut seen = Vec::new();
        assert!(t.for_each(7, |h| seen.push(h.slot)));
        assert_eq!(seen, vec![1, 2]);
        // Slot 1 drops all its copies: back to one inline holder.
        t.update(7, 1, |h| h.gpu = 0);
        assert_eq!(t.get(7, 1), None);
        assert_eq!(t.free.len(), 1);
        t.update(7, 2, |h| h.lower = 0);
        assert!(!t.contains(7));
        assert_eq!(t.len(), 0);
        // Large counts and slots survive packing.
        let h = Holder {
            slot: u32::MAX,
            gpu: GPU_MAX,
            lower: u16::MAX,
        };
        assert_eq!(unpack(pack(h)), h);
        assert_eq!(pack(h) & MANY, 0);
    }
}
