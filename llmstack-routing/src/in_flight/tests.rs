//! Tests of the in-flight counts, their guards, and scraped loads folded into the live view.

use std::collections::HashMap;
use std::time::Duration;

use llmstack_core::EngineStats;

use super::*;

/// Every candidate's load now.
fn loads(in_flight: &InFlight, eps: &[Arc<Endpoint>], adapter: Option<&str>) -> Vec<Load> {
    let live = in_flight.live(&CandidateList::Owned(eps.to_vec()), adapter);
    (0..eps.len()).map(|i| live.get(i)).collect()
}

#[test]
fn guards_count_until_dropped() {
    let in_flight = InFlight::default();
    let (a, b) = (EndpointId::new("a"), EndpointId::new("b"));
    let g1 = in_flight.start(&a);
    let g2 = in_flight.start(&a);
    let g3 = in_flight.clone().start(&b);
    assert_eq!(
        (in_flight.get(&a), in_flight.get(&b), in_flight.total()),
        (2, 1, 3)
    );
    drop(g1);
    drop(g3);
    assert_eq!((in_flight.get(&a), in_flight.get(&b)), (1, 0));
    in_flight.retain(|_| false);
    assert_eq!(in_flight.get(&a), 1, "busy counters are kept");
    drop(g2);
    in_flight.retain(|_| false);
    assert_eq!(in_flight.total(), 0);
}

fn endpoint(port: u16) -> Arc<Endpoint> {
    Arc::new(Endpoint::new(
        format!("http://127.0.0.1:{port}").parse().unwrap(),
    ))
}

fn stats(running: f64, waiting: f64) -> EngineStats {
    EngineStats {
        running,
        waiting,
        kv_cache_usage: 0.25,
        prefix_cache_queries: 0.0,
        prefix_cache_hits: 0.0,
        prefix_cache_hit_rate: None,
        num_gpu_blocks: Some(100),
        block_size: Some(16),
        lora_running: vec!["sql".into()],
        lora_waiting: vec![],
        models: HashMap::new(),
        scraped_at: Instant::now(),
    }
}

#[test]
fn tokens_and_pending_prefill_follow_the_guard() {
    let in_flight = InFlight::default();
    let eps = [endpoint(1)];
    let mut guard = in_flight.start_with(&eps[0].id, 100, 60);
    let out = loads(&in_flight, &eps, None);
    assert_eq!(
        (
            out[0].in_flight,
            out[0].in_flight_tokens,
            out[0].pending_prefill_tokens
        ),
        (1, 100, 60)
    );
    guard.first_byte();
    guard.first_byte();
    let out = loads(&in_flight, &eps, None);
    assert_eq!(
        (out[0].in_flight_tokens, out[0].pending_prefill_tokens),
        (100, 0)
    );
    drop(guard);
    let out = loads(&in_flight, &eps, None);
    assert_eq!(out[0], Load::default());
}

#[test]
fn scraped_load_counts_only_other_routers_traffic() {
    let in_flight = InFlight::default();
    let eps = [endpoint(1), endpoint(2)];
    let _mine = [in_flight.start(&eps[0].id), in_flight.start(&eps[0].id)];
    // The engine reports 5 (our 2 + 3 from elsewhere).
    let snap = Arc::new(StatsSnapshot::with_engines(
        Duration::from_secs(1),
        HashMap::from([(eps[0].id.clone(), stats(4.0, 1.0))]),
    ));
    in_flight.observe(&snap);
    let _more = in_flight.start(&eps[0].id);
    let out = loads(&in_flight, &eps, Some("sql"));
    assert_eq!(out[0].in_flight, 3);
    assert_eq!(out[0].foreign, 3.0);
    assert_eq!(
        out[0].requests(),
        6.0,
        "picks after the scrape count at once"
    );
    assert_eq!(out[0].waiting, Some(1.0));
    assert_eq!(out[0].kv_capacity_tokens, Some(1600));
    assert_eq!(out[0].adapter_warm, Some(true));
    assert_eq!(out[1], Load::default(), "never scraped: unknown, not zero");
    let out = loads(&in_flight, &eps, Some("other"));
    assert_eq!(out[0].adapter_warm, Some(false));
}

#[test]
fn stale_scrapes_read_as_unknown() {
    let in_flight = InFlight::default();
    let eps = [endpoint(1)];
    let mut old = stats(3.0, 2.0);
    old.scraped_at = Instant::now() - Duration::from_secs(10);
    let snap = Arc::new(StatsSnapshot::with_engines(
        Duration::from_secs(1),
        HashMap::from([(eps[0].id.clone(), old)]),
    ));
    in_flight.observe(&snap);
    let out = loads(&in_flight, &eps, Some("sql"));
    assert_eq!(
        (out[0].foreign, out[0].waiting, out[0].adapter_warm),
        (0.0, None, None)
    );
    assert_eq!(out[0].kv_capacity_tokens, Some(1600), "capacity is kept");
}
