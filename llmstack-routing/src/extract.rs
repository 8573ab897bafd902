//! Reading one request's routing facts from its head and body, once: the model (JSON
//! or multipart form), the session key, `?id=` pinning, model aliases.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, header};
use llmstack_core::{
    BodyKind, Error, MultipartError, RouteRequest, multipart_boundary, multipart_parts,
    multipart_text_field, openai_route,
};

/// How [`RouteLayer`](crate::RouteLayer) reads requests.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extract {
    /// Header carrying the session key (it beats the body field).
    pub(crate) session_header: Option<HeaderName>,
    /// Top-level body field carrying the session key.
    pub(crate) session_field: Option<String>,
    /// alias → model.
    pub(crate) aliases: BTreeMap<String, String>,
}

// === impl Extract ===

impl Extract {
    /// Takes the session key from the header named `key` (when it is a valid header
    /// name), else the top-level body field of that name; `None`: no session key.
    pub(crate) fn set_session_key(&mut self, key: Option<&str>) {
        self.session_header =
            key.and_then(|k| HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok());
        self.session_field = key.map(str::to_owned);
    }

    /// The routing view of `body` (JSON, or the fields of a multipart form for the
    /// audio upload routes), with the session key from its header. Fails with a 400 when
    /// the body cannot be read or names no model.
    pub(crate) fn route_request<'a>(
        &self,
        parts: &Parts,
        kind: BodyKind,
        body: &'a Bytes,
    ) -> Result<RouteRequest<'a>, Error> {
        let mut route = match kind {
            // (Addressed requests are routed without reading their body.)
            BodyKind::Json | BodyKind::Addressed => {
                RouteRequest::from_json(body, self.session_field.as_deref())?
            }
            BodyKind::Multipart => {
                let boundary = boundary(parts)?;
                let form = multipart_parts(body, &boundary).map_err(invalid_form)?;
                let field = |name| multipart_text_field(&form, name).map_err(invalid_form);
                let model = field("model")?.map(|m| Cow::Borrowed(m.trim()));
                let stream =
                    field("stream")?.is_some_and(|s| s.trim().eq_ignore_ascii_case("true"));
                RouteRequest::from_form(model, stream)
            }
        };
        if route.model().is_none() {
            return Err(Error::bad_request(
                "The request has no `model` field.",
                Some("model"),
            ));
        }
        if let Some(key) = self
            .session_header
            .as_ref()
            .and_then(|h| parts.headers.get(h))
            .and_then(|v| v.to_str().ok())
        {
            route.set_session_key(Cow::Owned(key.to_owned()));
        }
        Ok(route)
    }

    /// The body with an aliased model name replaced by the real one (only the model
    /// value changes: the JSON value, or the text of the multipart `model` field);
    /// `None` when the model is not an alias.
    pub(crate) fn alias_body(
        &self,
        kind: BodyKind,
        bytes: &Bytes,
        route: &RouteRequest<'_>,
    ) -> Option<Bytes> {
        let model = route.model()?;
        let real = self.aliases.get(model)?;
        match kind {
            BodyKind::Json => route.body_with_model(bytes, real).map(Bytes::from),
            BodyKind::Addressed => None,
            BodyKind::Multipart => {
                // The form's model is a slice of the body: splice at its position.
                let start = (model.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
                let end = start + model.len();
                let tail = bytes.get(end..)?;
                let mut out = Vec::with_capacity(bytes.len() + real.len());
                out.extend_from_slice(bytes.get(..start)?);
                out.extend_from_slice(real.as_bytes());
                out.extend_from_slice(tail);
                Some(Bytes::from(out))
            }
        }
    }
}

/// How the request at this path names its model: the OpenAI route table's kind, JSON
/// for any other path (an embedder's own routes).
pub(crate) fn body_kind(parts: &Parts) -> BodyKind {
    openai_route(parts.uri.path()).map_or(BodyKind::Json, |(_, kind)| kind)
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

/// `?id=<engine>` pinning (percent-decoded), and the path and query to send upstream
/// (without `id`; `None` when the query had no `id` and stays as it is). An empty or
/// repeated `id` is a 400.
pub(crate) fn split_pin(parts: &Parts) -> Result<(Option<String>, Option<String>), Error> {
    let path = parts.uri.path();
    let Some(query) = parts.uri.query() else {
        return Ok((None, None));
    };
    if !query.split('&').any(|kv| kv.starts_with("id=")) {
        return Ok((None, None));
    }
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
    let upstream = if rest.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    Ok((pinned, Some(upstream)))
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
