//! Tests of the KV index: stored blocks match their token prefixes, removals and resets
//! forget them, key spaces stay apart, replicas fed the same events agree.

use std::sync::Arc;

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
