//! The OpenAI (vLLM) routes a router forwards to engines, and how each names its model.

/// How a route's request body names its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A JSON object with a `model` field.
    Json,
    /// A `multipart/form-data` form with a `model` field (audio uploads).
    Multipart,
    /// No model: the request addresses one engine, by `?id=` (engine control:
    /// `/sleep`, `/wake_up`, `/is_sleeping`), by the response it names
    /// (`/v1/responses/{id}`), or any engine serving the route (`/v1/audio/voices`).
    /// Its body, if any, is forwarded unread.
    Addressed,
}

/// The forwarded route at `path` (its static name, usable as a metric label) and its
/// body kind; `None` for any other path. These are every route forwarded to an engine;
/// [`route_method`] says which method each takes. Paths with a response id are named
/// `/v1/responses/{id}` and `/v1/responses/{id}/cancel`. Cost: one string match
/// (compiled to a switch on length, then a compare).
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
        "/v1/images/edits" => return Some(("/v1/images/edits", BodyKind::Multipart)),
        "/v1/messages/count_tokens" => "/v1/messages/count_tokens",
        "/v2/rerank" => "/v2/rerank",
        "/pooling" => "/pooling",
        "/classify" => "/classify",
        "/sleep" => return Some(("/sleep", BodyKind::Addressed)),
        "/wake_up" => return Some(("/wake_up", BodyKind::Addressed)),
        "/is_sleeping" => return Some(("/is_sleeping", BodyKind::Addressed)),
        "/v1/audio/voices" => return Some(("/v1/audio/voices", BodyKind::Addressed)),
        _ => return response_route(path).map(|r| (r, BodyKind::Addressed)),
    };
    Some((json, BodyKind::Json))
}

/// The method the forwarded route named `route` (a name [`openai_route`] returned)
/// takes: `GET` for `/is_sleeping`, `/v1/audio/voices` and `/v1/responses/{id}`,
/// `POST` for every other.
pub fn route_method(route: &str) -> http::Method {
    match route {
        "/is_sleeping" | "/v1/audio/voices" | RESPONSE => http::Method::GET,
        _ => http::Method::POST,
    }
}

/// Whether `route` (a name [`openai_route`] returned) controls an engine (`/sleep`,
/// `/wake_up`, `/is_sleeping`): it must name the engine with `?id=`.
pub fn is_engine_control(route: &str) -> bool {
    matches!(route, "/sleep" | "/wake_up" | "/is_sleeping")
}

/// The route name of `GET /v1/responses/{id}`.
const RESPONSE: &str = "/v1/responses/{id}";
/// The route name of `POST /v1/responses/{id}/cancel`.
const RESPONSE_CANCEL: &str = "/v1/responses/{id}/cancel";

/// `/v1/responses/{id}` or `/v1/responses/{id}/cancel` (an id is one non-empty segment).
fn response_route(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/v1/responses/")?;
    let (id, cancel) = match rest.split_once('/') {
        None => (rest, false),
        Some((id, "cancel")) => (id, true),
        Some(_) => return None,
    };
    if id.is_empty() {
        return None;
    }
    Some(if cancel { RESPONSE_CANCEL } else { RESPONSE })
}

/// The response id in the path of `/v1/responses/{id}` or its cancel route.
pub fn response_id(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/responses/")?;
    let id = rest.strip_suffix("/cancel").unwrap_or(rest);
    (!id.is_empty() && !id.contains('/')).then_some(id)
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
        assert_eq!(
            openai_route("/v1/responses/resp_1"),
            Some(("/v1/responses/{id}", BodyKind::Addressed))
        );
        assert_eq!(
            openai_route("/v1/responses/resp_1/cancel"),
            Some(("/v1/responses/{id}/cancel", BodyKind::Addressed))
        );
        assert_eq!(openai_route("/v1/responses/"), None);
        assert_eq!(openai_route("/v1/responses//cancel"), None);
        assert_eq!(openai_route("/v1/responses/a/b"), None);
        assert_eq!(response_id("/v1/responses/resp_1/cancel"), Some("resp_1"));
        assert_eq!(response_id("/v1/responses/resp_1"), Some("resp_1"));
        assert_eq!(
            openai_route("/sleep"),
            Some(("/sleep", BodyKind::Addressed))
        );
        assert_eq!(route_method("/is_sleeping"), http::Method::GET);
        assert_eq!(route_method("/v1/responses/{id}"), http::Method::GET);
        assert_eq!(
            route_method("/v1/responses/{id}/cancel"),
            http::Method::POST
        );
        assert_eq!(route_method("/pooling"), http::Method::POST);
        assert!(is_engine_control("/wake_up"));
        assert!(!is_engine_control("/v1/audio/voices"));
    }
}
