//! Integration tests: short runs against real simulated engines over HTTP.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use llmstack_bench::{Arrivals, Client, RunConfig, Workload, engine_counters, run};
use llmstack_sim::{EngineConfig, LatencyProfile, SimEngine};

async fn engine(profile: LatencyProfile) -> SimEngine {
    SimEngine::start(
        EngineConfig::new("m").with_profile(profile),
        "127.0.0.1:0".parse().unwrap(),
        0,
    )
    .await
    .unwrap()
}

fn synthetic(requests: usize) -> RunConfig {
    RunConfig {
        workload: Workload::Synthetic {
            prompt_tokens: 32,
            answer_tokens: 5,
        },
        seed: 3,
        concurrency: 8,
        requests,
        qps: 1.0,
        arrivals: Arrivals::Closed,
        progress: false,
        duration: None,
    }
}

#[tokio::test]
async fn closed_loop_streaming_counts_every_token() {
    let e = engine(LatencyProfile::instant()).await;
    let report = run(&Client::new(&e.base_url(), "m", true), &synthetic(200)).await;
    assert_eq!(report.ok, 200, "{}", report.human());
    assert_eq!(report.transport_errors, 0);
    assert_eq!(report.ttft.count, 200, "one TTFT per streamed request");
    assert_eq!(
        report.itl.count,
        200 * 4,
        "four gaps between five content chunks"
    );
    assert_eq!(report.completion_tokens, 200 * 5, "from the usage chunk");
    assert!(report.prompt_tokens >= 200 * 32);
    assert!(report.e2e.p99_ms >= report.e2e.p50_ms);
}

#[tokio::test]
async fn non_streaming_and_errors() {
    let e = engine(LatencyProfile::instant()).await;
    let report = run(&Client::new(&e.base_url(), "m", false), &synthetic(50)).await;
    assert_eq!(report.ok, 50);
    assert_eq!(report.ttft.count, 0, "no stream, no TTFT");
    assert_eq!(report.completion_tokens, 250);
    // A model the engine does not serve: every request is a counted 404.
    let report = run(&Client::new(&e.base_url(), "other", false), &synthetic(10)).await;
    assert_eq!((report.ok, report.statuses[&404]), (0, 10));
}

/// Multi-round QA against the H100 profile: every user's rounds in order, each prompt
/// carrying the previous answers, so the engine's prefix cache hits grow.
#[tokio::test]
async fn multi_round_qa_runs_every_round() {
    let (a, b) = (
        engine(LatencyProfile::llama3_8b_h100()).await,
        engine(LatencyProfile::llama3_8b_h100()).await,
    );
    let config = RunConfig {
        workload: Workload::MultiRoundQa {
            users: 3,
            rounds: 3,
            system_tokens: 200,
            history_tokens: 100,
            answer_tokens: 8,
        },
        seed: 9,
        concurrency: 1,
        requests: 0,
        qps: 50.0,
        arrivals: Arrivals::Closed,
        progress: false,
        duration: None,
    };
    // Two engines, taken in turn by the client.
    let client = Client::new(&format!("{},{}", a.base_url(), b.base_url()), "m", true);
    let engines = [a.base_url(), b.base_url()];
    let before = engine_counters(&client, &engines).await.unwrap();
    let report = run(&client, &config).await;
    let delta = before.delta(&engine_counters(&client, &engines).await.unwrap());
    assert_eq!(report.ok, 9, "{}", report.human());
    assert_eq!(report.completion_tokens, 9 * 8);
    // The hit counts the bench reads from /metrics are the engines' own counters.
    let (sa, sb) = (a.state().await.unwrap(), b.state().await.unwrap());
    let hits = sa.prefix_cache_hits + sb.prefix_cache_hits;
    assert!(hits > 0, "shared system prompt and histories hit the cache");
    assert_eq!(delta.prefix_cache_hits, hits as f64);
    assert_eq!(
        delta.prefix_cache_queries,
        (sa.prefix_cache_queries + sb.prefix_cache_queries) as f64
    );
    assert!(delta.prefix_cache_hit_rate.unwrap() > 0.3, "{delta:?}");
    // The engines' own split of TTFT: one request at a time waits in no queue, and a
    // prefill of hundreds of tokens takes the profile's milliseconds.
    let prefill = delta.prefill_ms_mean.unwrap();
    let queue = delta.queue_ms_mean.unwrap();
    assert!(prefill > 1.0, "{delta:?}");
    assert!(queue < prefill, "{delta:?}");
}

/// Open loop: 100 Poisson arrivals at 200/s take about half a second, whatever the engine.
#[tokio::test]
async fn open_loop_keeps_its_schedule() {
    let e = engine(LatencyProfile::instant()).await;
    let config = RunConfig {
        qps: 200.0,
        arrivals: Arrivals::Poisson,
        ..synthetic(100)
    };
    let report = run(&Client::new(&e.base_url(), "m", true), &config).await;
    assert_eq!(report.ok, 100);
    assert!((0.3..1.0).contains(&report.seconds), "{}", report.seconds);
}

/// The binary: a shared-prefix run with the engine's own counters, as JSON.
#[tokio::test]
async fn the_binary_reports_json_with_engine_counters() {
    let e = engine(LatencyProfile::instant()).await;
    let url = e.base_url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_llmstack-bench"))
            .args([
                "--url",
                &url,
                "--model",
                "m",
                "--workload",
                "shared-prefix",
                "--groups",
                "2",
                "--suffixes",
                "3",
                "--prefix-tokens",
                "64",
                "--prompt-tokens",
                "4",
                "--requests",
                "24",
                "--concurrency",
                "4",
                "--engine-metrics",
                &url,
                "--json",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], 24);
    let hit_rate = report["engines"]["prefix_cache_hit_rate"].as_f64().unwrap();
    assert!(
        hit_rate > 0.5,
        "two shared 64-word prefixes mostly hit: {report}"
    );
}

/// A trace is replayed at its own times.
#[tokio::test]
async fn a_trace_replays_on_its_timestamps() {
    let e = engine(LatencyProfile::instant()).await;
    let text: String = (0..5)
        .map(|i| format!("{{\"timestamp\": {}, \"prompt\": \"question {i}\", \"max_tokens\": 2, \"session\": \"s{}\"}}\n", f64::from(i) * 0.1, i % 2))
        .collect();
    let trace = llmstack_bench::read_trace(&text).unwrap();
    let config = RunConfig {
        workload: Workload::Replay(trace.into()),
        ..synthetic(0)
    };
    let report = run(&Client::new(&e.base_url(), "m", true), &config).await;
    assert_eq!(report.ok, 5, "{}", report.human());
    assert_eq!(report.completion_tokens, 10);
    assert!(
        report.seconds >= 0.4,
        "the last entry is at 0.4 s: {}",
        report.seconds
    );
}

/// A closed loop with a time limit stops on time, whatever the request count.
#[tokio::test]
async fn a_duration_bounds_a_closed_loop() {
    let e = engine(LatencyProfile::llama3_8b_h100()).await;
    let config = RunConfig {
        duration: Some(std::time::Duration::from_millis(600)),
        ..synthetic(usize::MAX)
    };
    let report = run(&Client::new(&e.base_url(), "m", true), &config).await;
    assert!(report.ok > 0);
    assert!((0.5..2.0).contains(&report.seconds), "{}", report.seconds);
}
