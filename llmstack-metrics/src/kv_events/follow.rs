//! One engine's task: find its publishers, subscribe to each rank, apply batches in
//! sequence order (replaying gaps), reconnect with backoff.
//!
//! Messages are handled inline, one at a time: while a batch is applied or a replay
//! runs, new ones wait in the socket (bounded by ZMQ and TCP), never in a queue of ours.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use llmstack_core::kv::{KvEvent, KvSink, KvSource};
use llmstack_core::{Endpoint, EndpointId};
use metrics::{Counter, Gauge, Histogram};
use zeromq::{
    DealerSocket, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqMessage,
};

use super::discover::{Discovery, HttpClient, Publisher, discover};
use super::sequence::{CatchUp, Live, ResetReason, Track};
use super::status::{KvSourceState, Registry};
use super::{KvEventsConfig, decode, decode_message};
use crate::names;

/// What the engine tasks share.
pub(crate) struct Ctx {
    pub(crate) config: KvEventsConfig,
    pub(crate) sink: Arc<dyn KvSink>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) client: HttpClient,
}

/// One rank of an engine: where it publishes, how far we are, its metrics.
struct Rank {
    source: KvSource,
    publisher: Publisher,
    track: Track,
    metrics: RankMetrics,
}

/// Metric handles, registered once per rank.
struct RankMetrics {
    engine: String,
    batches: Counter,
    stored: Counter,
    removed: Counter,
    cleared: Counter,
    unknown: Counter,
    gaps: Counter,
    decode_errors: Counter,
    lag: Histogram,
    connected: Gauge,
}

/// Counts a connected publisher in the gauge while alive.
struct Connected(Gauge);

/// Why following an engine's ranks stopped.
struct Ended {
    /// Whether the subscription had been healthy: a batch arrived, or it stayed up
    /// longer than the longest backoff (then the backoff starts over).
    connected: bool,
    reason: String,
}

/// Exponential backoff between `min` and `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

/// Runs until aborted: discovers `ep`'s publishers and follows them.
pub(crate) async fn run_engine(ctx: Arc<Ctx>, ep: Arc<Endpoint>) {
    let engine = ep.id.clone();
    let mut ranks: BTreeMap<u32, Rank> = BTreeMap::new();
    let mut backoff = Backoff::new(ctx.config.backoff_min, ctx.config.backoff_max);
    let mut told_unavailable = false;
    loop {
        ctx.registry.set_state(&engine, KvSourceState::Discovering);
        match discover(&ctx.client, &ep, &ctx.config).await {
            Discovery::Found(found) => {
                told_unavailable = false;
                reconcile(&ctx, &engine, &mut ranks, found);
            }
            Discovery::Unavailable(why) => {
                if !told_unavailable {
                    tracing::info!(%engine, %why, "engine publishes no KV events; its cache is not indexed");
                    told_unavailable = true;
                }
                for rank in std::mem::take(&mut ranks).values() {
                    rank.forget(&ctx, ResetReason::Moved);
                }
                ctx.registry.retain(&engine, |r| r == 0);
                ctx.registry.update(&source(&engine, 0), |s| {
                    s.state = KvSourceState::Unavailable;
                    s.publisher = None;
                    s.last_error = Some(why);
                });
                tokio::time::sleep(ctx.config.discovery_interval).await;
                continue;
            }
            Discovery::Failed(why) => {
                tracing::debug!(%engine, %why, "KV-event discovery failed");
                if ranks.is_empty() {
                    ctx.registry.update(&source(&engine, 0), |s| {
                        s.state = KvSourceState::Backoff;
                        s.last_error = Some(why);
                    });
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
                // The engine's HTTP side may be down while its publishers are not:
                // try the ones found before.
            }
        }
        let ended = follow_all(&ctx, &mut ranks).await;
        if ended.connected {
            backoff.reset();
            tracing::info!(%engine, reason = %ended.reason, "KV-event subscription lost; reconnecting");
        } else {
            tracing::debug!(%engine, reason = %ended.reason, "KV-event subscription failed");
        }
        ctx.registry.set_state(&engine, KvSourceState::Backoff);
        tokio::time::sleep(backoff.next()).await;
    }
}

fn source(engine: &EndpointId, dp_rank: u32) -> KvSource {
    KvSource {
        endpoint: engine.clone(),
        dp_rank,
    }
}

/// Adopts what discovery found: ranks gone or publishing elsewhere are forgotten.
fn reconcile(
    ctx: &Ctx,
    engine: &EndpointId,
    ranks: &mut BTreeMap<u32, Rank>,
    found: BTreeMap<u32, Publisher>,
) {
    ranks.retain(|r, rank| {
        let same = found.get(r) == Some(&rank.publisher);
        if !same {
            rank.forget(ctx, ResetReason::Moved);
        }
        same
    });
    ctx.registry.retain(engine, |r| found.contains_key(&r));
    for (r, publisher) in found {
        let source = source(engine, r);
        ctx.registry.update(&source, |s| {
            s.publisher = Some(publisher.endpoint.clone());
        });
        ranks
            .entry(r)
            .or_insert_with(|| Rank::new(source, publisher));
    }
}

/// Follows every rank until one of them stops (then all are reconnected together).
async fn follow_all(ctx: &Ctx, ranks: &mut BTreeMap<u32, Rank>) -> Ended {
    let followers: Vec<_> = ranks
        .values_mut()
        .map(|rank| Box::pin(rank.follow(ctx)))
        .collect();
    if followers.is_empty() {
        return Ended {
            connected: false,
            reason: "no publishers".into(),
        };
    }
    futures_util::future::select_all(followers).await.0
}

/// Seconds from a batch's publish time to now (`None` for a nonsense time).
fn lag_since(ts: f64) -> Option<f64> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let lag = now - ts;
    lag.is_finite().then_some(lag.max(0.0))
}

