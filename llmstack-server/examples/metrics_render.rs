//! How long the router's `/metrics` takes to render with 100 engines × 4 models.
//!
//! Run: `cargo run --release -p llmstack-server --example metrics_render`
//!
//! Registers the series the router keeps for that many engines and models (requests by
//! route and status, durations, TTFT/ITL, tokens, in-flight and re-exported engine
//! gauges, scrape duration and errors) in a Prometheus recorder of its own, then renders the
//! exposition repeatedly and prints the median and p99 render time and the size.
#![allow(clippy::unwrap_used)]

use llmstack_metrics::names;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::time::Instant;

const ENGINES: usize = 100;
const MODELS: usize = 4;
const ROUTES: &[&str] = &["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

fn main() {
    // The router's bucket layout for latency histograms (18 buckets).
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 120.0, 300.0, 600.0,
        ])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        names::describe();
        for e in 0..ENGINES {
            let engine = format!("e{e:08x}");
            // Each engine serves one of the models (4 groups of 25).
            let model = format!("model-{}", e % MODELS);
            // Two routes answered, plus some 5xx on one: a busy engine's usual series.
            for (route, status) in [(ROUTES[0], "2xx"), (ROUTES[1], "2xx"), (ROUTES[0], "5xx")] {
                counter!(names::REQUESTS, "route" => route, "model" => model.clone(),
                    "engine" => engine.clone(), "status" => status)
                .increment(e as u64);
            }
            counter!(names::PROMPT_TOKENS, "model" => model.clone(), "engine" => engine.clone())
                .increment(1000);
            counter!(names::COMPLETION_TOKENS, "model" => model.clone(), "engine" => engine.clone()).increment(500);
            gauge!(names::IN_FLIGHT, "engine" => engine.clone()).set(3.0);
            gauge!(names::ENGINE_RUNNING, "engine" => engine.clone()).set(8.0);
            gauge!(names::ENGINE_WAITING, "engine" => engine.clone()).set(1.0);
            gauge!(names::ENGINE_KV_CACHE_USAGE, "engine" => engine.clone()).set(0.4);
            gauge!(names::ENGINE_PREFIX_CACHE_HIT, "engine" => engine.clone()).set(0.7);
            counter!(names::UPSTREAM_ERRORS, "engine" => engine.clone(), "kind" => "connect")
                .increment(1);
            gauge!(names::SCRAPE_DURATION, "engine" => engine.clone()).set(0.002);
            counter!(names::SCRAPE_ERRORS, "engine" => engine.clone()).increment(1);
        }
        for m in 0..MODELS {
            let model = format!("model-{m}");
            for route in ROUTES {
                let h = histogram!(names::REQUEST_DURATION, "route" => *route, "model" => model.clone());
                for i in 0..1000 {
                    h.record(0.01 * f64::from(i % 100));
                }
            }
            let ttft = histogram!(names::TTFT, "model" => model.clone());
            let itl = histogram!(names::ITL, "model" => model.clone());
            for i in 0..1000 {
                ttft.record(0.001 * f64::from(i % 300));
                itl.record(0.0001 * f64::from(i % 200));
            }
        }
    });
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..200 {
        let start = Instant::now();
        let text = handle.render();
        times.push(start.elapsed());
        size = text.len();
    }
    times.sort();
    let series = handle
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    println!(
        "/metrics with {ENGINES} engines x {MODELS} models: {series} samples, {size} bytes; render median {:?}, p99 {:?}",
        times[times.len() / 2],
        times[times.len() * 99 / 100]
    );
}
