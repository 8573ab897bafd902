//! Measures a single request's TTFT and inter-token latency against the step-time model.
//!
//! Run: `cargo run --release -p llmstack-sim --example latency [-- --speedup F] [-- --runs N]`
//!
//! Starts one `llama3-8b-h100` engine in-process on 127.0.0.1:0, then for each prompt size
//! sends streaming completions one at a time (idle engine) and prints a Markdown table:
//! the model's prediction, the median measured TTFT, and the mean ITL over 100 tokens.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llmstack_sim::{EngineConfig, LatencyProfile, SimEngine};
use tokio::time::Instant;

const OUTPUT_TOKENS: usize = 101;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().unwrap())
    };
    let speedup = flag("--speedup", 1.0);
    let runs = flag("--runs", 5.0) as usize;
    let mut cfg = EngineConfig::new("m");
    cfg.speedup = speedup;
    let engine = SimEngine::start(cfg, "127.0.0.1:0".parse().unwrap(), 0)
        .await
        .unwrap();
    let url = format!("{}/v1/completions", engine.base_url());
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let profile = LatencyProfile::llama3_8b_h100();
    println!(
        "| prompt tokens | TTFT model (ms) | TTFT measured, median (ms) | ratio | ITL model (ms) | ITL measured, mean (ms) | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for words in [15, 127, 511, 1023, 2047, 4095] {
        // One BOS + "go" + N × " word": N + 2 tokens.
        let prompt = format!("go{}", " word".repeat(words));
        let p = words + 2;
        let mut ttfts = Vec::new();
        let mut itls = Vec::new();
        for run in 0..=runs {
            // A unique first token per run keeps the prefix cache cold.
            let body = serde_json::json!({
                "prompt": prompt, "max_tokens": OUTPUT_TOKENS, "ignore_eos": true, "stream": true,
                "cache_salt": format!("run-{run}-{words}"),
            });
            let (ttft, itl) = measure(&client, &url, &body).await;
            if run > 0 {
                ttfts.push(ttft);
                itls.push(itl);
            }
        }
        ttfts.sort_by(f64::total_cmp);
        let ttft = ttfts[ttfts.len() / 2];
        let itl = itls.iter().sum::<f64>() / itls.len() as f64;
        let want_ttft = profile.step_ms(0, 0, p, p as f64 * p as f64 / 2.0) / speedup;
        let want_itl = (1..OUTPUT_TOKENS)
            .map(|k| profile.step_ms(1, p + k, 0, 0.0))
            .sum::<f64>()
            / (OUTPUT_TOKENS - 1) as f64
            / speedup;
        println!(
            "| {p} | {want_ttft:.2} | {ttft:.2} | {:.3} | {want_itl:.3} | {itl:.3} | {:.3} |",
            ttft / want_ttft,
            itl / want_itl
        );
    }
}

/// TTFT and mean ITL (ms) of one streaming request.
async fn measure(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    body: &serde_json::Value,
) -> (f64, f64) {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let start = Instant::now();
    let mut res = client.request(req).await.unwrap().into_body();
    let mut times = Vec::new();
    let mut pending = Vec::new();
    while let Some(frame) = res.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        let now = Instant::now();
        pending.extend_from_slice(&data);
        while let Some(pos) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..pos + 2).collect();
            if !event.starts_with(b"data: [DONE]") {
                times.push(now);
            }
        }
    }
    let first = times[0];
    let last = times[OUTPUT_TOKENS - 1];
    let ttft = (first - start).as_secs_f64() * 1000.0;
    let itl = (last - first).as_secs_f64() * 1000.0 / (OUTPUT_TOKENS - 1) as f64;
    (ttft, itl)
}
