//! Failure handling: refused engines, hung engines, engines dying mid-stream, clients
//! going away, graceful shutdown.

use std::time::Duration;

use llmstack_sim::FaultConfig;
use tokio::time::Instant;

use crate::support::*;

const M: &str = "m";

#[tokio::test]
async fn a_refused_engine_fails_over_to_another() {
    let s = stack(vec![instant(M), instant(M), instant(M)], |c| {
        // Slow probes: the router must cope before the prober notices.
        c.discovery.probe.interval = Duration::from_secs(60);
    })
    .await;
    s.engines[0].go_down(Duration::from_secs(30));
    for _ in 0..12 {
        let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let served = finished(&s.client, &s.engines[1], "length").await
        + finished(&s.client, &s.engines[2], "length").await;
    assert_eq!(served, 12.0);
    assert!(s.health().await["retries"].as_u64().unwrap() >= 4);
}

#[tokio::test]
async fn all_engines_refusing_gives_502() {
    let s = stack(vec![instant(M), instant(M)], |c| {
        c.discovery.probe.interval = Duration::from_secs(60);
    })
    .await;
    for e in &s.engines {
        e.go_down(Duration::from_secs(30));
    }
    let a = post(&s.client, &s.at("/v1/chat/completions"), &chat(M, 1)).await;
    assert_error(&a, 502, "BadGatewayError");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connect")
    );
}

#[tokio::test]
async fn a_hung_engine_gives_504_at_the_deadline_while_others_flow() {
    let s = stack(vec![instant(M), instant("other")], |c| {
        c.proxy.first_byte_timeout = Duration::from_millis(800);
    })
    .await;
    s.engines[0]
        .set_faults(FaultConfig {
            hang_rate: 1.0,
            ..FaultConfig::default()
        })
        .unwrap();
    let start = Instant::now();
    let hung = spawn_post(&s.client, s.at("/v1/chat/completions"), chat(M, 1));
    // Meanwhile the other model's engine answers normally and quickly.
    for _ in 0..20 {
        let t = Instant::now();
        let a = post(&s.client, &s.at("/v1/chat/completions"), &chat("other", 1)).await;
        assert_eq!(a.status, 200);
        assert!(t.elapsed() < Duration::from_millis(300));
    }
    let a = hung.await.unwrap();
    let waited = start.elapsed();
    assert_error(&a, 504, "GatewayTimeoutError");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );
    assert_eq!(s.health().await["timeouts"], 1);
}

