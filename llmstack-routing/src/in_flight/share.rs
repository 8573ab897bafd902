//! Load sharing between router replicas: each replica tells the others, over UDP, how
//! many requests it has in flight on each engine and how much of their prefill is still
//! pending, so every replica's cost counts every replica's queue.
//!
//! Behind a Service each of N replicas sends a fraction of every engine's traffic. Its
//! own in-flight counts then see a fraction of each queue, and the engines' own reports
//! come too late to help: a scrape is an interval old, and vLLM publishes a step's KV
//! events when the step ends. Replicas sharing their counts decide as one router does.
//!
//! The protocol is state, not events: a datagram carries, for some engines, the
//! sender's current totals there. A replica sends an engine's totals about a millisecond
//! after they change (changes are batched), and all of them every
//! [`HEARTBEAT`]. A receiver keeps each peer's latest totals per engine and forgets
//! them after [`EXPIRY`] without news, so a lost datagram costs at most one heartbeat of
//! staleness, and a replica that is gone stops counting within a second. Engines are
//! named by [`EndpointId::stable_hash`], the same in every replica that discovers them
//! alike.
//!
//! Wire format (little-endian): `LSH1`, the sender's random id (u64), an entry count
//! (u16), then per entry the engine's hash (u64), requests (u32) and pending prefill
//! tokens (u64). Datagrams from unknown formats, from this replica itself, or cut short
//! are ignored. The traffic stays inside the cluster: there is no authentication, so
//! the port must not be exposed beyond the router Pods.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use foldhash::fast::RandomState;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use super::InFlight;
use super::counters::Counters;

/// Every replica's full totals go out at least this often.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// A peer's totals for an engine count until this long without news of them.
pub const EXPIRY: Duration = Duration::from_secs(1);

/// How often the peers' names are resolved again (a headless Service's Pods come and go).
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// Changes within this window go out in one datagram.
const BATCH: Duration = Duration::from_millis(1);

const MAGIC: &[u8; 4] = b"LSH1";
const HEADER: usize = 4 + 8 + 2;
const ENTRY: usize = 8 + 4 + 8;
/// Entries per datagram: well under 64 KiB.
const MAX_ENTRIES: usize = 2048;

/// The peer replicas' addresses, kept current by [`InFlight::share_with_peers`] (or by the
/// caller of [`InFlight::share`]).
pub type PeerAddrs = watch::Receiver<Vec<SocketAddr>>;

/// One engine's totals from one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Totals {
    requests: u32,
    pending: u64,
}

/// What the peers said, per engine: each peer's latest totals and when they came; and
/// when each peer was last heard from, with its address (for the log).
#[derive(Default)]
struct PeerTable {
    engines: HashMap<u64, Vec<(u64, Totals, Instant)>, RandomState>,
    peers: HashMap<u64, (SocketAddr, Instant), RandomState>,
}

// === impl PeerTable ===

impl PeerTable {
    /// Records `peer`'s totals for `engine`; returns the engine's new sums.
    fn update(&mut self, peer: u64, engine: u64, totals: Totals, now: Instant) -> Totals {
        let peers = self.engines.entry(engine).or_default();
        match peers.iter_mut().find(|(p, _, _)| *p == peer) {
            Some(entry) => *entry = (peer, totals, now),
            None => peers.push((peer, totals, now)),
        }
        sum(peers)
    }

    /// A datagram from `peer` at `from` arrived: logs a peer heard for the first time
    /// (or again after going silent).
    fn heard(&mut self, peer: u64, from: SocketAddr, now: Instant) {
        if self.peers.insert(peer, (from, now)).is_none() {
            tracing::info!(peer = %from, "load sharing: hearing from a peer replica");
        }
    }

    /// Drops what is older than [`EXPIRY`]; returns the engines whose sums changed,
    /// with their new sums.
    fn expire(&mut self, now: Instant) -> Vec<(u64, Totals)> {
        self.peers.retain(|_, (from, at)| {
            let alive = now.saturating_duration_since(*at) < EXPIRY;
            if !alive {
                tracing::info!(peer = %from, "load sharing: a peer replica went silent; its load is no longer counted");
            }
            alive
        });
        let mut changed = Vec::new();
        self.engines.retain(|&engine, peers| {
            let before = peers.len();
            peers.retain(|(_, _, at)| now.saturating_duration_since(*at) < EXPIRY);
            if peers.len() != before {
                changed.push((engine, sum(peers)));
            }
            !peers.is_empty()
        });
        changed
    }
}

