//! Outlier ejection and retries on an engine's refusal, through the whole router
//! against simulated engines with injected faults.

use std::time::Duration;

use llmstack_gateway::OutlierConfig;
use llmstack_sim::FaultConfig;

use crate::support::*;

const M: &str = "m";

fn failing(status: u16) -> FaultConfig {
    FaultConfig {
        error_rate: 1.0,
        error_status: Some(status),
        ..FaultConfig::default()
    }
}

/// Requests engine `i` answered, by reason (the simulator's own count).
async fn served(s: &Stack, i: usize) -> f64 {
    finished(&s.client, &s.engines[i], "length").await
}

#[tokio::test]
async fn an_engine_answering_500s_is_ejected_then_tried_and_taken_back() {
    let s = stack(vec![instant(M), instant(M), instant(M)], |c| {
        c.gateway.outliers = OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(1500),
            max_ejection: Duration::from_secs(10),
        };
    })
    .await;
    let bad = s.id_of(0).await;
    s.engines[0].set_faults(failing(500)).unwrap();
    let mut errors = 0;
    for _ in 0..30 {
        let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
        if a.status != 200 {
            assert_eq!(a.status, 500, "{}", a.text());
            errors += 1;
        }
    }
    // Round robin sends every third request to it until it is ejected: exactly three
    // failures reach clients, then none while it is out.
    assert_eq!(errors, 3);
    assert_eq!(served(&s, 1).await + served(&s, 2).await, 27.0);
    let entry = s.engine_entry(0).await.unwrap();
    assert_eq!(entry["outlier"]["state"], "ejected", "{entry}");
    assert_eq!(entry["outlier"]["ejections"], 1, "{entry}");
    let metrics = get(&s.client, &s.at("/metrics")).await;
    let ejections = sample(
        metrics.text(),
        "llmstack_engine_ejections_total",
        &[("engine", bad.as_str())],
    );
    assert_eq!(ejections, Some(1.0), "{}", metrics.text());
    assert_eq!(
        sample(
            metrics.text(),
            "llmstack_engine_ejected",
            &[("engine", bad.as_str())]
        ),
        Some(1.0)
    );
    // Still failing when half-open: its one trial fails and it is out again, for longer.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut errors = 0;
    for _ in 0..12 {
        let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
        errors += usize::from(a.status != 200);
    }
    assert_eq!(errors, 1, "one trial request, then ejected again");
    let entry = s.engine_entry(0).await.unwrap();
    assert_eq!(entry["outlier"]["ejections"], 2, "{entry}");
    // Healed: after the (doubled) ejection its trial succeeds and it serves again.
    s.engines[0].set_faults(FaultConfig::default()).unwrap();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    for _ in 0..12 {
        let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert!(served(&s, 0).await >= 3.0, "taken back");
    let entry = s.engine_entry(0).await.unwrap();
    assert_eq!(entry["outlier"]["state"], "serving", "{entry}");
}

#[tokio::test]
async fn an_engines_503_or_429_is_retried_on_another_engine() {
    let s = stack(vec![instant(M), instant(M)], |c| {
        // Only retries here: no ejection.
        c.gateway.outliers.consecutive_failures = 0;
    })
    .await;
    for status in [503, 429] {
        s.engines[0].set_faults(failing(status)).unwrap();
        for _ in 0..6 {
            let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
            assert_eq!(a.status, 200, "{status}: {}", a.text());
        }
    }
    let metrics = get(&s.client, &s.at("/metrics")).await;
    for reason in ["status_503", "status_429"] {
        let retries = sample(
            metrics.text(),
            "llmstack_retries_total",
            &[("reason", reason)],
        );
        assert_eq!(retries, Some(3.0), "{reason}: {}", metrics.text());
    }
    // Both engines refusing: the client gets the last refusal, not "no engine".
    s.engines[1].set_faults(failing(503)).unwrap();
    s.engines[0].set_faults(failing(503)).unwrap();
    let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
    assert_eq!(a.status, 503, "{}", a.text());
    // A 500 is not retried (the engine may have started on it).
    s.engines[0].set_faults(failing(500)).unwrap();
    s.engines[1].set_faults(failing(500)).unwrap();
    let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
    assert_eq!(a.status, 500, "{}", a.text());
}
