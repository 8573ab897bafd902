//! Latency as the client sees it follows the profile's step-time model.
//!
//! Generous tolerances: CI machines are noisy. The exact figures, measured on an idle
//! machine, are in docs/benchmarks.md.

use llmstack_sim::{EngineConfig, LatencyProfile};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn single_request_ttft_and_itl_match_the_formula() {
    let e = engine(EngineConfig::new("m")).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    // Warm the connection so TCP setup is not in the TTFT.
    post(&c, &url, &json!({"prompt": "warm", "max_tokens": 1})).await;
    let prompt = format!("go{}", " word".repeat(999));
    let s = stream(&c, &url, &json!({"prompt": prompt, "max_tokens": 101, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}})).await;
    let usage = &s.events[s.events.len() - 2].json()["usage"];
    let p = usage["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(p, 1001);
    let profile = LatencyProfile::llama3_8b_h100();
    let want_ttft = profile.step_ms(0, 0, p, p as f64 * p as f64 / 2.0);
    let got_ttft = (s.events[0].at - s.start).as_secs_f64() * 1000.0;
    assert!(
        got_ttft >= want_ttft * 0.95 && got_ttft <= want_ttft * 1.25 + 3.0,
        "TTFT {got_ttft:.2} ms, model {want_ttft:.2} ms"
    );
    // Mean inter-token latency over 100 gaps (robust to frames coalescing on the client).
    let tokens = &s.events[..101];
    let got_itl = (tokens[100].at - tokens[0].at).as_secs_f64() * 1000.0 / 100.0;
    let want_itl = (1..=100)
        .map(|k| profile.step_ms(1, p + k, 0, 0.0))
        .sum::<f64>()
        / 100.0;
    assert!(
        (got_itl - want_itl).abs() <= want_itl * 0.10,
        "ITL {got_itl:.3} ms, model {want_itl:.3} ms"
    );
}

#[tokio::test]
async fn speedup_divides_latency() {
    let mut cfg = EngineConfig::new("m");
    cfg.speedup = 10.0;
    let e = engine(cfg).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    post(&c, &url, &json!({"prompt": "warm", "max_tokens": 1})).await;
    let s = stream(
        &c,
        &url,
        &json!({"prompt": "x", "max_tokens": 201, "ignore_eos": true, "stream": true}),
    )
    .await;
    let itl = (s.events[200].at - s.events[0].at).as_secs_f64() * 1000.0 / 200.0;
    // 7.0 ms steps at speedup 10: 0.7 ms (timer granularity only bunches them).
    assert!((0.6..0.85).contains(&itl), "ITL {itl:.3} ms");
}
