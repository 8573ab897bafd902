//! The HTTP surface of one simulated engine: vLLM's routes, bodies and errors.
//!
//! `handle` checks the API key on guarded paths ([`auth`], with `--api-key`), reads the
//! body (JSON routes check the content type first, as vLLM does) and dispatches; each route family lives in its own module. Every inference route counts in
//! flight while it runs (`/load`) and honours the request faults the same way: text
//! generation goes through [`generate`] and the scheduler, other routes answer at once
//! after [`EngineApp::admit_immediate`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use tokio::sync::mpsc;

use crate::config::FaultConfig;
use crate::engine::{Command, EngineShared};

mod admin;
mod audio;
mod auth;
mod base64;
pub(crate) mod body;
pub(crate) mod error;
mod generate;
mod images;
mod messages;
mod multipart;
mod output;
mod pooling;
mod reply;
mod request;
mod responses;
mod tokens;

use audio::AudioTask;
use auth::ApiKeys;
use body::{LoadGuard, SimBody};
use error::ApiError;
use reply::{json_response, method_not_allowed, not_found_route};

/// Largest request body accepted (vLLM has no limit; a simulator must not be OOM-able).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// vLLM version the simulator impersonates.
pub(crate) const VLLM_VERSION: &str = "0.33.0";

/// Every path served, for telling a wrong method (405) from an unknown path (404).
const ROUTES: &[&str] = &[
    "/health",
    "/ping",
    "/version",
    "/load",
    "/metrics",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/embeddings",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/audio/speech",
    "/v1/images/generations",
    "/tokenize",
    "/detokenize",
    "/reset_prefix_cache",
    "/sleep",
    "/wake_up",
    "/is_sleeping",
    "/kv_event_sources",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/sim/faults",
    "/sim/state",
    "/sim/down",
];

/// How a POST route's body is read before dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// Not read.
    None,
    /// `application/json` required (400 otherwise), then read.
    Json,
    /// Read as is (`multipart/form-data` routes check their own content type).
    Raw,
}

fn body_kind(method: &Method, path: &str) -> BodyKind {
    if method != Method::POST {
        return BodyKind::None;
    }
    match path {
        "/v1/completions"
        | "/v1/chat/completions"
        | "/v1/responses"
        | "/v1/messages"
        | "/v1/messages/count_tokens"
        | "/v1/embeddings"
        | "/score"
        | "/v1/score"
        | "/rerank"
        | "/v1/rerank"
        | "/v2/rerank"
        | "/v1/audio/speech"
        | "/v1/images/generations"
        | "/tokenize"
        | "/detokenize"
        | "/v1/load_lora_adapter"
        | "/v1/unload_lora_adapter"
        | "/sim/faults" => BodyKind::Json,
        "/v1/audio/transcriptions" | "/v1/audio/translations" => BodyKind::Raw,
        _ => BodyKind::None,
    }
}

/// What the listener asks of the engine's server (stop/start listening).
#[derive(Debug)]
pub(crate) enum ListenerCmd {
    /// Close the port for this long, then listen again.
    Down(Duration),
}

/// Routes and handlers of one engine.
#[derive(Debug)]
pub(crate) struct EngineApp {
    pub(crate) shared: Arc<EngineShared>,
    pub(crate) tx: mpsc::UnboundedSender<Command>,
    pub(crate) listener: mpsc::UnboundedSender<ListenerCmd>,
    fingerprint: Arc<str>,
    api_keys: ApiKeys,
}

type Res = Response<SimBody>;

impl EngineApp {
    pub(crate) fn new(
        shared: Arc<EngineShared>,
        tx: mpsc::UnboundedSender<Command>,
        listener: mpsc::UnboundedSender<ListenerCmd>,
    ) -> Self {
        let h = shared
            .config
            .primary_name()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        let fingerprint = format!("vllm-{VLLM_VERSION}-{:08x}", h as u32).into();
        let api_keys = ApiKeys::new(&shared.config.api_keys);
        Self {
            shared,
            tx,
            listener,
            fingerprint,
            api_keys,
        }
    }

