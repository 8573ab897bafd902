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
                "/v1/audio/translations", "/score", "/v1/models", "/health", "", "/v1/responses/",
                "/v1/responses/resp_1", "/v1/responses/resp_1/cancel", "/sleep",
            ][..]).prop_map(str::to_owned),
        ],
        suffix in prop_oneof![Just(String::new()), ".{0,3}"],
    ) {
        let path = format!("{path}{suffix}");
        if let Some((route, kind)) = openai_route(&path) {
            if route.starts_with("/v1/responses/{id}") {
                // A response's routes are named by their pattern.
                let id = llmstack_core::response_id(&path);
                prop_assert!(id.is_some_and(|id| !id.is_empty() && !id.contains('/')));
                prop_assert_eq!(route.ends_with("/cancel"), path.ends_with("/cancel"));
            } else {
                prop_assert_eq!(route, path.as_str());
            }
            let multipart = route.starts_with("/v1/audio/t") || route == "/v1/images/edits";
            prop_assert_eq!(kind == BodyKind::Multipart, multipart);
        }
    }
}
