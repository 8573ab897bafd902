//! The request-path target: [`openai_route`] recognises only the forwarded routes.

use llmstack_core::{BodyKind, openai_route};
use proptest::prelude::*;

use crate::config;

proptest! {
    #![proptest_config(config())]

    /// Request paths: only the forwarded routes are recognised, each as itself.
    #[test]
    fn fuzz_openai_route(
        path in prop_oneof![
            ".{0,30}",
            "/v1/[a-z/]{0,24}",
            prop::sample::select(&[
                "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/audio/transcriptions",
                "/v1/audio/translations", "/score", "/v1/models", "/health", "",
            ][..]).prop_map(str::to_owned),
        ],
        suffix in prop_oneof![Just(String::new()), ".{0,3}"],
    ) {
        let path = format!("{path}{suffix}");
        if let Some((route, kind)) = openai_route(&path) {
            prop_assert_eq!(route, path.as_str());
            prop_assert_eq!(kind == BodyKind::Multipart, route.starts_with("/v1/audio/t"));
        }
    }
}
