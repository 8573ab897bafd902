//! A scripted publisher: real ZMQ PUB and ROUTER sockets whose sequence numbers the
//! test chooses (gaps, a replay buffer missing batches, a broken payload, a restart),
//! to check the subscriber's sequence rules and metrics end to end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use llmstack_core::kv::KvSource;
use llmstack_metrics::kv_events::{KvEventsConfig, KvSourceState, KvSubscriber};
use llmstack_metrics::names;
use llmstack_sim::{KvEvent as SimEvent, KvEventsLayout, encode_batch};
use llmstack_test_support::eventually;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::watch;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::{Call, Recorder, fast, set_of, until_state};

type Buffer = Arc<Mutex<BTreeMap<u64, Bytes>>>;

/// One recorded metric: name, labels, value.
type Sample = (String, Vec<(String, String)>, DebugValue);

struct Script {
    publisher: PubSocket,
    buffer: Buffer,
    pub_port: u16,
    replay_port: u16,
    router: tokio::task::JoinHandle<()>,
}

fn frames(parts: Vec<Bytes>) -> ZmqMessage {
    ZmqMessage::try_from(parts).unwrap()
}

fn port_of(endpoint: &impl ToString) -> u16 {
    endpoint
        .to_string()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

/// Batch `seq`: one BlockStored of block `seq`, published "at" `seq` seconds so that
/// the sink's timestamps spell the sequence.
fn payload(seq: u64) -> Bytes {
    let event = SimEvent::BlockStored {
        block_hashes: vec![seq],
        parent_block_hash: None,
        token_ids: vec![7; 16],
        block_size: 16,
        lora_name: None,
        extra_keys: vec![None],
    };
    Bytes::from(encode_batch(seq as f64, &[event], KvEventsLayout::Map, 0).unwrap())
}

impl Script {
    async fn start() -> Self {
        let mut publisher = PubSocket::new();
        let pub_port = port_of(&publisher.bind("tcp://127.0.0.1:0").await.unwrap());
        let mut router = RouterSocket::new();
        let replay_port = port_of(&router.bind("tcp://127.0.0.1:0").await.unwrap());
        let buffer = Buffer::default();
        let kept = Arc::clone(&buffer);
        // Answers replay requests as vLLM does: `[identity, empty, start]` in, one
        // `[identity, empty, topic, seq, payload]` per buffered batch from `start`, then
        // the end marker.
        let router = tokio::spawn(async move {
            while let Ok(msg) = router.recv().await {
                let request = msg.into_vec();
                let identity = request[0].clone();
                let start = u64::from_be_bytes(request.last().unwrap()[..].try_into().unwrap());
                let batches: Vec<(u64, Bytes)> = kept
                    .lock()
                    .unwrap()
                    .range(start..)
                    .map(|(s, p)| (*s, p.clone()))
                    .collect();
                for (seq, payload) in batches {
                    let reply = vec![
                        identity.clone(),
                        Bytes::new(),
                        Bytes::new(),
                        Bytes::copy_from_slice(&seq.to_be_bytes()),
                        payload,
                    ];
                    router.send(frames(reply)).await.unwrap();
                }
                let end = vec![
                    identity,
                    Bytes::new(),
                    Bytes::new(),
                    Bytes::from_static(&[0xff; 8]),
                    Bytes::new(),
                ];
                router.send(frames(end)).await.unwrap();
            }
        });
        Self {
            publisher,
            buffer,
            pub_port,
            replay_port,
            router,
        }
    }

    /// Buffers batch `seq` for replay without sending it live (a batch the subscriber
    /// lost).
    fn keep(&self, seq: u64) {
        self.buffer.lock().unwrap().insert(seq, payload(seq));
    }

    /// Publishes `payload` as batch `seq` (live only).
    async fn send_raw(&mut self, seq: u64, payload: Bytes) {
        let msg = frames(vec![
            Bytes::new(),
            Bytes::copy_from_slice(&seq.to_be_bytes()),
            payload,
        ]);
        self.publisher.send(msg).await.unwrap();
    }

    /// Buffers and publishes batch `seq`, as a publisher does.
    async fn send(&mut self, seq: u64) {
        self.keep(seq);
        self.send_raw(seq, payload(seq)).await;
    }
}

impl Recorder {
    /// The timestamps of the batches applied: the scripted sequence numbers.
    fn applied(&self) -> Vec<u64> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Apply(_, b) => Some(b.ts as u64),
                _ => None,
            })
            .collect()
    }

    async fn until_applied(&self, seq: u64) -> bool {
        eventually(Duration::from_secs(5), || {
            let done = self.applied().last() == Some(&seq);
            async move { done }
        })
        .await
    }
}

