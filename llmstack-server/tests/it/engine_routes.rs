//! The routes that name no model: engine control (`/sleep`, `/wake_up`, `/is_sleeping`
//! with `?id=`), the Responses API's stored responses (`GET /v1/responses/{id}`, its
//! cancel route, `previous_response_id` follow-ups) on the engine that created them, and
//! the vLLM 0.33 routes added beside the others.

use http::Method;
use serde_json::{Value, json};

use crate::support::*;

const M: &str = "meta-llama/Llama-3.1-8B-Instruct";

#[tokio::test]
async fn engine_control_reaches_the_named_engine_only() {
    let s = stack(vec![instant(M), instant(M)], |_| {}).await;
    let (a, b) = (s.id_of(0).await, s.id_of(1).await);
    let sleeping = |id: &str| {
        let url = s.at(&format!("/is_sleeping?id={id}"));
        let client = s.client.clone();
        async move {
            let r = get(&client, &url).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["is_sleeping"].as_bool().unwrap()
        }
    };
    assert!(!sleeping(&a).await);
    let slept = post(
        &s.client,
        &s.at(&format!("/sleep?id={a}&level=1")),
        &json!({}),
    )
    .await;
    assert_eq!(slept.status, 200, "{}", slept.text());
    assert!(sleeping(&a).await, "the named engine sleeps");
    assert!(!sleeping(&b).await, "the other does not");
    // Asked directly, the engine agrees.
    let direct = get(
        &s.client,
        &format!("{}/is_sleeping", s.engines[0].base_url()),
    )
    .await;
    assert_eq!(direct.json()["is_sleeping"], true);
    // While it sleeps, requests go to the other engine only (vLLM would hold them
    // until it wakes); /engines says so.
    assert_eq!(s.engine_entry(0).await.unwrap()["asleep"], true);
    for _ in 0..4 {
        let r = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 2)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(finished(&s.client, &s.engines[0], "length").await, 0.0);
    assert_eq!(finished(&s.client, &s.engines[1], "length").await, 4.0);
    // Both asleep: no engine to route to (503), unless one is named.
    let slept = post(&s.client, &s.at(&format!("/sleep?id={b}")), &json!({})).await;
    assert_eq!(slept.status, 200, "{}", slept.text());
    let r = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 2)).await;
    assert_error(&r, 503, "ServiceUnavailableError");
    let woke = post(&s.client, &s.at(&format!("/wake_up?id={b}")), &json!({})).await;
    assert_eq!(woke.status, 200, "{}", woke.text());
    // A sleeping engine is still addressable, to wake it up.
    let woke = post(&s.client, &s.at(&format!("/wake_up?id={a}")), &json!({})).await;
    assert_eq!(woke.status, 200, "{}", woke.text());
    assert!(!sleeping(&a).await);
    assert_eq!(s.engine_entry(0).await.unwrap()["asleep"], false);
    assert_back_in_rotation(&s).await;
    // Without ?id=, or with an unknown one: 400 naming `id`; a wrong method: 405.
    for path in ["/sleep", "/wake_up", "/sleep?id=nope"] {
        let r = post(&s.client, &s.at(path), &json!({})).await;
        assert_error(&r, 400, "BadRequestError");
        assert_eq!(r.json()["error"]["param"], "id", "{path}");
    }
    let r = get(&s.client, &s.at("/is_sleeping")).await;
    assert_error(&r, 400, "BadRequestError");
    let r = get(&s.client, &s.at(&format!("/sleep?id={a}"))).await;
    assert_error(&r, 405, "MethodNotAllowed");
    let r = post(
        &s.client,
        &s.at(&format!("/is_sleeping?id={a}")),
        &json!({}),
    )
    .await;
    assert_error(&r, 405, "MethodNotAllowed");
}

#[tokio::test]
async fn an_engine_woken_without_the_router_rejoins_once_probed_awake() {
    let s = stack(vec![instant(M), instant(M)], |c| {
        c.discovery.probe.is_sleeping = true;
    })
    .await;
    let a = s.id_of(0).await;
    let slept = post(&s.client, &s.at(&format!("/sleep?id={a}")), &json!({})).await;
    assert_eq!(slept.status, 200, "{}", slept.text());
    assert_eq!(s.engine_entry(0).await.unwrap()["asleep"], true);
    // The prober finds it asleep; then it is woken on the engine itself.
    let probed = eventually(std::time::Duration::from_secs(5), || async {
        s.engine_entry(0).await.unwrap()["state"] == "unready"
    });
    assert!(probed.await);
    let direct = format!("{}/wake_up", s.engines[0].base_url());
    assert_eq!(post(&s.client, &direct, &json!({})).await.status, 200);
    let back = eventually(std::time::Duration::from_secs(5), || async {
        let e = s.engine_entry(0).await.unwrap();
        e["state"] == "ready" && e["asleep"] == false
    });
    assert!(back.await, "{:?}", s.engine_entry(0).await);
    assert_back_in_rotation(&s).await;
}

