//! The packed holder table against a plain model of it, and its memory bound.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

#[test]
fn one_holder_inline_many_in_the_arena_and_back() {
    let mut t = HolderTable::default();
    let add_gpu = |h: &mut Holder| h.gpu += 1;
    let a = t.acquire(7);
    assert!(!t.contains(7), "acquired, not held");
    assert_eq!(t.update(a, 1, add_gpu).1.gpu, 1);
    assert_eq!(t.update(a, 1, add_gpu).1.gpu, 2);
    assert!(t.contains(7));
    let again = t.acquire(7);
    assert_eq!(again, a, "one entry per key");
    t.update(a, 2, |h| h.lower += 1);
    assert_eq!(t.get(7, 1).map(|h| h.gpu), Some(2));
    assert_eq!(t.get(7, 2).map(|h| h.lower), Some(1));
    let mut seen = Vec::new();
    assert!(t.for_each(7, |h| seen.push(h.slot)));
    assert_eq!(seen, vec![1, 2]);
    // Slot 1 drops all its copies: back to one inline holder.
    t.update(a, 1, |h| h.gpu = 0);
    assert_eq!(t.get(7, 1), None);
    assert_eq!(t.free.len(), 1);
    t.update(a, 2, |h| h.lower = 0);
    assert!(!t.contains(7));
    assert!(!t.for_each(7, |_| {}));
    assert_eq!(t.len(), 1, "still referenced twice");
    t.release(a);
    assert_eq!(t.len(), 1);
    t.release(a);
    assert_eq!(t.len(), 0);
    assert_eq!(t.free_entries, vec![a]);
    // A slot too wide to pack is kept in the arena, alone or not.
    let b = t.acquire(9);
    assert_eq!(b, a, "the freed entry is reused");
    let wide = 1 << 20;
    t.update(b, wide, |h| h.gpu = GPU_MAX);
    assert_eq!(t.get(9, wide).map(|h| h.gpu), Some(GPU_MAX));
    t.update(b, 3, |h| h.lower = u16::MAX);
    t.update(b, wide, |h| h.gpu = 0);
    assert_eq!(t.get(9, 3).map(|h| h.lower), Some(u16::MAX));
    assert!(t.entries[b as usize].inline().is_some(), "back inline");
    assert_eq!(t.entries[b as usize].refs(), 1);
}

#[test]
fn slot_keys_name_entries_by_engine_hash() {
    let mut k = SlotKeys::default();
    for h in 0..1000u64 {
        k.insert(h << 40 | h, h as u32);
    }
    assert_eq!(k.get(5 << 40 | 5), Some(5));
    assert_eq!(k.get(5), None);
    assert_eq!(k.remove(5 << 40 | 5), Some(5));
    assert_eq!(k.remove(5 << 40 | 5), None);
    let mut all = k.take();
    all.sort_unstable();
    assert_eq!(all.len(), 999);
    assert_eq!(k.get(6 << 40 | 6), None);
    assert_eq!(k.memory_bytes(), 0);
}