fn sum(peers: &[(u64, Totals, Instant)]) -> Totals {
    peers.iter().fold(
        Totals {
            requests: 0,
            pending: 0,
        },
        |acc, (_, t, _)| Totals {
            requests: acc.requests.saturating_add(t.requests),
            pending: acc.pending.saturating_add(t.pending),
        },
    )
}

fn encode(sender: u64, entries: &[(u64, Totals)], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&sender.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (engine, t) in entries {
        out.extend_from_slice(&engine.to_le_bytes());
        out.extend_from_slice(&t.requests.to_le_bytes());
        out.extend_from_slice(&t.pending.to_le_bytes());
    }
}

/// The sender and entries of a datagram; `None` for anything else.
fn decode(buf: &[u8]) -> Option<(u64, Vec<(u64, Totals)>)> {
    let rest = buf.strip_prefix(MAGIC)?;
    let sender = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let count = usize::from(u16::from_le_bytes(rest.get(8..10)?.try_into().ok()?));
    let body = rest.get(10..)?;
    if body.len() != count * ENTRY {
        return None;
    }
    let entries = body
        .chunks_exact(ENTRY)
        .filter_map(|e| {
            Some((
                u64::from_le_bytes(e.get(..8)?.try_into().ok()?),
                Totals {
                    requests: u32::from_le_bytes(e.get(8..12)?.try_into().ok()?),
                    pending: u64::from_le_bytes(e.get(12..20)?.try_into().ok()?),
                },
            ))
        })
        .collect();
    Some((sender, entries))
}

// === impl InFlight ===

