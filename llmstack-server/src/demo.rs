//! `llmstack-server demo`: simulated engines and the router in one process.

use std::net::{IpAddr, SocketAddr};

use llmstack_discovery::{DiscoveryConfig, ProbeConfig};
use llmstack_metrics::ScrapeConfig;
use llmstack_routing::RoutingConfig;
use llmstack_sim::{EngineConfig, LatencyProfile, SimCluster};

use crate::{DemoArgs, ProxyConfig, Server, ServerConfig};

/// A running demo: the engines and the router.
#[derive(Debug)]
pub struct Demo {
    /// The simulated engines.
    pub cluster: SimCluster,
    /// The router in front of them.
    pub server: Server,
}

/// Why the demo could not start.
#[derive(Debug)]
pub enum DemoError {
    /// `--engines 0` or no model.
    Empty,
    /// The simulated engines could not start.
    Engines(llmstack_sim::StartError),
    /// The router could not start.
    Router(crate::StartError),
}

/// Starts the engines on free loopback ports, then the router in front of them.
pub async fn start(args: &DemoArgs) -> Result<Demo, DemoError> {
    if args.engines == 0 || args.models.is_empty() {
        return Err(DemoError::Empty);
    }
    let models: Vec<String> = (0..args.engines)
        .map(|i| args.models[i * args.models.len() / args.engines].clone())
        .collect();
    let configs = models
        .iter()
        .map(|m| {
            let mut c = EngineConfig::new(m.clone()).with_profile(LatencyProfile::llama3_8b_h100());
            c.speedup = args.speedup;
            c
        })
        .collect();
    let cluster = SimCluster::start(configs, IpAddr::from([127, 0, 0, 1]), 0)
        .await
        .map_err(DemoError::Engines)?;
    let config = ServerConfig {
        listen: SocketAddr::new(args.host, args.port),
        admin: None,
        main_port_metrics: true,
        log_filter: "info".into(),
        log_json: false,
        otel: None,
        discovery: DiscoveryConfig {
            static_backends: cluster.urls(),
            static_models: models,
            probe: ProbeConfig {
                interval: std::time::Duration::from_secs(2),
                ..ProbeConfig::default()
            },
            ..DiscoveryConfig::default()
        },
        routing: RoutingConfig::default(),
        proxy: ProxyConfig::default(),
        gateway: Default::default(),
        max_connections: None,
        shutdown_grace: std::time::Duration::from_secs(30),
        scrape: ScrapeConfig::default(),
        kv: None,
        root_path: None,
        dynamic: None,
    };
    let server = Server::start(config).await.map_err(DemoError::Router)?;
    Ok(Demo { cluster, server })
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("the demo needs at least one engine and one model"),
            Self::Engines(e) => write!(f, "cannot start the simulated engines: {e}"),
            Self::Router(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DemoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Empty => None,
            Self::Engines(e) => Some(e),
            Self::Router(e) => Some(e),
        }
    }
}

/// What to paste into a terminal to try the demo.
pub fn banner(demo: &Demo, args: &DemoArgs) -> String {
    let addr = demo.server.local_addr();
    let model = &args.models[0];
    let engines: Vec<String> = demo
        .cluster
        .engines()
        .iter()
        .map(|e| format!("  {} {}", e.base_url(), e.config().model))
        .collect();
    format!(
        "llmstack demo: router on http://{addr} in front of {n} simulated engines (llama3-8b-h100 profile, speedup {speedup}):
{engines}

Try:
  curl -s http://{addr}/v1/models
  curl -s http://{addr}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 32}}'
  curl -sN http://{addr}/v1/completions -H 'Content-Type: application/json' \\
    -d '{{\"model\": \"{model}\", \"prompt\": \"Once upon a time\", \"max_tokens\": 32, \"stream\": true}}'
  curl -s http://{addr}/engines

  python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"http://{addr}/v1\", api_key=\"none\"); print(c.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}], max_tokens=32).choices[0].message.content)'

Ctrl-C stops the demo.",
        n = demo.cluster.engines().len(),
        speedup = args.speedup,
        engines = engines.join("\n"),
    )
}
