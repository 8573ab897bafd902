//! Fuzz targets (property tests) for what `llmstack_metrics` reads from engines: the
//! Prometheus text of `/metrics` ([`parse`](llmstack_metrics::parse),
//! [`engine_stats`](llmstack_metrics::engine_stats); in `exposition`, checked by
//! `oracle`) and the response bodies the accounting layer scans for token usage and
//! content events ([`AccountLayer`](llmstack_metrics::AccountLayer); in `usage`), and
//! with the `kv-events` feature vLLM's KV-event batches
//! ([`decode`](llmstack_metrics::kv_events::decode); in `kv_events`).
//!
//! Each target feeds structured inputs (exposition lines with vLLM's names, labels and
//! every float spelling; SSE streams with content, usage and error events, cut into
//! chunks anywhere) and arbitrary text or bytes, and checks that nothing panics and that
//! what is read agrees with what was generated. Bugs the targets found are kept as
//! regression tests in `regressions`.
//!
//! `LLMSTACK_FUZZ_CASES` sets the number of cases per target (default 2000, the CI
//! short mode); `scripts/fuzz` runs the long mode in release.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

mod exposition;
#[cfg(feature = "kv-events")]
mod kv_events;
mod oracle;
mod regressions;
mod usage;

/// Cases per target: `LLMSTACK_FUZZ_CASES`, else 2000.
fn cases() -> u32 {
    std::env::var("LLMSTACK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000)
}

pub(crate) fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Equal floats, NaN equal to NaN (and `-0.0` distinct from `0.0`).
pub(crate) fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}
