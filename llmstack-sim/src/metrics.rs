//! The engine's `/metrics`: vLLM 0.33's series with their exact names, types, labels,
//! histogram buckets and number formatting (prometheus_client's Go-style floats), or the
//! old V0 names with `--metrics-compat v0`.
//!
//! The engine's step loop fills [`EngineMetrics`] (`recording`, over the `histogram`
//! type); [`render`] turns it into the text exposition (`render`, through the writer in
//! `exposition` and the number formatting in `format`).

mod exposition;
mod format;
mod histogram;
mod recording;
mod render;

pub use exposition::MetricsCompat;
pub use format::format_float;

pub(crate) use exposition::ExpositionInfo;
pub(crate) use recording::{EngineMetrics, SleepState};
pub(crate) use render::render;
