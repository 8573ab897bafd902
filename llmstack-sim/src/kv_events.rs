//! KV-cache events published exactly as vLLM does: ZMQ PUB, three frames per batch
//! (topic, 8-byte big-endian sequence number, msgpack `[ts, events, dp_rank]`), events as
//! tagged maps (vLLM ≥ 0.24, the default) or tagged arrays (≤ 0.23), and an optional
//! ROUTER socket that replays buffered batches from a sequence number.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use tokio::sync::mpsc;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// One KV-cache event of one engine step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Full blocks of one request entered the prefix cache.
    BlockStored {
        /// Published (low 64-bit) hashes of the blocks, in order.
        block_hashes: Vec<u64>,
        /// Hash of the block before the first one; `None` at block 0.
        parent_block_hash: Option<u64>,
        /// The blocks' token ids (`len = blocks × block_size`).
        token_ids: Vec<u32>,
        /// Tokens per block.
        block_size: u32,
        /// LoRA adapter of the request.
        lora_name: Option<String>,
        /// Per block: `None`, or its untagged extra keys (LoRA name, cache salt).
        extra_keys: Vec<Option<Vec<String>>>,
    },
    /// A cached block was evicted.
    BlockRemoved {
        /// Published hashes of the evicted blocks.
        block_hashes: Vec<u64>,
    },
    /// The whole prefix cache was reset.
    AllBlocksCleared,
}

/// How events are encoded inside a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvEventsLayout {
    /// Tagged maps with a `"type"` key (vLLM ≥ 0.24).
    #[default]
    Map,
    /// Tagged arrays, tag first, fields in declaration order (vLLM ≤ 0.23).
    Array,
}

impl std::str::FromStr for KvEventsLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "map" => Ok(Self::Map),
            "array" => Ok(Self::Array),
            other => Err(format!("unknown KV-event layout {other:?} (map, array)")),
        }
    }
}

/// Publisher settings (vLLM's `--kv-events-config` keys).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct KvEventsConfig {
    /// `tcp://host:port`. As in vLLM, an endpoint with `*` or `::` is bound (subscribers
    /// connect; `*` binds all interfaces) and any other is connected to (a collector binds).
    pub endpoint: String,
    /// Optional ROUTER endpoint for replay requests (bound or connected by the same rule).
    pub replay_endpoint: Option<String>,
    /// Topic frame (empty by default).
    pub topic: String,
    /// Batches kept for replay.
    pub buffer_steps: usize,
    /// Batches queued between the engine and the socket before new ones are dropped.
    pub max_queue_size: usize,
    /// Event encoding.
    pub layout: KvEventsLayout,
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        Self {
            endpoint: "tcp://*:5557".into(),
            replay_endpoint: None,
            topic: String::new(),
            buffer_steps: 10_000,
            max_queue_size: 100_000,
            layout: KvEventsLayout::Map,
        }
    }
}

/// The endpoints a running publisher actually uses (ports resolved when bound to 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KvEventsEndpoints {
    /// The PUB endpoint.
    pub(crate) endpoint: String,
    /// The replay endpoint, if any.
    pub(crate) replay_endpoint: Option<String>,
}

// === encoding ===

struct Encoded<'a> {
    event: &'a KvEvent,
    layout: KvEventsLayout,
}

