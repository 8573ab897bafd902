//! Load sharing: the wire format, the peer table, and two replicas over real UDP on
//! loopback.

use llmstack_core::Endpoint;

use super::*;
use crate::{CandidateList, Load};

#[test]
fn datagrams_round_trip_and_anything_else_is_ignored() {
    let entries = vec![
        (
            7,
            Totals {
                requests: 3,
                pending: 6_400,
            },
        ),
        (
            u64::MAX,
            Totals {
                requests: u32::MAX,
                pending: u64::MAX,
            },
        ),
    ];
    let mut buf = Vec::new();
    encode(42, &entries, &mut buf);
    assert_eq!(buf.len(), HEADER + 2 * ENTRY);
    assert_eq!(decode(&buf), Some((42, entries)));
    assert_eq!(decode(&buf[..buf.len() - 1]), None, "cut short");
    assert_eq!(decode(b"LSH2 something else"), None, "another format");
    assert_eq!(decode(&[]), None);
    let mut longer = buf.clone();
    longer.push(0);
    assert_eq!(decode(&longer), None, "trailing bytes");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn peers_are_summed_per_engine_and_forgotten_when_silent() {
    let mut table = PeerTable::default();
    let t = |requests, pending| Totals { requests, pending };
    let now = Instant::now();
    assert_eq!(table.update(1, 10, t(2, 100), now), t(2, 100));
    assert_eq!(table.update(2, 10, t(1, 50), now), t(3, 150));
    // A newer report replaces the peer's last one.
    assert_eq!(table.update(1, 10, t(0, 0), now), t(1, 50));
    tokio::time::advance(EXPIRY / 2).await;
    assert_eq!(table.update(1, 10, t(4, 400), Instant::now()), t(5, 450));
    assert!(table.expire(Instant::now()).is_empty());
    // Peer 2 has been silent for EXPIRY: only peer 1 counts.
    tokio::time::advance(EXPIRY / 2).await;
    assert_eq!(table.expire(Instant::now()), vec![(10, t(4, 400))]);
    tokio::time::advance(EXPIRY).await;
    assert_eq!(table.expire(Instant::now()), vec![(10, t(0, 0))]);
    assert!(table.engines.is_empty());
}

fn endpoint(port: u16) -> Arc<Endpoint> {
    Arc::new(Endpoint::new(
        format!("http://127.0.0.1:{port}").parse().unwrap(),
    ))
}

fn load(in_flight: &InFlight, ep: &Arc<Endpoint>) -> Load {
    in_flight
        .live(&CandidateList::Owned(vec![Arc::clone(ep)]), None)
        .get(0)
}

/// Polls until `f` holds (real time: the replicas talk over real sockets).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_replica_counts_what_its_peer_has_in_flight() {
    let a = InFlight::default();
    let b = InFlight::default();
    let ep = endpoint(9300);
    let other = endpoint(9301);
    // Each replica knows the engines (as discovery gives them to both).
    drop((a.start(&ep.id), a.start(&other.id), b.start(&ep.id)));
    let sa = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sb = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Both listed in both (a headless Service lists every Pod, itself included).
    let addrs = vec![sa.local_addr().unwrap(), sb.local_addr().unwrap()];
    let (_tx, peers) = watch::channel(addrs);
    let task_a = tokio::spawn(a.clone().share(sa, peers.clone()));
    let task_b = tokio::spawn(b.clone().share(sb, peers));

    // A sends a 6,400-token prefill to the engine: B counts it at once, and its own
    // counts stay its own.
    let mut guard = a.start_with(&ep.id, 6_500, 6_400);
    until("B to see A's request", || {
        let l = load(&b, &ep);
        (l.peer_in_flight, l.peer_pending_prefill_tokens) == (1, 6_400)
    })
    .await;
    assert_eq!(load(&b, &ep).in_flight, 0);
    assert_eq!(b.peers_heard(), Some(1));
    assert_eq!(
        InFlight::default().peers_heard(),
        None,
        "no sharing, no figure"
    );
    assert_eq!(
        load(&a, &ep).peer_in_flight,
        0,
        "a replica is not its own peer"
    );
    // The first byte ends the prefill; the end of the response ends the request.
    guard.first_byte();
    until("B to see the prefill done", || {
        load(&b, &ep).peer_pending_prefill_tokens == 0
    })
    .await;
    assert_eq!(load(&b, &ep).peer_in_flight, 1);
    drop(guard);
    until("B to see the request end", || {
        load(&b, &ep).peer_in_flight == 0
    })
    .await;

    // A replica that goes away stops counting within EXPIRY.
    let _held = a.start_with(&ep.id, 100, 100);
    until("B to see the new request", || {
        load(&b, &ep).peer_in_flight == 1
    })
    .await;
    task_a.abort();
    tokio::time::sleep(EXPIRY + HEARTBEAT * 2).await;
    assert_eq!(load(&b, &ep).peer_in_flight, 0);
    assert_eq!(b.peers_heard(), Some(0));
    task_b.abort();
}
