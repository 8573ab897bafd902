//! 5xx bursts under load. An engine answering 500 is ejected once it fails
//! `consecutive_failures` times in a row, so the 500s clients see are bounded, and it
//! serves again after the burst; an engine answering 503 (it did not start on the
//! request) is retried on the others, so clients see only 200s.

use std::time::Duration;

use llmstack_gateway::OutlierConfig;
use llmstack_sim::FaultConfig;

use crate::support::*;

const THRESHOLD: usize = 3;
const WORKERS: usize = 6;
const BURST: Duration = Duration::from_millis(1200);

fn outliers() -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: THRESHOLD as u32,
        base_ejection: Duration::from_millis(400),
        max_ejection: Duration::from_millis(1600),
    }
}

fn failing(status: u16) -> FaultConfig {
    FaultConfig {
        error_rate: 1.0,
        error_status: Some(status),
        ..FaultConfig::default()
    }
}

/// Runs `WORKERS` clients through a burst of `status` answers from engine 0, then until
/// engine 0 has served again after it; returns what the clients saw.
async fn through_a_burst(s: &Stack, status: u16) -> Vec<Outcome> {
    // The burst starts before the load: every answer of engine 0 fails from the first.
    s.engines[0].set_faults(failing(status)).unwrap();
    let load = Load::start(
        &s.client,
        s.at("/v1/chat/completions"),
        chat(2),
        WORKERS,
        Duration::from_millis(5),
    );
    tokio::time::sleep(BURST).await;
    let during = load.completed();
    assert_eq!(s.served(0).await, 0.0, "engine 0 served during its burst");
    s.engines[0].set_faults(FaultConfig::default()).unwrap();
    // Ejected now, or half-open: its next trial succeeds and it is back.
    let back = eventually(Duration::from_secs(5), || async {
        s.served(0).await >= 3.0
    })
    .await;
    assert!(back, "engine 0 did not serve again after its burst");
    let outcomes = load.stop().await;
    assert!(
        during >= 50,
        "too little load during the burst to mean anything: {during}"
    );
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_burst_reaches_clients_only_until_the_engine_is_ejected() {
    let s = stack(vec![instant(), instant(), instant()], |c| {
        c.gateway.outliers = outliers();
    })
    .await;
    let bad = s.id_of(0).await;
    let metrics_before = s.metrics().await;
    let outcomes = through_a_burst(&s, 500).await;

    // Only the engine's own 500s reach clients (a 500 is never retried: the engine may
    // have started on the request), and only so many.
    let mut errors = 0;
    for o in &outcomes {
        let a = o.result.as_ref().unwrap();
        match a.status.as_u16() {
            200 => {}
            500 => {
                assert!(a.text().contains("Injected fault"), "{}", a.text());
                errors += 1;
            }
            other => panic!("{other}: {}", a.text()),
        }
    }
    let text = s.metrics().await;
    let ejections = grew(
        &metrics_before,
        &text,
        "llmstack_engine_ejections_total",
        &[("engine", &bad)],
    ) as usize;
    assert!(ejections >= 1, "{text}");
    // `THRESHOLD` failures in a row eject it; requests already on their way there
    // (at most one per other client) fail too; then each re-ejection costs exactly one
    // failed half-open trial.
    let bound = THRESHOLD + (WORKERS - 1) + (ejections - 1);
    assert!(
        (THRESHOLD..=bound).contains(&errors),
        "{errors} client-visible 500s, {ejections} ejections, {} requests",
        outcomes.len()
    );
    eprintln!(
        "500 burst: {} requests, {errors} client-visible 500s (bound {bound}), {ejections} ejections",
        outcomes.len()
    );
    let health = s.health().await;
    assert_eq!(health["retries"], 0, "{health}");
    assert_eq!(
        grew(
            &metrics_before,
            &text,
            "llmstack_requests_total",
            &[("engine", &bad), ("status", "5xx")]
        ),
        errors as f64,
        "{text}"
    );

    // Back in full: serving, and taking its exact round-robin share again.
    let entry = s.engine_entry(0).await;
    assert_eq!(entry["outlier"]["state"], "serving", "{entry}");
    let before = s.served(0).await;
    for _ in 0..30 {
        let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(2)).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(s.served(0).await, before + 10.0);
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_burst_is_retried_on_the_other_engines() {
    let s = stack(vec![instant(), instant(), instant()], |c| {
        c.gateway.outliers = outliers();
    })
    .await;
    let bad = s.id_of(0).await;
    let metrics_before = s.metrics().await;
    let outcomes = through_a_burst(&s, 503).await;

    let ok = outcomes.iter().filter(|o| o.status() == Some(200)).count();
    assert_eq!(
        ok,
        outcomes.len(),
        "{:?} {:?}",
        tally(&outcomes),
        failures(&outcomes)
    );
    // Each 503 was retried once, on another engine; engine 0 kept getting requests
    // until ejected, so at least `THRESHOLD` of them.
    let health = s.health().await;
    let retries = health["retries"].as_u64().unwrap();
    assert!(retries >= THRESHOLD as u64, "{health}");
    let text = s.metrics().await;
    let retried = [("engine", bad.as_str()), ("reason", "status_503")];
    assert_eq!(
        grew(&metrics_before, &text, "llmstack_retries_total", &retried),
        retries as f64,
        "{text}"
    );
    // A 503 is answered before the engine starts on the request: every answer was
    // generated exactly once.
    let mut generated = 0.0;
    for i in 0..3 {
        generated += s.served(i).await;
    }
    assert_eq!(generated, ok as f64);
    eprintln!("503 burst: {ok} requests, all 200, {retries} retried");
    assert_eq!(health["errors"], 0, "{health}");
    let entry = s.engine_entry(0).await;
    assert_eq!(entry["outlier"]["state"], "serving", "{entry}");
    s.assert_clean().await;
}
