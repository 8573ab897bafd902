//! Integration tests: simulated engines over real HTTP on loopback.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod api;
mod cli;
mod faults;
mod kv_events;
mod lifecycle;
mod metrics;
mod streaming;
mod support;
mod timing;
