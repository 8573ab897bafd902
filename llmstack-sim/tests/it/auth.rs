//! `--api-key`: vLLM's bearer check on guarded paths only, over HTTP.

use http::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn api_key_guards_v1_paths_only() {
    let mut cfg = instant("m").with_api_key("sk-sim").with_api_key("sk-other");
    cfg.enable_request_id_headers = true;
    let e = engine(cfg).await;
    let c = client();
    let url = |p: &str| format!("{}{p}", e.base_url());
    let chat =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            .to_string();
    let chat_with = |auth: Option<&'static str>| {
        let (c, url, chat) = (&c, url("/v1/chat/completions"), chat.clone());
        async move {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(auth.map(|a| ("authorization", a)));
            send(c, Method::POST, &url, &headers, &chat).await
        }
    };

    for (auth, why) in [
        (None, "no key"),
        (Some("Bearer sk-wrong"), "wrong key"),
        (Some("Basic sk-sim"), "wrong scheme"),
        (Some("sk-sim"), "no scheme"),
    ] {
        let r = chat_with(auth).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{why}");
        assert_eq!(r.text(), r#"{"error":"Unauthorized"}"#, "{why}");
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(
            r.headers.contains_key("x-request-id"),
            "the id middleware wraps auth"
        );
    }
    for auth in ["Bearer sk-sim", "bearer sk-other"] {
        let r = chat_with(Some(auth)).await;
        assert_eq!(r.status, StatusCode::OK, "{auth}");
        assert_eq!(r.json()["object"], "chat.completion");
    }

    // Checked before routing and before the body: unknown paths, wrong methods and wrong
    // content types under a guarded prefix are 401 as well.
    assert_eq!(
        get(&c, &url("/v1/nope")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c, &url("/v1/completions")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c, &url("/v1/models")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c, &url("/%761/models")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = send(
        &c,
        Method::POST,
        &url("/v2/rerank"),
        &[("content-type", "text/plain")],
        "x",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // OPTIONS always passes (to the router's 405).
    let r = send(&c, Method::OPTIONS, &url("/v1/chat/completions"), &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // Never authenticated: probes, metrics, tokenizer, admin and the simulator's own routes.
    for path in [
        "/health",
        "/metrics",
        "/version",
        "/load",
        "/is_sleeping",
        "/sim/faults",
    ] {
        assert_eq!(get(&c, &url(path)).await.status, StatusCode::OK, "{path}");
    }
    let r = post(
        &c,
        &url("/tokenize"),
        &json!({"model": "m", "prompt": "hi"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}
