//! The request path: route table, body limits, engine choice, forwarding with retries,
//! and the one place where errors become HTTP responses.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, request::Parts};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use llmstack_core::{
    Endpoint, EndpointId, Error, MultipartError, RouteRequest, TimeoutPhase, multipart_boundary,
    multipart_parts, multipart_text_field,
};
use llmstack_routing::Target;
use tokio::time::Instant;
use tracing::Instrument;

use crate::body::ProxyBody;
use crate::headers::{REQUEST_ID, request_id, strip_hop_by_hop};
use crate::local;
use crate::state::Shared;
use crate::telemetry::{self, Tally};
use crate::upstream::Link;

/// How a proxied route's body names its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Multipart,
}

/// Routes forwarded to an engine (all `POST`), and how each names its model.
const PROXIED: &[(&str, BodyKind)] = &[
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

/// The proxied route at `path` (its static name, for metric labels) and its body kind.
fn proxied(path: &str) -> Option<(&'static str, BodyKind)> {
    PROXIED.iter().find(|(p, _)| *p == path).copied()
}

/// Answers one request. Never fails: errors become OpenAI error responses here.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let start = Instant::now();
    let id = request_id(req.headers());
    // Debug level only: at the default level a request logs nothing. The request id is
    // on the span, so every event logged while handling the request carries it; prompts
    // and headers (keys) never appear.
    let span =
        tracing::debug_span!("request", id = ?id, method = %req.method(), path = %req.uri().path());
    #[cfg(feature = "otel")]
    crate::otel::adopt_parent(&span, req.headers());
    let result = dispatch(&shared, req, &id, start)
        .instrument(span.clone())
        .await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            shared.counters.errors.fetch_add(1, Ordering::Relaxed);
            error_response(&err)
        }
    };
    span.in_scope(|| {
        tracing::debug!(
            status = resp.status().as_u16(),
            head_ms = start.elapsed().as_secs_f64() * 1e3,
            "answered"
        );
    });
    resp.headers_mut().insert(REQUEST_ID.clone(), id);
    Ok(resp)
}

async fn dispatch(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    id: &HeaderValue,
    start: Instant,
) -> Result<Response<ProxyBody>, Error> {
    let path = req.uri().path();
    if let Some((route, kind)) = proxied(path) {
        let mut tally = Some(Tally::new(route, start));
        if req.method() != Method::POST {
            let err = Error::MethodNotAllowed;
            if let Some(t) = tally.as_mut() {
                t.error(&err);
            }
            return Err(err);
        }
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let result = forward(shared, req, kind, id, &mut tally).await;
        // On success the tally moved into the response body, which records the request
        // when it ends; errors are recorded here.
        if let (Err(err), Some(tally)) = (&result, &mut tally) {
            tally.error(err);
        }
        return result;
    }
    let local = local::route(path)
        .filter(|l| *l != local::Local::Metrics || shared.main_port_metrics)
        .ok_or_else(|| Error::NotFound {
            path: path.to_owned(),
        })?;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(Error::MethodNotAllowed);
    }
    Ok(local::answer_async(shared, local).await)
}

/// The admin listener: `/metrics`, `/health`, `/ready` only.
pub(crate) async fn handle_admin(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let path = req.uri().path();
    let resp = match local::route(path) {
        Some(route @ (local::Local::Metrics | local::Local::Health | local::Local::Ready))
            if req.method() == Method::GET || req.method() == Method::HEAD =>
        {
            local::answer_async(&shared, route).await
        }
        Some(_) | None => error_response(&Error::NotFound {
            path: path.to_owned(),
        }),
    };
    Ok(resp)
}

