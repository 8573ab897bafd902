//! production-stack's dynamic configuration (`--dynamic-config-yaml`): a change of the
//! routing logic and of the engines applies while streams run, with none failing; an
//! invalid file changes nothing; `/health` shows the settings in force.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use llmstack_sim::SimEngine;
use serde_json::Value;

use crate::support::*;

const M: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn engines_yaml(policy: &str, engines: &[&SimEngine]) -> String {
    let urls: Vec<String> = engines.iter().map(|e| e.base_url()).collect();
    format!(
        "service_discovery: static\nrouting_logic: {policy}\nsession_key: x-user-id\nstatic_models:\n  {M}:\n    static_backends: [{}]\n    static_model_type: chat\n",
        urls.join(", ")
    )
}

/// The URLs `/engines` lists, sorted.
async fn listed(s: &Stack) -> Vec<String> {
    let engines = get(&s.client, &engines_url(&s.server)).await.json();
    let mut urls: Vec<String> = engines
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["url"].as_str().unwrap().to_owned())
        .collect();
    urls.sort();
    urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_applies_policy_and_engines_under_streaming_load() {
    let mut sims = Vec::new();
    for _ in 0..4 {
        let sim = SimEngine::start(h100(M), "127.0.0.1:0".parse().unwrap(), 0).await;
        sims.push(sim.unwrap());
    }
    let file = TempFile::new(&engines_yaml("roundrobin", &[&sims[0], &sims[1]]));
    let s = Arc::new(router_on(&file, sims).await);
    let health = s.health().await;
    assert_eq!(
        health["dynamic_config"]["config"]["routing_logic"], "roundrobin",
        "{health}"
    );
    let urls = |engines: &[SimEngine]| {
        let mut urls: Vec<String> = engines.iter().map(SimEngine::base_url).collect();
        urls.sort();
        urls
    };
    let first = urls(&s.engines[..2]);
    let listed_first = eventually(Duration::from_secs(5), || async {
        listed(&s).await == first
    });
    assert!(listed_first.await, "{:?} {first:?}", listed(&s).await);

    // Streams run all along: none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (s, stop, ok, failed) = (s.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let res = open(&s.client, &s.at("/v1/completions"), &streamed(M, 30)).await;
                let status = res.status();
                let body = res.into_body().collect().await.map(|b| b.to_bytes());
                let whole = body.is_ok_and(|b| b.ends_with(b"data: [DONE]\n\n"));
                if status == 200 && whole {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    // New policy and new engines.
    replace_file(
        &file.0,
        &engines_yaml("session", &[&s.engines[2], &s.engines[3]]),
    );
    let second = urls(&s.engines[2..]);
    let moved = eventually(Duration::from_secs(5), || async {
        let h = s.health().await;
        h["dynamic_config"]["config"]["routing_logic"] == "session" && listed(&s).await == second
    })
    .await;
    assert!(
        moved,
        "{} {:?} {second:?}",
        s.health().await,
        listed(&s).await
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let metrics = get(&s.client, &s.at("/metrics")).await;
    let decisions = |policy| {
        sample(
            metrics.text(),
            "llmstack_routing_decisions_total",
            &[("policy", policy), ("reason", "picked")],
        )
    };
    assert!(
        decisions("session").is_some_and(|n| n > 0.0),
        "{}",
        metrics.text()
    );
    assert!(decisions("roundrobin").is_some_and(|n| n > 0.0));
    for e in &s.engines[2..] {
        assert!(
            finished(&s.client, e, "length").await > 0.0,
            "the new engines serve"
        );
    }

    // An invalid file: nothing changes; the error is reported and counted.
    replace_file(
        &file.0,
        "routing_logic: nonsense\nstatic_backends: [http://127.0.0.1:1]\n",
    );
    let reported = eventually(Duration::from_secs(5), || async {
        s.health().await["dynamic_config"]["error"].is_string()
    })
    .await;
    assert!(reported);
    let health = s.health().await;
    let error = health["dynamic_config"]["error"].as_str().unwrap();
    assert!(error.contains("nonsense"), "{error}");
    assert_eq!(
        health["dynamic_config"]["config"]["routing_logic"],
        "session"
    );
    let metrics = get(&s.client, &s.at("/metrics")).await;
    let invalid = sample(
        metrics.text(),
        "llmstack_dynamic_config_reloads_total",
        &[("result", "invalid")],
    );
    assert_eq!(invalid, Some(1.0), "{}", metrics.text());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(listed(&s).await, second, "the engines stay");
    let before: f64 = {
        let mut n = 0.0;
        for e in &s.engines[2..] {
            n += finished(&s.client, e, "length").await;
        }
        n
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let mut after = 0.0;
    for e in &s.engines[2..] {
        after += finished(&s.client, e, "length").await;
    }
    assert!(after > before, "still served after the invalid file");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("dynamic config under load: {ok} streams, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 40, "{ok}");
    let health: Value = s.health().await;
    assert_eq!(health["errors"], 0, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_switches_discovery_from_a_static_list_to_dns() {
    use llmstack_test_support::dnsmasq::Dnsmasq;
    let (a, b) = engines_at_two_addresses(M).await;
    let port = a.addr().port();
    // An engine that accepts connections and never answers (a hung host): its probe
    // takes the whole probe timeout. No real engine hangs on demand; a bound socket
    // nobody reads is exactly that to a client.
    let hung = std::net::TcpListener::bind(("127.0.0.4", port)).unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    let dns = Dnsmasq::start("127.0.0.3 vllm.test\n127.0.0.4 vllm.test\n", &[]);
    // The probe timeout is the same in both files (it is also the scrape timeout,
    // which needs a restart to change).
    let file = TempFile::new(&format!(
        "service_discovery: static\nstatic_backends: [{}]\nstatic_models: [{M}]\nbackend_health_check_timeout_seconds: 1\n",
        a.base_url()
    ));
    let s = Arc::new(router_on(&file, vec![a, b]).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            listed(&s).await == vec![s.engines[0].base_url()]
        })
        .await
    );

    // Requests run the whole time: the old engine serves until the new source has
    // probed what it found (DNS names no model: the engine's models come from its probe).
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 2)).await;
                statuses.push(r.status);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        })
    };
    replace_file(
        &file.0,
        &format!(
            "service_discovery: dns\ndns_name: vllm.test\ndns_port: {port}\ndns_nameservers: [\"{}\"]\ndns_min_refresh: 0.2\ndns_max_refresh: 1\nbackend_health_check_timeout_seconds: 1\n",
            dns.addr()
        ),
    );
    let mut new_set = vec![s.engines[1].base_url(), hung_url];
    new_set.sort();
    // No engine is listed before its probe: the hung one would be `pending` for a second.
    let seen_pending = std::sync::Mutex::new(Vec::new());
    let switched = eventually(Duration::from_secs(8), || async {
        let engines = get(&s.client, &engines_url(&s.server)).await.json();
        let mut urls = Vec::new();
        for e in engines.as_array().unwrap() {
            if e["state"] == "pending" {
                seen_pending.lock().unwrap().push(e.to_string());
            }
            urls.push(e["url"].as_str().unwrap().to_owned());
        }
        urls.sort();
        urls == new_set
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let statuses = client.await.unwrap();
    assert!(switched, "{:?} {}", listed(&s).await, s.health().await);
    assert_eq!(seen_pending.into_inner().unwrap(), Vec::<String>::new());
    assert_eq!(s.engine_entry(1).await.unwrap()["state"], "ready");
    assert!(
        statuses.len() > 20 && statuses.iter().all(|&st| st == 200),
        "{statuses:?}"
    );
    let health = s.health().await;
    assert_eq!(health["dynamic_config"]["error"], Value::Null, "{health}");
    assert_eq!(
        health["dynamic_config"]["restart_needed"],
        serde_json::json!([]),
        "{health}"
    );
    let before = finished(&s.client, &s.engines[1], "length").await;
    for _ in 0..3 {
        let r = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 2)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        finished(&s.client, &s.engines[1], "length").await,
        before + 3.0
    );

    // DNS without a name is not valid: nothing changes.
    replace_file(&file.0, "service_discovery: dns\ndns_port: 8000\n");
    let reported = eventually(Duration::from_secs(5), || async {
        s.health().await["dynamic_config"]["error"].is_string()
    })
    .await;
    assert!(reported, "{}", s.health().await);
    assert_eq!(listed(&s).await, new_set);
    let r = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 2)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
