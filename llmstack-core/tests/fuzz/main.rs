//! Fuzz targets (property tests) for the parsers of `llmstack_core` that read untrusted
//! input: [`RouteRequest::from_json`](llmstack_core::RouteRequest::from_json) (request
//! bodies, in `request`), the `multipart/form-data` reader (in `multipart`) and
//! [`openai_route`](llmstack_core::openai_route) (request paths, in `routes`).
//!
//! Each target feeds structured inputs (JSON objects with the fields the parser looks
//! for, well-formed forms) and raw or mutated bytes, and checks that nothing panics and
//! that what the parser returns agrees with what was generated. The generators the
//! targets share are in `generate`.
//!
//! `LLMSTACK_FUZZ_CASES` sets the number of cases per target (default 2000, the CI
//! short mode); `scripts/fuzz` runs the long mode in release.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

mod generate;
mod multipart;
mod request;
mod routes;

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