// === impl Rank ===

impl Rank {
    fn new(source: KvSource, publisher: Publisher) -> Self {
        let metrics = RankMetrics::new(&source.endpoint);
        Self {
            source,
            publisher,
            track: Track::default(),
            metrics,
        }
    }

    /// Subscribes and applies batches until the connection is lost.
    async fn follow(&mut self, ctx: &Ctx) -> Ended {
        self.set_state(ctx, KvSourceState::Connecting);
        let mut options = SocketOptions::default();
        options.connect_timeout(ctx.config.timeout);
        let mut socket = SubSocket::with_options(options);
        let mut monitor = socket.monitor();
        let attached = match socket.subscribe(&ctx.config.topic).await {
            Ok(()) => socket.connect(&self.publisher.endpoint).await,
            Err(e) => Err(e),
        };
        if let Err(e) = attached {
            let reason = format!("cannot subscribe to {}: {e}", self.publisher.endpoint);
            ctx.registry
                .update(&self.source, |s| s.last_error = Some(reason.clone()));
            return Ended {
                connected: false,
                reason,
            };
        }
        let _connected = Connected::new(self.metrics.connected.clone());
        self.track.reconnected();
        ctx.registry.update(&self.source, |s| {
            s.state = KvSourceState::Connected;
            s.last_error = None;
        });
        tracing::info!(source = %self.source, publisher = %self.publisher.endpoint, "subscribed to KV events");
        let since = tokio::time::Instant::now();
        let mut received = false;
        let reason = loop {
            tokio::select! {
                msg = socket.recv() => match msg {
                    Ok(msg) => {
                        received = true;
                        self.on_message(ctx, msg).await;
                    }
                    Err(e) => break format!("receive failed: {e}"),
                },
                event = monitor.next() => match event {
                    Some(SocketEvent::Disconnected(_)) | None => break "publisher disconnected".to_owned(),
                    Some(_) => {}
                },
            }
        };
        ctx.registry
            .update(&self.source, |s| s.last_error = Some(reason.clone()));
        Ended {
            connected: received || since.elapsed() >= ctx.config.backoff_max,
            reason,
        }
    }

