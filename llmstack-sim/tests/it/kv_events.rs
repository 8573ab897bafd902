//! KV events over a real ZMQ socket (the Python pyzmq subscriber in tests/python covers
//! interop with vLLM's own consumers).

use std::time::Duration;

use llmstack_sim::{KvEventsConfig, KvEventsLayout, published};
use serde_json::{Value, json};
use zeromq::{Socket, SocketRecv, SubSocket};

use crate::support::*;

/// The next batch (topic, sequence number, payload) within 300 ms.
pub(crate) async fn recv_batch(sub: &mut SubSocket) -> Option<(Vec<u8>, u64, Value)> {
    let msg = tokio::time::timeout(Duration::from_millis(300), sub.recv())
        .await
        .ok()?
        .ok()?;
    let frames = msg.into_vec();
    assert_eq!(frames.len(), 3, "topic, seq, payload");
    let seq = u64::from_be_bytes(frames[1].as_ref().try_into().unwrap());
    let payload: Value = rmp_serde::from_slice(&frames[2]).unwrap();
    Some((frames[0].to_vec(), seq, payload))
}

#[tokio::test]
async fn engine_connects_to_a_bound_collector_and_publishes_blocks() {
    // A collector binds; an endpoint without `*` makes the engine connect, as in vLLM.
    let mut sub = SubSocket::new();
    let bound = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    sub.subscribe("").await.unwrap();
    let mut cfg = instant("m");
    cfg.kv_events = Some(KvEventsConfig {
        endpoint: bound.to_string(),
        topic: "kv".into(),
        ..KvEventsConfig::default()
    });
    let e = engine(cfg).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    // PUB drops messages until the subscription has arrived, and a repeated prompt is a
    // cache hit that stores nothing: send fresh prompts until a batch lands.
    let prompt_for = |i: u32| -> Vec<u32> { (1..=40).map(|t| t + 100 * i).collect() };
    let mut got = None;
    for i in 0..40 {
        post(&c, &url, &json!({"prompt": prompt_for(i), "max_tokens": 1})).await;
        if let Some(b) = recv_batch(&mut sub).await {
            got = Some(b);
            break;
        }
    }
    let (topic, _seq, batch) = got.expect("a KV-event batch");
    assert_eq!(topic, b"kv");
    assert_eq!(batch.as_array().unwrap().len(), 3);
    assert!(batch[0].as_f64().unwrap() > 1.7e9, "wall-clock timestamp");
    assert_eq!(batch[2], 0);
    let stored = batch[1]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "BlockStored")
        .expect("BlockStored");
    assert_eq!(stored["block_size"], 16);
    assert_eq!(stored["parent_block_hash"], Value::Null);
    let attempt = (stored["token_ids"][0].as_u64().unwrap() as u32 - 1) / 100;
    let prompt = prompt_for(attempt);
    assert_eq!(
        stored["token_ids"],
        json!(prompt[..32]),
        "the real token ids of the two full blocks"
    );
    // The published hashes are vLLM's sha256 hashes of these token ids.
    let h = llmstack_sim::BlockHasher::new(llmstack_sim::HashAlgo::Sha256, "vllm-none-hash");
    let b0 = h.hash_block(None, &prompt[..16], &[]);
    let b1 = h.hash_block(Some(&b0), &prompt[16..32], &[]);
    assert_eq!(
        stored["block_hashes"],
        json!([published(&b0), published(&b1)])
    );
    // Reset publishes AllBlocksCleared with the next sequence number.
    let r = send(
        &c,
        http::Method::POST,
        &format!("{}/reset_prefix_cache", e.base_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(r.text(), r#"{"success":true}"#);
    let mut cleared = false;
    for _ in 0..10 {
        match recv_batch(&mut sub).await {
            Some((_, _, b))
                if b[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["type"] == "AllBlocksCleared") =>
            {
                cleared = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(cleared);
}

#[tokio::test]
async fn bound_publisher_in_array_layout_with_sequence_numbers() {
    let mut cfg = instant("m");
    cfg.kv_events = Some(KvEventsConfig {
        endpoint: "tcp://*:0".into(),
        layout: KvEventsLayout::Array,
        ..KvEventsConfig::default()
    });
    let e = engine(cfg).await;
    let ep = e.kv_events_endpoint().unwrap().replace('*', "127.0.0.1");
    let sources = get(&client(), &format!("{}/kv_event_sources", e.base_url()))
        .await
        .json();
    assert_eq!(
        sources["0"]["endpoint"]
            .as_str()
            .unwrap()
            .replace('*', "127.0.0.1"),
        ep
    );
    let mut sub = SubSocket::new();
    sub.connect(&ep).await.unwrap();
    sub.subscribe("").await.unwrap();
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    let mut seqs = Vec::new();
    for i in 0..20u32 {
        let prompt: Vec<u32> = (0..20).map(|t| t + i * 100).collect();
        post(&c, &url, &json!({"prompt": prompt, "max_tokens": 1})).await;
        if let Some((_, seq, batch)) = recv_batch(&mut sub).await {
            let ev = &batch[1][0];
            assert_eq!(ev[0], "BlockStored", "array layout: tag first");
            assert_eq!(ev[4], 16);
            seqs.push(seq);
        }
        if seqs.len() >= 3 {
            break;
        }
    }
    assert!(seqs.len() >= 3);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive sequence numbers: {seqs:?}"
    );
}

#[tokio::test]
async fn engine_starts_before_its_collector_and_connects_later() {
    // A free port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = instant("m");
    cfg.kv_events = Some(KvEventsConfig {
        endpoint: format!("tcp://127.0.0.1:{port}"),
        ..KvEventsConfig::default()
    });
    let t0 = tokio::time::Instant::now();
    let e = engine(cfg).await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "start does not wait for the collector"
    );
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    post(
        &c,
        &url,
        &json!({"prompt": (1..40).collect::<Vec<u32>>(), "max_tokens": 1}),
    )
    .await;
    let mut sub = SubSocket::new();
    sub.bind(&format!("tcp://127.0.0.1:{port}")).await.unwrap();
    sub.subscribe("").await.unwrap();
    let mut got = None;
    for i in 0..40u32 {
        let prompt: Vec<u32> = (0..40).map(|t| t + 1000 * (i + 2)).collect();
        post(&c, &url, &json!({"prompt": prompt, "max_tokens": 1})).await;
        if let Some(b) = recv_batch(&mut sub).await {
            got = Some(b);
            break;
        }
    }
    let (_, seq, _) = got.expect("events flow once the collector is up");
    assert!(
        seq >= 1,
        "the batch from before the collector kept its number: {seq}"
    );
}