    /// Answers one request; never panics on any input. With
    /// `--enable-request-id-headers` every answer carries `x-request-id` (the request's,
    /// else a new 32-hex id), as vLLM's middleware adds it.
    pub(crate) async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Res
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = req.into_parts();
        let echo_id = self.shared.config.enable_request_id_headers.then(|| {
            parts.headers.get("x-request-id").cloned().or_else(|| {
                let id = format!("{}{}", random_hex(), random_hex());
                header::HeaderValue::from_str(&id).ok()
            })
        });
        let mut res = self.route(parts, body).await;
        if let Some(Some(id)) = echo_id {
            res.headers_mut().insert("x-request-id", id);
        }
        res
    }

    async fn route<B>(&self, parts: http::request::Parts, body: B) -> Res
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = parts.uri.path();
        let h = &parts.headers;
        // vLLM's authentication middleware runs before routing: unknown paths and wrong
        // methods under a guarded prefix are 401 too, and no body is read.
        if !self.api_keys.admits(&parts.method, path, h) {
            return auth::unauthorized();
        }
        let query = parts.uri.query().unwrap_or("");
        let get = parts.method == Method::GET;
        let post = parts.method == Method::POST;
        let body = match body_kind(&parts.method, path) {
            BodyKind::None => Bytes::new(),
            BodyKind::Json => match read_json(h, body).await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            },
            BodyKind::Raw => match read_body(body).await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            },
        };
        let result = match path {
            "/health" if get => Ok(self.health()),
            "/ping" if get || post => Ok(self.health()),
            "/version" if get => Ok(ok_json(&json!({"version": VLLM_VERSION}))),
            "/load" if get => Ok(self.load()),
            "/metrics" if get => Ok(self.metrics()),
            "/v1/models" if get => Ok(self.models()),
            "/v1/completions" if post => self.completions(h, &body).await,
            "/v1/chat/completions" if post => self.chat(h, &body).await,
            "/v1/responses" if post => self.responses(h, &body).await,
            "/v1/messages" if post => self.messages(h, &body).await,
            "/v1/messages/count_tokens" if post => self.count_message_tokens(&body),
            "/v1/embeddings" if post => self.embeddings(&body).await,
            "/score" | "/v1/score" if post => self.score(h, &body).await,
            "/rerank" | "/v1/rerank" | "/v2/rerank" if post => self.rerank(h, &body).await,
            "/v1/audio/transcriptions" if post => {
                self.speech_to_text(AudioTask::Transcribe, h, &body).await
            }
            "/v1/audio/translations" if post => {
                self.speech_to_text(AudioTask::Translate, h, &body).await
            }
            "/v1/audio/speech" if post => self.speech(&body).await,
            "/v1/images/generations" if post => self.images(&body).await,
            "/tokenize" if post => self.tokenize(&body),
            "/detokenize" if post => self.detokenize(&body),
            "/reset_prefix_cache" if post => self.reset_prefix_cache(query).await,
            "/sleep" if post => self.sleep(query).await,
            "/wake_up" if post => self.wake_up(query).await,
            "/is_sleeping" if get => Ok(ok_json(
                &json!({"is_sleeping": self.shared.sleeping.load(Ordering::Acquire)}),
            )),
            "/kv_event_sources" if get => Ok(self.kv_event_sources()),
            "/v1/load_lora_adapter" if post => self.load_lora(&body),
            "/v1/unload_lora_adapter" if post => self.unload_lora(&body),
            p if let Some(stored) = p
                .strip_prefix("/v1/responses/")
                .and_then(|rest| self.stored(rest, get, post)) =>
            {
                stored
            }
            "/sim/faults" if get => Ok(ok_json(&self.shared.faults())),
            "/sim/faults" if post => self.set_faults(&body),
            "/sim/state" if get => self.state(query).await,
            "/sim/down" if post => self.down(query),
            p if ROUTES.contains(&p) => Ok(method_not_allowed()),
            _ => Ok(not_found_route()),
        };
        result.unwrap_or_else(ApiError::into_response)
    }

    /// The request faults every inference route applies once the request is checked: a
    /// hang (accepted, never answered; the client's disconnect drops the future), then
    /// an injected error. Returns the faults for the rest of the request.
    async fn request_faults(&self) -> Result<FaultConfig, ApiError> {
        let faults = self.shared.faults();
        if faults.hang_rate > 0.0 && self.shared.draw() < faults.hang_rate {
            std::future::pending::<()>().await;
        }
        if faults.error_rate > 0.0 && self.shared.draw() < faults.error_rate {
            let status = StatusCode::from_u16(faults.error_status.unwrap_or(503))
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Err(ApiError::status(status, "Injected fault (llmstack-sim)"));
        }
        Ok(faults)
    }

    /// Admits a checked request on a route answered without the scheduler: counts it in
    /// flight (keep the guard until the answer is complete), applies the request faults,
    /// then waits out the first-token delay (the request "reaches the engine" later).
    async fn admit_immediate(&self) -> Result<(FaultConfig, LoadGuard), ApiError> {
        let load = LoadGuard::new(self.shared.clone());
        let faults = self.request_faults().await?;
        if faults.first_token_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.first_token_delay_ms)).await;
        }
        Ok((faults, load))
    }
}

