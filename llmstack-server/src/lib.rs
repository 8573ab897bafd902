//! The llmstack router: an OpenAI-compatible HTTP server that forwards each request to
//! one of many vLLM engines and streams the answer back.
//!
//! It composes the library crates: discovery (`llmstack-discovery`) feeds an
//! [`EndpointSet`](llmstack_core::EndpointSet) snapshot; each request's routing facts
//! ([`RouteRequest`](llmstack_core::RouteRequest)) are read from the raw body, a
//! policy (`llmstack-routing`) picks the engine, and a pooled hyper connection forwards the
//! original bytes, passing the response through frame by frame. `main.rs` only parses
//! the command line and calls [`Server::start`] or `demo::start` (feature `demo`).

mod cli;
mod compat;
mod config;
#[cfg(feature = "demo")]
#[cfg_attr(docsrs, doc(cfg(feature = "demo")))]
pub mod demo;
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
pub use config::{OtelConfig, ServerArgs, ServerConfig, Settings, SettingsError};
pub use llmstack_proxy::ProxyConfig;
pub use server::{Server, StartError};
