//! A faithful vLLM engine simulator: everything a router or an OpenAI client can observe
//! of `vllm serve` 0.33, with timing calibrated to an H100 and no GPU.
//!
//! Every llmstack test, benchmark and demo talks to engines; on our machines those are
//! `llmstack-sim` engines over real HTTP. Each engine runs vLLM's V1 scheduler (continuous
//! batching, chunked prefill, a block prefix cache with LRU eviction, preemption), sleeps
//! each step for the time a calibrated latency profile gives, serves the OpenAI routes
//! with vLLM's exact JSON and SSE bytes (plus the Responses, Anthropic Messages, score,
//! rerank, audio and images routes in their public shapes), exports vLLM's `/metrics`,
//! publishes KV-cache events over ZMQ, and takes fault-injection commands. Many engines
//! run in one process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use llmstack_sim::{EngineConfig, LatencyProfile, SimCluster};
//!
//! let engines = SimCluster::local(2, EngineConfig::new("llama").with_profile(LatencyProfile::instant())).await?;
//! for url in engines.urls() {
//!     println!("engine at {url}/v1/chat/completions");
//! }
//! # Ok(()) }
//! ```

mod api;
mod block_pool;
pub mod cli;
mod config;
mod engine;
mod finish;
mod hash;
mod kv_events;
mod metrics;
mod profile;
mod scheduler;
mod server;
pub mod tokenizer;

pub use config::{ApiKey, ContextOverflow, EngineConfig, FaultConfig, LoraModule};
pub use engine::{EngineState, SleepMode};
pub use finish::FinishReason;
pub use hash::{BlockHash, BlockHasher, ExtraKey, HashAlgo, published};
pub use kv_events::{KvEvent, KvEventsConfig, KvEventsLayout, encode_batch};
pub use metrics::{MetricsCompat, format_float};
pub use profile::LatencyProfile;
pub use scheduler::SeqState;
pub use server::{SimCluster, SimEngine, StartError};
pub use tokenizer::Tokenizer;
