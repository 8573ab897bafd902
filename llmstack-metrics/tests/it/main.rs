//! Integration tests: the scraper against real `llmstack-sim` engines over HTTP.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::time::Duration;

use llmstack_core::{Endpoint, EndpointSet, StatsReader, Update};
use llmstack_metrics::{ScrapeConfig, spawn_scraper};
use llmstack_sim::{EngineConfig, FaultConfig, LatencyProfile, MetricsCompat, SimEngine};
use tokio::sync::watch;
use tokio::time::Instant;

#[cfg(feature = "kv-events")]
mod kv_events;

async fn engine(compat: MetricsCompat) -> SimEngine {
    let mut cfg = EngineConfig::new("m").with_profile(LatencyProfile::llama3_8b_h100());
    cfg.metrics_compat = compat;
    SimEngine::start(cfg, "127.0.0.1:0".parse().unwrap(), 0)
        .await
        .unwrap()
}

fn set_of(urls: &[String]) -> EndpointSet {
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(
        urls.iter()
            .map(|u| Endpoint::new(u.parse().unwrap()).with_model("m"))
            .collect(),
    ));
    set
}

fn config(interval_ms: u64, timeout_ms: u64) -> ScrapeConfig {
    ScrapeConfig {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        api_key: None,
    }
}

async fn until(
    reader: &StatsReader,
    within: Duration,
    f: impl Fn(&llmstack_core::StatsSnapshot) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f(&reader.snapshot()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Both vLLM naming generations: a busy engine shows running requests and KV usage.
#[tokio::test]
async fn scrapes_current_and_old_names() {
    for compat in [MetricsCompat::V1, MetricsCompat::V0] {
        let e = engine(compat).await;
        // Eight long requests keep the engine busy while we look.
        e.set_faults(FaultConfig::default()).unwrap();
        let url = e.base_url();
        let client = llmstack_test_support::client();
        let body = serde_json::json!({"model": "m", "prompt": "hello there", "max_tokens": 400, "ignore_eos": true});
        let busy: Vec<_> = (0..8)
            .map(|_| {
                llmstack_test_support::spawn_post(
                    &client,
                    format!("{url}/v1/completions"),
                    body.clone(),
                )
            })
            .collect();
        let set = set_of(std::slice::from_ref(&url));
        let id = set.iter().next().unwrap().id.clone();
        let (_tx, rx) = watch::channel(set);
        let (reader, task) = spawn_scraper(rx, config(50, 1000));
        let seen = until(&reader, Duration::from_secs(3), |s| {
            s.get(&id)
                .is_some_and(|st| st.running == 8.0 && st.kv_cache_usage > 0.0)
        })
        .await;
        assert!(seen, "{compat:?}: {:?}", reader.snapshot().get(&id));
        let st = reader.snapshot().get(&id).cloned().unwrap();
        assert_eq!(st.models["m"].running, 8.0);
        if compat == MetricsCompat::V1 {
            assert_eq!(st.block_size, Some(16));
            assert!(st.num_gpu_blocks.unwrap() > 0);
        }
        task.abort();
        for b in busy {
            b.abort();
        }
    }
}

/// An engine that accepts the connection and never answers delays nobody: the other
/// engine's stats arrive every interval. (A raw listener stands in for the hung engine:
/// the simulator's hang fault applies to inference routes, not to /metrics.)
#[tokio::test]
async fn a_hung_engine_does_not_delay_the_others() {
    let good = engine(MetricsCompat::V1).await;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hung.accept().await {
            conns.push(c); // keep them open, say nothing
        }
    });
    let set = set_of(&[good.base_url(), hung_url]);
    let (_tx, rx) = watch::channel(set);
    let (reader, task) = spawn_scraper(rx, config(50, 10_000));
    // The good engine shows up, and keeps being refreshed, while the hung one never does.
    let start = Instant::now();
    let fresh = until(&reader, Duration::from_secs(2), |s| s.iter().count() == 1).await;
    assert!(
        fresh && start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    let first = reader
        .snapshot()
        .iter()
        .next()
        .map(|(_, st)| st.scraped_at)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = reader
        .snapshot()
        .iter()
        .next()
        .map(|(_, st)| st.scraped_at)
        .unwrap();
    assert!(later > first, "refreshed while the other engine hangs");
    assert_eq!(reader.snapshot().iter().count(), 1);
    task.abort();
    held.abort();
}

/// Engines removed from the set disappear from the snapshot; a stopped engine's stats go
/// stale (unknown) after three intervals instead of reading as zero load.
#[tokio::test]
async fn removed_engines_disappear_and_dead_ones_go_stale() {
    let a = engine(MetricsCompat::V1).await;
    let b = engine(MetricsCompat::V1).await;
    let set = set_of(&[a.base_url(), b.base_url()]);
    let ids: Vec<_> = set.iter().map(|e| e.id.clone()).collect();
    let (tx, rx) = watch::channel(set);
    let (reader, task) = spawn_scraper(rx, config(50, 200));
    assert!(until(&reader, Duration::from_secs(2), |s| s.iter().count() == 2).await);
    tx.send_replace(set_of(&[a.base_url()]));
    assert!(until(&reader, Duration::from_secs(2), |s| s.iter().count() == 1).await);
    let left = reader
        .snapshot()
        .iter()
        .next()
        .map(|(id, _)| id.clone())
        .unwrap();
    assert!(ids.contains(&left));
    a.go_down(Duration::from_secs(10));
    assert!(
        until(&reader, Duration::from_secs(2), |s| s.get(&left).is_none()).await,
        "stale"
    );
    assert_eq!(reader.snapshot().iter().count(), 1, "kept, but unknown");
    task.abort();
    drop(b);
}
