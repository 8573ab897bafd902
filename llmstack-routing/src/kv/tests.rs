//! Tests of the KV index: stored blocks match their token prefixes, removals and resets
//! forget them, key spaces stay apart, replicas fed the same events agree.

use std::sync::Arc;
use std::time::Duration;

use llmstack_core::kv::{BlockRemoved, BlockStored, ExtraKey, KvBatch, KvEvent, Medium};
use llmstack_core::{Endpoint, KvSink, KvSource};

use super::*;

/// `n` engines, sorted by id as the router's candidates are.
fn eps(n: u16) -> Vec<Arc<Endpoint>> {
    let mut eps = crate::testing::eps(n);
    eps.sort_by(|a, b| a.id.cmp(&b.id));
    eps
}

const BS: u32 = 4;

fn source(eps: &[Arc<Endpoint>], i: usize) -> KvSource {
    KvSource {
        endpoint: eps[i].id.clone(),
        dp_rank: 0,
    }
}

/// The engine's hashes: anything unique per (sequence, block) works, as vLLM's are
/// opaque to the index.
fn engine_hash(seq: u64, block: usize) -> u64 {
    seq.wrapping_mul(1_000_003) ^ (block as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn stored(seq: u64, tokens: &[u32], from_block: usize, medium: Medium) -> KvEvent {
    let blocks = tokens.len() / BS as usize;
    KvEvent::BlockStored(BlockStored {
        block_hashes: (from_block..from_block + blocks)
            .map(|b| engine_hash(seq, b))
            .collect(),
        parent_block_hash: from_block.checked_sub(1).map(|b| engine_hash(seq, b)),
        token_ids: tokens.to_vec(),
        block_size: BS,
        medium,
        full_attention: true,
        ..BlockStored::default()
    })
}

fn batch(events: Vec<KvEvent>) -> KvBatch {
    KvBatch {
        ts: 0.0,
        events,
        dp_rank: 0,
    }
}

fn tokens(n: u32, offset: u32) -> Vec<u32> {
    (offset..offset + n).collect()
}

#[test]
fn stored_blocks_match_their_prefix_and_later_blocks_chain_on() {
    let eps = eps(3);
    let index = KvIndex::new();
    let prompt = tokens(16, 100);
    // Engine 1 stores the first two blocks, then (a later step) two more.
    index.apply(
        &source(&eps, 1),
        &batch(vec![stored(7, &prompt[..8], 0, Medium::Gpu)]),
    );
    index.apply(
        &source(&eps, 1),
        &batch(vec![stored(7, &prompt[8..], 2, Medium::Gpu)]),
    );
    // Engine 2 stores only the first block.
    index.apply(
        &source(&eps, 2),
        &batch(vec![stored(9, &prompt[..4], 0, Medium::Gpu)]),
    );
    let space = KeySpace::default();
    let mut m = index.matches(&space, &prompt, &eps);
    m.sort_by_key(|(i, _)| *i);
    assert_eq!(
        m,
        vec![
            (
                1,
                KvMatch {
                    gpu_tokens: 16,
                    tokens: 16
                }
            ),
            (
                2,
                KvMatch {
                    gpu_tokens: 4,
                    tokens: 4
                }
            ),
        ]
    );
    // A prompt sharing two blocks, then diverging.
    let mut other = prompt.clone();
    other[9] = 0;
    let m = index.matches(&space, &other, &eps);
    assert!(m.contains(&(
        1,
        KvMatch {
            gpu_tokens: 8,
            tokens: 8
        }
    )));
    // A partial last block is never matched; an unrelated prompt matches nothing.
    assert!(index.matches(&space, &tokens(3, 100), &eps).is_empty());
    assert!(index.matches(&space, &tokens(16, 5), &eps).is_empty());
    assert!(index.has_events(&eps[1].id));
    assert!(!index.has_events(&eps[0].id));
    assert_eq!(index.block_size(), Some(BS));
}

#[test]
fn removals_counted_per_copy_and_per_tier() {
    let eps = eps(1);
    let src = source(&eps, 0);
    let index = KvIndex::new();
    let prompt = tokens(8, 1);
    // The same content computed twice (two requests at once): two copies.
    index.apply(&src, &batch(vec![stored(1, &prompt, 0, Medium::Gpu)]));
    index.apply(&src, &batch(vec![stored(1, &prompt, 0, Medium::Gpu)]));
    // Offloaded to CPU as well.
    index.apply(&src, &batch(vec![stored(1, &prompt, 0, Medium::Cpu)]));
    let removed = |medium| {
        KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: vec![engine_hash(1, 1)],
            medium,
            group_idx: 0,
        })
    };
    let space = KeySpace::default();
    index.apply(&src, &batch(vec![removed(Medium::Gpu)]));
    assert_eq!(
        index.matches(&space, &prompt, &eps),
        vec![(
            0,
            KvMatch {
                gpu_tokens: 8,
                tokens: 8
            }
        )],
        "one copy is left on the GPU"
    );
    index.apply(&src, &batch(vec![removed(Medium::Gpu)]));
    assert_eq!(
        index.matches(&space, &prompt, &eps),
        vec![(
            0,
            KvMatch {
                gpu_tokens: 4,
                tokens: 8
            }
        )],
        "the second block is on the CPU only"
    );
    index.apply(&src, &batch(vec![removed(Medium::Cpu)]));
    assert_eq!(
        index.matches(&space, &prompt, &eps),
        vec![(
            0,
            KvMatch {
                gpu_tokens: 4,
                tokens: 4
            }
        )]
    );
    let s = &index.sources()[0];
    assert_eq!((s.gpu_blocks, s.lower_blocks), (1, 1));
    index.apply(&src, &batch(vec![KvEvent::AllBlocksCleared]));
    assert!(index.matches(&space, &prompt, &eps).is_empty());
    assert!(index.is_empty());
}

