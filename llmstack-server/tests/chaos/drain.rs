//! Graceful shutdown (what SIGTERM does) with 1,000 streams open: the router stops
//! accepting, reports not-ready, and lets every stream run to its end before
//! `Server::wait` returns.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

const STREAMS: usize = 1000;
const ENGINES: usize = 4;
const TOKENS: usize = 25;
/// Each stream's head comes at once, its first token after `FIRST_TOKEN_DELAY`, then a
/// token every `STEP_MS`: streams stay open about 6 s from when they reach an engine,
/// longer than opening all 1,000 takes (1.3–2.5 s on 2 cores in a debug build, more on
/// a busy machine).
const FIRST_TOKEN_DELAY: Duration = Duration::from_millis(4000);
const STEP_MS: f64 = 80.0;

/// Requests the engines are generating tokens for now.
async fn generating(c: &HttpClient, engines: &[llmstack_sim::SimEngine]) -> f64 {
    let mut n = 0.0;
    for e in engines {
        n += engine_metric(c, e, "vllm:num_requests_running", &[]).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_1000_open_streams_lets_every_one_finish() {
    // 1,000 streams hold four sockets each in this process (client, router's accepted,
    // router's to the engine, engine's accepted).
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        limit >= 4 * STREAMS as u64 + 512,
        "open files limited to {limit}"
    );
    let engines = (0..ENGINES)
        .map(|_| {
            let mut c = paced(STEP_MS);
            c.faults.first_token_delay_ms = FIRST_TOKEN_DELAY.as_millis() as u64;
            c
        })
        .collect();
    let s = stack(engines, |c| {
        c.shutdown_grace = Duration::from_secs(30);
        c.max_connections = Some(4 * STREAMS);
    })
    .await;

    let start = Instant::now();
    let streams: Vec<_> = (0..STREAMS)
        .map(|_| spawn_stream(&s.client, s.at("/v1/completions"), streamed(TOKENS as u32)))
        .collect();
    let all_open = eventually(Duration::from_secs(20), || async {
        s.health().await["in_flight"] == STREAMS
    })
    .await;
    let ramp = start.elapsed();
    assert!(all_open, "in flight: {} after {ramp:?}", s.health().await);
    // Shut down once the engines generate tokens for the first hundred streams or so
    // (the last ones are still before their first token), within a second of when the
    // first were due: none can have ended yet (that takes 6 s).
    tokio::time::sleep_until(start + FIRST_TOKEN_DELAY).await;
    let deadline = start + FIRST_TOKEN_DELAY + Duration::from_secs(1);
    let mut running = 0.0;
    while running < 100.0 && Instant::now() < deadline {
        running = generating(&s.client, &s.engines).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(running > 0.0, "the engines generate nothing");

    // The server handle goes to `wait`; the admin listener still answers meanwhile.
    let ready_url = s.admin("/ready");
    let health_url = s.admin("/health");
    let main_addr = s.server.local_addr();
    let Stack {
        engines,
        server,
        client,
        ..
    } = s;
    assert_eq!(get(&client, &ready_url).await.status, 200);
    let shutdown_at = Instant::now();
    server.shutdown();
    let waiter = tokio::spawn(async move {
        server.wait().await;
        Instant::now()
    });

    // Draining: not ready, while streams are still open and `wait` still waits.
    let not_ready = eventually(Duration::from_secs(2), || async {
        get(&client, &ready_url).await.status == 503
    })
    .await;
    assert!(not_ready, "/ready stayed 200 after shutdown");
    let ready = get(&client, &ready_url).await;
    assert_openai_error(503, ready.text(), "ServiceUnavailableError");
    assert!(ready.text().contains("shutting down"), "{}", ready.text());
    let draining = get(&client, &health_url).await.json();
    let in_flight = draining["in_flight"].as_u64().unwrap();
    assert!(in_flight > 0, "{draining}");
    assert!(
        !waiter.is_finished(),
        "wait returned with {in_flight} in flight"
    );
    // New connections are refused.
    let refused = eventually(Duration::from_secs(2), || async {
        TcpStream::connect(main_addr).await.is_err()
    })
    .await;
    assert!(
        refused,
        "the router still accepts connections after shutdown"
    );

    // Every client gets its whole stream, all of them open when the shutdown began
    // (some with tokens on both sides of it).
    let mut last_event = shutdown_at;
    let mut straddling = 0;
    for st in streams {
        let st = st.await.unwrap();
        assert_eq!(st.status, 200, "{}", st.raw);
        assert!(!st.broken, "{}", st.raw);
        assert_eq!(st.events.len(), TOKENS + 1, "{}", st.raw);
        let (done, tokens) = st.events.split_last().unwrap();
        assert_eq!(done.data, "[DONE]");
        assert!(
            tokens
                .iter()
                .all(|e| e.json()["choices"][0]["text"].is_string()),
            "{}",
            st.raw
        );
        assert!(done.at > shutdown_at, "a stream ended before the shutdown");
        straddling += usize::from(tokens[0].at < shutdown_at);
        last_event = last_event.max(done.at);
    }
    let drained = last_event.duration_since(shutdown_at);
    // `wait` returns once the last stream is done: soon after, and well within the
    // 30 s grace period (nothing was cut at its end).
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait did not return after the last stream")
        .unwrap();
    let waited = waited.duration_since(shutdown_at);
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    // The engines did all the work, in even shares, and hold nothing now.
    for e in &engines {
        assert_eq!(served(&client, e).await, (STREAMS / ENGINES) as f64);
        assert_eq!(
            engine_metric(&client, e, "vllm:num_requests_running", &[]).await,
            0.0
        );
    }
    eprintln!(
        "drain: {STREAMS} streams open after {ramp:?}; {running} generating at the \
         shutdown, {straddling} clients with tokens before it; in flight at /ready 503: \
         {in_flight}; \
         last stream done {drained:?} after shutdown, wait returned after {waited:?}"
    );
}
