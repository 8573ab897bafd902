//! The llmstack router: an OpenAI-compatible HTTP server that forwards each request to
//! one of many vLLM engines and streams the answer back.
//!
//! It only composes the library crates and adds what is the binary's: discovery
//! (`llmstack-discovery`) feeds an [`EndpointSet`](llmstack_core::EndpointSet)
//! snapshot and the scraper (`llmstack-metrics`) the engines' stats; each request goes
//! through the layers stacked in `stack.rs` with tower's `ServiceBuilder`: accounting
//! (`llmstack-metrics`), API keys and rate limits (`llmstack-gateway`), body read and
//! retry (`llmstack-proxy`), routing
//! (`llmstack-routing`'s `RouteLayer`) and forwarding (`llmstack-proxy`'s `Forward`).
//! The server owns the settings ([`Settings`]: each library's settings flattened), the
//! listeners and their route table (`service.rs`), the routes it answers itself
//! (`local.rs`), the KV-event path for `kvaware` (`kv.rs`: index, subscriber,
//! tokenizers), the Prometheus recorder (`telemetry.rs`), signals and drain
//! (`server.rs`), production-stack's dynamic configuration (`dynamic.rs`), OTLP export (feature `otel`) and the demo (feature `demo`). `main.rs`
//! only parses the command line and calls [`Server::start`] or `demo::start`.

mod cli;
mod compat;
mod config;
#[cfg(feature = "demo")]
#[cfg_attr(docsrs, doc(cfg(feature = "demo")))]
pub mod demo;
mod discover;
mod dynamic;
mod kv;
mod local;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
mod server;
mod service;
mod stack;
mod state;
mod telemetry;

pub use cli::{Action, Cli, Command, DemoArgs, parse};
pub use config::{
    DynamicConfig, KvConfig, OtelConfig, OtelProtocol, ServerArgs, ServerConfig, Settings,
    SettingsError, SettingsFile,
};
pub use llmstack_gateway::GatewayConfig;
pub use llmstack_proxy::ProxyConfig;
pub use server::{Server, StartError};