impl Serialize for Encoded<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.event, self.layout) {
            (
                KvEvent::BlockStored {
                    block_hashes,
                    parent_block_hash,
                    token_ids,
                    block_size,
                    lora_name,
                    extra_keys,
                },
                KvEventsLayout::Map,
            ) => {
                let mut m = s.serialize_map(Some(10))?;
                m.serialize_entry("type", "BlockStored")?;
                m.serialize_entry("block_hashes", block_hashes)?;
                m.serialize_entry("parent_block_hash", parent_block_hash)?;
                m.serialize_entry("token_ids", token_ids)?;
                m.serialize_entry("block_size", block_size)?;
                m.serialize_entry("lora_id", &None::<u32>)?;
                m.serialize_entry("medium", "GPU")?;
                m.serialize_entry("lora_name", lora_name)?;
                m.serialize_entry("extra_keys", extra_keys)?;
                m.serialize_entry("group_idx", &0u32)?;
                m.end()
            }
            (
                KvEvent::BlockStored {
                    block_hashes,
                    parent_block_hash,
                    token_ids,
                    block_size,
                    lora_name,
                    ..
                },
                KvEventsLayout::Array,
            ) => {
                let mut a = s.serialize_seq(Some(8))?;
                a.serialize_element("BlockStored")?;
                a.serialize_element(block_hashes)?;
                a.serialize_element(parent_block_hash)?;
                a.serialize_element(token_ids)?;
                a.serialize_element(block_size)?;
                a.serialize_element(&None::<u32>)?;
                a.serialize_element("GPU")?;
                a.serialize_element(lora_name)?;
                a.end()
            }
            (KvEvent::BlockRemoved { block_hashes }, KvEventsLayout::Map) => {
                let mut m = s.serialize_map(Some(4))?;
                m.serialize_entry("type", "BlockRemoved")?;
                m.serialize_entry("block_hashes", block_hashes)?;
                m.serialize_entry("medium", "GPU")?;
                m.serialize_entry("group_idx", &0u32)?;
                m.end()
            }
            (KvEvent::BlockRemoved { block_hashes }, KvEventsLayout::Array) => {
                let mut a = s.serialize_seq(Some(3))?;
                a.serialize_element("BlockRemoved")?;
                a.serialize_element(block_hashes)?;
                a.serialize_element("GPU")?;
                a.end()
            }
            (KvEvent::AllBlocksCleared, KvEventsLayout::Map) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("type", "AllBlocksCleared")?;
                m.end()
            }
            (KvEvent::AllBlocksCleared, KvEventsLayout::Array) => {
                let mut a = s.serialize_seq(Some(1))?;
                a.serialize_element("AllBlocksCleared")?;
                a.end()
            }
        }
    }
}

struct Batch<'a> {
    ts: f64,
    events: &'a [KvEvent],
    layout: KvEventsLayout,
    dp_rank: u32,
}

impl Serialize for Batch<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut a = s.serialize_seq(Some(3))?;
        a.serialize_element(&self.ts)?;
        a.serialize_element(&EventList(self.events, self.layout))?;
        a.serialize_element(&self.dp_rank)?;
        a.end()
    }
}

struct EventList<'a>(&'a [KvEvent], KvEventsLayout);

impl Serialize for EventList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut a = s.serialize_seq(Some(self.0.len()))?;
        for event in self.0 {
            a.serialize_element(&Encoded {
                event,
                layout: self.1,
            })?;
        }
        a.end()
    }
}

/// Encodes one batch `[ts, events, dp_rank]` as msgpack.
pub fn encode_batch(
    ts: f64,
    events: &[KvEvent],
    layout: KvEventsLayout,
    dp_rank: u32,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut buf = Vec::with_capacity(64 + events.len() * 48);
    Batch {
        ts,
        events,
        layout,
        dp_rank,
    }
    .serialize(&mut rmp_serde::Serializer::new(&mut buf))?;
    Ok(buf)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// === publisher ===

/// The engine's handle on its publisher task: `publish` never blocks the step loop.
#[derive(Debug)]
pub(crate) struct KvPublisher {
    tx: mpsc::Sender<Vec<KvEvent>>,
    dropped: u64,
}

impl KvPublisher {
    /// Queues one step's events; when the queue is full the batch is dropped (subscribers
    /// see a sequence gap, as with vLLM's bounded queue).
    pub(crate) fn publish(&mut self, events: Vec<KvEvent>) {
        if events.is_empty() {
            return;
        }
        if self.tx.try_send(events).is_err() {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "KV-event queue full; batches dropped"
                );
            }
        }
    }
}

/// Whether vLLM would bind (rather than connect) this endpoint.
fn binds(endpoint: &str) -> bool {
    endpoint.contains('*') || endpoint.contains("::") || !endpoint.starts_with("tcp://")
}

/// Attaches `socket` to `endpoint`, returning the endpoint string actually in use.
async fn attach<S: Socket>(socket: &mut S, endpoint: &str) -> Result<String, zeromq::ZmqError> {
    if binds(endpoint) {
        let bound = socket.bind(&endpoint.replace('*', "0.0.0.0")).await?;
        let resolved = bound.to_string();
        Ok(if endpoint.contains('*') {
            resolved.replace("0.0.0.0", "*")
        } else {
            resolved
        })
    } else {
        socket.connect(endpoint).await?;
        Ok(endpoint.to_owned())
    }
}