impl InFlight {
    /// Load sharing as a router runs it: binds UDP `at`, and returns the task that keeps
    /// `peers` (`host:port`, a DNS name standing for all its addresses) resolved every
    /// 5 s and runs [`InFlight::share`] with them. Fails only when `at` cannot be bound.
    pub async fn share_with_peers(
        self,
        at: SocketAddr,
        peers: Vec<String>,
    ) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
        let socket = UdpSocket::bind(at).await?;
        let (tx, rx) = watch::channel(Vec::new());
        Ok(async move {
            tokio::join!(
                resolve_peers(peers, tx, RESOLVE_EVERY),
                self.share(socket, rx)
            );
        })
    }

    /// Shares this router's in-flight counts with its peer replicas over `socket`, and
    /// folds theirs into [`Load::peer_in_flight`](crate::Load::peer_in_flight) and
    /// [`Load::peer_pending_prefill_tokens`](crate::Load::peer_pending_prefill_tokens).
    ///
    /// The datagrams carry state, not events: per engine, this replica's requests in
    /// flight and their pending prefill tokens, sent about a millisecond after they
    /// change and all of them every [`SHARE_HEARTBEAT`](crate::SHARE_HEARTBEAT); a
    /// peer's figures are forgotten after [`SHARE_EXPIRY`](crate::SHARE_EXPIRY) without
    /// news, so a lost datagram costs one heartbeat of staleness and a replica that is
    /// gone stops counting within a second. Engines are named by
    /// [`EndpointId::stable_hash`](llmstack_core::EndpointId::stable_hash). Datagrams
    /// are not authenticated: keep the port inside the cluster.
    ///
    /// `peers` may list this replica too (a headless Service does): its own datagrams
    /// are recognised and ignored. Runs until dropped; I/O errors are logged and
    /// retried, never fatal.
    ///
    /// Cost on the request path once sharing is on: marking the engine changed and a
    /// wake-up, at each pick, first byte and end.
    pub async fn share(self, socket: UdpSocket, peers: PeerAddrs) {
        let sender: u64 = {
            use std::hash::BuildHasher;
            // Seeded from the OS per process: distinct replicas get distinct ids.
            std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        };
        self.inner.signal.on.store(true, Ordering::Relaxed);
        let mut table = PeerTable::default();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recv = vec![0u8; HEADER + MAX_ENTRIES * ENTRY];
        let mut send = Vec::new();
        loop {
            tokio::select! {
                received = socket.recv_from(&mut recv) => match received {
                    Ok((n, from)) => self.receive(sender, &recv[..n], from, &mut table),
                    Err(e) => {
                        tracing::debug!(error = %e, "load sharing: receive failed");
                        tokio::time::sleep(BATCH).await;
                    }
                },
                () = self.inner.signal.notify.notified() => {
                    tokio::time::sleep(BATCH).await;
                    let changed = self.own_totals(true);
                    self.send(&socket, &peers, sender, &changed, &mut send).await;
                }
                _ = heartbeat.tick() => {
                    let all = self.own_totals(false);
                    self.send(&socket, &peers, sender, &all, &mut send).await;
                    let expired = table.expire(Instant::now());
                    self.inner
                        .peers_heard
                        .store(table.peers.len() as u32, Ordering::Relaxed);
                    self.store_sums(&expired);
                }
            }
        }
    }

    /// This router's totals per engine: those marked changed (clearing the marks), or
    /// all.
    fn own_totals(&self, changed_only: bool) -> Vec<(u64, Totals)> {
        self.read()
            .iter()
            .filter(|(_, c)| !changed_only || c.dirty.swap(false, Ordering::Relaxed))
            .map(|(id, c)| {
                if !changed_only {
                    c.dirty.store(false, Ordering::Relaxed);
                }
                (
                    id.stable_hash(),
                    Totals {
                        requests: c.requests.load(Ordering::Relaxed),
                        pending: c.pending.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }

    async fn send(
        &self,
        socket: &UdpSocket,
        peers: &PeerAddrs,
        sender: u64,
        entries: &[(u64, Totals)],
        buf: &mut Vec<u8>,
    ) {
        if entries.is_empty() {
            return;
        }
        let addrs = peers.borrow().clone();
        for chunk in entries.chunks(MAX_ENTRIES) {
            encode(sender, chunk, buf);
            for addr in &addrs {
                if let Err(e) = socket.send_to(buf, addr).await {
                    tracing::debug!(peer = %addr, error = %e, "load sharing: send failed");
                }
            }
        }
    }

    fn receive(&self, me: u64, buf: &[u8], from: SocketAddr, table: &mut PeerTable) {
        let Some((peer, entries)) = decode(buf) else {
            tracing::debug!(from = %from, "load sharing: ignoring a datagram that is not ours");
            return;
        };
        if peer == me {
            return;
        }
        let now = Instant::now();
        table.heard(peer, from, now);
        self.inner
            .peers_heard
            .store(table.peers.len() as u32, Ordering::Relaxed);
        let sums: Vec<(u64, Totals)> = entries
            .into_iter()
            .map(|(engine, totals)| (engine, table.update(peer, engine, totals, now)))
            .collect();
        self.store_sums(&sums);
    }

    /// Writes peers' sums into the counters of the engines this router knows, and keeps
    /// them for those it does not yet (see [`InFlight::counters`]).
    fn store_sums(&self, sums: &[(u64, Totals)]) {
        if sums.is_empty() {
            return;
        }
        {
            let mut kept = self
                .inner
                .peer_sums
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (engine, t) in sums {
                if t.requests == 0 && t.pending == 0 {
                    kept.remove(engine);
                } else {
                    kept.insert(*engine, (t.requests, t.pending));
                }
            }
        }
        let counters: HashMap<u64, Arc<Counters>, RandomState> = self
            .read()
            .iter()
            .map(|(id, c)| (id.stable_hash(), Arc::clone(c)))
            .collect();
        for (engine, t) in sums {
            if let Some(c) = counters.get(engine) {
                c.peer_requests.store(t.requests, Ordering::Relaxed);
                c.peer_pending.store(t.pending, Ordering::Relaxed);
            }
        }
    }
}

/// Keeps `tx` at the addresses of `entries` (`host:port`; a DNS name such as a headless
/// Service's gives every address it resolves to), resolving them every `every`. A name
/// that does not resolve keeps its last addresses. Runs until dropped.
async fn resolve_peers(entries: Vec<String>, tx: watch::Sender<Vec<SocketAddr>>, every: Duration) {
    let mut known: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for entry in &entries {
            match tokio::net::lookup_host(entry.as_str()).await {
                Ok(addrs) => {
                    known.insert(entry.clone(), addrs.collect());
                }
                Err(e) => {
                    tracing::warn!(peer = %entry, error = %e, "load sharing: peer does not resolve")
                }
            }
        }
        let mut all: Vec<SocketAddr> = known.values().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        tx.send_if_modified(|current| {
            let changed = *current != all;
            if changed {
                current.clone_from(&all);
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests;
