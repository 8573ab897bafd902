//! Load sharing between router replicas (`--peers`): two real routers in front of the
//! same engines, exchanging their in-flight counts over UDP on loopback.

use std::time::Duration;

use llmstack_routing::RoutingLogic;
use llmstack_server::{Server, ServerConfig};

use crate::support::*;

/// A UDP port free now (the replicas must know each other's ports before they start).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The peer requests and pending prefill a router lists for the engine at `url`.
async fn peer_in_flight(c: &HttpClient, server: &Server, url: &str) -> Option<(u64, u64)> {
    let engines = get(c, &engines_url(server)).await.json();
    let entry = engines
        .as_array()?
        .iter()
        .find(|e| e["url"] == url)?
        .get("peer_in_flight")?
        .clone();
    Some((
        entry["requests"].as_u64()?,
        entry["pending_prefill_tokens"].as_u64()?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sends_new_work_away_from_the_engine_its_peer_keeps_busy() {
    let ports = [free_udp_port(), free_udp_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let share = |port: u16| {
        let peers = peers.clone();
        move |c: &mut ServerConfig| {
            c.routing.routing_logic = RoutingLogic::Leastloaded;
            c.routing.peers = peers;
            c.routing.peer_port = port;
            // No scrapes: the engines' own counts would show A's request to B too, a
            // second later; this test is about what the peers say.
            c.scrape.interval = Duration::from_secs(3600);
        }
    };
    // Engines at H100 speed, so a long answer stays in flight for a while.
    let s = stack(vec![h100("m"), h100("m")], share(ports[0])).await;
    let mut config = config_for(&s.engines);
    share(ports[1])(&mut config);
    let b = Server::start(config).await.unwrap();
    let b_url = format!("http://{}", b.local_addr());
    let urls: Vec<String> = s.engines.iter().map(|e| e.base_url()).collect();
    for url in &urls {
        let listed = eventually(Duration::from_secs(5), || async {
            peer_in_flight(&s.client, &b, url).await == Some((0, 0))
        })
        .await;
        assert!(listed, "B does not list peer load for {url}");
    }

    // A long streamed answer through replica A, its first token in: A holds it open.
    let mut held = open(&s.client, &s.at("/v1/completions"), &streamed("m", 4000)).await;
    assert_eq!(held.status(), 200);
    read_frames(&mut held, 1).await;
    let mut busy = None;
    for _ in 0..500 {
        for url in &urls {
            if peer_in_flight(&s.client, &b, url)
                .await
                .is_some_and(|(r, _)| r == 1)
            {
                busy = Some(url.clone());
            }
        }
        if busy.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = busy.expect("replica B never heard of A's request");
    // Each replica has heard from one peer, and says so.
    let metrics = get(&s.client, &format!("{b_url}/metrics")).await;
    assert_eq!(
        sample(metrics.text(), "llmstack_peer_replicas", &[]),
        Some(1.0)
    );
    // A does not count its own request as a peer's.
    assert_eq!(
        peer_in_flight(&s.client, &s.server, &busy).await,
        Some((0, 0))
    );

    // B's own view of both engines is empty, yet it sends its requests to the other one.
    let idle = s.engines.iter().find(|e| e.base_url() != busy).unwrap();
    let before = finished(&s.client, idle, "length").await;
    for _ in 0..4 {
        let answer = post(
            &s.client,
            &format!("{b_url}/v1/chat/completions"),
            &chat("m", 2),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(finished(&s.client, idle, "length").await - before, 4.0);

    // The answer ends: B stops counting it.
    drop(held);
    let cleared = eventually(Duration::from_secs(5), || async {
        peer_in_flight(&s.client, &b, &busy).await == Some((0, 0))
    })
    .await;
    assert!(cleared, "B still counts A's finished request");
}
