//! A complete vLLM router from the llmstack libraries, composed as `llmstack-server`
//! composes it: discovery (a static list, probed), the engines' `/metrics` scraped,
//! then request ids → accounting → body read → retry on another engine → routing with
//! any policy → forwarding.
//!
//! ```text
//! cargo run -p llmstack-proxy --example router -- \
//!     127.0.0.1:8080 prefixaware http://127.0.0.1:8001 http://127.0.0.1:8002
//! ```
//!
//! Prints `listening on http://ADDR` once bound (port 0 picks a free port). Models are
//! learnt from each engine's `/v1/models`; the policy is any `--routing-logic` name.

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use llmstack_core::{BoxError, Endpoint, EndpointSet};
use llmstack_discovery::{ProbeConfig, probe, publish, static_discovery};
use llmstack_metrics::{AccountLayer, ScrapeConfig, spawn_scraper};
use llmstack_proxy::{Forward, ProxyConfig, ReadBodyLayer, RequestIdLayer, RetryLayer};
use llmstack_routing::{RouteLayer, RoutingConfig, RoutingLogic};
use tokio::sync::watch;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, policy, urls @ ..] = args.as_slice() else {
        return Err("usage: router LISTEN_ADDR POLICY URL [URL...]".into());
    };
    let engines: Result<Vec<Endpoint>, _> =
        urls.iter().map(|u| u.parse().map(Endpoint::new)).collect();

    // Discovery: the list, each engine probed (/health, /v1/models) every second.
    let (set_tx, set) = watch::channel(EndpointSet::default());
    let probed = ProbeConfig {
        interval: std::time::Duration::from_secs(1),
        ..ProbeConfig::default()
    };
    let source = probe(static_discovery(engines?), probed);
    tokio::spawn(publish(source, set_tx, |_: &EndpointSet| {}, None));
    // Load and cache state: every engine's /metrics, every second.
    let (stats, _scraper) = spawn_scraper(set.clone(), ScrapeConfig::default());

    // The request path.
    let routing = RoutingConfig {
        routing_logic: RoutingLogic::parse(policy)?,
        ..RoutingConfig::default()
    };
    let config = ProxyConfig::default();
    let forward = Forward::new(config.clone());
    tokio::spawn(forward.sweep_idle());
    let service = ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(AccountLayer::new())
        .layer(ReadBodyLayer::new(config.max_body).timeout(config.body_timeout))
        .layer(RetryLayer::new(config.retries))
        .layer(RouteLayer::new(routing.router(), set).with_stats(stats))
        .service(forward);

    // Serve HTTP/1.
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let conn = http1::Builder::new().serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        );
        tokio::spawn(conn);
    }
}
