//! The OpenAI (vLLM) routes a router forwards to engines, and how each names its model.

/// How a route's request body names its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A JSON object with a `model` field.
    Json,
    /// A `multipart/form-data` form with a `model` field (audio uploads).
    Multipart,
}

/// Every route forwarded to an engine (all `POST`), and how each names its model.
pub const OPENAI_ROUTES: &[(&str, BodyKind)] = &[
    ("/v1/chat/completions", BodyKind::Json),
    ("/v1/completions", BodyKind::Json),
    ("/v1/embeddings", BodyKind::Json),
    ("/v1/responses", BodyKind::Json),
    ("/v1/messages", BodyKind::Json),
    ("/v1/rerank", BodyKind::Json),
    ("/rerank", BodyKind::Json),
    ("/v1/score", BodyKind::Json),
    ("/score", BodyKind::Json),
    ("/tokenize", BodyKind::Json),
    ("/detokenize", BodyKind::Json),
    ("/v1/audio/speech", BodyKind::Json),
    ("/v1/images/generations", BodyKind::Json),
    ("/v1/audio/transcriptions", BodyKind::Multipart),
    ("/v1/audio/translations", BodyKind::Multipart),
];

/// The forwarded route at `path` (its static name, usable as a metric label) and its
/// body kind; `None` for any other path. Cost: a scan of 15 short strings.
pub fn openai_route(path: &str) -> Option<(&'static str, BodyKind)> {
    OPENAI_ROUTES.iter().find(|(p, _)| *p == path).copied()
}
