//! The router config the integration-test binaries (`it`, `chaos`) start from, shared
//! by `#[path]` (each test binary is its own crate).

use std::time::Duration;

use llmstack_discovery::{DiscoveryConfig, ProbeConfig};
use llmstack_metrics::ScrapeConfig;
use llmstack_routing::RoutingConfig;
use llmstack_server::{ProxyConfig, ServerConfig};
use llmstack_sim::SimEngine;

/// The router config for these engines: fast probes, short deadlines.
pub fn config_for(engines: &[SimEngine]) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        main_port_metrics: true,
        log_filter: "info".into(),
        log_json: false,
        otel: None,
        discovery: DiscoveryConfig {
            static_backends: engines.iter().map(SimEngine::base_url).collect(),
            static_models: engines.iter().map(|e| e.config().model.clone()).collect(),
            probe: ProbeConfig {
                interval: Duration::from_millis(200),
                timeout: Duration::from_secs(1),
                ..ProbeConfig::default()
            },
            ..DiscoveryConfig::default()
        },
        routing: RoutingConfig::default(),
        proxy: ProxyConfig {
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            ..ProxyConfig::default()
        },
        gateway: Default::default(),
        shutdown_grace: Duration::from_secs(30),
        max_connections: None,
        scrape: ScrapeConfig {
            interval: Duration::from_millis(100),
            ..ScrapeConfig::default()
        },
        kv: None,
        root_path: None,
        dynamic: None,
    }
}