/// Starts a publisher for one engine (`dp_rank` goes into each batch). Returns the engine's
/// handle, the resolved endpoints and the task, which ends when the handle is dropped.
pub(crate) async fn spawn_publisher(
    config: &KvEventsConfig,
    dp_rank: u32,
) -> Result<(KvPublisher, KvEventsEndpoints, tokio::task::JoinHandle<()>), zeromq::ZmqError> {
    let mut socket = PubSocket::new();
    // A bound endpoint is ready now (and its port known); a connected one is attached by
    // the task in the background, as libzmq connects lazily and the collector may start
    // after the engine.
    let (endpoint, connect_to) = if binds(&config.endpoint) {
        (attach(&mut socket, &config.endpoint).await?, None)
    } else {
        (config.endpoint.clone(), Some(config.endpoint.clone()))
    };
    let (replay, replay_endpoint) = match &config.replay_endpoint {
        Some(ep) => {
            let mut r = RouterSocket::new();
            let resolved = attach(&mut r, ep).await?;
            (Some(r), Some(resolved))
        }
        None => (None, None),
    };
    let (tx, rx) = mpsc::channel(config.max_queue_size.max(1));
    let task = PublisherTask {
        socket,
        connect_to,
        replay,
        rx,
        topic: Bytes::from(config.topic.clone().into_bytes()),
        layout: config.layout,
        dp_rank,
        seq: 0,
        buffer: VecDeque::new(),
        buffer_steps: config.buffer_steps,
    };
    let handle = tokio::spawn(task.run());
    Ok((
        KvPublisher { tx, dropped: 0 },
        KvEventsEndpoints {
            endpoint,
            replay_endpoint,
        },
        handle,
    ))
}

struct PublisherTask {
    socket: PubSocket,
    /// An endpoint still to connect to; batches are numbered and buffered meanwhile.
    connect_to: Option<String>,
    replay: Option<RouterSocket>,
    rx: mpsc::Receiver<Vec<KvEvent>>,
    topic: Bytes,
    layout: KvEventsLayout,
    dp_rank: u32,
    seq: u64,
    buffer: VecDeque<(u64, Bytes)>,
    buffer_steps: usize,
}

/// The end-of-replay marker: sequence number −1.
const END_SEQ: [u8; 8] = [0xff; 8];

impl PublisherTask {
    async fn run(mut self) {
        loop {
            if let Some(endpoint) = self.connect_to.clone() {
                match tokio::time::timeout(CONNECT_ATTEMPT, self.socket.connect(&endpoint)).await {
                    Ok(Ok(())) => {
                        tracing::info!(%endpoint, "KV-event publisher connected");
                        self.connect_to = None;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%endpoint, error = %e, "KV-event collector not reachable yet");
                        tokio::time::sleep(CONNECT_ATTEMPT).await;
                    }
                    Err(_elapsed) => {}
                }
                // Batches produced meanwhile keep their sequence numbers (a gap for live
                // subscribers, available to replay), as with a PUB socket without peers.
                loop {
                    match self.rx.try_recv() {
                        Ok(events) => self.send(&events).await,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                continue;
            }
            tokio::select! {
                batch = self.rx.recv() => match batch {
                    Some(events) => self.send(&events).await,
                    None => return,
                },
                request = recv_replay(&mut self.replay) => match request {
                    Ok(msg) => self.answer_replay(msg).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "KV-event replay socket failed; replay disabled");
                        self.replay = None;
                    }
                },
            }
        }
    }

    async fn send(&mut self, events: &[KvEvent]) {
        let payload = match encode_batch(unix_now(), events, self.layout, self.dp_rank) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                tracing::error!(error = %e, "KV-event batch failed to encode");
                return;
            }
        };
        let seq = self.seq;
        self.seq += 1;
        let msg = frames([
            self.topic.clone(),
            Bytes::copy_from_slice(&seq.to_be_bytes()),
            payload.clone(),
        ]);
        if let Err(e) = self.socket.send(msg).await {
            tracing::debug!(error = %e, "KV-event publish failed");
        }
        if self.buffer_steps > 0 {
            if self.buffer.len() == self.buffer_steps {
                self.buffer.pop_front();
            }
            self.buffer.push_back((seq, payload));
        }
    }

    /// A replay request is `[identity, empty, start_seq]` (DEALER/REQ). The answer is one
    /// `[identity, empty, topic, seq, payload]` per buffered batch with `seq ≥ start`, then
    /// `[identity, empty, "", -1, ""]`.
    async fn answer_replay(&mut self, msg: ZmqMessage) {
        let frames_in = msg.into_vec();
        let (Some(identity), Some(start)) = (frames_in.first(), frames_in.last()) else {
            return;
        };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()) else {
            tracing::debug!("malformed KV-event replay request ignored");
            return;
        };
        let start = u64::from_be_bytes(start);
        let Some(router) = &mut self.replay else {
            return;
        };
        let empty = Bytes::new();
        for (seq, payload) in self.buffer.iter().filter(|(s, _)| *s >= start) {
            let reply = frames([
                identity.clone(),
                empty.clone(),
                self.topic.clone(),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                payload.clone(),
            ]);
            if router.send(reply).await.is_err() {
                return;
            }
        }
        let end = frames([
            identity.clone(),
            empty.clone(),
            empty.clone(),
            Bytes::from_static(&END_SEQ),
            empty,
        ]);
        if let Err(e) = router.send(end).await {
            tracing::debug!(error = %e, "KV-event replay answer failed");
        }
    }
}

