//! Hang before headers: an engine accepts requests and never answers. Its clients get
//! a 504 with an OpenAI error body at the first-byte deadline; the others are served
//! meanwhile without waiting.

use std::time::Duration;

use llmstack_sim::FaultConfig;
use tokio::time::Instant;

use crate::support::*;

const DEADLINE: Duration = Duration::from_millis(500);
const MARGIN: Duration = Duration::from_millis(2000);
const REQUESTS: usize = 30;
const TOKENS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_costs_its_clients_a_504_at_the_deadline_and_no_one_else_anything() {
    let s = stack(vec![instant(), instant(), instant()], |c| {
        c.proxy.first_byte_timeout = DEADLINE;
        // No ejection: round robin keeps sending exactly a third of the requests to
        // the hung engine, so the counts below are exact.
        c.gateway.outliers.consecutive_failures = 0;
    })
    .await;
    let metrics_before = s.metrics().await;
    s.engines[0]
        .set_faults(FaultConfig {
            hang_rate: 1.0,
            ..FaultConfig::default()
        })
        .unwrap();
    // Half plain chat requests, half streams, all at once.
    let mut plain = Vec::new();
    let mut streams = Vec::new();
    for i in 0..REQUESTS {
        let (c, start) = (s.client.clone(), Instant::now());
        if i % 2 == 0 {
            let url = s.at("/v1/chat/completions");
            plain.push(tokio::spawn(async move {
                let o = try_post(&c, &url, &chat(TOKENS as u32)).await;
                (o, start.elapsed())
            }));
        } else {
            let url = s.at("/v1/completions");
            streams.push(tokio::spawn(async move {
                let st = stream(&c, &url, &streamed(TOKENS as u32)).await;
                (st, start.elapsed())
            }));
        }
    }
    let mut timed_out = Vec::new();
    let mut fine = Vec::new();
    for p in plain {
        let (o, took) = p.await.unwrap();
        let a = o.result.unwrap();
        match a.status.as_u16() {
            504 => {
                assert_openai_error(504, a.text(), "GatewayTimeoutError");
                timed_out.push(took);
            }
            200 => {
                let body = a.json();
                assert_eq!(body["usage"]["completion_tokens"], TOKENS, "{body}");
                fine.push(took);
            }
            other => panic!("{other}: {}", a.text()),
        }
    }
    for st in streams {
        let (st, took) = st.await.unwrap();
        match st.status.as_u16() {
            // No head came: the answer is a plain JSON error, not an SSE stream.
            504 => {
                assert!(st.events.is_empty(), "{}", st.raw);
                assert_openai_error(504, &st.raw, "GatewayTimeoutError");
                timed_out.push(took);
            }
            200 => {
                assert!(!st.broken, "{}", st.raw);
                assert_eq!(st.events.len(), TOKENS + 1, "{}", st.raw);
                assert_eq!(st.events.last().unwrap().data, "[DONE]");
                fine.push(took);
            }
            other => panic!("{other}: {}", st.raw),
        }
    }
    assert_eq!(timed_out.len(), REQUESTS / 3, "{timed_out:?}");
    assert_eq!(fine.len(), REQUESTS * 2 / 3);
    // At the deadline, not before, and not much after.
    for took in &timed_out {
        assert!(
            *took >= DEADLINE && *took < DEADLINE + MARGIN,
            "504 after {took:?}"
        );
    }
    eprintln!(
        "hang: 504s after {:?}..{:?}, 200s within {:?}",
        timed_out.iter().min().unwrap(),
        timed_out.iter().max().unwrap(),
        fine.iter().max().unwrap()
    );
    // The others did not wait for the hung engine.
    for took in &fine {
        assert!(*took < DEADLINE, "200 after {took:?}");
    }

    let health = s.health().await;
    assert_eq!(health["timeouts"], REQUESTS / 3, "{health}");
    assert_eq!(health["retries"], 0, "a timed-out request is not retried");
    assert_eq!(health["errors"], REQUESTS / 3, "{health}");
    let bad = s.id_of(0).await;
    let text = s.metrics().await;
    assert_eq!(
        grew(
            &metrics_before,
            &text,
            "llmstack_upstream_errors_total",
            &[("engine", &bad)]
        ),
        (REQUESTS / 3) as f64,
        "{text}"
    );
    for i in 1..3 {
        assert_eq!(s.served(i).await, (REQUESTS / 3) as f64);
    }
    s.assert_clean().await;
}
