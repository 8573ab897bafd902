//! Tests of the prompt hash chain and of the prefix index's matches and evictions.

use llmstack_core::{EndpointId, RouteRequest};

use super::chain::Chunker;
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
