//! Helpers shared by the integration tests: the HTTP/SSE client comes from
//! `llmstack-test-support`; the engine builders are the simulator's own.

pub use llmstack_test_support::*;

use llmstack_sim::{EngineConfig, LatencyProfile, SimEngine};

/// An instant-profile engine config (no model time).
pub fn instant(model: &str) -> EngineConfig {
    EngineConfig::new(model).with_profile(LatencyProfile::instant())
}

pub async fn engine(config: EngineConfig) -> SimEngine {
    SimEngine::start(config, "127.0.0.1:0".parse().unwrap(), 0)
        .await
        .unwrap()
}
