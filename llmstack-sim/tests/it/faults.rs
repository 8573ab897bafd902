//! Fault injection, by handle and by the admin route.

use std::time::Duration;

use http::Method;
use llmstack_sim::FaultConfig;
use serde_json::json;
use tokio::time::Instant;

use crate::support::*;

#[tokio::test]
async fn error_rate_answers_the_status_with_an_openai_body() {
    let e = engine(instant("m")).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    e.set_faults(FaultConfig {
        error_rate: 1.0,
        error_status: Some(429),
        ..FaultConfig::default()
    })
    .unwrap();
    let a = post(&c, &url, &json!({"prompt": "x"})).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.json()["error"]["code"], 429);
    // Half the requests, by the admin route.
    let f = post(
        &c,
        &format!("{}/sim/faults", e.base_url()),
        &json!({"error_rate": 0.5, "error_status": 500}),
    )
    .await;
    assert_eq!(f.status, 200);
    let mut failed = 0;
    for _ in 0..200 {
        if post(&c, &url, &json!({"prompt": "x", "max_tokens": 1}))
            .await
            .status
            == 500
        {
            failed += 1;
        }
    }
    assert!((60..140).contains(&failed), "{failed} of 200");
    let bad = post(
        &c,
        &format!("{}/sim/faults", e.base_url()),
        &json!({"error_status": 418}),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        get(&c, &format!("{}/sim/faults", e.base_url()))
            .await
            .json()["error_rate"],
        0.5
    );
}

#[tokio::test]
async fn hang_accepts_and_never_answers() {
    let e = engine(instant("m")).await;
    e.set_faults(FaultConfig {
        hang_rate: 1.0,
        ..FaultConfig::default()
    })
    .unwrap();
    let c = client();
    let r = tokio::time::timeout(
        Duration::from_millis(300),
        post(
            &c,
            &format!("{}/v1/completions", e.base_url()),
            &json!({"prompt": "x"}),
        ),
    )
    .await;
    assert!(r.is_err(), "no answer");
    // Other routes still answer.
    assert_eq!(
        get(&c, &format!("{}/health", e.base_url())).await.status,
        200
    );
}

#[tokio::test]
async fn close_after_chunks_breaks_the_stream() {
    let e = engine(instant("m")).await;
    e.set_faults(FaultConfig {
        close_after_chunks: Some(3),
        ..FaultConfig::default()
    })
    .unwrap();
    let c = client();
    let s = stream(
        &c,
        &format!("{}/v1/completions", e.base_url()),
        &json!({"prompt": "x", "max_tokens": 20, "ignore_eos": true, "stream": true}),
    )
    .await;
    assert_eq!(s.events.len(), 3, "{}", s.raw);
    assert!(s.broken, "the connection is cut, not closed cleanly");
    assert!(!s.raw.contains("[DONE]"));
}

#[tokio::test]
async fn first_token_delay_raises_ttft_but_headers_come_first() {
    let e = engine(instant("m")).await;
    e.set_faults(FaultConfig {
        first_token_delay_ms: 300,
        ..FaultConfig::default()
    })
    .unwrap();
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    let s = stream(
        &c,
        &url,
        &json!({"prompt": "x", "max_tokens": 2, "stream": true}),
    )
    .await;
    let ttft = s.events[0].at - s.start;
    assert!(ttft >= Duration::from_millis(300), "{ttft:?}");
    let t0 = Instant::now();
    let a = post(&c, &url, &json!({"prompt": "x", "max_tokens": 2})).await;
    assert_eq!(a.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn going_down_refuses_connections_then_recovers() {
    let e = engine(instant("m")).await;
    let c = client();
    let health = format!("{}/health", e.base_url());
    assert_eq!(get(&c, &health).await.status, 200);
    let down = send(
        &c,
        Method::POST,
        &format!("{}/sim/down?ms=400", e.base_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(down.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = client();
    let req = http::Request::get(&health)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert!(fresh.request(req).await.is_err(), "port closed while down");
    assert!(
        eventually(Duration::from_secs(3), || async {
            let req = http::Request::get(&health)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            client().request(req).await.is_ok_and(|r| r.status() == 200)
        })
        .await
    );
}

#[tokio::test]
async fn unhealthy_health_checks() {
    let e = engine(instant("m")).await;
    let c = client();
    e.set_faults(FaultConfig {
        unhealthy: true,
        ..FaultConfig::default()
    })
    .unwrap();
    assert_eq!(
        get(&c, &format!("{}/health", e.base_url())).await.status,
        503
    );
    assert_eq!(get(&c, &format!("{}/ping", e.base_url())).await.status, 503);
    e.set_faults(FaultConfig::default()).unwrap();
    assert_eq!(
        get(&c, &format!("{}/health", e.base_url())).await.status,
        200
    );
}
