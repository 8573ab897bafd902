use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use llmstack_core::{EndpointId, Priority};
use tower::ServiceExt;

use super::*;

fn map(headers: &Headers) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    headers.write(&mut map);
    map
}

fn tenant(rpm: Option<u64>, tpm: Option<u64>) -> Tenant {
    Tenant {
        name: "acme".into(),
        priority: Priority::Normal,
        rpm,
        tpm,
    }
}

#[test]
fn requests_per_minute_refill_continuously() {
    let limiter = Limiter::default();
    let t = tenant(Some(60), None);
    let start = Instant::now();
    for n in 0..60 {
        let grant = limiter.admit(&t, 1, start).unwrap();
        assert_eq!(
            map(&grant.headers)["x-ratelimit-remaining-requests"],
            (59 - n).to_string()
        );
        assert_eq!(map(&grant.headers)["x-ratelimit-limit-requests"], "60");
    }
    let (e, headers) = limiter.admit(&t, 1, start).err().map(|b| *b).unwrap();
    let Error::RateLimited {
        limit: Limit::Requests,
        per_minute: 60,
        retry_after,
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(retry_after, Duration::from_secs(1));
    assert_eq!(map(&headers)["x-ratelimit-remaining-requests"], "0");
    assert_eq!(map(&headers)["x-ratelimit-reset-requests"], "1m0s");
    assert!(
        limiter
            .admit(&t, 1, start + Duration::from_millis(900))
            .is_err()
    );
    assert!(limiter.admit(&t, 1, start + Duration::from_secs(1)).is_ok());
}

#[test]
fn tokens_are_estimated_then_settled_from_usage() {
    let limiter = Limiter::default();
    let t = tenant(None, Some(600));
    let now = Instant::now();
    let grant = limiter.admit(&t, 100, now).unwrap();
    assert_eq!(map(&grant.headers)["x-ratelimit-remaining-tokens"], "500");
    assert!(!map(&grant.headers).contains_key("x-ratelimit-limit-requests"));
    // The engine reports 80 prompt and 320 completion tokens: 300 more than estimated.
    let usage = Usage {
        prompt_tokens: Some(80),
        completion_tokens: Some(320),
        content_events: 0,
    };
    limiter.settle("acme", 100, usage, now);
    let grant = limiter.admit(&t, 150, now).unwrap();
    assert_eq!(map(&grant.headers)["x-ratelimit-remaining-tokens"], "50");
    let (e, _) = limiter.admit(&t, 100, now).err().map(|b| *b).unwrap();
    // 50 tokens short at 10 a second.
    assert!(
        matches!(e, Error::RateLimited { limit: Limit::Tokens, per_minute: 600, retry_after } if retry_after == Duration::from_secs(5)),
        "{e:?}"
    );
    // A stream without usage counts its content events; no engine: the estimate back.
    limiter.settle(
        "acme",
        150,
        Usage {
            content_events: 10,
            ..Usage::default()
        },
        now,
    );
    limiter.refund("acme", 40);
    let grant = limiter.admit(&t, 1, now).unwrap();
    assert_eq!(map(&grant.headers)["x-ratelimit-remaining-tokens"], "79");
}

#[test]
fn a_refused_request_takes_nothing_and_big_requests_need_a_full_bucket() {
    let limiter = Limiter::default();
    let t = tenant(Some(10), Some(100));
    let now = Instant::now();
    // Larger than the whole bucket: admitted when full, leaving a debt.
    let grant = limiter.admit(&t, 500, now).unwrap();
    assert_eq!(map(&grant.headers)["x-ratelimit-remaining-tokens"], "0");
    assert_eq!(map(&grant.headers)["x-ratelimit-remaining-requests"], "9");
    let (e, headers) = limiter.admit(&t, 1, now).err().map(|b| *b).unwrap();
    assert_eq!(e.label(), "rate_limited");
    // The debt is capped at a minute's tokens: 101 tokens at 100/min.
    assert_eq!(
        map(&headers)["x-ratelimit-remaining-requests"],
        "9",
        "not charged"
    );
    let retry = match e {
        Error::RateLimited { retry_after, .. } => retry_after,
        _ => unreachable!(),
    };
    assert_eq!(retry, Duration::from_secs_f64(101.0 * 0.6));
}

#[test]
fn limits_follow_the_tenant() {
    let limiter = Limiter::default();
    let now = Instant::now();
    assert!(limiter.admit(&tenant(Some(1), None), 1, now).is_ok());
    assert!(limiter.admit(&tenant(Some(1), None), 1, now).is_err());
    // Raised (a reloaded keys file): the level stays, the limit and the rate grow.
    let raised = tenant(Some(120), None);
    assert!(
        limiter
            .admit(&raised, 1, now + Duration::from_secs(1))
            .is_err()
    );
    let grant = limiter.admit(&raised, 1, now + Duration::from_millis(1500));
    assert_eq!(
        map(&grant.unwrap().headers)["x-ratelimit-limit-requests"],
        "120"
    );
    let grant = limiter.admit(&tenant(None, Some(5)), 1, now).unwrap();
    assert!(!map(&grant.headers).contains_key("x-ratelimit-limit-requests"));
}

#[test]
fn reset_durations_read_like_openais() {
    assert_eq!(go_duration(Duration::ZERO), "0s");
    assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
    assert_eq!(go_duration(Duration::from_secs(12)), "12s");
    assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
    assert_eq!(go_duration(Duration::from_millis(59_999)), "59.999s");
    assert_eq!(go_duration(Duration::from_millis(1050)), "1.05s");
    assert_eq!(go_duration(Duration::from_millis(1005)), "1.005s");
    assert_eq!(go_duration(Duration::from_millis(2100)), "2.1s");
    assert_eq!(go_duration(Duration::from_millis(1)), "1ms");
    assert_eq!(go_duration(Duration::from_secs(3725)), "62m5s");
}

/// The layer over a service that answers as an engine would (a response with
/// [`RouteFacts`] naming an engine) or as routing would when the model is unknown.
#[tokio::test]
async fn the_layer_refuses_429_and_leaves_a_usage_hook() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let inner = tower::service_fn(move |req: Request<Bytes>| {
        seen.fetch_add(1, Ordering::Relaxed);
        let mut resp = Response::new(Bytes::from_static(b"{}"));
        let engine = (req.uri().path() == "/v1/completions").then(|| EndpointId::new("e1"));
        resp.extensions_mut().insert(RouteFacts {
            model: None,
            policy: "roundrobin",
            reason: "picked",
            engine,
            predicted_cached_tokens: None,
        });
        async move { Ok::<_, Infallible>(resp) }
    });
    let svc = RateLimitLayer::new().layer(inner);
    let request = |path: &str, t: Option<Tenant>| {
        let mut req = Request::builder()
            .uri(path)
            .body(Bytes::from(vec![b' '; 400]))
            .unwrap();
        if let Some(t) = t {
            req.extensions_mut().insert(t);
        }
        req
    };
    let limited = tenant(Some(2), Some(1000));
    let resp = svc
        .clone()
        .oneshot(request("/v1/completions", Some(limited.clone())))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-ratelimit-remaining-tokens"], "900");
    let hook = resp.extensions().get::<OnUsage>().cloned().unwrap();
    hook.report(Usage {
        prompt_tokens: Some(100),
        completion_tokens: Some(400),
        content_events: 0,
    });
    // Not routed: the estimate comes back, and no hook.
    let resp = svc
        .clone()
        .oneshot(request("/v1/unknown", Some(limited.clone())))
        .await
        .unwrap();
    assert!(resp.extensions().get::<OnUsage>().is_none());
    assert_eq!(resp.headers()["x-ratelimit-remaining-tokens"], "400");
    let resp = svc
        .clone()
        .oneshot(request("/v1/completions", Some(limited)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "30");
    assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "0");
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    // No tenant, or no limits: always through, no headers.
    for t in [None, Some(tenant(None, None))] {
        for _ in 0..5 {
            let resp = svc
                .clone()
                .oneshot(request("/v1/completions", t.clone()))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert!(resp.headers().is_empty());
        }
    }
}
