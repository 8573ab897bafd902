//! End-to-end tests: `llmstack-sim` engines on 127.0.0.1:0 behind a real router, all
//! over real HTTP.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod admission;
mod binary;
mod discovery;
mod dynamic_config;
mod engine_routes;
mod failures;
mod gateway;
#[cfg(feature = "kube")]
mod k8s;
mod kv;
mod local;
mod metrics;
#[cfg(feature = "otel")]
mod otel;
mod outliers;
mod peers;
mod proxy;
mod routing;
mod support;