/// The single mapping from [`Error`] to an HTTP response.
pub(crate) fn error_response(err: &Error) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&err.body()).unwrap_or_default();
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn forward(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    kind: BodyKind,
    id: &HeaderValue,
    tally: &mut Option<Tally>,
) -> Result<Response<ProxyBody>, Error> {
    // During a graceful shutdown, requests already on a connection are still served:
    // no new connections are accepted and kept-alive ones close after their response.
    let (parts, body) = req.into_parts();
    let max = shared.proxy.max_body;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(Error::BodyTooLarge { limit: max });
    }
    let bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(Error::BodyTooLarge { limit: max }),
        Err(e) => {
            return Err(Error::bad_request(
                format!("Could not read the request body: {e}"),
                None,
            ));
        }
    };
    // One parse; a second one only when the model is an alias (the spliced body).
    let first = route_request(shared, &parts, kind, &bytes)?;
    let spliced = alias_body(shared, kind, &bytes, &first);
    let (bytes, mut route) = match &spliced {
        Some(body) => (body.clone(), route_request(shared, &parts, kind, body)?),
        None => (bytes.clone(), first),
    };
    let set = shared.endpoints();
    if let (Some(model), Some(tally)) = (route.model(), tally.as_mut())
        && set.has_seen(model)
    {
        tally.set_model(model);
    }
    if let Some(header) = &shared.session_header
        && let Some(key) = parts.headers.get(header).and_then(|v| v.to_str().ok())
    {
        route.set_session_key(Cow::Owned(key.to_owned()));
    }
    let (pinned, path_and_query) = split_query(&parts)?;
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(REQUEST_ID.clone(), id.clone());
    #[cfg(feature = "otel")]
    crate::otel::inject_current(&mut headers);
    let outgoing = Outgoing {
        path_and_query,
        headers,
        body: bytes.clone(),
    };
    let stats = shared.stats.snapshot();
    let mut exclude: Vec<EndpointId> = Vec::new();
    let mut last_error: Option<Error> = None;
    loop {
        let target = Target {
            pinned: pinned.as_deref(),
            exclude: &exclude,
        };
        let policy = shared.router.policy_name();
        let mut routed = match shared.router.route(&set, Some(&stats), &route, &target) {
            Ok(routed) => {
                let reason = if routed.pinned {
                    "pinned"
                } else if routed.cached_tokens > 0 {
                    "cached"
                } else {
                    "picked"
                };
                shared.meters.decision(policy, reason);
                routed
            }
            Err(e) => {
                shared.meters.decision(policy, e.label());
                return Err(last_error.unwrap_or(e));
            }
        };
        let endpoint = Arc::clone(&routed.endpoint);
        match send(shared, &endpoint, &outgoing).await {
            Ok((resp, link)) => {
                if resp.status().is_success() {
                    // The engine took the prompt: the prefix index learns it.
                    shared.router.accepted(&mut routed);
                }
                let guard = routed.guard;
                let (mut head, body) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                let sse = head
                    .headers
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let tally = tally
                    .take()
                    .map(|t| t.body(&shared.meters, &endpoint.id, head.status.as_u16(), sse));
                let body = ProxyBody::upstream(
                    body,
                    link,
                    Arc::clone(&shared.pools),
                    endpoint.id.clone(),
                    shared.proxy.idle_timeout,
                    guard,
                    Arc::clone(&shared.counters),
                    sse,
                    tally,
                );
                return Ok(Response::from_parts(head, body));
            }
            Err(e) if e.is_retryable() && exclude.len() < shared.proxy.retries as usize => {
                telemetry::upstream_error(endpoint.id.as_str(), &e, true);
                tracing::warn!(endpoint = %endpoint.id, error = %e, "engine failed before answering; trying another");
                shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                exclude.push(endpoint.id.clone());
                last_error = Some(e);
            }
            Err(e) => {
                telemetry::upstream_error(endpoint.id.as_str(), &e, false);
                tracing::warn!(endpoint = %endpoint.id, error = %e, "engine request failed");
                return Err(e);
            }
        }
    }
}

/// What goes to the engine, whichever engine it is.
struct Outgoing {
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Outgoing {
    /// The request for `endpoint`: origin-form target under the endpoint's path prefix,
    /// `Host` of the endpoint, the client's end-to-end headers, the original bytes.
    fn request(&self, endpoint: &Endpoint) -> Result<Request<Full<Bytes>>, Error> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        let target = endpoint.path_for(&self.path_and_query).map(Uri::from);
        *req.uri_mut() = target.map_err(|e| Error::Upstream {
            endpoint: endpoint.id.clone(),
            source: e.into(),
        })?;
        *req.headers_mut() = self.headers.clone();
        if let Some(host) = endpoint
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        Ok(req)
    }
}

