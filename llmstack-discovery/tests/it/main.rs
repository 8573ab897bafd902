//! Integration tests: the prober against real `llmstack-sim` engines over HTTP, and DNS
//! discovery against a real resolver (`dns`).
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod dns;
#[cfg(feature = "kube")]
mod slices;

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use llmstack_core::{Endpoint, EndpointSet, EndpointState, Update};
use llmstack_discovery::{ProbeConfig, UpdateStream, probe, static_discovery};
use llmstack_sim::{EngineConfig, LatencyProfile, LoraModule, SimEngine};

fn config() -> ProbeConfig {
    ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        ..ProbeConfig::default()
    }
}

async fn next(stream: &mut UpdateStream) -> Update {
    let item = tokio::time::timeout(
        Duration::from_secs(5),
        poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)),
    )
    .await
    .expect("an update within 5 s");
    item.expect("the stream does not end").expect("no error")
}

/// Applies updates until `done` holds for the set.
async fn until(
    stream: &mut UpdateStream,
    set: &mut EndpointSet,
    done: impl Fn(&EndpointSet) -> bool,
) {
    while !done(set) {
        set.apply(next(stream).await);
    }
}

#[tokio::test]
async fn the_prober_learns_models_adapters_and_readiness() {
    let mut cfg = EngineConfig::new("base").with_profile(LatencyProfile::instant());
    cfg.lora_modules = vec![LoraModule {
        name: "sql".into(),
        path: "/adapters/sql".into(),
    }];
    let engine = SimEngine::start(cfg, "127.0.0.1:0".parse().unwrap(), 0)
        .await
        .unwrap();
    // Configured with a model name only: the probe replaces it with what the engine says.
    let ep = Endpoint::new(engine.base_url().parse().unwrap()).with_model("configured");
    let id = ep.id.clone();
    let mut stream = probe(static_discovery(vec![ep]), config());
    let mut set = EndpointSet::default();
    set.apply(next(&mut stream).await);
    assert_eq!(set.get(id.as_str()).unwrap().state, EndpointState::Pending);
    until(&mut stream, &mut set, |s| s.ready_count() == 1).await;
    let ep = set.get(id.as_str()).unwrap();
    let ids: Vec<&str> = ep.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["base", "sql"]);
    assert_eq!(ep.models[1].parent.as_deref(), Some("base"));
    assert!(ep.models[0].card["max_model_len"].as_u64().unwrap() > 0);
    assert_eq!(set.candidates("sql").len(), 1);

    // Down: unready, not a candidate, the configured model still known (503, not 404).
    engine.go_down(Duration::from_millis(600));
    until(&mut stream, &mut set, |s| s.ready_count() == 0).await;
    assert_eq!(set.get(id.as_str()).unwrap().state, EndpointState::Unready);
    assert!(set.candidates("base").is_empty());
    assert!(set.has_seen("base"));
    // Back: ready again.
    until(&mut stream, &mut set, |s| s.ready_count() == 1).await;
}

#[tokio::test]
async fn an_unhealthy_engine_is_unready() {
    let engine = SimEngine::start(
        EngineConfig::new("m").with_profile(LatencyProfile::instant()),
        "127.0.0.1:0".parse().unwrap(),
        0,
    )
    .await
    .unwrap();
    let mut stream = probe(
        static_discovery(vec![Endpoint::new(engine.base_url().parse().unwrap())]),
        config(),
    );
    let mut set = EndpointSet::default();
    until(&mut stream, &mut set, |s| s.ready_count() == 1).await;
    engine
        .set_faults(llmstack_sim::FaultConfig {
            unhealthy: true,
            ..Default::default()
        })
        .unwrap();
    until(&mut stream, &mut set, |s| s.ready_count() == 0).await;
    assert!(set.candidates("m").is_empty());
}

/// A discovery source the test feeds by hand.
struct Fed(tokio::sync::mpsc::UnboundedReceiver<Update>);

impl Stream for Fed {
    type Item = Result<Update, llmstack_core::BoxError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|u| u.map(Ok))
    }
}

/// An endpoint that keeps its id but moves (a pod's port annotation changed) starts
/// over at its new address: pending at once, then what a probe of the new address
/// says, never the old address's result.
#[tokio::test]
async fn an_endpoint_that_moves_is_probed_again_at_its_new_address() {
    let engine = SimEngine::start(
        EngineConfig::new("m").with_profile(LatencyProfile::instant()),
        "127.0.0.1:0".parse().unwrap(),
        0,
    )
    .await
    .unwrap();
    // Nothing listens on this port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let (feed, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = probe(
        Fed(rx),
        ProbeConfig {
            interval: Duration::from_secs(30),
            ..config()
        },
    );
    let mut ep = Endpoint::new(engine.base_url().parse().unwrap());
    ep.id = llmstack_core::EndpointId::new("vllm-0.abcd1234");
    feed.send(Update::Reset(vec![ep.clone()])).unwrap();
    let mut set = EndpointSet::default();
    until(&mut stream, &mut set, |s| s.ready_count() == 1).await;
    // Moved to a dead address: pending at once (not the old "ready"), then unready
    // after its own probe, long before the 30 s interval.
    let mut moved = ep.clone();
    moved.url = dead_url.parse().unwrap();
    feed.send(Update::Reset(vec![moved])).unwrap();
    set.apply(next(&mut stream).await);
    let now = set.get("vllm-0.abcd1234").unwrap();
    assert_eq!(now.url.to_string(), format!("{dead_url}/"));
    assert_eq!(now.state, EndpointState::Pending);
    until(&mut stream, &mut set, |s| {
        s.get("vllm-0.abcd1234").unwrap().state == EndpointState::Unready
    })
    .await;
    // Back to the live engine: ready again after a probe there.
    feed.send(Update::Reset(vec![ep])).unwrap();
    until(&mut stream, &mut set, |s| s.ready_count() == 1).await;
}