#[test]
fn key_spaces_never_share_blocks() {
    let eps = eps(1);
    let src = source(&eps, 0);
    let index = KvIndex::new();
    let prompt = tokens(8, 1);
    let mut salted = stored(1, &prompt, 0, Medium::Gpu);
    if let KvEvent::BlockStored(s) = &mut salted {
        s.lora_name = Some("adapter".into());
        s.extra_keys = vec![
            Some(vec![
                ExtraKey::Text("adapter".into()),
                ExtraKey::Text("salt-1".into()),
            ]),
            Some(vec![ExtraKey::Text("adapter".into())]),
        ];
    }
    index.apply(&src, &batch(vec![salted]));
    let hit = |lora, salt| {
        index
            .matches(&KeySpace { lora, salt }, &prompt, &eps)
            .first()
            .map(|m| m.1.tokens)
    };
    assert_eq!(hit(Some("adapter"), Some("salt-1")), Some(8));
    assert_eq!(hit(Some("adapter"), None), None);
    assert_eq!(hit(None, Some("salt-1")), None);
    assert_eq!(hit(Some("adapter"), Some("salt-2")), None);
    // A multimodal block is not a text block with the same placeholder tokens.
    let mut mm = stored(2, &prompt, 0, Medium::Gpu);
    if let KvEvent::BlockStored(s) = &mut mm {
        s.extra_keys = vec![Some(vec![ExtraKey::List(vec![
            ExtraKey::Text("img-digest".into()),
            ExtraKey::Int(0),
        ])])];
    }
    index.apply(&src, &batch(vec![mm]));
    assert_eq!(hit(None, None), None);
}

#[test]
fn orphans_resets_removal_and_overflow() {
    let eps = eps(2);
    let index = KvIndex::new();
    let prompt = tokens(8, 1);
    // Blocks whose parent was announced before the router subscribed: not keyable.
    index.apply(
        &source(&eps, 0),
        &batch(vec![stored(3, &prompt[4..], 1, Medium::Gpu)]),
    );
    assert!(index.is_empty());
    assert_eq!(index.sources()[0].orphans, 1);
    index.apply(
        &source(&eps, 0),
        &batch(vec![stored(3, &prompt, 0, Medium::Gpu)]),
    );
    index.apply(
        &source(&eps, 1),
        &batch(vec![stored(3, &prompt, 0, Medium::Gpu)]),
    );
    assert_eq!(index.matches(&KeySpace::default(), &prompt, &eps).len(), 2);
    // A gap that could not be replayed: that source is forgotten until its next batch.
    index.reset(&source(&eps, 0));
    assert!(!index.has_events(&eps[0].id));
    assert_eq!(
        index.matches(&KeySpace::default(), &prompt, &eps),
        vec![(
            1,
            KvMatch {
                gpu_tokens: 8,
                tokens: 8
            }
        )]
    );
    // Discovery removed engine 1.
    index.remove(&eps[1].id);
    assert!(index.is_empty());
    assert_eq!(index.sources().len(), 1);
    // More blocks than twice the capacity (floored at 1024): reset.
    index.set_capacity(&eps[0].id, 1);
    let long = tokens(BS * 1100, 0);
    index.apply(
        &source(&eps, 0),
        &batch(vec![stored(4, &long, 0, Medium::Gpu)]),
    );
    assert!(index.is_empty());
    assert_eq!(index.sources()[0].resets, 2);
}