/// Slots of a source hold `(engine hash → key)`; an operation adds or removes a copy.
#[derive(Debug, Clone)]
enum Op {
    Add {
        slot: u32,
        hash: u64,
        key: u64,
        gpu: bool,
    },
    Remove {
        slot: u32,
        hash: u64,
        gpu: bool,
    },
    Clear {
        slot: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Few hashes and keys, so that copies, shared blocks and reuse happen.
    let slot = prop_oneof![0..4u32, Just(70_000u32)];
    prop_oneof![
        4 => (slot.clone(), 0..24u64, 0..12u64, any::<bool>())
            .prop_map(|(slot, hash, key, gpu)| Op::Add { slot, hash, key, gpu }),
        3 => (slot.clone(), 0..24u64, any::<bool>())
            .prop_map(|(slot, hash, gpu)| Op::Remove { slot, hash, gpu }),
        1 => slot.prop_map(|slot| Op::Clear { slot }),
    ]
}

proptest! {
    /// The table with slot maps does what two plain maps do, as the index drives it.
    #[test]
    fn packed_tables_agree_with_plain_maps(ops in proptest::collection::vec(op(), 1..200)) {
        let mut table = HolderTable::default();
        let mut slots: HashMap<u32, SlotKeys> = HashMap::new();
        // The model: per slot, hash → key; per (key, slot), copies per tier.
        let mut names: HashMap<(u32, u64), u64> = HashMap::new();
        let mut copies: HashMap<(u64, u32), (u16, u16)> = HashMap::new();
        for op in ops {
            match op {
                Op::Add { slot, hash, key, gpu } => {
                    let keys = slots.entry(slot).or_default();
                    let key = *names.entry((slot, hash)).or_insert(key);
                    let at = match keys.get(hash) {
                        Some(at) => at,
                        None => {
                            let at = table.acquire(key);
                            keys.insert(hash, at);
                            at
                        }
                    };
                    prop_assert_eq!(table.key(at), key);
                    table.update(at, slot, |h| if gpu { h.gpu += 1 } else { h.lower += 1 });
                    let c = copies.entry((key, slot)).or_default();
                    if gpu { c.0 += 1 } else { c.1 += 1 }
                }
                Op::Remove { slot, hash, gpu } => {
                    let keys = slots.entry(slot).or_default();
                    let Some(at) = keys.get(hash) else {
                        prop_assert!(!names.contains_key(&(slot, hash)));
                        continue;
                    };
                    let key = names[&(slot, hash)];
                    let (_, new) = table.update(at, slot, |h| {
                        if gpu { h.gpu = h.gpu.saturating_sub(1) } else { h.lower = h.lower.saturating_sub(1) }
                    });
                    let c = copies.entry((key, slot)).or_default();
                    if gpu { c.0 = c.0.saturating_sub(1) } else { c.1 = c.1.saturating_sub(1) }
                    if new.gpu == 0 && new.lower == 0 {
                        keys.remove(hash);
                        table.release(at);
                        names.remove(&(slot, hash));
                    }
                }
                Op::Clear { slot } => {
                    for at in slots.entry(slot).or_default().take() {
                        table.update(at, slot, |h| { h.gpu = 0; h.lower = 0 });
                        table.release(at);
                    }
                    names.retain(|(s, _), _| *s != slot);
                    copies.retain(|(_, s), _| *s != slot);
                }
            }
            copies.retain(|_, c| *c != (0, 0));
            // Every key: its holders as the model says.
            for key in 0..12u64 {
                let mut held: Vec<(u32, u16, u16)> = Vec::new();
                let any = table.for_each(key, |h| held.push((h.slot, h.gpu, h.lower)));
                held.sort_unstable();
                let mut want: Vec<(u32, u16, u16)> = copies
                    .iter()
                    .filter(|((k, _), _)| *k == key)
                    .map(|((_, s), c)| (*s, c.0, c.1))
                    .collect();
                want.sort_unstable();
                prop_assert_eq!(any, !want.is_empty());
                prop_assert_eq!(table.contains(key), !want.is_empty());
                prop_assert_eq!(&held, &want);
                for &(slot, gpu, lower) in &want {
                    prop_assert_eq!(table.get(key, slot), Some(Holder { slot, gpu, lower }));
                }
            }
            // Live entries: the keys some slot names.
            let named: HashSet<u64> = names.values().copied().collect();
            prop_assert_eq!(table.len(), named.len());
        }
    }
}

/// The bound the module promises, at the worst point (every table just doubled).
#[test]
fn a_block_costs_at_most_64_bytes() {
    let mut table = HolderTable::default();
    let mut keys = SlotKeys::default();
    let mut worst: f64 = 0.0;
    for n in 0..200_000u64 {
        let key = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let at = table.acquire(key);
        keys.insert(n, at);
        table.update(at, 0, |h| h.gpu = 1);
        if n > 1000 {
            let bytes = table.memory_bytes() + keys.memory_bytes();
            worst = worst.max(bytes as f64 / (n + 1) as f64);
        }
    }
    println!("worst: {worst:.1} B per block");
    assert!(worst <= 64.0, "{worst:.1} B per block");
    assert!(worst > 40.0, "{worst:.1} B per block: the measure is wrong");
}
