//! Routing policies through the real router: the hot-prefix regression test and the
//! policies' observable behaviour.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use llmstack_routing::RoutingLogic;
use serde_json::{Value, json};

use crate::support::*;

/// A chat request sharing `prefix` (the system prompt), unique after it.
fn prefixed(model: &str, prefix: &str, i: usize, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 4, "ignore_eos": true,
           "messages": [{"role": "system", "content": prefix},
                        {"role": "user", "content": format!("question number {i}")}]})
}

/// Requests finished by engine `e` (any reason: aborts count).
async fn served(c: &HttpClient, e: &llmstack_sim::SimEngine) -> f64 {
    let mut n = 0.0;
    for reason in ["length", "stop", "abort"] {
        n += finished(c, e, reason).await;
    }
    n
}

/// Prompt tokens engine `e` looked up and found in its prefix cache.
async fn cache(c: &HttpClient, e: &llmstack_sim::SimEngine) -> (f64, f64) {
    let text = get(c, &format!("{}/metrics", e.base_url())).await;
    let read = |name| sample(text.text(), name, &[]).unwrap_or(0.0);
    (
        read("vllm:prefix_cache_queries_total"),
        read("vllm:prefix_cache_hits_total"),
    )
}

/// The hotspot regression (peer routers collapsed all traffic onto one engine when a
/// code path missed in-flight accounting): 1,000 concurrent requests sharing one long
/// prefix over 8 engines, streaming, non-streaming, retried (a ninth engine refuses
/// connections) and abandoned by their clients, mixed; then 1,000 more. The
/// prefix-aware cost keeps the prefix cached on its holders only while their queues
/// are cheaper than prefilling it elsewhere, so the load spreads; and every in-flight
/// count returns to zero.
///
/// The first wave starts cold: no engine is known to hold the prefix until one
/// answers, and the engines answering first are rightly preferred (a cached request
/// costs them ~100 tokens of work, a cold one elsewhere ~2,000), so its counts may
/// skew by chance (up to 2.2× fair, and down to 0.19×, seen on a 2-core VM); the bound
/// there (3×) only catches a collapse. In the second wave every engine holds the prefix and the
/// spread must be tight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_prefix_spreads_by_cost_and_in_flight_returns_to_zero() {
    const M: &str = "hot";
    let engines = (0..9)
        .map(|_| {
            let mut c = h100(M);
            c.speedup = 10.0;
            c
        })
        .collect();
    let s = Arc::new(
        stack(engines, |c| {
            c.routing.routing_logic = RoutingLogic::Prefixaware;
            // Slow probes: requests reach the refusing engine and are retried.
            c.discovery.probe.interval = Duration::from_secs(60);
            c.proxy.retries = 3;
        })
        .await,
    );
    s.engines[8].go_down(Duration::from_secs(120));
    // About 2,000 tokens of shared system prompt.
    let prefix: Arc<str> = "You are a meticulous assistant. Cite sources. "
        .repeat(170)
        .into();

    let cold = hot_wave(&s, &prefix).await;
    let served_cold = cold.values().sum::<f64>();
    let fair = served_cold / 8.0;
    let max = cold.values().cloned().fold(0.0, f64::max);
    // Requests whose client left before they were sent never reach an engine; the
    // rest did (retries included).
    assert!(
        served_cold >= 790.0,
        "{served_cold} of 1000 reached an engine"
    );
    assert!(
        max <= 3.0 * fair,
        "hotspot: one engine got {max} of {served_cold} (fair share {fair}): {cold:?}"
    );
    // Cold, an engine answering late is rightly passed over for the holders (19 of a
    // fair 100 seen), so starvation is judged only in the warm wave; here every live
    // engine must have been used at all.
    assert!(
        cold.values().all(|&n| n >= 1.0),
        "an engine got no request: {cold:?}"
    );
    assert!(
        s.health().await["retries"].as_u64().unwrap() > 0,
        "retries happened"
    );

    let warm = hot_wave(&s, &prefix).await;
    let shares: BTreeMap<usize, f64> = warm.iter().map(|(i, n)| (*i, n - cold[i])).collect();
    let served_warm = shares.values().sum::<f64>();
    let fair = served_warm / 8.0;
    let max = shares.values().cloned().fold(0.0, f64::max);
    eprintln!("warm shares {shares:?}");
    assert!(
        served_warm >= 790.0,
        "{served_warm} of 1000 reached an engine"
    );
    assert!(
        max <= 1.5 * fair,
        "hotspot: one engine got {max} of {served_warm} (fair share {fair}): {shares:?}"
    );
    assert!(
        shares.values().all(|&n| n >= fair / 2.0),
        "an engine was starved: {shares:?}"
    );

    // /engines shows each engine's share of the prefix index, within its budget.
    let engines = get(&s.client, &s.at("/engines")).await.json();
    let index: Vec<&Value> = engines
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("prefix_index").filter(|p| !p.is_null()))
        .collect();
    assert!(index.len() >= 8, "{engines}");
    for p in index {
        assert!(
            p["chunks"].as_u64().unwrap() <= p["budget"].as_u64().unwrap(),
            "{p}"
        );
    }
    // The engine refusing connections never accepted a prompt: it holds none.
    let down = s.id_of(8).await;
    let down = engines
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == down.as_str())
        .unwrap();
    assert!(
        down["prefix_index"].is_null() || down["prefix_index"]["chunks"] == 0,
        "{down}"
    );
    let (mut queries, mut hits) = (0.0, 0.0);
    for e in &s.engines[..8] {
        let (q, h) = cache(&s.client, e).await;
        queries += q;
        hits += h;
    }
    assert!(
        hits / queries >= 0.8,
        "the shared prefix stays cached: hit rate {}",
        hits / queries
    );
}