/// Four chats over the two engines all succeed, and engine 0 (woken) took two of them.
async fn assert_back_in_rotation(s: &Stack) {
    for _ in 0..4 {
        let r = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 2)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        finished(&s.client, &s.engines[0], "length").await,
        2.0,
        "back in rotation"
    );
}

/// Creates a response through the router, streamed or not; its id.
async fn create(s: &Stack, previous: Option<&str>, stream: bool) -> (u16, String) {
    let mut body = json!({"model": M, "input": "hi", "max_output_tokens": 3, "stream": stream});
    if let Some(p) = previous {
        body["previous_response_id"] = Value::from(p);
    }
    let r = post(&s.client, &s.at("/v1/responses"), &body).await;
    let text = r.text();
    let id = if stream {
        let at = text.find("\"id\":\"resp_").map(|i| i + 6);
        at.map(|i| text[i..].split('"').next().unwrap().to_owned())
    } else {
        r.json()["id"].as_str().map(str::to_owned)
    };
    (r.status.as_u16(), id.unwrap_or_default())
}

#[tokio::test]
async fn responses_follow_ups_reach_the_creating_engine() {
    // Three engines in round robin: a follow-up sent to any other engine than the
    // creator gets the engine's 404 (each simulated engine stores what it created).
    let s = stack(vec![instant(M), instant(M), instant(M)], |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (status, id) = create(&s, None, i % 2 == 1).await;
        assert_eq!(status, 200);
        assert!(id.starts_with("resp_"), "{id}");
        ids.push(id);
    }
    for id in &ids {
        let r = get(&s.client, &s.at(&format!("/v1/responses/{id}"))).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(r.json()["id"], id.as_str());
        // The creator answers the cancel of a finished response with its own 400.
        let r = post(
            &s.client,
            &s.at(&format!("/v1/responses/{id}/cancel")),
            &json!({}),
        )
        .await;
        assert_error(&r, 400, "BadRequestError");
        assert!(r.text().contains("synchronous"), "{}", r.text());
        // A follow-up, twice (round robin would move the second elsewhere).
        for stream in [false, true] {
            let (status, next) = create(&s, Some(id), stream).await;
            assert_eq!(status, 200, "follow-up of {id}");
            assert!(next.starts_with("resp_"));
        }
    }
    // Each response lives on exactly one engine, and they were spread over several (so
    // the follow-ups above could only succeed by being sent to the creator).
    let mut creators = std::collections::BTreeSet::new();
    for id in &ids {
        let mut holders = Vec::new();
        for (i, e) in s.engines.iter().enumerate() {
            let r = get(&s.client, &format!("{}/v1/responses/{id}", e.base_url())).await;
            if r.status == 200 {
                holders.push(i);
            }
        }
        assert_eq!(holders.len(), 1, "{id}: {holders:?}");
        creators.insert(holders[0]);
    }
    assert!(creators.len() >= 2, "{creators:?}");
    // An id this router never saw: its 404, unless ?id= names the engine.
    let r = get(&s.client, &s.at("/v1/responses/resp_unknown")).await;
    assert_error(&r, 404, "NotFoundError");
    assert!(r.text().contains("?id="), "{}", r.text());
    let a = s.id_of(0).await;
    let r = get(
        &s.client,
        &s.at(&format!("/v1/responses/resp_unknown?id={a}")),
    )
    .await;
    assert_error(&r, 404, "NotFoundError");
    assert!(
        r.text().contains("Response with id"),
        "the engine's own: {}",
        r.text()
    );
    let r = send_bytes(
        &s.client,
        Method::DELETE,
        &s.at(&format!("/v1/responses/{}", ids[0])),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_error(&r, 405, "MethodNotAllowed");
}

#[tokio::test]
async fn newer_vllm_routes_are_forwarded() {
    let s = stack(vec![instant(M)], |_| {}).await;
    let routes = [
        (
            "/v2/rerank",
            json!({"model": M, "query": "a", "documents": ["a b", "c"]}),
        ),
        (
            "/v1/messages/count_tokens",
            json!({"model": M, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ];
    for (path, body) in &routes {
        let r = post(&s.client, &s.at(path), body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    // Routes the engine lacks (a generative model serves no /pooling): the engine's
    // own answer comes back, not the router's 404.
    for path in ["/pooling", "/classify"] {
        let r = post(&s.client, &s.at(path), &json!({"model": M, "input": "hi"})).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.json()["detail"], "Not Found", "the engine's 404");
    }
}

#[tokio::test]
async fn a_root_path_is_taken_off_request_paths() {
    let s = stack(vec![instant(M)], |c| c.root_path = Some("/vllm".into())).await;
    let r = get(&s.client, &s.at("/vllm/v1/models")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["id"], M);
    let r = post(
        &s.client,
        &s.at("/vllm/v1/chat/completions?x=1"),
        &chat(M, 2),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Without the prefix too (FastAPI's root path does not require it).
    let r = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 2)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&s.client, &s.at("/vllmx/v1/models")).await;
    assert_error(&r, 404, "NotFoundError");
    let r = get(&s.client, &s.at("/vllm")).await;
    assert_error(&r, 404, "NotFoundError");
}