async fn recv_replay(replay: &mut Option<RouterSocket>) -> Result<ZmqMessage, zeromq::ZmqError> {
    match replay {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

fn frames<const N: usize>(parts: [Bytes; N]) -> ZmqMessage {
    let mut iter = parts.into_iter();
    // N ≥ 1 at every call site.
    let mut msg = ZmqMessage::from(iter.next().unwrap_or_default());
    for p in iter {
        msg.push_back(p);
    }
    msg
}

/// One attempt to connect the publisher to a collector.
const CONNECT_ATTEMPT: Duration = Duration::from_millis(200);

/// How long an engine waits for its publisher socket to come up before giving up.
pub(crate) const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> KvEvent {
        KvEvent::BlockStored {
            block_hashes: vec![1_403_909_460_543_360_175, u64::MAX - 1],
            parent_block_hash: None,
            token_ids: (1..=32).collect(),
            block_size: 16,
            lora_name: None,
            extra_keys: vec![None, None],
        }
    }

    #[test]
    fn map_layout_bytes_start_as_vllm() {
        let buf = encode_batch(1.5, &[stored()], KvEventsLayout::Map, 0).unwrap();
        // 93 = array(3), cb = float64, then array(1) of map(10) starting with "type".
        assert_eq!(buf[0], 0x93);
        assert_eq!(buf[1], 0xcb);
        assert_eq!(&buf[10..13], &[0x91, 0x8a, 0xa4]);
        assert_eq!(&buf[13..17], b"type");
        // Hashes ≥ 2^63 are msgpack uint64 (cf).
        let big = (u64::MAX - 1).to_be_bytes();
        assert!(buf.windows(9).any(|w| w[0] == 0xcf && w[1..] == big));
        assert_eq!(*buf.last().unwrap(), 0x00, "dp_rank 0 last");
    }

    #[test]
    fn decodes_back_in_both_layouts() {
        let events = vec![
            stored(),
            KvEvent::BlockRemoved {
                block_hashes: vec![7],
            },
            KvEvent::AllBlocksCleared,
        ];
        let map = encode_batch(2.0, &events, KvEventsLayout::Map, 3).unwrap();
        let v: (f64, Vec<serde_json::Value>, u32) = rmp_serde::from_slice(&map).unwrap();
        assert_eq!(v.0, 2.0);
        assert_eq!(v.2, 3);
        assert_eq!(v.1[0]["type"], "BlockStored");
        assert_eq!(v.1[0]["parent_block_hash"], serde_json::Value::Null);
        assert_eq!(v.1[0]["token_ids"].as_array().unwrap().len(), 32);
        assert_eq!(v.1[0]["medium"], "GPU");
        assert_eq!(v.1[1]["block_hashes"][0], 7);
        assert_eq!(v.1[2], serde_json::json!({"type": "AllBlocksCleared"}));

        let arr = encode_batch(2.0, &events, KvEventsLayout::Array, 0).unwrap();
        let v: (f64, Vec<serde_json::Value>, u32) = rmp_serde::from_slice(&arr).unwrap();
        assert_eq!(v.1[0][0], "BlockStored");
        assert_eq!(v.1[0][4], 16);
        assert_eq!(v.1[1], serde_json::json!(["BlockRemoved", [7], "GPU"]));
        assert_eq!(v.1[2], serde_json::json!(["AllBlocksCleared"]));
    }

    #[test]
    fn bind_or_connect_follows_vllm() {
        assert!(binds("tcp://*:5557"));
        assert!(binds("tcp://[::]:5557"));
        assert!(!binds("tcp://127.0.0.1:5557"));
    }
}