    async fn on_message(&mut self, ctx: &Ctx, msg: ZmqMessage) {
        let frames = msg.into_vec();
        let (seq, payload) = match decode_message(&frames) {
            Ok((_topic, seq, payload)) => (seq, payload),
            Err(e) => {
                // Without a sequence number there is nothing to reset; if a batch was
                // lost, the next one shows a gap.
                self.count_decode_error(ctx, &e);
                return;
            }
        };
        match self.track.live(seq) {
            Live::Apply { reset } => {
                self.reset(ctx, reset);
                self.apply(ctx, seq, payload);
            }
            Live::Duplicate => {}
            Live::Fill { from, reset } => {
                self.reset(ctx, reset);
                if from > 0 {
                    self.metrics.gaps.increment(1);
                    ctx.registry.update(&self.source, |s| s.gaps += 1);
                    tracing::debug!(source = %self.source, from, to = seq, "KV-event sequence gap");
                }
                if self.publisher.replay.is_some() {
                    self.replay(ctx, from).await;
                }
                if let CatchUp::Apply { reset } = self.track.catch_up(seq) {
                    self.reset(ctx, reset);
                    self.apply(ctx, seq, payload);
                }
            }
        }
    }

    /// Decodes and applies batch `seq`; a batch that does not decode resets the source.
    fn apply(&mut self, ctx: &Ctx, seq: u64, payload: &[u8]) {
        self.track.applied(seq);
        let decoded = match decode(payload) {
            Ok(d) => d,
            Err(e) => {
                self.count_decode_error(ctx, &e);
                self.reset(ctx, Some(ResetReason::DecodeError));
                ctx.registry
                    .update(&self.source, |s| s.last_seq = Some(seq));
                return;
            }
        };
        ctx.sink.apply(&self.source, &decoded.batch);
        let (mut stored, mut removed, mut cleared) = (0, 0, 0);
        for event in &decoded.batch.events {
            match event {
                KvEvent::BlockStored(_) => stored += 1,
                KvEvent::BlockRemoved(_) => removed += 1,
                KvEvent::AllBlocksCleared => cleared += 1,
            }
        }
        let m = &self.metrics;
        m.batches.increment(1);
        for (counter, n) in [
            (&m.stored, stored),
            (&m.removed, removed),
            (&m.cleared, cleared),
            (&m.unknown, decoded.skipped as u64),
        ] {
            if n > 0 {
                counter.increment(n);
            }
        }
        let lag = lag_since(decoded.batch.ts);
        if let Some(lag) = lag {
            m.lag.record(lag);
        }
        let events = decoded.batch.events.len() as u64;
        ctx.registry.update(&self.source, |s| {
            s.last_seq = Some(seq);
            s.batches += 1;
            s.events += events;
            if lag.is_some() {
                s.last_lag_seconds = lag;
            }
        });
    }

