//! A load generator for OpenAI-compatible endpoints (a router, vLLM, the simulator,
//! nginx…): seeded workloads, streamed chat requests, and TTFT / inter-token / end-to-end
//! percentiles from HDR histograms.
//!
//! [`Workload`] builds the requests (synthetic, shared-prefix groups, production-stack's
//! multi-round QA with growing per-user histories), [`run`] sends them (a closed loop at a
//! concurrency, or one task per user at a per-user pace) and [`Report`] summarises what
//! came back.

mod chart;
mod client;
mod engines;
mod report;
mod run;
mod workload;

pub use chart::{ChartError, ttft_chart};
pub use client::{Client, GetError, Outcome};
pub use engines::{EngineCounters, EngineDelta, engine_counters};
pub use report::{Percentiles, Recorder, Report};
pub use run::{Arrivals, RunConfig, arrival_times, run};
pub use workload::{Conversation, Prompt, TraceEntry, TraceError, Workload, read_trace};