#[tokio::test]
async fn an_engine_dying_mid_stream_ends_only_that_stream() {
    let s = stack(vec![instant(M), instant(M)], |_| {}).await;
    s.engines[0]
        .set_faults(FaultConfig {
            close_after_chunks: Some(3),
            ..FaultConfig::default()
        })
        .unwrap();
    let broken_id = s.id_of(0).await;
    let fine_id = s.id_of(1).await;
    let broken = spawn_stream(
        &s.client,
        s.at(&format!("/v1/completions?id={broken_id}")),
        streamed(M, 20),
    );
    let fine = spawn_stream(
        &s.client,
        s.at(&format!("/v1/completions?id={fine_id}")),
        streamed(M, 20),
    );
    let (broken, fine) = (broken.await.unwrap(), fine.await.unwrap());
    assert_eq!(fine.events.last().unwrap().data, "[DONE]");
    assert_eq!(fine.events.len(), 21);
    // The broken stream ends cleanly for an SSE client: an error event, then [DONE].
    assert!(!broken.broken, "{}", broken.raw);
    let n = broken.events.len();
    assert!((2..21).contains(&n), "{}", broken.raw);
    assert_eq!(broken.events[n - 1].data, "[DONE]");
    assert_eq!(broken.events[n - 2].json()["error"]["code"], 502);
    let health = s.health().await;
    assert_eq!(health["broken_streams"], 1);
    assert_eq!(health["in_flight"], 0);
    // Counted as an engine failure, and as a broken request (not a 2xx).
    let metrics = get(&s.client, &s.at("/metrics")).await;
    let text = metrics.text();
    let engine = [("engine", broken_id.as_str())];
    let upstream = [engine[0], ("kind", "broken")];
    assert_eq!(
        sample(text, "llmstack_upstream_errors_total", &upstream),
        Some(1.0),
        "{text}"
    );
    let requests = |status| {
        sample(
            text,
            "llmstack_requests_total",
            &[engine[0], ("status", status)],
        )
    };
    assert_eq!(requests("broken"), Some(1.0), "{text}");
    assert_eq!(requests("2xx").unwrap_or(0.0), 0.0, "{text}");
    assert_eq!(
        post(&s.client, &s.at("/v1/completions"), &streamed(M, 2))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_client_disconnect_aborts_the_engine_request() {
    let s = stack(vec![h100(M)], |_| {}).await;
    // Streaming: read two events, then go away.
    let mut res = open(&s.client, &s.at("/v1/completions"), &streamed(M, 2000)).await;
    read_frames(&mut res, 2).await;
    drop(res);
    let aborted = eventually(Duration::from_secs(3), || async {
        finished(&s.client, &s.engines[0], "abort").await == 1.0
    })
    .await;
    assert!(aborted, "the engine saw the abort");
    // Non-streaming: give up while the engine is still generating.
    let pending = spawn_post(&s.client, s.at("/v1/chat/completions"), chat(M, 2000));
    tokio::time::sleep(Duration::from_millis(200)).await;
    pending.abort();
    let aborted = eventually(Duration::from_secs(3), || async {
        finished(&s.client, &s.engines[0], "abort").await == 2.0
    })
    .await;
    assert!(aborted, "the engine saw the second abort");
    assert!(
        eventually(Duration::from_secs(2), || async {
            s.health().await["in_flight"] == 0
        })
        .await
    );
}

#[tokio::test]
async fn shutdown_lets_open_streams_finish() {
    let s = stack(vec![h100(M), h100(M)], |c| {
        c.shutdown_grace = Duration::from_secs(20);
    })
    .await;
    let streams: Vec<_> = (0..50)
        .map(|_| spawn_stream(&s.client, s.at("/v1/completions"), streamed(M, 40)))
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.health().await["in_flight"] == 50
        })
        .await
    );
    let url = s.url.clone();
    s.server.shutdown();
    // New connections are refused soon after.
    let refused = eventually(Duration::from_secs(2), || async {
        tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .is_err()
    })
    .await;
    assert!(refused);
    for st in streams {
        let st = st.await.unwrap();
        assert!(!st.broken);
        assert_eq!(st.events.len(), 41, "{}", st.raw);
        assert_eq!(st.events.last().unwrap().data, "[DONE]");
    }
    tokio::time::timeout(Duration::from_secs(5), s.server.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn silence_between_chunks_hits_the_idle_deadline_but_long_streams_do_not() {
    let s = stack(vec![instant(M), h100("long")], |c| {
        c.proxy.idle_timeout = Duration::from_millis(300);
    })
    .await;
    // A stream that goes quiet for longer than the idle deadline is ended for its client.
    s.engines[0]
        .set_faults(FaultConfig {
            first_token_delay_ms: 2000,
            ..FaultConfig::default()
        })
        .unwrap();
    let start = Instant::now();
    let quiet = stream(&s.client, &s.at("/v1/completions"), &streamed(M, 4)).await;
    let waited = start.elapsed();
    assert_eq!(quiet.status, 200, "the head came at once");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    let error = quiet.events[0].json();
    assert_eq!(error["error"]["code"], 504, "{}", quiet.raw);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("next chunk")
    );
    assert_eq!(quiet.events.last().unwrap().data, "[DONE]");
    assert_eq!(s.health().await["timeouts"], 1);
    let metrics = get(&s.client, &s.at("/metrics")).await;
    let text = metrics.text();
    let idle = [("kind", "idle_timeout")];
    assert_eq!(
        sample(text, "llmstack_upstream_errors_total", &idle),
        Some(1.0),
        "{text}"
    );
    let broken = [("route", "/v1/completions"), ("status", "broken")];
    assert_eq!(
        sample(text, "llmstack_requests_total", &broken),
        Some(1.0),
        "{text}"
    );
    // A stream longer than the idle deadline in total, but never quiet that long: whole.
    let start = Instant::now();
    let long = stream(&s.client, &s.at("/v1/completions"), &streamed("long", 120)).await;
    assert!(
        start.elapsed() > Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );
    assert!(!long.broken);
    assert_eq!(long.events.len(), 121);
    assert_eq!(long.events.last().unwrap().data, "[DONE]");
}

/// A client that sends its request head and then only part of its body (or trickles
/// it) is answered 408 with an OpenAI error body at the body deadline, and the
/// connection is closed; a client sending its body in time, even in pieces, is served.
#[tokio::test]
async fn a_body_not_sent_in_time_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let s = stack(vec![instant(M)], |c| {
        c.proxy.body_timeout = Duration::from_millis(400);
    })
    .await;
    let body = serde_json::to_vec(&chat(M, 4)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let addr = s.url.trim_start_matches("http://").to_owned();

    // Half the body, then nothing.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..body.len() / 2]).await.unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer))
        .await
        .expect("the router closes the connection after answering")
        .unwrap();
    let waited = start.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#""type":"RequestTimeoutError""#) && answer.contains(r#""code":408"#),
        "{answer}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // The same body in three pieces 100 ms apart: within the deadline, served.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(body.len() / 3 + 1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.write_all(piece).await.unwrap();
    }
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(s.health().await["in_flight"], 0);
}

/// At `--max-connections`, a new client connection waits (in the kernel's accept
/// queue) until an open one closes, then is served: backpressure, not an error.
#[tokio::test]
async fn at_the_connection_cap_new_connections_wait_for_a_free_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let s = stack(vec![instant(M)], |c| c.max_connections = Some(2)).await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    // Two idle connections take the two places (the readiness polls' connections
    // are closed first: a fresh client per check).
    let held = [
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early = tokio::time::timeout(Duration::from_millis(400), third.read_to_end(&mut answer));
    assert!(early.await.is_err(), "served beyond the cap: {answer:?}");
    let [first, _second] = held;
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("served once a place is free")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""max_client_connections":2"#), "{answer}");
    assert!(answer.contains(r#""client_connections":2"#), "{answer}");
}
