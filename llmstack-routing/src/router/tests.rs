//! Tests of the router: guards spread load, LoRA adapters and conversations find their engines.

use llmstack_core::Update;

use super::*;
use crate::{LeastLoaded, PrefixAware};

fn set(n: u16) -> EndpointSet {
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(
        (0..n)
            .map(|i| {
                Endpoint::new(format!("http://127.0.0.1:{}", 9000 + i).parse().unwrap())
                    .with_model("m")
                    .with_state(llmstack_core::EndpointState::Ready)
            })
            .collect(),
    ));
    set
}

fn body(user: usize, turn: usize) -> String {
    let history: String = (0..turn)
        .map(|t| {
            format!(
                r#",{{"role":"user","content":"user {user} question {t} {}"}}"#,
                "x".repeat(300)
            )
        })
        .collect();
    format!(
        r#"{{"model":"m","stream":true,"messages":[{{"role":"system","content":"{}"}}{history}]}}"#,
        "You are helpful. ".repeat(40)
    )
}

#[test]
fn least_loaded_spreads_concurrent_requests_through_guards() {
    let router = Router::new(LeastLoaded);
    let set = set(4);
    let req = RouteRequest::from_json(br#"{"model":"m"}"#, None).unwrap();
    let held: Vec<Routed> = (0..8)
        .map(|_| router.route(&set, None, &req, &Target::default()).unwrap())
        .collect();
    for ep in set.candidates("m") {
        assert_eq!(router.in_flight().get(&ep.id), 2);
    }
    drop(held);
    assert_eq!(router.in_flight().total(), 0);
}

#[test]
fn lora_requests_prefer_engines_running_the_adapter() {
    use std::collections::HashMap;
    use std::time::Duration;

    use llmstack_core::{EngineStats, ModelCard};

    let adapter = |port: u16| {
        let mut ep = Endpoint::new(format!("http://127.0.0.1:{port}").parse().unwrap())
            .with_model("base")
            .with_state(llmstack_core::EndpointState::Ready);
        ep.models.push(ModelCard {
            id: "sql".into(),
            parent: Some("base".into()),
            card: Default::default(),
        });
        ep
    };
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(vec![
        adapter(1),
        adapter(2),
        Endpoint::new("http://127.0.0.1:3".parse().unwrap())
            .with_model("base")
            .with_state(llmstack_core::EndpointState::Ready),
    ]));
    let warm = set.candidates("sql")[1].id.clone();
    let stats = |running: Vec<String>| EngineStats {
        running: 0.0,
        waiting: 0.0,
        kv_cache_usage: 0.0,
        prefix_cache_queries: 0.0,
        prefix_cache_hits: 0.0,
        prefix_cache_hit_rate: None,
        num_gpu_blocks: None,
        block_size: None,
        lora_running: running,
        lora_waiting: vec![],
        models: HashMap::new(),
        scraped_at: tokio::time::Instant::now(),
    };
    let snapshot = Arc::new(StatsSnapshot::with_engines(
        Duration::from_secs(1),
        set.candidates("sql")
            .iter()
            .map(|ep| {
                let running = if ep.id == warm {
                    vec!["sql".into()]
                } else {
                    vec![]
                };
                (ep.id.clone(), stats(running))
            })
            .collect(),
    ));
    let router = Router::new(LeastLoaded);
    let req = RouteRequest::from_json(br#"{"model":"sql"}"#, None).unwrap();
    assert_eq!(
        set.candidates("sql").len(),
        2,
        "only engines listing the adapter"
    );
    for _ in 0..6 {
        let routed = router
            .route(&set, Some(&snapshot), &req, &Target::default())
            .unwrap();
        assert_eq!(routed.endpoint.id, warm);
    }
}

#[test]
fn conversations_stay_with_the_engine_holding_their_history() {
    let router = Router::new(PrefixAware::default()).with_prefix_index(PrefixConfig::default());
    let set = set(4);
    let mut home = Vec::new();
    for user in 0..8 {
        let b = body(user, 1);
        let req = RouteRequest::from_json(b.as_bytes(), None).unwrap();
        let before = router.with_index(PrefixIndex::len);
        let mut routed = router.route(&set, None, &req, &Target::default()).unwrap();
        assert_eq!(
            router.with_index(PrefixIndex::len),
            before,
            "not before acceptance"
        );
        router.accepted(&mut routed);
        home.push(routed.endpoint.id.clone());
    }
    for turn in 2..5 {
        for (user, home) in home.iter().enumerate() {
            let b = body(user, turn);
            let req = RouteRequest::from_json(b.as_bytes(), None).unwrap();
            let mut routed = router.route(&set, None, &req, &Target::default()).unwrap();
            router.accepted(&mut routed);
            assert_eq!(&routed.endpoint.id, home, "user {user} turn {turn}");
            assert!(routed.cached_tokens > 0);
        }
    }
    let index_chunks = router.with_index(PrefixIndex::len).unwrap();
    assert!(index_chunks > 0);
    router.retain(|_| false);
    assert_eq!(router.with_index(PrefixIndex::len), Some(0));
}
