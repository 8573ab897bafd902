//! Reads vLLM engines' load and cache state from their Prometheus `/metrics`.
//!
//! [`parse`] reads the text exposition (tolerantly: a bad line is skipped, never a
//! panic); [`engine_stats`] picks the series a router needs, with vLLM's current names
//! and the old ones it renamed (see [`vllm`]); [`spawn_scraper`] scrapes every engine
//! of an [`EndpointSet`](llmstack_core::EndpointSet) concurrently on an interval and
//! publishes each new [`StatsSnapshot`](llmstack_core::StatsSnapshot) through a `watch`
//! channel, read with a [`StatsReader`](llmstack_core::StatsReader).
//!
//! [`AccountLayer`] is the request path's accounting: a tower layer that counts every
//! request once (status, duration, time to first token, inter-token latency, tokens,
//! routing decisions) from what passes through it.
//!
//! With the `kv-events` feature, [`kv_events`] subscribes to the engines' KV-cache
//! events ([`KvSubscriber`]) and feeds them to a router's KV index.
//!
//! [`names`] holds the router's own metric names (all `llmstack_…`, never a vLLM name)
//! and [`names::describe`], their help texts. Libraries only call the `metrics` macros;
//! the server installs the Prometheus recorder.

mod accounting;
mod args;
#[cfg(feature = "kv-events")]
#[cfg_attr(docsrs, doc(cfg(feature = "kv-events")))]
pub mod kv_events;
pub mod names;
mod parse;
mod scraper;
mod stats;
pub mod vllm;

pub use accounting::{Account, AccountBody, AccountFuture, AccountLayer, count_decision};
#[cfg(feature = "kv-events")]
#[cfg_attr(docsrs, doc(cfg(feature = "kv-events")))]
pub use args::KvEventsArgs;
pub use args::ScrapeArgs;
#[cfg(feature = "kv-events")]
#[cfg_attr(docsrs, doc(cfg(feature = "kv-events")))]
pub use kv_events::{KvEventsConfig, KvSourceState, KvSourceStatus, KvSubscriber};
pub use parse::{Sample, parse};
pub use scraper::{ScrapeConfig, spawn_scraper};
pub use stats::engine_stats;