/// Sum of the samples of `name` whose labels include `labels`.
fn sample(values: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    values
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| match v {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        })
        .sum()
}

/// Every rule over real sockets, in one run: catch-up, a gap filled by replay, a gap
/// older than the replay buffer, an undecodable batch, a restart; and the metrics.
/// (One thread, so that the local metrics recorder sees every task.)
#[tokio::test(flavor = "current_thread")]
async fn sequence_rules_over_real_sockets() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut p = Script::start().await;
    // The engine's HTTP side does not answer: the configured ports are used.
    let config = KvEventsConfig {
        port: Some(p.pub_port),
        replay_port: Some(p.replay_port),
        ..fast()
    };
    let set = set_of(&["http://127.0.0.1:1".to_owned()]);
    let id = set.iter().next().unwrap().id.clone();
    let (_tx, rx) = watch::channel(set);
    let sink = Arc::new(Recorder::default());
    let sub = KvSubscriber::spawn(rx, Arc::clone(&sink), config);
    assert!(
        until_state(&sub, &id, KvSourceState::Connected).await,
        "{:?}",
        sub.status()
    );

    // Publish until the subscription has taken hold; whatever was missed is caught up.
    let mut next = 0;
    while sink.applied().is_empty() && next < 250 {
        p.send(next).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sink.until_applied(next - 1).await);
    assert_eq!(sink.applied(), (0..next).collect::<Vec<_>>());

    // A gap the replay fills.
    let s = next;
    p.keep(s);
    p.keep(s + 1);
    p.send(s + 2).await;
    assert!(sink.until_applied(s + 2).await, "{:?}", sink.applied());
    assert_eq!(sink.applied(), (0..s + 3).collect::<Vec<_>>());

    // A gap older than the replay buffer: the source is reset, what is left applied.
    let s = s + 3;
    p.keep(s + 1);
    p.send(s + 2).await;
    assert!(sink.until_applied(s + 2).await, "{:?}", sink.applied());
    let source = KvSource {
        endpoint: id.clone(),
        dp_rank: 0,
    };
    let calls = sink.calls();
    assert_eq!(calls[calls.len() - 3], Call::Reset(source.clone()));
    assert_eq!(sink.applied()[s as usize..], [s + 1, s + 2]);

    // An undecodable batch: counted, the source reset, the next one applied.
    let s = s + 3;
    p.send_raw(s, Bytes::from_static(b"\xc1")).await;
    p.send(s + 1).await;
    assert!(sink.until_applied(s + 1).await);
    let calls = sink.calls();
    assert_eq!(calls[calls.len() - 2], Call::Reset(source.clone()));

    // A restart: numbering from 0 again.
    p.buffer.lock().unwrap().clear();
    p.send(0).await;
    assert!(sink.until_applied(0).await);
    let calls = sink.calls();
    assert_eq!(calls[calls.len() - 2], Call::Reset(source.clone()));

    let status = sub
        .status()
        .into_iter()
        .find(|st| st.source == source)
        .unwrap();
    assert_eq!(status.state, KvSourceState::Connected);
    assert_eq!(
        status.publisher,
        Some(format!("tcp://127.0.0.1:{}", p.pub_port))
    );
    assert_eq!(status.last_seq, Some(0));
    assert_eq!(
        (status.gaps, status.resets, status.decode_errors),
        (2, 3, 1)
    );
    assert!(status.replays >= 2, "{status:?}");
    assert_eq!(status.batches, sink.applied().len() as u64);

    let values: Vec<Sample> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.key().name().to_owned(), labels, value)
        })
        .collect();
    let engine = id.to_string();
    let e = [("engine", engine.as_str())];
    let applied = sink.applied().len() as f64;
    assert_eq!(sample(&values, names::KV_EVENT_BATCHES, &e), applied);
    assert_eq!(
        sample(
            &values,
            names::KV_EVENTS,
            &[("engine", &engine), ("type", "block_stored")]
        ),
        applied
    );
    assert_eq!(sample(&values, names::KV_EVENT_GAPS, &e), 2.0);
    assert_eq!(sample(&values, names::KV_EVENT_DECODE_ERRORS, &e), 1.0);
    for reason in ["gap", "decode_error", "restart"] {
        assert_eq!(
            sample(&values, names::KV_EVENT_RESETS, &[("reason", reason)]),
            1.0,
            "{reason}"
        );
    }
    assert!(sample(&values, names::KV_EVENT_REPLAYS, &[("outcome", "ok")]) >= 1.0);
    assert_eq!(
        sample(&values, names::KV_EVENT_REPLAYS, &[("outcome", "partial")]),
        1.0
    );
    assert_eq!(sample(&values, names::KV_EVENT_LAG, &e), applied);
    assert_eq!(sample(&values, names::KV_EVENT_CONNECTED, &e), 1.0);
    drop(sub);
    p.router.abort();
}

