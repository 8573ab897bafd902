//! Refused connections: an engine's port closes (and its connections drop) in the
//! middle of a load; the requests it refuses are retried on the others.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_going_down_under_load_is_invisible_to_clients() {
    let s = stack(vec![instant(), instant(), instant()], |_| {}).await;
    let metrics_before = s.metrics().await;
    let load = Load::start(
        &s.client,
        s.at("/v1/chat/completions"),
        chat(2),
        12,
        Duration::from_millis(5),
    );
    load.until_completed(100).await;
    s.engines[0].go_down(Duration::from_millis(1500));
    // The prober takes it out of routing (2 failed probes, 200 ms apart); until then
    // the router meets refused connections and retries them elsewhere.
    let noticed = eventually(Duration::from_secs(2), || async {
        s.engine_entry(0).await["state"] != "ready"
    })
    .await;
    assert!(noticed, "the prober did not notice the engine down");
    let back = eventually(Duration::from_secs(5), || async {
        s.engine_entry(0).await["state"] == "ready"
    })
    .await;
    assert!(back, "the prober did not see the engine back");
    let n = load.completed();
    load.until_completed(n + 100).await;
    let outcomes = load.stop().await;

    let ok = outcomes.iter().filter(|o| o.status() == Some(200)).count();
    assert_eq!(
        ok,
        outcomes.len(),
        "{:?} {:?}",
        tally(&outcomes),
        failures(&outcomes)
    );
    let health = s.health().await;
    let retries = health["retries"].as_u64().unwrap();
    assert!(retries > 0, "{health}");
    // Every retry was off the engine that went down, and counted in the metrics too.
    let bad = s.id_of(0).await;
    let text = s.metrics().await;
    let on_bad = grew(
        &metrics_before,
        &text,
        "llmstack_retries_total",
        &[("engine", &bad)],
    );
    assert_eq!(on_bad, retries as f64, "{text}");
    // Every answer was generated once (one the engine finished but whose connection
    // dropped before its head went out may have been generated twice: at most one
    // per retry).
    let mut generated = 0.0;
    for i in 0..3 {
        generated += s.served(i).await;
    }
    assert!(
        generated >= ok as f64 && generated <= (ok as u64 + retries) as f64,
        "generated {generated}, answered {ok}, retries {retries}"
    );
    assert_eq!(health["errors"], 0, "{health}");
    eprintln!("refused: {ok} requests, all 200, {retries} retried, {generated} generated");
    s.assert_clean().await;
}
