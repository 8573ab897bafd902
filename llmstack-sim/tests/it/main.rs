//! Integration tests: simulated engines over real HTTP on loopback.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod api;
mod audio;
mod auth;
mod cli;
mod faults;
mod hf_tokenizer;
mod kv_events;
mod lifecycle;
mod metrics;
mod route_faults;
mod routes;
mod streaming;
mod support;
mod timing;