/// Sends 1,000 concurrent requests sharing `prefix` (streamed, not, abandoned early
/// and late), waits until the router has none in flight, and returns how many
/// requests each of the 8 live engines has finished in all.
async fn hot_wave(s: &Arc<Stack>, prefix: &Arc<str>) -> BTreeMap<usize, f64> {
    const M: &str = "hot";
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (s, prefix) = (Arc::clone(s), Arc::clone(prefix));
        tasks.spawn(async move {
            let c = &s.client;
            let url = s.at("/v1/chat/completions");
            match i % 5 {
                0 | 1 => {
                    let a = post(c, &url, &prefixed(M, &prefix, i, false)).await;
                    assert_eq!(a.status, 200, "{}", a.text());
                }
                2 => assert!(!stream(c, &url, &prefixed(M, &prefix, i, true)).await.broken),
                3 => {
                    // Leaves after the first event.
                    let mut res = open(c, &url, &prefixed(M, &prefix, i, true)).await;
                    read_frames(&mut res, 1).await;
                }
                _ => {
                    // Leaves before the answer.
                    let gave_up = tokio::time::timeout(
                        Duration::from_millis(5),
                        post(c, &url, &prefixed(M, &prefix, i, false)),
                    )
                    .await;
                    drop(gave_up);
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // Every in-flight count returns to zero (aborts reach the router asynchronously).
    let idle = eventually(Duration::from_secs(10), || {
        let s = Arc::clone(s);
        async move {
            let engines = get(&s.client, &s.at("/engines")).await.json();
            engines
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["in_flight"] == 0)
        }
    })
    .await;
    assert!(
        idle,
        "in flight left: {}",
        get(&s.client, &s.at("/engines")).await.text()
    );
    // Aborted requests finish on the engines a little after the router lets go.
    let mut settled = BTreeMap::new();
    loop {
        let mut shares = BTreeMap::new();
        for (i, e) in s.engines[..8].iter().enumerate() {
            shares.insert(i, served(&s.client, e).await);
        }
        if shares == settled {
            eprintln!("shares {shares:?}");
            return shares;
        }
        settled = shares;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `leastloaded` counts the router's own in-flight requests, pinned ones included, so
/// new requests avoid an engine busy with long streams before any scrape says so.
#[tokio::test]
async fn least_loaded_avoids_the_engine_with_open_streams() {
    const M: &str = "ll";
    let s = stack(vec![h100(M), h100(M)], |c| {
        c.routing.routing_logic = RoutingLogic::Leastloaded;
        c.scrape.interval = Duration::from_secs(3600);
    })
    .await;
    let busy = s.id_of(0).await;
    let url = s.at(&format!("/v1/completions?id={busy}"));
    let mut open_streams = Vec::new();
    for _ in 0..3 {
        let mut res = open(&s.client, &url, &streamed(M, 5000)).await;
        read_frames(&mut res, 1).await;
        open_streams.push(res);
    }
    let before = finished(&s.client, &s.engines[1], "length").await;
    for _ in 0..4 {
        let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
        assert_eq!(a.status, 200);
    }
    let after = finished(&s.client, &s.engines[1], "length").await;
    assert_eq!(after - before, 4.0, "all went to the idle engine");
    drop(open_streams);
}

/// `session` without `--session-key` keys on the OpenAI `user` field; requests without
/// one are spread by load.
#[tokio::test]
async fn session_keys_on_the_user_field() {
    const M: &str = "su";
    let s = stack(vec![instant(M), instant(M), instant(M)], |c| {
        c.routing.routing_logic = RoutingLogic::Session;
    })
    .await;
    for user in ["alice", "bob", "carol"] {
        let mut body = chat(M, 1);
        body["user"] = json!(user);
        let mut served_by = Vec::new();
        for _ in 0..4 {
            let before: Vec<f64> = {
                let mut v = Vec::new();
                for e in &s.engines {
                    v.push(finished(&s.client, e, "length").await);
                }
                v
            };
            let a = post(&s.client, &s.at("/v1/chat/completions"), &body).await;
            assert_eq!(a.status, 200);
            for (i, e) in s.engines.iter().enumerate() {
                if finished(&s.client, e, "length").await > before[i] {
                    served_by.push(i);
                }
            }
        }
        assert_eq!(served_by.len(), 4);
        assert!(
            served_by.iter().all(|&i| i == served_by[0]),
            "{user}: {served_by:?}"
        );
    }
}
