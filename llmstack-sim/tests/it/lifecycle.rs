//! Sleep / wake, prefix-cache reset, runtime LoRA loading, admission control, state.

use std::time::Duration;

use http::Method;
use llmstack_sim::EngineConfig;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn sleep_aborts_in_flight_and_queues_until_woken() {
    let e = engine(EngineConfig::new("m")).await;
    let c = client();
    let u = |p: &str| format!("{}{p}", e.base_url());
    // A long request in flight is aborted by sleep (mode=abort, the default).
    let long = spawn_stream(
        &c,
        u("/v1/completions"),
        json!({"prompt": "x", "max_tokens": 5000, "ignore_eos": true, "stream": true}),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = send(&c, Method::POST, &u("/sleep?level=1"), &[], "").await;
    assert_eq!(s.text(), r#"{"status":"sleeping","level":1}"#);
    let aborted = long.await.unwrap();
    let last = aborted
        .events
        .iter()
        .rev()
        .find(|e| e.data != "[DONE]")
        .unwrap()
        .json();
    assert_eq!(last["choices"][0]["finish_reason"], "abort");
    assert_eq!(
        get(&c, &u("/is_sleeping")).await.text(),
        r#"{"is_sleeping":true}"#
    );
    let m = get(&c, &u("/metrics")).await;
    assert_eq!(
        sample(
            m.text(),
            "vllm:engine_sleep_state",
            &[("sleep_state", "weights_offloaded")]
        ),
        Some(1.0)
    );
    // While asleep requests queue.
    let queued = spawn_post(
        &c,
        u("/v1/completions"),
        json!({"prompt": "x", "max_tokens": 2}),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!queued.is_finished());
    assert_eq!(e.state().await.unwrap().waiting, 1);
    let w = send(&c, Method::POST, &u("/wake_up"), &[], "").await;
    assert_eq!(w.text(), r#"{"status":"awake","tags":null}"#);
    assert_eq!(queued.await.unwrap().status, 200);
}

#[tokio::test]
async fn sleep_wait_mode_lets_running_requests_finish() {
    let e = engine(EngineConfig::new("m")).await;
    let c = client();
    let u = |p: &str| format!("{}{p}", e.base_url());
    let req = spawn_post(
        &c,
        u("/v1/completions"),
        json!({"prompt": "x", "max_tokens": 20, "ignore_eos": true}),
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    send(&c, Method::POST, &u("/sleep?level=1&mode=wait"), &[], "").await;
    let done = req.await.unwrap().json();
    assert_eq!(done["choices"][0]["finish_reason"], "length");
    assert!(e.state().await.unwrap().sleeping);
}

#[tokio::test]
async fn reset_prefix_cache_and_sleep_clear_the_cache() {
    let mut cfg = instant("m");
    cfg.enable_prompt_tokens_details = true;
    let e = engine(cfg).await;
    let c = client();
    let u = |p: &str| format!("{}{p}", e.base_url());
    let body = json!({"prompt": "the same long prompt ".repeat(10), "max_tokens": 1});
    post(&c, &u("/v1/completions"), &body).await;
    let st = e.state().await.unwrap();
    assert!(st.cached_blocks > 0);
    assert_eq!(
        st.cached_block_hashes.as_ref().unwrap().len(),
        st.cached_blocks
    );
    let hit = post(&c, &u("/v1/completions"), &body).await.json();
    assert!(
        hit["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let r = send(&c, Method::POST, &u("/reset_prefix_cache"), &[], "").await;
    assert_eq!(r.text(), r#"{"success":true}"#);
    assert_eq!(e.state().await.unwrap().cached_blocks, 0);
    let miss = post(&c, &u("/v1/completions"), &body).await.json();
    assert_eq!(miss["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    // Sleep at level 1 drops the cache too.
    send(&c, Method::POST, &u("/sleep"), &[], "").await;
    assert_eq!(e.state().await.unwrap().cached_blocks, 0);
    send(&c, Method::POST, &u("/wake_up"), &[], "").await;
    assert!(!e.state().await.unwrap().sleeping);
}

#[tokio::test]
async fn runtime_lora_loading() {
    let mut cfg = instant("base");
    cfg.enable_lora = true;
    let e = engine(cfg).await;
    let c = client();
    let u = |p: &str| format!("{}{p}", e.base_url());
    let r = post(
        &c,
        &u("/v1/load_lora_adapter"),
        &json!({"lora_name": "sql", "lora_path": "/a/sql"}),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "Success: LoRA adapter 'sql' added successfully.")
    );
    let again = post(
        &c,
        &u("/v1/load_lora_adapter"),
        &json!({"lora_name": "sql", "lora_path": "/a/sql"}),
    )
    .await;
    assert_eq!(again.status, 400);
    assert_eq!(again.json()["error"]["type"], "InvalidUserInput");
    let models = get(&c, &u("/v1/models")).await.json();
    assert_eq!(models["data"][1]["id"], "sql");
    assert_eq!(
        post(
            &c,
            &u("/v1/completions"),
            &json!({"model": "sql", "prompt": "x", "max_tokens": 1})
        )
        .await
        .status,
        200
    );
    let r = post(
        &c,
        &u("/v1/unload_lora_adapter"),
        &json!({"lora_name": "sql"}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        post(
            &c,
            &u("/v1/unload_lora_adapter"),
            &json!({"lora_name": "sql"})
        )
        .await
        .status,
        404
    );
    assert_eq!(
        post(
            &c,
            &u("/v1/completions"),
            &json!({"model": "sql", "prompt": "x"})
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn admission_control_answers_503() {
    let mut cfg = EngineConfig::new("m");
    cfg.max_num_queued_reqs = Some(1);
    let e = engine(cfg).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    let first = spawn_post(
        &c,
        url.clone(),
        json!({"prompt": "x", "max_tokens": 50, "ignore_eos": true}),
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            e.state().await.unwrap().running == 1
        })
        .await
    );
    let second = post(&c, &url, &json!({"prompt": "x", "max_tokens": 1})).await;
    assert_eq!(second.status, 503);
    assert!(
        second.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The engine is currently busy")
    );
    assert_eq!(first.await.unwrap().status, 200);
    let m = get(&c, &format!("{}/metrics", e.base_url())).await;
    assert_eq!(
        sample(m.text(), "vllm:admission_rejections_total", &[]),
        Some(1.0)
    );
}

#[tokio::test]
async fn wake_up_cancels_a_draining_wait_mode_sleep() {
    let e = engine(EngineConfig::new("m")).await;
    let c = client();
    let u = |p: &str| format!("{}{p}", e.base_url());
    let req = spawn_post(
        &c,
        u("/v1/completions"),
        json!({"prompt": "x", "max_tokens": 60, "ignore_eos": true}),
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            e.state().await.unwrap().running == 1
        })
        .await
    );
    let sleep = tokio::spawn({
        let (c, url) = (c.clone(), u("/sleep?mode=wait"));
        async move { send(&c, Method::POST, &url, &[], "").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let w = send(&c, Method::POST, &u("/wake_up"), &[], "").await;
    assert_eq!(w.json()["status"], "awake");
    assert_eq!(
        sleep.await.unwrap().status,
        200,
        "the sleep caller is answered"
    );
    assert_eq!(req.await.unwrap().status, 200);
    assert!(
        !e.state().await.unwrap().sleeping,
        "the cancelled sleep never happens"
    );
    assert_eq!(
        post(
            &c,
            &u("/v1/completions"),
            &json!({"prompt": "x", "max_tokens": 1})
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn wake_up_in_stages_by_tags() {
    let e = engine(instant("m")).await;
    let c = client();
    let u = |p: &str| format!("{}{p}", e.base_url());
    send(&c, Method::POST, &u("/sleep?level=1"), &[], "").await;
    let w = send(&c, Method::POST, &u("/wake_up?tags=weights"), &[], "").await;
    assert_eq!(w.text(), r#"{"status":"sleeping","tags":["weights"]}"#);
    assert_eq!(
        get(&c, &u("/is_sleeping")).await.text(),
        r#"{"is_sleeping":true}"#
    );
    let w = send(&c, Method::POST, &u("/wake_up?tags=kv_cache"), &[], "").await;
    assert_eq!(w.json()["status"], "awake");
    assert_eq!(
        get(&c, &u("/is_sleeping")).await.text(),
        r#"{"is_sleeping":false}"#
    );
    // Level 0 pauses scheduling: not awake, but neither offloaded nor discarded.
    send(&c, Method::POST, &u("/sleep?level=0"), &[], "").await;
    let m = get(&c, &u("/metrics")).await;
    for state in ["awake", "weights_offloaded", "discard_all"] {
        assert_eq!(
            sample(
                m.text(),
                "vllm:engine_sleep_state",
                &[("sleep_state", state)]
            ),
            Some(0.0),
            "{state}"
        );
    }
}

#[tokio::test]
async fn admission_control_holds_under_a_burst() {
    let mut cfg = EngineConfig::new("m");
    cfg.max_num_queued_reqs = Some(2);
    let e = engine(cfg).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    let burst: Vec<_> = (0..10)
        .map(|_| {
            spawn_post(
                &c,
                url.clone(),
                json!({"prompt": "x", "max_tokens": 40, "ignore_eos": true}),
            )
        })
        .collect();
    let mut ok = 0;
    let mut busy = 0;
    for t in burst {
        match t.await.unwrap().status.as_u16() {
            200 => ok += 1,
            503 => busy += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((ok, busy), (2, 8), "exactly the cap gets in");
    let m = get(&c, &format!("{}/metrics", e.base_url())).await;
    let line = m
        .text()
        .lines()
        .find(|l| l.starts_with("vllm:admission_rejections_total"))
        .unwrap();
    assert!(
        !line.contains("engine="),
        "API-server counter without engine label: {line}"
    );
    assert!(line.ends_with(" 8.0"));
}
