//! Complete HTTP responses with a [`SimBody`].
//!
//! JSON with vLLM's content type, an [`ApiError`] in OpenAI's or Anthropic's error
//! shape, and FastAPI's answers for unknown paths and methods.

use bytes::Bytes;
use http::{Response, StatusCode, header};

use crate::api::body::SimBody;
use crate::api::error::ApiError;

/// A JSON response with vLLM's content type.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<SimBody> {
    let mut r = Response::new(SimBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// FastAPI's answers for unknown paths and methods.
pub(crate) fn not_found_route() -> Response<SimBody> {
    json_response(StatusCode::NOT_FOUND, br#"{"detail":"Not Found"}"#.to_vec())
}

/// FastAPI's 405.
pub(crate) fn method_not_allowed() -> Response<SimBody> {
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        br#"{"detail":"Method Not Allowed"}"#.to_vec(),
    )
}

// === impl ApiError ===

impl ApiError {
    /// The HTTP response.
    pub(crate) fn into_response(self) -> Response<SimBody> {
        json_response(self.status, self.body())
    }

    /// The HTTP response in Anthropic's shape, as vLLM's `/v1/messages` translates its
    /// errors: `{"type":"error","error":{"type","message"}}`, same status.
    pub(crate) fn into_anthropic_response(self) -> Response<SimBody> {
        let body = serde_json::json!({
            "type": "error",
            "error": {"type": self.kind, "message": self.message}
        });
        json_response(self.status, serde_json::to_vec(&body).unwrap_or_default())
    }
}