#[test]
fn replicas_fed_the_same_events_agree() {
    let eps = eps(4);
    let (a, b) = (KvIndex::new(), KvIndex::new());
    let mut rng = fastrand::Rng::with_seed(7);
    let mut sequences: Vec<Vec<u32>> = Vec::new();
    for seq in 0..200u64 {
        let engine = rng.usize(..4);
        let shared = if sequences.is_empty() || rng.bool() {
            Vec::new()
        } else {
            let s = &sequences[rng.usize(..sequences.len())];
            s[..(rng.usize(..=s.len() / 4) * 4)].to_vec()
        };
        let mut toks = shared;
        toks.extend((0..rng.u32(1..10) * BS).map(|_| rng.u32(..50)));
        let event = stored(seq, &toks, 0, Medium::Gpu);
        let removal = KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: vec![engine_hash(rng.u64(..seq + 1), rng.usize(..4))],
            medium: Medium::Gpu,
            group_idx: 0,
        });
        for index in [&a, &b] {
            index.apply(
                &source(&eps, engine),
                &batch(vec![event.clone(), removal.clone()]),
            );
        }
        sequences.push(toks);
    }
    for s in &sequences {
        let mut ma = a.matches(&KeySpace::default(), s, &eps);
        let mut mb = b.matches(&KeySpace::default(), s, &eps);
        ma.sort_by_key(|m| m.0);
        mb.sort_by_key(|m| m.0);
        assert_eq!(ma, mb);
    }
    assert_eq!(a.sources(), b.sources());
}

#[test]
fn request_keys_equal_the_keys_of_announced_blocks() {
    let space = KeySpace {
        lora: None,
        salt: Some("s"),
    };
    let toks = tokens(10, 3);
    let keys = block_keys(&space, &toks, 4);
    assert_eq!(keys.len(), 2, "full blocks only");
    assert_ne!(keys, block_keys(&KeySpace::default(), &toks, 4));
    assert_eq!(keys[..1], block_keys(&space, &toks[..4], 4)[..]);
}

// === pending blocks ===

use super::pending::{MAX_PENDING, PENDING_TTL};

/// Engine `i` announces an unrelated block, so the index knows the block size.
fn publishing(index: &KvIndex, eps: &[Arc<Endpoint>], i: usize) {
    let seq = 1_000 + i as u64;
    index.apply(
        &source(eps, i),
        &batch(vec![stored(seq, &tokens(BS, 90_000), 0, Medium::Gpu)]),
    );
}

fn gpu(tokens: u32) -> KvMatch {
    KvMatch {
        gpu_tokens: tokens,
        tokens,
    }
}

