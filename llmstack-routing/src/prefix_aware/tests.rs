//! The cost's terms, one at a time.

use std::sync::Arc;

use llmstack_core::Endpoint;

use super::*;

/// `n` engines and a request for model `m`.
fn engines(n: usize) -> (Vec<Arc<Endpoint>>, RouteRequest<'static>) {
    let eps = (0..n)
        .map(|i| Arc::new(Endpoint::new(format!("http://h{i}:8000").parse().unwrap())))
        .collect();
    let req = RouteRequest::from_json(br#"{"model":"m"}"#, None).unwrap();
    (eps, req)
}

#[test]
fn a_holder_wins_until_its_queue_costs_more_than_the_prefill() {
    let (eps, req) = engines(3);
    let policy = PrefixAware::default();
    let mut loads = vec![Load::default(); 3];
    loads[1].cached_tokens = 1900;
    let pick = |loads: &[Load]| policy.pick(&req, &Candidates::new(&eps, loads, 2000));
    assert_eq!(pick(&loads), Some(1));
    // 1900 cached tokens are worth ~29 requests of queue at 64 tokens each.
    loads[1].in_flight = 20;
    assert_eq!(pick(&loads), Some(1));
    loads[1].in_flight = 40;
    assert_ne!(pick(&loads), Some(1));
    // Two holders: the less loaded one.
    loads[2].cached_tokens = 1900;
    loads[2].in_flight = 3;
    assert_eq!(pick(&loads), Some(2));
    // Below the minimum match, a match is no match: least loaded.
    let strict = PrefixAware {
        min_match_tokens: 1950,
        ..PrefixAware::default()
    };
    loads[0].in_flight = 1;
    assert_eq!(
        strict.pick(&req, &Candidates::new(&eps, &loads, 2000)),
        Some(0)
    );
}

#[test]
fn a_full_cache_pays_for_what_it_would_evict() {
    let (eps, req) = engines(2);
    let policy = PrefixAware::default();
    // Engine 0 holds the 500-token system prompt but its share is full; engine 1 is
    // empty. A new 3,000-token conversation: 2,500 to prefill and evict on 0, 3,000
    // to prefill on 1.
    let mut loads = vec![Load::default(); 2];
    loads[0].cached_tokens = 500;
    loads[0].cache_free_tokens = Some(0);
    loads[1].cache_free_tokens = Some(100_000);
    let c = Candidates::new(&eps, &loads, 3000);
    assert_eq!(policy.pick(&req, &c), Some(1));
    assert_eq!(policy.cost(&loads[0], 3000), 5000.0);
    assert_eq!(policy.cost(&loads[1], 3000), 3000.0);
    // With room on engine 0, the cached system prompt wins.
    loads[0].cache_free_tokens = Some(2500);
    assert_eq!(
        policy.pick(&req, &Candidates::new(&eps, &loads, 3000)),
        Some(0)
    );
}

#[test]
fn new_conversations_go_to_the_emptier_cache_and_holders_keep_theirs() {
    let (eps, req) = engines(2);
    let policy = PrefixAware::default();
    // Both hold the system prompt and have room; engine 0 is 80 % full, engine 1 is
    // 20 % full, and engine 1 has two more requests in flight.
    let mut loads = vec![Load::default(); 2];
    for (load, free) in loads.iter_mut().zip([20_000, 80_000]) {
        load.cached_tokens = 500;
        load.kv_capacity_tokens = Some(100_000);
        load.cache_free_tokens = Some(free);
    }
    loads[1].in_flight = 2;
    // A new 3,000-token conversation: 2,500 new tokens either way. 2,500 × 0.8 on
    // engine 0 against 2,500 × 0.2 + 2 × 64 on engine 1.
    assert_eq!(policy.cost(&loads[0], 3000), 2500.0 + 2000.0);
    assert_eq!(policy.cost(&loads[1], 3000), 2500.0 + 500.0 + 128.0);
    assert_eq!(
        policy.pick(&req, &Candidates::new(&eps, &loads, 3000)),
        Some(1)
    );
    // Without the term, the shorter queue wins.
    let off = PrefixAware {
        footprint_weight: 0.0,
        ..PrefixAware::default()
    };
    assert_eq!(
        off.pick(&req, &Candidates::new(&eps, &loads, 3000)),
        Some(0)
    );
    // A conversation whose 2,900-token history engine 0 holds stays there with a
    // queue of 2,600 prefill tokens (100 + 80 + 2,600 against 2,500 + 500 + 128):
    // leaving would write a second copy of the history into engine 1. Without the
    // term it leaves (2,700 against 2,628).
    loads[0].cached_tokens = 2900;
    loads[0].pending_prefill_tokens = 2600;
    let c = Candidates::new(&eps, &loads, 3000);
    assert_eq!(policy.pick(&req, &c), Some(0));
    assert_eq!(off.pick(&req, &c), Some(1));
    // Unknown capacity: no fill, no term.
    loads[1].kv_capacity_tokens = None;
    assert_eq!(policy.cost(&loads[1], 3000), 2500.0 + 128.0);
}
