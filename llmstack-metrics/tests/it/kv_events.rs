//! The KV-event subscriber over real ZMQ: against `llmstack-sim` engines (discovery
//! through `/kv_event_sources`, both layouts, catch-up, removal, restart), and against a
//! scripted publisher for the sequence rules (`publisher`).

mod publisher;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmstack_core::kv::{KvBatch, KvEvent, KvSink, KvSource};
use llmstack_core::{Endpoint, EndpointId, EndpointSet, Update};
use llmstack_metrics::kv_events::{KvEventsConfig, KvSourceState, KvSourceStatus, KvSubscriber};
use llmstack_sim::{
    BlockHasher, EngineConfig, HashAlgo, KvEventsConfig as SimKvConfig, KvEventsLayout,
    LatencyProfile, SimEngine, published,
};
use llmstack_test_support::{client, eventually, post, send};
use serde_json::json;
use tokio::sync::watch;

/// What the subscriber told the sink, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Apply(KvSource, KvBatch),
    Reset(KvSource),
    Remove(EndpointId),
}

/// A sink that records every call.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<Call>>);

impl KvSink for Recorder {
    fn apply(&self, source: &KvSource, batch: &KvBatch) {
        self.0
            .lock()
            .unwrap()
            .push(Call::Apply(source.clone(), batch.clone()));
    }
    fn reset(&self, source: &KvSource) {
        self.0.lock().unwrap().push(Call::Reset(source.clone()));
    }
    fn remove(&self, endpoint: &EndpointId) {
        self.0.lock().unwrap().push(Call::Remove(endpoint.clone()));
    }
}

impl Recorder {
    pub fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// Every event applied, in order.
    pub fn events(&self) -> Vec<KvEvent> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Apply(_, b) => Some(b.events),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The token ids of every BlockStored applied, in order.
    pub fn stored_tokens(&self) -> Vec<Vec<u32>> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                KvEvent::BlockStored(s) => Some(s.token_ids),
                _ => None,
            })
            .collect()
    }
}

/// Short waits, so that reconnections happen within a test.
pub fn fast() -> KvEventsConfig {
    KvEventsConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        discovery_interval: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        replay_timeout: Duration::from_secs(2),
        ..KvEventsConfig::default()
    }
}

pub fn set_of(urls: &[String]) -> EndpointSet {
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(
        urls.iter()
            .map(|u| Endpoint::new(u.parse().unwrap()).with_model("m"))
            .collect(),
    ));
    set
}

fn publishing(layout: KvEventsLayout, replay: bool) -> EngineConfig {
    let mut cfg = EngineConfig::new("m").with_profile(LatencyProfile::instant());
    cfg.kv_events = Some(SimKvConfig {
        endpoint: "tcp://*:0".into(),
        replay_endpoint: replay.then(|| "tcp://*:0".into()),
        layout,
        ..SimKvConfig::default()
    });
    cfg
}

