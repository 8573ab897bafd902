//! The block pool's allocation, prefix-cache hits, LRU eviction and KV events.

use super::*;

const X: StoredExtra<'static> = StoredExtra {
    block_size: 16,
    lora_name: None,
    cache_salt: None,
};

fn h(i: u8) -> BlockHash {
    let mut x = [0u8; 32];
    x[31] = i;
    x[0] = i;
    x
}

fn alloc(pool: &mut BlockPool, n: usize) -> Vec<BlockId> {
    let mut v = Vec::new();
    assert!(pool.allocate(n, &mut v));
    v
}

#[test]
fn allocation_and_usage() {
    let mut p = BlockPool::new(11, true, false);
    assert_eq!(p.capacity(), 10);
    assert_eq!(p.usage(), 0.0);
    let a = alloc(&mut p, 4);
    assert_eq!(a, vec![1, 2, 3, 4]);
    assert!((p.usage() - 0.4).abs() < 1e-9);
    let mut none = Vec::new();
    assert!(!p.allocate(7, &mut none));
    assert!(none.is_empty(), "a failed allocation takes nothing");
    p.free(&a);
    assert_eq!(p.usage(), 0.0);
}

#[test]
fn cached_blocks_survive_free_and_are_hit() {
    let mut p = BlockPool::new(11, true, true);
    let a = alloc(&mut p, 3);
    p.cache_blocks(&a[..2], &[h(1), h(2)], None, &[0; 32], X);
    p.free(&a);
    // Still cached after free, and usage counts cached-but-free blocks as free.
    assert_eq!(p.num_cached(), 2);
    assert_eq!(p.usage(), 0.0);
    let hit = p.lookup(&[h(1), h(2), h(3)], 10);
    assert_eq!(hit, a[..2].to_vec());
    assert_eq!(p.lookup(&[h(2)], 10), vec![a[1]], "lookup is per hash");
    assert!(
        p.lookup(&[h(1), h(2)], 1).len() == 1,
        "max_blocks caps the hit"
    );
    p.touch(&hit);
    assert_eq!(p.num_free(), 8);
    let ev = p.take_events();
    assert!(
        matches!(&ev[0], KvEvent::BlockStored { block_hashes, parent_block_hash: None, token_ids, .. }
        if block_hashes.len() == 2 && token_ids.len() == 32)
    );
}

/// Freed uncached blocks are reused first; cached ones are evicted in LRU order, a
/// request's tail block before its head block.
#[test]
fn eviction_is_lru_tail_first() {
    let mut p = BlockPool::new(7, true, true); // 6 usable
    let a = alloc(&mut p, 2); // [1,2]
    p.cache_blocks(&a, &[h(1), h(2)], None, &[0; 32], X);
    let b = alloc(&mut p, 2); // [3,4]
    p.cache_blocks(&b, &[h(3), h(4)], None, &[0; 32], X);
    let scratch = alloc(&mut p, 1); // [5], never cached
    p.free(&a); // older request first: queue = 6, 2, 1
    p.free(&b); // then: 6, 2, 1, 4, 3
    p.free(&scratch); // uncached goes to the front: 5, 6, 2, 1, 4, 3
    p.take_events();
    let got = alloc(&mut p, 3);
    assert_eq!(got, vec![5, 6, 2]);
    let ev = p.take_events();
    assert_eq!(ev.len(), 1, "only the cached block 2 was evicted: {ev:?}");
    assert!(
        matches!(&ev[0], KvEvent::BlockRemoved { block_hashes } if block_hashes == &vec![published(&h(2))])
    );
    // Block 1 (hash 1) is still cached; only the evicted hash misses.
    assert_eq!(p.lookup(&[h(1)], 4), vec![1]);
    assert!(p.lookup(&[h(2)], 4).is_empty());
}

#[test]
fn duplicate_copies_are_tracked_until_both_evicted() {
    let mut p = BlockPool::new(4, true, true);
    let a = alloc(&mut p, 1);
    let b = alloc(&mut p, 1);
    p.cache_blocks(&a, &[h(9)], None, &[0; 16], X);
    p.cache_blocks(&b, &[h(9)], None, &[0; 16], X);
    assert_eq!(p.num_cached(), 2);
    p.free(&a);
    p.free(&b);
    alloc(&mut p, 2); // the uncached block 3 first, then a's copy
    assert_eq!(p.lookup(&[h(9)], 1), b);
    alloc(&mut p, 1);
    assert!(p.lookup(&[h(9)], 1).is_empty());
    let removed = p
        .take_events()
        .iter()
        .filter(|e| matches!(e, KvEvent::BlockRemoved { .. }))
        .count();
    assert_eq!(removed, 2);
}

#[test]
fn reset_only_when_nothing_is_held() {
    let mut p = BlockPool::new(5, true, true);
    let a = alloc(&mut p, 2);
    p.cache_blocks(&a, &[h(1), h(2)], None, &[0; 32], X);
    assert!(!p.reset());
    p.free(&a);
    assert!(p.reset());
    assert_eq!(p.num_cached(), 0);
    assert!(p.lookup(&[h(1)], 2).is_empty());
    assert!(matches!(
        p.take_events().last(),
        Some(KvEvent::AllBlocksCleared)
    ));
}

#[test]
fn caching_disabled_never_hits() {
    let mut p = BlockPool::new(5, false, true);
    let a = alloc(&mut p, 1);
    p.cache_blocks(&a, &[h(1)], None, &[0; 16], X);
    p.free(&a);
    assert!(p.lookup(&[h(1)], 1).is_empty());
    assert!(p.take_events().is_empty());
}
