//! Slow request bodies: clients that send a request head and then trickle the body
//! get a 408 with an OpenAI error body at the body deadline (and their connection
//! closed), while a concurrent normal load is unaffected.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

const DEADLINE: Duration = Duration::from_millis(500);
const SLOW_CLIENTS: usize = 8;
/// One body byte this often: the whole body would take tens of seconds.
const PACE: Duration = Duration::from_millis(150);

/// A client writing the head of a POST at once, then its body a byte every `PACE`
/// until an answer comes; returns the bytes it read (until the router closed the
/// connection) and how long that took from the head.
async fn slow_client(addr: &str, body: &[u8]) -> (String, Duration) {
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    conn.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = conn.split();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut next = body.iter();
    let mut writing = true;
    let mut tick = tokio::time::interval(PACE);
    tick.tick().await;
    let closed = async {
        loop {
            tokio::select! {
                read = rd.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        // An answer: stop writing, read until the router closes.
                        answer.extend_from_slice(&buf[..n]);
                        writing = false;
                    }
                },
                _ = tick.tick(), if writing => match next.next() {
                    Some(b) => writing = wr.write_all(&[*b]).await.is_ok(),
                    None => writing = false,
                },
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the router closes the connection after answering");
    let took = start.elapsed();
    (String::from_utf8_lossy(&answer).into_owned(), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_while_normal_clients_flow() {
    let s = stack(vec![instant(), instant()], |c| {
        c.proxy.body_timeout = DEADLINE;
    })
    .await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let body = serde_json::to_vec(&chat(2)).unwrap();
    let load = Load::start(
        &s.client,
        s.at("/v1/chat/completions"),
        chat(2),
        6,
        Duration::from_millis(5),
    );
    load.until_completed(20).await;
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| {
            let (addr, body) = (addr.clone(), body.clone());
            tokio::spawn(async move { slow_client(&addr, &body).await })
        })
        .collect();
    let mut latest = Duration::ZERO;
    for c in slow {
        let (answer, took) = c.await.unwrap();
        latest = latest.max(took);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        let (_, json) = answer.split_once("\r\n\r\n").unwrap();
        assert_openai_error(408, json, "RequestTimeoutError");
        assert!(
            took >= DEADLINE - Duration::from_millis(20) && took < DEADLINE * 6,
            "408 after {took:?}"
        );
    }
    let n = load.completed();
    load.until_completed(n + 20).await;
    let outcomes = load.stop().await;
    let ok = outcomes.iter().filter(|o| o.status() == Some(200)).count();
    assert_eq!(
        ok,
        outcomes.len(),
        "{:?} {:?}",
        tally(&outcomes),
        failures(&outcomes)
    );
    // Nothing slowed down meanwhile (an instant engine answers in milliseconds).
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    assert!(slowest < DEADLINE, "a normal request took {slowest:?}");
    eprintln!(
        "slow bodies: {SLOW_CLIENTS} × 408 (latest after {latest:?}); {ok} normal requests, slowest {slowest:?}"
    );

    let health = s.health().await;
    assert_eq!(health["errors"], SLOW_CLIENTS, "{health}");
    assert_eq!(health["requests"], SLOW_CLIENTS + ok, "{health}");
    let mut generated = 0.0;
    for i in 0..2 {
        generated += s.served(i).await;
    }
    assert_eq!(generated, ok as f64, "no slow request reached an engine");
    s.assert_clean().await;
}