async fn start(cfg: EngineConfig, addr: &str) -> SimEngine {
    let addr: SocketAddr = addr.parse().unwrap();
    // A port just released by a stopped engine may take a moment to be free again.
    for _ in 0..50 {
        if let Ok(e) = SimEngine::start(cfg.clone(), addr, 0).await {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot start an engine on {addr}");
}

/// A distinct 40-token prompt (two full blocks of 16 are stored).
fn prompt(i: u32) -> Vec<u32> {
    (1..=40).map(|t| t + 100 * i).collect()
}

async fn complete(e: &SimEngine, i: u32) {
    let url = format!("{}/v1/completions", e.base_url());
    let answer = post(
        &client(),
        &url,
        &json!({"model": "m", "prompt": prompt(i), "max_tokens": 1}),
    )
    .await;
    assert!(answer.status.is_success(), "{:?}", answer.body);
}

fn state_of(sub: &KvSubscriber, id: &EndpointId) -> Option<KvSourceStatus> {
    sub.status()
        .into_iter()
        .find(|s| s.source.endpoint == *id && s.source.dp_rank == 0)
}

async fn until_state(sub: &KvSubscriber, id: &EndpointId, state: KvSourceState) -> bool {
    eventually(Duration::from_secs(5), || {
        let now = state_of(sub, id).map(|s| s.state);
        async move { now == Some(state) }
    })
    .await
}

/// Blocks stored on a simulated engine reach the sink with the engine's token ids and
/// vLLM's hashes; a prefix-cache reset arrives as AllBlocksCleared. Whatever the first
/// batches lost to the subscription's start, the replay socket fills them in.
#[tokio::test]
async fn stored_blocks_and_a_cache_reset_reach_the_sink() {
    let e = start(publishing(KvEventsLayout::Map, true), "127.0.0.1:0").await;
    let set = set_of(&[e.base_url()]);
    let id = set.iter().next().unwrap().id.clone();
    let (_tx, rx) = watch::channel(set);
    let sink = Arc::new(Recorder::default());
    let sub = KvSubscriber::spawn(rx, Arc::clone(&sink), fast());
    assert!(
        until_state(&sub, &id, KvSourceState::Connected).await,
        "{:?}",
        sub.status()
    );
    complete(&e, 1).await;
    complete(&e, 2).await;
    let seen = eventually(Duration::from_secs(5), || {
        let n = sink.stored_tokens().len();
        async move { n >= 2 }
    })
    .await;
    assert!(seen, "{:?}", sink.calls());
    let stored = sink.stored_tokens();
    assert_eq!(stored[0], prompt(1)[..32], "both full blocks, in order");
    assert_eq!(stored[1], prompt(2)[..32]);
    let h = BlockHasher::new(HashAlgo::Sha256, "vllm-none-hash");
    let b0 = h.hash_block(None, &prompt(1)[..16], &[]);
    let b1 = h.hash_block(Some(&b0), &prompt(1)[16..32], &[]);
    let KvEvent::BlockStored(first) = &sink.events()[0] else {
        panic!("{:?}", sink.events());
    };
    assert_eq!(first.block_hashes, [published(&b0), published(&b1)]);
    assert_eq!(first.parent_block_hash, None);
    assert!(first.full_attention);

    let reset = send(
        &client(),
        http::Method::POST,
        &format!("{}/reset_prefix_cache", e.base_url()),
        &[],
        "",
    )
    .await;
    assert!(reset.status.is_success());
    let cleared = eventually(Duration::from_secs(5), || {
        let last = sink.events().last().cloned();
        async move { last == Some(KvEvent::AllBlocksCleared) }
    })
    .await;
    assert!(cleared, "{:?}", sink.events());
    let status = state_of(&sub, &id).unwrap();
    assert_eq!(status.state, KvSourceState::Connected);
    assert_eq!(status.last_seq, Some(2), "three batches: 0, 1, 2");
    assert_eq!(status.batches, 3);
    assert_eq!(
        (status.resets, status.decode_errors, status.gaps),
        (0, 0, 0)
    );
    let publisher = status.publisher.unwrap();
    assert_eq!(
        Some(publisher.replace("127.0.0.1", "*").as_str()),
        e.kv_events_endpoint()
    );
    assert!(!sink.calls().iter().any(|c| matches!(c, Call::Reset(_))));
}

/// vLLM ≤ 0.23's array layout from an engine without a replay socket: batches sent
/// before the subscription took hold are lost, later ones arrive.
#[tokio::test]
async fn the_array_layout_without_replay() {
    let e = start(publishing(KvEventsLayout::Array, false), "127.0.0.1:0").await;
    let set = set_of(&[e.base_url()]);
    let id = set.iter().next().unwrap().id.clone();
    let (_tx, rx) = watch::channel(set);
    let sink = Arc::new(Recorder::default());
    let sub = KvSubscriber::spawn(rx, Arc::clone(&sink), fast());
    assert!(until_state(&sub, &id, KvSourceState::Connected).await);
    let mut i = 0;
    let seen = eventually(Duration::from_secs(5), || {
        i += 1;
        let e = &e;
        let sink = &sink;
        async move {
            complete(e, i).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            !sink.stored_tokens().is_empty()
        }
    })
    .await;
    assert!(seen);
    let tokens = &sink.stored_tokens()[0];
    let first = (tokens[0] - 1) / 100;
    assert_eq!(*tokens, prompt(first)[..32]);
    assert_eq!(state_of(&sub, &id).unwrap().replays, 0);
}

/// An engine that published before the subscriber started is caught up from its
/// replay buffer: every batch since its start, in order.
#[tokio::test]
async fn a_late_subscriber_catches_up_by_replay() {
    let e = start(publishing(KvEventsLayout::Map, true), "127.0.0.1:0").await;
    for i in 1..=3 {
        complete(&e, i).await;
    }
    let set = set_of(&[e.base_url()]);
    let id = set.iter().next().unwrap().id.clone();
    let (_tx, rx) = watch::channel(set);
    let sink = Arc::new(Recorder::default());
    let sub = KvSubscriber::spawn(rx, Arc::clone(&sink), fast());
    assert!(until_state(&sub, &id, KvSourceState::Connected).await);
    // Nothing arrives until the engine publishes again; then the replay brings the rest.
    let mut i = 3;
    let all = eventually(Duration::from_secs(5), || {
        i += 1;
        let (e, sink) = (&e, &sink);
        async move {
            complete(e, i).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            sink.stored_tokens().len() >= 4
        }
    })
    .await;
    assert!(all, "{:?}", sink.calls());
    let stored = sink.stored_tokens();
    for (n, tokens) in stored.iter().enumerate() {
        assert_eq!(*tokens, prompt(n as u32 + 1)[..32], "batch {n} in order");
    }
    let status = state_of(&sub, &id).unwrap();
    assert!(status.replays >= 1, "{status:?}");
    assert_eq!(status.resets, 0);
}

/// An engine removed from the set is forgotten: `remove` is called and nothing of it
/// is applied after; the other engine carries on.
#[tokio::test]
async fn a_removed_engine_is_forgotten() {
    let a = start(publishing(KvEventsLayout::Map, true), "127.0.0.1:0").await;
    let b = start(publishing(KvEventsLayout::Map, true), "127.0.0.1:0").await;
    let set = set_of(&[a.base_url(), b.base_url()]);
    let id_b = set_of(&[b.base_url()]).iter().next().unwrap().id.clone();
    let id_a = set_of(&[a.base_url()]).iter().next().unwrap().id.clone();
    let (tx, rx) = watch::channel(set);
    let sink = Arc::new(Recorder::default());
    let sub = KvSubscriber::spawn(rx, Arc::clone(&sink), fast());
    assert!(until_state(&sub, &id_a, KvSourceState::Connected).await);
    assert!(until_state(&sub, &id_b, KvSourceState::Connected).await);
    tx.send_replace(set_of(&[a.base_url()]));
    let removed = eventually(Duration::from_secs(5), || {
        let calls = sink.calls();
        let id_b = id_b.clone();
        async move { calls.contains(&Call::Remove(id_b)) }
    })
    .await;
    assert!(removed);
    assert!(state_of(&sub, &id_b).is_none(), "{:?}", sub.status());
    let before = sink.calls().len();
    complete(&b, 1).await;
    complete(&a, 2).await;
    let a_applied = eventually(Duration::from_secs(5), || {
        let n = sink.stored_tokens().len();
        async move { n >= 1 }
    })
    .await;
    assert!(a_applied);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for call in &sink.calls()[before..] {
        match call {
            Call::Apply(source, _) => assert_eq!(source.endpoint, id_a),
            other => panic!("{other:?}"),
        }
    }
}

/// An engine restarted on the same ports numbers its batches from 0 again: the
/// subscriber reconnects, resets the source, and applies the new batches.
#[tokio::test]
async fn a_restarted_engine_resets_its_source() {
    let a = start(publishing(KvEventsLayout::Map, true), "127.0.0.1:0").await;
    let addr = a.addr().to_string();
    let port = |ep: Option<&str>| ep.unwrap().rsplit_once(':').unwrap().1.to_owned();
    let (pub_port, replay_port) = (
        port(a.kv_events_endpoint()),
        port(a.kv_events_replay_endpoint()),
    );
    let set = set_of(&[a.base_url()]);
    let id = set.iter().next().unwrap().id.clone();
    let (_tx, rx) = watch::channel(set);
    let sink = Arc::new(Recorder::default());
    let sub = KvSubscriber::spawn(rx, Arc::clone(&sink), fast());
    assert!(until_state(&sub, &id, KvSourceState::Connected).await);
    complete(&a, 1).await;
    complete(&a, 2).await;
    let two = eventually(Duration::from_secs(5), || {
        let n = sink.stored_tokens().len();
        async move { n == 2 }
    })
    .await;
    assert!(two);

    drop(a);
    let lost = eventually(Duration::from_secs(5), || {
        let state = state_of(&sub, &id).map(|s| s.state);
        async move { state != Some(KvSourceState::Connected) }
    })
    .await;
    assert!(lost, "the subscriber noticed: {:?}", sub.status());
    let mut cfg = publishing(KvEventsLayout::Map, true);
    let kv = cfg.kv_events.as_mut().unwrap();
    kv.endpoint = format!("tcp://*:{pub_port}");
    kv.replay_endpoint = Some(format!("tcp://*:{replay_port}"));
    let b = start(cfg, &addr).await;
    assert!(
        until_state(&sub, &id, KvSourceState::Connected).await,
        "{:?}",
        sub.status()
    );
    // Until the subscription has reached the new publisher, its batches are lost (and
    // then replayed from 0).
    let mut i = 2;
    let three = eventually(Duration::from_secs(5), || {
        i += 1;
        let (b, sink) = (&b, &sink);
        async move {
            complete(b, i).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            sink.stored_tokens().len() >= 3
        }
    })
    .await;
    assert!(three, "{:?}", sink.calls());
    let source = KvSource {
        endpoint: id.clone(),
        dp_rank: 0,
    };
    let calls = sink.calls();
    let reset_at = calls
        .iter()
        .position(|c| *c == Call::Reset(source.clone()))
        .expect("a reset");
    let applied: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Call::Apply(..)))
        .map(|(i, _)| i)
        .collect();
    assert!(applied[1] < reset_at && reset_at < applied[2], "{calls:?}");
    assert_eq!(
        sink.stored_tokens()[2],
        prompt(3)[..32],
        "the new engine's first batch"
    );
    let status = state_of(&sub, &id).unwrap();
    assert_eq!(status.resets, 1);
}

/// An engine that does not publish is not subscribed to (and says so in the status).
#[tokio::test]
async fn an_engine_without_events_is_not_indexed() {
    let cfg = EngineConfig::new("m").with_profile(LatencyProfile::instant());
    let e = start(cfg, "127.0.0.1:0").await;
    let set = set_of(&[e.base_url()]);
    let id = set.iter().next().unwrap().id.clone();
    let (_tx, rx) = watch::channel(set);
    let sink = Arc::new(Recorder::default());
    let sub = KvSubscriber::spawn(rx, Arc::clone(&sink), fast());
    assert!(
        until_state(&sub, &id, KvSourceState::Unavailable).await,
        "{:?}",
        sub.status()
    );
    complete(&e, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sink.calls().is_empty());
    let status = state_of(&sub, &id).unwrap();
    assert_eq!(status.publisher, None);
    assert!(status.last_error.is_some());
}