    /// Asks the replay socket for every buffered batch from `from` and applies the
    /// ones due; gives up after the replay timeout.
    async fn replay(&mut self, ctx: &Ctx, from: u64) {
        let Some(endpoint) = self.publisher.replay.clone() else {
            return;
        };
        ctx.registry.update(&self.source, |s| s.replays += 1);
        let outcome = match tokio::time::timeout(
            ctx.config.replay_timeout,
            self.replay_from(ctx, &endpoint, from),
        )
        .await
        {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(why)) => {
                tracing::debug!(source = %self.source, %endpoint, %why, "KV-event replay failed");
                "failed"
            }
            Err(_) => {
                tracing::debug!(source = %self.source, %endpoint, "KV-event replay timed out");
                "failed"
            }
        };
        metrics::counter!(names::KV_EVENT_REPLAYS, "engine" => self.metrics.engine.clone(), "outcome" => outcome)
            .increment(1);
    }

    /// The replay exchange: `[empty, start]` out; `[empty, topic, seq, payload]` back
    /// per buffered batch, then the end marker (seq −1). `Ok("partial")` when the
    /// publisher no longer held the batches from `from`.
    async fn replay_from(
        &mut self,
        ctx: &Ctx,
        endpoint: &str,
        from: u64,
    ) -> Result<&'static str, String> {
        let mut options = SocketOptions::default();
        options.connect_timeout(ctx.config.timeout);
        let mut dealer = DealerSocket::with_options(options);
        dealer.connect(endpoint).await.map_err(|e| e.to_string())?;
        let mut request = ZmqMessage::from(Bytes::new());
        request.push_back(Bytes::copy_from_slice(&from.to_be_bytes()));
        dealer.send(request).await.map_err(|e| e.to_string())?;
        let mut outcome = "ok";
        let mut first = true;
        loop {
            let frames = dealer.recv().await.map_err(|e| e.to_string())?.into_vec();
            // A DEALER sees the ROUTER's empty delimiter first.
            let body = if frames.len() == 4 {
                &frames[1..]
            } else {
                &frames[..]
            };
            let (_topic, seq, payload) = decode_message(body).map_err(|e| e.to_string())?;
            if seq == u64::MAX {
                return Ok(outcome);
            }
            if std::mem::take(&mut first) && seq > from {
                outcome = "partial";
            }
            if let CatchUp::Apply { reset } = self.track.catch_up(seq) {
                self.reset(ctx, reset);
                self.apply(ctx, seq, payload);
            }
        }
    }

    /// Tells the sink to forget this source, when `reason` is given.
    fn reset(&self, ctx: &Ctx, reason: Option<ResetReason>) {
        let Some(reason) = reason else {
            return;
        };
        ctx.sink.reset(&self.source);
        metrics::counter!(names::KV_EVENT_RESETS, "engine" => self.metrics.engine.clone(), "reason" => reason.as_str())
            .increment(1);
        ctx.registry.update(&self.source, |s| s.resets += 1);
        tracing::debug!(source = %self.source, reason = reason.as_str(), "KV-event source reset");
    }

    /// Forgets a rank that stops being followed, if it had applied anything.
    fn forget(&self, ctx: &Ctx, reason: ResetReason) {
        if self.track.last().is_some() {
            self.reset(ctx, Some(reason));
        }
    }

    fn count_decode_error(&self, ctx: &Ctx, e: &super::DecodeError) {
        self.metrics.decode_errors.increment(1);
        let mut count = 0;
        ctx.registry.update(&self.source, |s| {
            s.decode_errors += 1;
            count = s.decode_errors;
        });
        // Logged at 1, 2, 4, 8, … so a broken publisher cannot flood the log.
        if count.is_power_of_two() {
            tracing::warn!(source = %self.source, error = %e, count, "undecodable KV-event message");
        }
    }

    fn set_state(&self, ctx: &Ctx, state: KvSourceState) {
        ctx.registry.update(&self.source, |s| s.state = state);
    }
}

// === impl RankMetrics ===

impl RankMetrics {
    fn new(engine: &EndpointId) -> Self {
        let engine = engine.to_string();
        let events = |kind: &'static str| metrics::counter!(names::KV_EVENTS, "engine" => engine.clone(), "type" => kind);
        Self {
            batches: metrics::counter!(names::KV_EVENT_BATCHES, "engine" => engine.clone()),
            stored: events("block_stored"),
            removed: events("block_removed"),
            cleared: events("all_blocks_cleared"),
            unknown: events("unknown"),
            gaps: metrics::counter!(names::KV_EVENT_GAPS, "engine" => engine.clone()),
            decode_errors: metrics::counter!(names::KV_EVENT_DECODE_ERRORS, "engine" => engine.clone()),
            lag: metrics::histogram!(names::KV_EVENT_LAG, "engine" => engine.clone()),
            connected: metrics::gauge!(names::KV_EVENT_CONNECTED, "engine" => engine.clone()),
            engine,
        }
    }
}

// === impl Connected ===

impl Connected {
    fn new(gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

// === impl Backoff ===

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = now.saturating_mul(2).min(self.max);
        now
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}
