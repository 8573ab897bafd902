//! Engine restart: an engine process dies (its handle dropped: port closed, every
//! connection and request gone) and a new one starts on the same port a second later,
//! all under load. Clients see no errors beyond the requests that were inside the dead
//! engine; the new engine gets traffic once the prober (and the outlier trial) let it.

use std::time::Duration;

use llmstack_gateway::OutlierConfig;
use llmstack_sim::SimEngine;
use tokio::time::Instant;

use crate::support::*;

const WORKERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_costs_at_most_its_in_flight_requests_and_gets_traffic_again() {
    let mut s = stack(vec![instant(), instant(), instant()], |c| {
        // Connection failures eject it for a short while only, so it is tried again
        // soon after the prober sees it back.
        c.gateway.outliers = OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_millis(500),
            max_ejection: Duration::from_secs(1),
        };
    })
    .await;
    let id = s.id_of(0).await;
    let load = Load::start(
        &s.client,
        s.at("/v1/chat/completions"),
        chat(2),
        WORKERS,
        Duration::from_millis(5),
    );
    load.until_completed(100).await;

    let old = s.engines.remove(0);
    let (addr, config) = (old.addr(), old.config().clone());
    drop(old);
    let crashed = load.completed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        load.completed() > crashed + 50,
        "the load went on while the engine was away"
    );
    let gone = s.engine_list().await;
    let entry = gone.iter().find(|e| e["id"] == id.as_str()).unwrap();
    assert_ne!(entry["state"], "ready", "{entry}");

    // The same port again (the old listener may take a moment to be released).
    let deadline = Instant::now() + Duration::from_secs(5);
    let restarted = loop {
        match SimEngine::start(config.clone(), addr, 0).await {
            Ok(e) => break e,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot restart on {addr}: {e}"),
        }
    };
    let restarted_at = Instant::now();
    s.engines.insert(0, restarted);
    let served_again = eventually(Duration::from_secs(10), || async {
        s.served(0).await >= 10.0
    })
    .await;
    assert!(served_again, "the restarted engine got no traffic");
    let took = restarted_at.elapsed();
    let outcomes = load.stop().await;

    let entry = s.engine_entry(0).await;
    assert_eq!(entry["id"], id.as_str(), "same URL, same engine id");
    assert_eq!(entry["state"], "ready", "{entry}");
    assert_eq!(entry["outlier"]["state"], "serving", "{entry}");
    // Only requests the dead engine had already taken can fail (its engine loop is
    // gone before its connections are: such a request gets the engine's own 500, not
    // retryable as the engine may have started on it): at most one per client.
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status() != Some(200))
        .collect();
    assert!(
        failed.len() <= WORKERS,
        "{:?} {:?}",
        tally(&outcomes),
        failures(&outcomes)
    );
    assert!(
        failed.iter().all(|o| o.status() == Some(500)),
        "{:?}",
        failures(&outcomes)
    );
    let health = s.health().await;
    assert!(health["retries"].as_u64().unwrap() > 0, "{health}");
    // Each of them the engine's own answer, none the router's.
    assert_eq!(health["errors"], 0, "{health}");
    eprintln!(
        "restart: {} requests, {:?} {:?}, traffic {took:?} after the restart, {health}",
        outcomes.len(),
        tally(&outcomes),
        failures(&outcomes)
    );
    s.assert_clean().await;
}