/// Checks the content type, then reads the whole body within [`MAX_BODY_BYTES`].
async fn read_json<B>(headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "Bad Request",
            message: "Unsupported Media Type: Only 'application/json' is allowed".into(),
            param: None,
        });
    }
    read_body(body).await
}

/// Reads the whole body within [`MAX_BODY_BYTES`].
async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body exceeds {MAX_BODY_BYTES} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(
            format!("Failed to read request body: {e}"),
            None,
        )),
    }
}

fn ok_json<T: serde::Serialize + ?Sized>(v: &T) -> Res {
    json_response(StatusCode::OK, serde_json::to_vec(v).unwrap_or_default())
}

fn text_response(s: String) -> Res {
    let mut r = Response::new(SimBody::full(Bytes::from(s)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 16 random hex digits, like vLLM 0.33's `random_uuid()`.
fn random_hex() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// A request's id: `X-Request-Id` when given, else the body's `request_id`, else
/// [`random_hex`] (vllm.md §1.5).
fn request_id(headers: &HeaderMap, body: Option<String>) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or(body)
        .unwrap_or_else(random_hex)
}

fn query_params(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
        .collect()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query_params(query, key).into_iter().next()
}

fn query_bool(query: &str, key: &str) -> Result<bool, ApiError> {
    match query_param(query, key).as_deref() {
        None | Some("false" | "False" | "0") => Ok(false),
        Some("true" | "True" | "1" | "") => Ok(true),
        Some(other) => Err(ApiError::validation(
            "bool_parsing",
            key,
            &format!("Input should be a valid boolean, unable to interpret input '{other}'"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(
            query_param("level=2&mode=wait", "mode").as_deref(),
            Some("wait")
        );
        assert_eq!(
            query_params("tags=weights&tags=kv_cache", "tags"),
            vec!["weights", "kv_cache"]
        );
        assert!(query_bool("blocks=true", "blocks").unwrap());
        assert!(query_bool("blocks=maybe", "blocks").is_err());
    }

    #[test]
    fn bodies_read_per_route() {
        assert_eq!(body_kind(&Method::POST, "/v1/rerank"), BodyKind::Json);
        assert_eq!(
            body_kind(&Method::POST, "/v1/audio/translations"),
            BodyKind::Raw
        );
        assert_eq!(body_kind(&Method::POST, "/sleep"), BodyKind::None);
        assert_eq!(body_kind(&Method::POST, "/health"), BodyKind::None);
        assert_eq!(body_kind(&Method::GET, "/v1/responses"), BodyKind::None);
        assert_eq!(body_kind(&Method::POST, "/nope"), BodyKind::None);
    }
}
