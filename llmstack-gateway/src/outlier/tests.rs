use std::convert::Infallible;

use bytes::Bytes;
use tower::ServiceExt;

use super::*;

fn outliers() -> Outliers {
    Outliers::new(OutlierConfig {
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(5),
        max_ejection: Duration::from_secs(12),
    })
}

#[tokio::test(start_paused = true)]
async fn failures_in_a_row_eject_with_doubling_backoff_and_one_trial() {
    let o = outliers();
    let e = EndpointId::new("e1");
    let now = Instant::now();
    o.record(&e, true, now);
    o.record(&e, true, now);
    // A success in between resets the count.
    o.record(&e, false, now);
    o.record(&e, true, now);
    o.record(&e, true, now);
    assert_eq!(o.state(&e), Some(EngineHealth::Healthy { failures: 2 }));
    assert!(o.avoid(now).0.is_empty());
    o.record(&e, true, now);
    assert_eq!(
        o.state(&e),
        Some(EngineHealth::Ejected {
            remaining: Duration::from_secs(5),
            ejections: 1
        })
    );
    assert_eq!(o.avoid(now).0, std::slice::from_ref(&e));
    // Answers to requests sent before the ejection change nothing.
    o.record(&e, false, now + Duration::from_secs(1));
    assert_eq!(
        o.avoid(now + Duration::from_secs(1)).0,
        std::slice::from_ref(&e)
    );
    // Half-open: one request claims the trial, the others keep avoiding the engine.
    let later = now + Duration::from_secs(5);
    let (avoid, trial) = o.avoid(later);
    assert!(avoid.is_empty());
    let trial = trial.unwrap();
    assert_eq!(o.avoid(later).0, std::slice::from_ref(&e));
    // The trial fails: ejected again, twice as long.
    o.record(&e, true, later);
    drop(trial);
    assert_eq!(
        o.avoid(later + Duration::from_secs(9)).0,
        std::slice::from_ref(&e)
    );
    let (avoid, trial) = o.avoid(later + Duration::from_secs(10));
    assert!(avoid.is_empty() && trial.is_some());
    // A trial whose request went elsewhere is released for the next request.
    drop(trial);
    let (_, trial) = o.avoid(later + Duration::from_secs(10));
    assert!(trial.is_some());
    // Third ejection in a row: capped at 12 s.
    o.record(&e, true, later + Duration::from_secs(10));
    drop(trial);
    let t = later + Duration::from_secs(10);
    assert_eq!(
        o.avoid(t + Duration::from_millis(11_999)).0,
        std::slice::from_ref(&e)
    );
    // The trial succeeds: back, counts reset.
    let (_, trial) = o.avoid(t + Duration::from_secs(12));
    assert!(trial.is_some());
    o.record(&e, false, t + Duration::from_secs(12));
    drop(trial);
    assert!(o.avoid(t + Duration::from_secs(12)).0.is_empty());
    assert_eq!(o.state(&e), None, "nothing on record");
    assert_eq!(o.shared.out.load(Ordering::Relaxed), 0);
    assert_eq!(o.shared.tracked.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn the_layer_reads_failures_from_answers_and_sets_avoid() {
    let o = outliers();
    // Engine "bad" answers 500, "gone" fails like a refused connection, "good" 200.
    let inner = tower::service_fn(|req: Request<Bytes>| {
        let avoided = req
            .extensions()
            .get::<Avoid>()
            .map(|a| a.0.len())
            .unwrap_or(0);
        let engine = EndpointId::new(req.uri().path().trim_start_matches('/'));
        let mut resp = Response::new(Bytes::from(avoided.to_string()));
        match engine.as_str() {
            "bad" => *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR,
            "gone" => {
                *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
                resp.extensions_mut().insert(UpstreamFailure {
                    endpoint: engine.clone(),
                    kind: "connect",
                    retryable: true,
                });
            }
            _ => {}
        }
        if engine.as_str() != "gone" {
            resp.extensions_mut().insert(RouteFacts {
                model: None,
                policy: "roundrobin",
                reason: "picked",
                engine: Some(engine),
                predicted_cached_tokens: None,
            });
        }
        async move { Ok::<_, Infallible>(resp) }
    });
    let svc = OutlierLayer::new(o.clone()).layer(inner);
    let call = |path: &'static str| {
        let svc = svc.clone();
        async move {
            let req = Request::builder().uri(path).body(Bytes::new()).unwrap();
            svc.oneshot(req).await.unwrap()
        }
    };
    for _ in 0..3 {
        call("/bad").await;
        call("/gone").await;
        call("/good").await;
    }
    let bad = EndpointId::new("bad");
    let gone = EndpointId::new("gone");
    assert!(matches!(o.state(&bad), Some(EngineHealth::Ejected { .. })));
    assert!(matches!(o.state(&gone), Some(EngineHealth::Ejected { .. })));
    assert_eq!(o.state(&EndpointId::new("good")), None, "never failed");
    // Later requests carry both in Avoid.
    assert_eq!(call("/good").await.body(), "2");
    o.retain(|id| id.as_str() != "gone");
    assert_eq!(call("/good").await.body(), "1");
    // Off: nothing is recorded.
    let off = Outliers::new(OutlierConfig {
        consecutive_failures: 0,
        ..OutlierConfig::default()
    });
    let inner = tower::service_fn(|_: Request<Bytes>| async {
        let mut resp = Response::new(Bytes::new());
        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        resp.extensions_mut().insert(RouteFacts {
            model: None,
            policy: "roundrobin",
            reason: "picked",
            engine: Some(EndpointId::new("bad")),
            predicted_cached_tokens: None,
        });
        Ok::<_, Infallible>(resp)
    });
    let svc = OutlierLayer::new(off.clone()).layer(inner);
    for _ in 0..10 {
        svc.clone()
            .oneshot(Request::new(Bytes::new()))
            .await
            .unwrap();
    }
    assert_eq!(off.state(&bad), None);
}