/// An HTTP server answering every request with `body` as JSON (an engine's
/// `/kv_event_sources`); returns its base URL.
async fn serve_json(body: String) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut request = vec![0; 4096];
            let _ = conn.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    (url, task)
}

/// Two data-parallel ranks, discovered through `/kv_event_sources` (wildcard hosts):
/// each is a source of its own, and both are followed at once.
#[tokio::test]
async fn data_parallel_ranks_are_sources_of_their_own() {
    let mut ranks = [Script::start().await, Script::start().await];
    let sources: serde_json::Map<String, serde_json::Value> = ranks
        .iter()
        .enumerate()
        .map(|(r, p)| {
            let source = serde_json::json!({
                "enable_kv_cache_events": true, "publisher": "zmq",
                "endpoint": format!("tcp://*:{}", p.pub_port),
                "replay_endpoint": format!("tcp://*:{}", p.replay_port),
            });
            (r.to_string(), source)
        })
        .collect();
    let (url, http) = serve_json(serde_json::Value::Object(sources).to_string()).await;
    let set = set_of(&[url]);
    let id = set.iter().next().unwrap().id.clone();
    let (_tx, rx) = watch::channel(set);
    let sink = Arc::new(Recorder::default());
    let sub = KvSubscriber::spawn(rx, Arc::clone(&sink), fast());
    let both =
        eventually(Duration::from_secs(5), || {
            let status = sub.status();
            async move {
                status.len() == 2 && status.iter().all(|s| s.state == KvSourceState::Connected)
            }
        })
        .await;
    assert!(both, "{:?}", sub.status());
    let mut seq = 0;
    let applied_by_both = eventually(Duration::from_secs(5), || {
        let calls = sink.calls();
        let ranks_seen = [0, 1].map(|r| {
            calls
                .iter()
                .any(|c| matches!(c, Call::Apply(s, _) if s.dp_rank == r && s.endpoint == id))
        });
        async move { ranks_seen == [true, true] }
    });
    tokio::pin!(applied_by_both);
    let done = loop {
        tokio::select! {
            done = &mut applied_by_both => break done,
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                for p in &mut ranks {
                    p.send(seq).await;
                }
                seq += 1;
            }
        }
    };
    assert!(done, "{:?}", sink.calls());
    let status = sub.status();
    assert_eq!(status[1].source.dp_rank, 1);
    assert_eq!(
        status[1].publisher,
        Some(format!("tcp://127.0.0.1:{}", ranks[1].pub_port))
    );
    assert!(!sink.calls().iter().any(|c| matches!(c, Call::Reset(_))));
    http.abort();
    for p in ranks {
        p.router.abort();
    }
}