fn sorted(mut m: Vec<(usize, KvMatch)>) -> Vec<(usize, KvMatch)> {
    m.sort_by_key(|(i, _)| *i);
    m
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pending_prompt_matches_on_its_engine_before_any_event() {
    let eps = eps(3);
    let index = KvIndex::new();
    publishing(&index, &eps, 0);
    let space = KeySpace::default();
    let prompt = tokens(18, 100);
    // Engine 1 accepted the prompt and has announced nothing (no source at all yet).
    index.expect(&eps[1].id, &block_keys(&space, &prompt, BS as usize));
    assert_eq!(index.matches(&space, &prompt, &eps), vec![(1, gpu(16))]);
    // A longer prompt (the next turn) matches its pending prefix; another key space
    // or another prompt nothing.
    let mut next = prompt.clone();
    next.extend(tokens(20, 7));
    assert_eq!(index.matches(&space, &next, &eps), vec![(1, gpu(16))]);
    let salted = KeySpace {
        lora: None,
        salt: Some("s"),
    };
    assert!(index.matches(&salted, &prompt, &eps).is_empty());
    assert!(index.matches(&space, &tokens(18, 5), &eps).is_empty());
    // Only candidates match.
    assert!(index.matches(&space, &prompt, &eps[2..]).is_empty());
    // Pending is no event: the converged index is untouched.
    assert_eq!(index.len(), 1);
    assert!(!index.has_events(&eps[1].id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn pending_and_indexed_blocks_combine_into_one_depth() {
    let eps = eps(3);
    let index = KvIndex::new();
    let space = KeySpace::default();
    let prompt = tokens(24, 100);
    let keys = block_keys(&space, &prompt, BS as usize);
    // Engine 1 announced the first two blocks (the previous turn) and accepted the
    // whole prompt: six blocks; the two it holds are not recorded again.
    index.apply(
        &source(&eps, 1),
        &batch(vec![stored(1, &prompt[..8], 0, Medium::Gpu)]),
    );
    index.expect(&eps[1].id, &keys);
    assert_eq!(index.pending_len(), 4);
    // Engine 2 holds the first block on the CPU only: pending credits its GPU.
    index.apply(
        &source(&eps, 2),
        &batch(vec![stored(2, &prompt[..4], 0, Medium::Cpu)]),
    );
    index.expect(&eps[2].id, &keys[..3]);
    // Engine 0 has only later blocks pending: no leading prefix, no match.
    index.expect(&eps[0].id, &keys[2..]);
    assert_eq!(
        sorted(index.matches(&space, &prompt, &eps)),
        vec![(1, gpu(24)), (2, gpu(12))]
    );

    // Engine 1 announces blocks 3 and 4, then drops block 4: announced blocks are
    // confirmed, so their removal counts at once; block 5 is pending but no longer
    // continues the prefix.
    index.apply(
        &source(&eps, 1),
        &batch(vec![
            stored(1, &prompt[8..16], 2, Medium::Gpu),
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![engine_hash(1, 3)],
                medium: Medium::Gpu,
                group_idx: 0,
            }),
        ]),
    );
    assert_eq!(
        sorted(index.matches(&space, &prompt, &eps)),
        vec![(1, gpu(12)), (2, gpu(12))]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn pending_blocks_expire_after_the_ttl() {
    let eps = eps(2);
    let index = KvIndex::new();
    publishing(&index, &eps, 0);
    let space = KeySpace::default();
    let prompt = tokens(8, 100);
    index.expect(&eps[1].id, &block_keys(&space, &prompt, BS as usize));
    tokio::time::advance(PENDING_TTL - Duration::from_millis(1)).await;
    assert_eq!(index.matches(&space, &prompt, &eps), vec![(1, gpu(8))]);
    // Recorded again (another request with the same prefix): counts from then.
    let half = block_keys(&space, &prompt[..4], BS as usize);
    index.expect(&eps[1].id, &half);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(index.matches(&space, &prompt, &eps), vec![(1, gpu(4))]);
    tokio::time::advance(PENDING_TTL).await;
    assert!(index.matches(&space, &prompt, &eps).is_empty());
    // The next batch drops the expired recordings.
    assert_eq!(index.pending_len(), 3);
    publishing(&index, &eps, 0);
    assert_eq!(index.pending_len(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn resets_removals_and_cleared_caches_drop_pending_blocks() {
    let eps = eps(4);
    let index = KvIndex::new();
    publishing(&index, &eps, 0);
    let space = KeySpace::default();
    let prompt = tokens(8, 100);
    let keys = block_keys(&space, &prompt, BS as usize);
    let expect_all = || {
        for ep in &eps {
            index.expect(&ep.id, &keys);
        }
    };
    expect_all();
    assert_eq!(index.matches(&space, &prompt, &eps).len(), 4);
    // `POST /reset_prefix_cache` on engine 0: its next batch says so.
    index.apply(&source(&eps, 0), &batch(vec![KvEvent::AllBlocksCleared]));
    // A gap on engine 1's stream; discovery removed engine 2.
    index.reset(&source(&eps, 1));
    index.remove(&eps[2].id);
    assert_eq!(index.matches(&space, &prompt, &eps), vec![(3, gpu(8))]);
    // Expected again, they match again: forgetting is not a ban.
    expect_all();
    assert_eq!(index.matches(&space, &prompt, &eps).len(), 4);
    // Overflow resets (removals were lost) forget pending blocks as well.
    index.set_capacity(&eps[0].id, 1);
    index.apply(
        &source(&eps, 0),
        &batch(vec![stored(4, &tokens(BS * 1100, 0), 0, Medium::Gpu)]),
    );
    let holders: Vec<usize> = sorted(index.matches(&space, &prompt, &eps))
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(holders, vec![1, 2, 3]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_pending_cap_holds_and_drops_the_oldest_first() {
    let eps = eps(2);
    let index = KvIndex::new();
    publishing(&index, &eps, 0);
    let space = KeySpace::default();
    let prompts: Vec<Vec<u32>> = (0..5).map(|p| tokens(BS * 20_000, p * 1_000_000)).collect();
    for (i, p) in prompts.iter().enumerate() {
        index.expect(&eps[i % 2].id, &block_keys(&space, p, BS as usize));
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert_eq!(index.pending_len(), MAX_PENDING);
    // The newest prompts are whole; the oldest gone, and the one cut lost its first
    // blocks, so its prefix.
    let depth = |p: &[u32]| index.matches(&space, p, &eps).first().map(|m| m.1.tokens);
    assert_eq!(depth(&prompts[4]), Some(BS * 20_000));
    assert_eq!(depth(&prompts[3]), Some(BS * 20_000));
    assert_eq!(depth(&prompts[2]), Some(BS * 20_000));
    assert_eq!(depth(&prompts[1]), None);
    assert_eq!(depth(&prompts[0]), None);
    // One prompt longer than the cap keeps its first blocks.
    let long = tokens(BS * (MAX_PENDING as u32 + 10), 7);
    index.expect(&eps[0].id, &block_keys(&space, &long, BS as usize));
    assert_eq!(index.pending_len(), MAX_PENDING);
    assert_eq!(depth(&long), Some(BS * MAX_PENDING as u32));
    assert!(index.memory_bytes() < 8 << 20, "{}", index.memory_bytes());
}
