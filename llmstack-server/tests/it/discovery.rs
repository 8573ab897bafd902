//! Discovery through the real router: the engine prober (health thresholds, LoRA
//! adapters, sleep mode), the static list re-read from its file, and draining.

use std::time::Duration;

use tokio::time::Instant;

use llmstack_discovery::ProbeConfig;
use llmstack_server::Server;
use llmstack_sim::{FaultConfig, SimEngine};
use serde_json::json;

use crate::support::*;

const M: &str = "m";

/// The router's state of engine `i` ("ready", "unready", "pending"), if listed.
async fn state_of(s: &Stack, i: usize) -> Option<String> {
    let entry = s.engine_entry(i).await?;
    Some(entry["state"].as_str().unwrap().to_owned())
}

/// Waits (up to `limit`) until engine `i` is in `state`; returns how long it took.
async fn until_state(s: &Stack, i: usize, state: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while state_of(s, i).await.as_deref() != Some(state) {
        assert!(
            start.elapsed() < limit,
            "engine {i} not {state} within {limit:?}: {:?}",
            state_of(s, i).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Waits (up to `limit`) until engine `i` is no longer listed; returns how long it took.
async fn until_gone(s: &Stack, i: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    while state_of(s, i).await.is_some() {
        assert!(
            start.elapsed() < limit,
            "engine {i} still listed after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Whether the router's `/metrics` counts a discovery error from `source` within `limit`.
async fn discovery_errors_counted(s: &Stack, source: &str, limit: Duration) -> bool {
    eventually(limit, || async {
        let text = get(&s.client, &s.at("/metrics")).await;
        sample(
            text.text(),
            "llmstack_discovery_errors_total",
            &[("source", source)],
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await
}

/// Sends `n` chats for `model`; returns how many each engine finished meanwhile.
async fn served_by(s: &Stack, model: &str, n: usize) -> Vec<f64> {
    let mut before = Vec::new();
    for e in &s.engines {
        before.push(finished(&s.client, e, "length").await);
    }
    for _ in 0..n {
        let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(model, 2)).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let mut out = Vec::new();
    for (e, b) in s.engines.iter().zip(before) {
        out.push(finished(&s.client, e, "length").await - b);
    }
    out
}

fn probes(failure_threshold: u32, success_threshold: u32) -> ProbeConfig {
    ProbeConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(500),
        failure_threshold,
        success_threshold,
        ..ProbeConfig::default()
    }
}

/// An engine whose `/health` starts answering 503 is out after `failure_threshold`
/// failed probes (not before: one failure is tolerated), and back after
/// `success_threshold` good ones.
#[tokio::test]
async fn a_failing_health_check_takes_an_engine_out_within_the_threshold() {
    let s = stack(vec![instant(M), instant(M)], |c| {
        c.discovery.probe = probes(3, 2);
    })
    .await;
    assert_eq!(served_by(&s, M, 4).await, [2.0, 2.0]);
    s.engines[0]
        .set_faults(FaultConfig {
            unhealthy: true,
            ..FaultConfig::default()
        })
        .unwrap();
    let out = until_state(&s, 0, "unready", Duration::from_secs(3)).await;
    // Three failed probes 200 ms apart: at least two intervals, at most four.
    assert!(
        out >= Duration::from_millis(300) && out <= Duration::from_secs(2),
        "out after {out:?}"
    );
    assert_eq!(served_by(&s, M, 4).await, [0.0, 4.0]);
    // The alert rules read readiness per model.
    let metrics = get(&s.client, &s.at("/metrics")).await;
    assert_eq!(
        sample(
            metrics.text(),
            "llmstack_model_ready_endpoints",
            &[("model", M)]
        ),
        Some(1.0)
    );
    s.engines[0].set_faults(FaultConfig::default()).unwrap();
    let back = until_state(&s, 0, "ready", Duration::from_secs(3)).await;
    eprintln!(
        "prober: /health 503 → out after {out:?} (3 × 200 ms), healthy → back after {back:?} (2 successes)"
    );
    assert!(
        back >= Duration::from_millis(150),
        "back after {back:?}: two successes"
    );
    assert_eq!(served_by(&s, M, 4).await, [2.0, 2.0]);
}

/// An adapter loaded into a running engine is in the router's `/v1/models` within one
/// probe interval and can be used; unloading it takes it away again.
#[tokio::test]
async fn a_lora_adapter_loaded_at_run_time_appears_within_one_probe_interval() {
    let mut config = instant(M);
    config.enable_lora = true;
    let s = stack(vec![config, instant(M)], |c| {
        c.discovery.probe = probes(2, 1);
    })
    .await;
    let models = |s: &Stack| {
        let (c, url) = (s.client.clone(), s.at("/v1/models"));
        async move {
            let list = get(&c, &url).await.json();
            list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(models(&s).await, [M]);
    let loaded = post(
        &s.client,
        &format!("{}/v1/load_lora_adapter", s.engines[0].base_url()),
        &json!({"lora_name": "sql", "lora_path": "/adapters/sql"}),
    )
    .await;
    assert_eq!(loaded.status, 200, "{}", loaded.text());
    let start = Instant::now();
    while !models(&s).await.iter().any(|m| m == "sql") {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            models(&s).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "prober: adapter loaded → in /v1/models after {:?} (interval 200 ms)",
        start.elapsed()
    );
    // One interval (200 ms) plus the probe's own time and scheduling.
    assert!(
        start.elapsed() <= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // Only the engine holding the adapter gets its requests.
    assert_eq!(served_by(&s, "sql", 3).await, [3.0, 0.0]);
    let unloaded = post(
        &s.client,
        &format!("{}/v1/unload_lora_adapter", s.engines[0].base_url()),
        &json!({"lora_name": "sql"}),
    )
    .await;
    assert_eq!(unloaded.status, 200, "{}", unloaded.text());
    assert!(
        eventually(Duration::from_secs(2), || {
            let list = models(&s);
            async move { !list.await.iter().any(|m| m == "sql") }
        })
        .await
    );
}

/// With `--check-is-sleeping`, an engine put to sleep gets no requests until it wakes.
#[tokio::test]
async fn a_sleeping_engine_gets_no_requests_until_it_wakes() {
    let s = stack(vec![instant(M), instant(M)], |c| {
        c.discovery.probe = ProbeConfig {
            is_sleeping: true,
            ..probes(3, 1)
        };
    })
    .await;
    let slept = post(
        &s.client,
        &format!("{}/sleep?level=1", s.engines[1].base_url()),
        &json!({}),
    )
    .await;
    assert_eq!(slept.status, 200, "{}", slept.text());
    // Out at the next probe, without waiting for the failure threshold.
    let out = until_state(&s, 1, "unready", Duration::from_secs(2)).await;
    assert!(out <= Duration::from_secs(1), "{out:?}");
    eprintln!("prober: asleep → out after {out:?}");
    assert_eq!(served_by(&s, M, 4).await, [4.0, 0.0]);
    let woke = post(
        &s.client,
        &format!("{}/wake_up", s.engines[1].base_url()),
        &json!({}),
    )
    .await;
    assert_eq!(woke.status, 200, "{}", woke.text());
    until_state(&s, 1, "ready", Duration::from_secs(2)).await;
    assert_eq!(served_by(&s, M, 4).await, [2.0, 2.0]);
}

/// The static list follows its config file without a restart; an engine removed from
/// it drains (its open stream finishes whole, new requests go elsewhere); a broken file
/// keeps the last good list and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_list_follows_its_file_and_removed_engines_drain() {
    let mut sims = Vec::new();
    for _ in 0..2 {
        // H100 timing: a 600-token stream lasts about 4 s, longer than the file poll.
        let config = h100(M);
        sims.push(
            SimEngine::start(config, "127.0.0.1:0".parse().unwrap(), 0)
                .await
                .unwrap(),
        );
    }
    let dir = std::env::temp_dir().join(format!("llmstack-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("router.yaml");
    let write = |backends: &[&SimEngine]| {
        let list: Vec<String> = backends.iter().map(|e| e.base_url()).collect();
        // Replaced in one step (a rename), as a ConfigMap update is.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("static_backends: {}\n", list.join(","))).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write(&[&sims[0]]);
    let mut config = config_for(&sims[..1]);
    config.discovery.static_models.clear();
    config.discovery.static_file = Some(file.clone());
    let server = Server::start(config).await.unwrap();
    let s = Stack::new(server, sims);
    until_state(&s, 0, "ready", Duration::from_secs(3)).await;
    assert_eq!(served_by(&s, M, 2).await, [2.0, 0.0]);

    // Both engines: traffic spreads.
    write(&[&s.engines[0], &s.engines[1]]);
    until_state(&s, 1, "ready", Duration::from_secs(3)).await;
    assert_eq!(served_by(&s, M, 4).await, [2.0, 2.0]);

    // A long stream on engine 0 (pinned by id), then engine 0 leaves the file.
    let id = s.id_of(0).await;
    let mut long = open(
        &s.client,
        &s.at(&format!("/v1/completions?id={id}")),
        &streamed(M, 600),
    )
    .await;
    read_frames(&mut long, 1).await;
    write(&[&s.engines[1]]);
    let out = until_gone(&s, 0, Duration::from_secs(3)).await;
    eprintln!("static: file rewritten → engine out after {out:?} (polled every 1 s)");
    assert_eq!(
        s.engines[0].state().await.unwrap().running,
        1,
        "the stream is still running on the engine that left"
    );
    assert_eq!(served_by(&s, M, 3).await, [0.0, 3.0]);
    let rest = {
        use http_body_util::BodyExt;
        String::from_utf8(
            long.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    };
    assert!(
        rest.ends_with("data: [DONE]\n\n"),
        "the stream finished whole: {rest}"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            s.health().await["in_flight"] == 0
        })
        .await
    );

    // A broken file: the last good list stays, and the error is counted.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, "static_backends: ftp://nowhere\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert!(
        discovery_errors_counted(&s, "static", Duration::from_secs(5)).await,
        "the reload error is counted"
    );
    assert_eq!(state_of(&s, 1).await.as_deref(), Some("ready"));
    assert_eq!(served_by(&s, M, 2).await, [0.0, 2.0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--service-discovery dns` against a real dnsmasq: the router follows the name's A
/// records (engines added, removed), and a dead resolver keeps the last engines, with
/// the failures counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_follows_the_records_and_survives_a_dead_resolver() {
    use llmstack_discovery::{DiscoveryKind, DnsConfig};
    use llmstack_test_support::dnsmasq::Dnsmasq;
    let (a, b) = engines_at_two_addresses(M).await;
    let port = a.addr().port();
    let mut dns = Dnsmasq::start("127.0.0.2 vllm.test\n", &[]);
    let mut config = config_for(&[]);
    config.discovery.service_discovery = DiscoveryKind::Dns;
    config.discovery.dns = DnsConfig {
        name: "vllm.test".into(),
        port,
        nameservers: vec![dns.addr()],
        min_refresh: Duration::from_millis(200),
        max_refresh: Duration::from_secs(1),
    };
    let server = Server::start(config).await.unwrap();
    let s = Stack::new(server, vec![a, b]);
    // The first answer came before the router served.
    assert!(state_of(&s, 0).await.is_some());
    until_state(&s, 0, "ready", Duration::from_secs(3)).await;
    assert_eq!(served_by(&s, M, 2).await, [2.0, 0.0]);

    dns.set_hosts("127.0.0.2 vllm.test\n127.0.0.3 vllm.test\n");
    let added = until_state(&s, 1, "ready", Duration::from_secs(5)).await;
    assert_eq!(served_by(&s, M, 4).await, [2.0, 2.0]);

    dns.set_hosts("127.0.0.3 vllm.test\n");
    let out = until_gone(&s, 0, Duration::from_secs(5)).await;
    eprintln!("dns: record added → routed after {added:?}, removed → out after {out:?} (TTL 1 s)");
    assert_eq!(served_by(&s, M, 3).await, [0.0, 3.0]);

    dns.kill();
    assert!(
        discovery_errors_counted(&s, "dns", Duration::from_secs(10)).await,
        "resolution failures are counted"
    );
    assert_eq!(state_of(&s, 1).await.as_deref(), Some("ready"));
    assert_eq!(served_by(&s, M, 2).await, [0.0, 2.0]);
}
