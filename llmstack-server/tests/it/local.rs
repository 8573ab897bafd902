//! Router-local routes: models, engines, health, readiness, version.

use std::time::Duration;

use llmstack_sim::LoraModule;
use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn models_are_the_union_of_ready_engines_with_adapters() {
    let mut lora = instant("base");
    lora.lora_modules = vec![LoraModule {
        name: "sql-lora".into(),
        path: "/adapters/sql".into(),
    }];
    let s = stack(vec![lora, instant("base"), instant("other")], |c| {
        c.discovery.static_models.clear(); // learned from the engines
    })
    .await;
    let models = get(&s.client, &s.at("/v1/models")).await.json();
    assert_eq!(models["object"], "list");
    let data = models["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "one card per model: {ids:?}");
    for id in ["base", "sql-lora", "other"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let card = |id: &str| data.iter().find(|m| m["id"] == id).unwrap().clone();
    assert_eq!(card("sql-lora")["parent"], "base");
    assert_eq!(card("sql-lora")["root"], "/adapters/sql");
    assert!(card("base")["max_model_len"].as_u64().unwrap() > 0);
    // The adapter is routable, to the one engine that has it.
    let a = post(
        &s.client,
        &s.at("/v1/completions"),
        &serde_json::json!({"model": "sql-lora", "prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(finished(&s.client, &s.engines[0], "length").await, 1.0);
}

#[tokio::test]
async fn engines_health_ready_version() {
    let s = stack(vec![instant("m"), instant("m")], |_| {}).await;
    let engines = get(&s.client, &s.at("/engines")).await.json();
    let list = engines.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for e in list {
        assert_eq!(e["state"], "ready");
        assert!(e["url"].as_str().unwrap().starts_with("http://127.0.0.1:"));
        assert_eq!(e["models"][0]["id"], "m");
        assert_eq!(e["in_flight"], 0);
        assert!(e["id"].as_str().unwrap().len() >= 8);
    }
    // Each engine's scraped /metrics shows up (scrapes every 100 ms in these tests).
    let scraped = eventually(Duration::from_secs(3), || async {
        let engines = get(&s.client, &s.at("/engines")).await.json();
        engines
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["stats"]["block_size"] == 16 && e["stats"]["kv_cache_usage"].is_number())
    })
    .await;
    assert!(
        scraped,
        "{}",
        get(&s.client, &s.at("/engines")).await.text()
    );
    assert_eq!(
        get(&s.client, &s.at("/health")).await.json()["status"],
        "healthy"
    );
    let ready = get(&s.client, &s.at("/ready")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready_engines"], 2);
    let version = get(&s.client, &s.at("/version")).await.json();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));

    // Engines that stop answering become unready; readiness follows; liveness does not.
    for e in &s.engines {
        e.go_down(Duration::from_secs(30));
    }
    let unready = eventually(Duration::from_secs(5), || async {
        get(&s.client, &s.at("/ready")).await.status == 503
    })
    .await;
    assert!(unready);
    assert_eq!(get(&s.client, &s.at("/health")).await.status, 200);
    let engines: Value = get(&s.client, &s.at("/engines")).await.json();
    assert!(
        engines
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["state"] == "unready")
    );
    // Known model, nothing ready: 503, not 404.
    let a = post(&s.client, &s.at("/v1/chat/completions"), &chat("m", 1)).await;
    assert_error(&a, 503, "ServiceUnavailableError");
}
