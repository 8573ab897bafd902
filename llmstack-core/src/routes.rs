//! The OpenAI (vLLM) routes a router forwards to engines, and how each names its model.

/// How a route's request body names its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A JSON object with a `model` field.
    Json,
    /// A `multipart/form-data` form with a `model` field (audio uploads).
    Multipart,
}

/// The forwarded route at `path` (its static name, usable as a metric label) and its
/// body kind; `None` for any other path. These are every route forwarded to an engine
/// (all `POST`). Cost: one string match (compiled to a switch
/// on length, then a compare).
pub fn openai_route(path: &str) -> Option<(&'static str, BodyKind)> {
    let json = match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/embeddings" => "/v1/embeddings",
        "/v1/responses" => "/v1/responses",
        "/v1/messages" => "/v1/messages",
        "/v1/rerank" => "/v1/rerank",
        "/rerank" => "/rerank",
        "/v1/score" => "/v1/score",
        "/score" => "/score",
        "/tokenize" => "/tokenize",
        "/detokenize" => "/detokenize",
        "/v1/audio/speech" => "/v1/audio/speech",
        "/v1/images/generations" => "/v1/images/generations",
        "/v1/audio/transcriptions" => {
            return Some(("/v1/audio/transcriptions", BodyKind::Multipart));
        }
        "/v1/audio/translations" => return Some(("/v1/audio/translations", BodyKind::Multipart)),
        _ => return None,
    };
    Some((json, BodyKind::Json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_routes_and_their_body_kinds() {
        assert_eq!(
            openai_route("/v1/chat/completions"),
            Some(("/v1/chat/completions", BodyKind::Json))
        );
        assert_eq!(openai_route("/score"), Some(("/score", BodyKind::Json)));
        assert_eq!(
            openai_route("/v1/audio/translations"),
            Some(("/v1/audio/translations", BodyKind::Multipart))
        );
        assert_eq!(openai_route("/v1/models"), None);
        assert_eq!(openai_route("/v1/chat/completions/"), None);
    }
}