/// Sends one attempt to `endpoint` and waits for the response head (within the first-byte
/// deadline), classifying failures. A request that a reused idle connection could not
/// even write (the engine had closed it) is sent once more on a new connection.
async fn send(
    shared: &Shared,
    endpoint: &Endpoint,
    outgoing: &Outgoing,
) -> Result<(Response<Incoming>, Link), Error> {
    let deadline = Instant::now() + shared.proxy.first_byte_timeout;
    let attempt = async {
        let mut fresh = false;
        loop {
            let mut link = if fresh {
                shared.pools.connect(endpoint).await?
            } else {
                shared.pools.link(endpoint).await?
            };
            match link.exchange(outgoing.request(endpoint)?).await {
                Ok(resp) => return Ok((resp, link)),
                Err((e, unsent)) => {
                    // Only a request hyper gives back unwritten goes to the same engine
                    // again; one that was written may have been received, so it takes
                    // the normal retry path, which never returns to this engine.
                    if link.reused && unsent.is_some() && !fresh {
                        fresh = true;
                        continue;
                    }
                    return Err(Error::Upstream {
                        endpoint: endpoint.id.clone(),
                        source: e.into(),
                    });
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(result) => {
            if let Err(Error::Timeout { .. }) = &result {
                shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            result
        }
        Err(_) => {
            shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            Err(Error::Timeout {
                endpoint: endpoint.id.clone(),
                phase: TimeoutPhase::FirstByte,
            })
        }
    }
}

/// The routing view of the body: JSON, or the fields of a multipart form.
fn route_request<'a>(
    shared: &Shared,
    parts: &Parts,
    kind: BodyKind,
    bytes: &'a Bytes,
) -> Result<RouteRequest<'a>, Error> {
    let route = match kind {
        BodyKind::Json => RouteRequest::from_json(bytes, shared.session_field.as_deref())?,
        BodyKind::Multipart => {
            let boundary = boundary(parts)?;
            let form = multipart_parts(bytes, &boundary).map_err(invalid_form)?;
            let field = |name| multipart_text_field(&form, name).map_err(invalid_form);
            let model = field("model")?.map(|m| Cow::Borrowed(m.trim()));
            let stream = field("stream")?.is_some_and(|s| s.trim().eq_ignore_ascii_case("true"));
            RouteRequest::from_form(model, stream)
        }
    };
    if route.model().is_none() {
        return Err(Error::bad_request(
            "The request has no `model` field.",
            Some("model"),
        ));
    }
    Ok(route)
}

fn invalid_form(why: MultipartError) -> Error {
    Error::bad_request(format!("Invalid multipart body: {why}."), None)
}

fn boundary(parts: &Parts) -> Result<Cow<'_, str>, Error> {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart_boundary)
        .ok_or_else(|| {
            Error::bad_request(
                "This route takes multipart/form-data with a boundary.",
                None,
            )
        })
}

/// The body with an aliased model name replaced by the real one (only the model value
/// changes: the JSON value, or the text of the multipart `model` field); `None` when the
/// model is not an alias.
fn alias_body(
    shared: &Shared,
    kind: BodyKind,
    bytes: &Bytes,
    route: &RouteRequest<'_>,
) -> Option<Bytes> {
    let model = route.model()?;
    let real = shared.aliases.get(model)?;
    match kind {
        BodyKind::Json => route.body_with_model(bytes, real).map(Bytes::from),
        BodyKind::Multipart => {
            // The form's model is a slice of the body: splice at its position.
            let start = (model.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
            let end = start + model.len();
            let tail = bytes.get(end..)?;
            let mut out = Vec::with_capacity(bytes.len() + real.len());
            out.extend_from_slice(&bytes[..start]);
            out.extend_from_slice(real.as_bytes());
            out.extend_from_slice(tail);
            Some(Bytes::from(out))
        }
    }
}

/// `?id=<engine>` pinning (percent-decoded), and the path and query sent upstream
/// (without `id`). An empty or repeated `id` is a 400.
fn split_query(parts: &Parts) -> Result<(Option<String>, String), Error> {
    let path = parts.uri.path();
    let Some(query) = parts.uri.query() else {
        return Ok((None, path.to_owned()));
    };
    let bad = |why: &str| Error::bad_request(format!("Query parameter `id` {why}."), Some("id"));
    let mut pinned = None;
    let mut rest = Vec::new();
    for kv in query.split('&') {
        match kv.strip_prefix("id=") {
            Some(raw) => {
                let id =
                    percent_decode(raw).ok_or_else(|| bad("is not valid percent-encoded UTF-8"))?;
                if id.is_empty() {
                    return Err(bad("is empty"));
                }
                if pinned.replace(id).is_some() {
                    return Err(bad("is given more than once"));
                }
            }
            None if kv.is_empty() => {}
            None => rest.push(kv),
        }
    }
    Ok(if rest.is_empty() {
        (pinned, path.to_owned())
    } else {
        (pinned, format!("{path}?{}", rest.join("&")))
    })
}

/// Decodes `%XX` escapes and `+` (form encoding); `None` when an escape is malformed or
/// the result is not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}
