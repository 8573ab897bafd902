//! The error type of the data path and its OpenAI error body.

use std::fmt;

use crate::{BoxError, EndpointId};

/// Which deadline an upstream request missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// The TCP connection was not established in time.
    Connect,
    /// The engine sent no response head in time.
    FirstByte,
    /// The engine went silent between two body chunks.
    Idle,
}

/// Which per-tenant rate limit a request is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

/// Everything that can fail between a client's request and the engine's response.
///
/// [`Error::status`] is the HTTP status and [`Error::body`] the OpenAI-style body; the
/// server turns an `Error` into a response in exactly one place.
#[derive(Debug)]
pub enum Error {
    /// The request is malformed (not JSON, not an object, a field of the wrong type, a
    /// missing `model`, a bad multipart body). `param` names the offending field.
    BadRequest {
        /// What is wrong, for the client.
        message: String,
        /// The offending field, if one is to blame.
        param: Option<&'static str>,
    },
    /// The request body is larger than the limit (in bytes).
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The request body did not arrive in full within the deadline (408).
    BodyTimeout {
        /// The deadline.
        after: std::time::Duration,
    },
    /// No endpoint ever served this model (404).
    ModelNotFound {
        /// The requested model.
        model: String,
    },
    /// The model is known but no endpoint serving it is ready now (503: scaled to zero,
    /// starting, or all failed).
    NoReadyEndpoint {
        /// The requested model.
        model: String,
    },
    /// A response id this router did not see created (404): `GET /v1/responses/{id}`,
    /// or its cancel route, without `?id=`.
    ResponseNotFound {
        /// The response id.
        id: String,
    },
    /// `?id=` named an endpoint the router does not know, or one that does not serve the
    /// model (400).
    UnknownEndpoint {
        /// The id from the query string.
        id: String,
    },
    /// Connecting to the engine failed (502).
    Connect {
        /// The engine.
        endpoint: EndpointId,
        /// Why.
        source: BoxError,
    },
    /// The engine failed before sending a response head: reset, closed, protocol error (502).
    Upstream {
        /// The engine.
        endpoint: EndpointId,
        /// Why.
        source: BoxError,
    },
    /// The engine's response broke off after it had started (502); only ever reported
    /// inside a response already under way.
    Broken {
        /// The engine.
        endpoint: EndpointId,
        /// Why.
        source: BoxError,
    },
    /// The engine missed a deadline (504).
    Timeout {
        /// The engine.
        endpoint: EndpointId,
        /// Which deadline.
        phase: TimeoutPhase,
    },
    /// Every engine serving the model is at capacity (or none is ready yet) and the
    /// request could not wait: the admission queue is full, or it waited its whole
    /// deadline (503, with `Retry-After`).
    NoCapacity {
        /// The requested model.
        model: String,
        /// How long the request waited (zero when the queue was full).
        waited: std::time::Duration,
        /// When to try again.
        retry_after: std::time::Duration,
    },
    /// The router is shutting down and takes no new requests (503).
    ShuttingDown,
    /// The route does not exist (404).
    NotFound {
        /// The request path.
        path: String,
    },
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// The request carries no API key, or one the router does not know (401, OpenAI's
    /// `invalid_api_key` code).
    Unauthorized {
        /// Whether no key was sent at all (else a wrong one was).
        missing: bool,
    },
    /// The client is over one of its tenant's rate limits (429, OpenAI's
    /// `rate_limit_exceeded` code, with `Retry-After`).
    RateLimited {
        /// Which limit: requests or tokens per minute.
        limit: RateLimit,
        /// The limit's value, per minute.
        per_minute: u64,
        /// When the request would fit again.
        retry_after: std::time::Duration,
    },
    /// A request reached the forwarding service without an engine chosen for it (500:
    /// the service stack is assembled wrong, with no routing layer before forwarding).
    Unrouted,
}

/// The OpenAI/vLLM error body: `{"error":{"message","type","param","code"}}` where
/// `code` is the HTTP status (vLLM ≥ 0.10.1 shape, which the OpenAI SDK reads).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ErrorBody {
    /// The wrapped error object.
    pub error: ErrorObject,
}

/// The object inside [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ErrorObject {
    /// Human-readable description.
    pub message: String,
    /// vLLM's error class name (`BadRequestError`, `NotFoundError`, …).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The offending request field, if any.
    pub param: Option<&'static str>,
    /// The HTTP status code (vLLM's errors), or OpenAI's error code name
    /// (`invalid_api_key`, `rate_limit_exceeded`).
    pub code: ErrorCode,
}

/// The `code` of an [`ErrorObject`]: a number or a name, as the body shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum ErrorCode {
    /// The HTTP status, as vLLM puts it.
    Status(u16),
    /// An OpenAI error code name.
    Name(&'static str),
}

// === impl Error ===

impl Error {
    /// A 400 with a message and the field to blame.
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param,
        }
    }

    /// The HTTP status code this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest { .. } | Self::UnknownEndpoint { .. } => 400,
            Self::Unauthorized { .. } => 401,
            Self::RateLimited { .. } => 429,
            Self::ModelNotFound { .. } | Self::NotFound { .. } | Self::ResponseNotFound { .. } => {
                404
            }
            Self::MethodNotAllowed => 405,
            Self::BodyTimeout { .. } => 408,
            Self::BodyTooLarge { .. } => 413,
            Self::Connect { .. } | Self::Upstream { .. } | Self::Broken { .. } => 502,
            Self::NoReadyEndpoint { .. } | Self::ShuttingDown | Self::NoCapacity { .. } => 503,
            Self::Timeout { .. } => 504,
            Self::Unrouted => 500,
        }
    }

    /// A short, bounded label for metrics and logs (`bad_request`, `connect`, …).
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::ResponseNotFound { .. } => "response_not_found",
            Self::NoReadyEndpoint { .. } => "no_ready_endpoint",
            Self::UnknownEndpoint { .. } => "unknown_endpoint",
            Self::Connect { .. } => "connect",
            Self::Upstream { .. } => "upstream",
            Self::Broken { .. } => "broken",
            Self::Timeout { .. } => "timeout",
            Self::ShuttingDown => "shutting_down",
            Self::NoCapacity { .. } => "no_capacity",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unrouted => "unrouted",
            Self::Unauthorized { .. } => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
        }
    }

    /// The OpenAI error body for this error.
    pub fn body(&self) -> ErrorBody {
        let code = self.status();
        let kind = match (self, code) {
            // OpenAI's own types for its own errors (its SDK reads `code`).
            (Self::Unauthorized { .. }, _) => "invalid_request_error",
            (
                Self::RateLimited {
                    limit: RateLimit::Requests,
                    ..
                },
                _,
            ) => "requests",
            (
                Self::RateLimited {
                    limit: RateLimit::Tokens,
                    ..
                },
                _,
            ) => "tokens",
            (_, 400) => "BadRequestError",
            (_, 404) => "NotFoundError",
            (_, 405) => "MethodNotAllowed",
            (_, 408) => "RequestTimeoutError",
            (_, 413) => "RequestEntityTooLarge",
            (_, 502) => "BadGatewayError",
            (_, 503) => "ServiceUnavailableError",
            (_, 504) => "GatewayTimeoutError",
            _ => "InternalServerError",
        };
        let param = match self {
            Self::BadRequest { param, .. } => *param,
            Self::ModelNotFound { .. } | Self::NoReadyEndpoint { .. } | Self::NoCapacity { .. } => {
                Some("model")
            }
            Self::UnknownEndpoint { .. } => Some("id"),
            _ => None,
        };
        let code = match self {
            Self::Unauthorized { .. } => ErrorCode::Name("invalid_api_key"),
            Self::RateLimited { .. } => ErrorCode::Name("rate_limit_exceeded"),
            _ => ErrorCode::Status(code),
        };
        ErrorBody {
            error: ErrorObject {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        }
    }

    /// The HTTP response for this error: its [`status`](Error::status), a JSON
    /// content type and the [OpenAI body](Error::body); for
    /// [`RateLimited`](Error::RateLimited) and [`NoCapacity`](Error::NoCapacity),
    /// `Retry-After` in whole seconds (rounded up, at least 1). The one mapping from an error to a response: every layer that answers with
    /// an error calls it.
    pub fn to_response(&self) -> http::Response<bytes::Bytes> {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut resp = http::Response::new(bytes::Bytes::from(body));
        *resp.status_mut() = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Self::RateLimited { retry_after, .. } | Self::NoCapacity { retry_after, .. } = self {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(secs.max(1)),
            );
        }
        resp
    }

    /// Whether a request that failed this way may be sent to another endpoint: the
    /// engine never got it (connect failure, connect timeout), or dropped the
    /// connection before any answer reached the router (reset or close before the
    /// response head). In the second case the engine may have done the work, so a
    /// retried request can be generated twice; the client still gets one answer.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::Upstream { .. }
                | Self::Timeout {
                    phase: TimeoutPhase::Connect,
                    ..
                }
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest { message, .. } => f.write_str(message),
            Self::BodyTooLarge { limit } => {
                write!(
                    f,
                    "The request body is larger than the limit of {limit} bytes."
                )
            }
            Self::BodyTimeout { after } => write!(
                f,
                "The request body did not arrive within {} s.",
                after.as_secs_f64()
            ),
            Self::ModelNotFound { model } => write!(f, "The model `{model}` does not exist."),
            Self::ResponseNotFound { id } => write!(
                f,
                "Response `{id}` was not created through this router replica, which keeps \
                 the engine of each response it forwards; address the engine with \
                 `?id=<engine id>` (see /engines)."
            ),
            Self::NoReadyEndpoint { model } => write!(
                f,
                "The model `{model}` is temporarily unavailable: no engine serving it is ready. Please try again later."
            ),
            Self::UnknownEndpoint { id } => write!(
                f,
                "No engine with id `{id}` serves this request (see GET /engines)."
            ),
            Self::Connect { endpoint, source } => {
                write!(f, "Could not connect to engine {endpoint}: {source}")
            }
            Self::Upstream { endpoint, source } => {
                write!(f, "Engine {endpoint} failed before answering: {source}")
            }
            Self::Broken { endpoint, source } => {
                write!(
                    f,
                    "Engine {endpoint} stopped in the middle of its response: {source}"
                )
            }
            Self::Timeout { endpoint, phase } => {
                let what = match phase {
                    TimeoutPhase::Connect => "connecting",
                    TimeoutPhase::FirstByte => "waiting for the response",
                    TimeoutPhase::Idle => "waiting for the next chunk",
                };
                write!(f, "Engine {endpoint} timed out {what}.")
            }
            Self::ShuttingDown => f.write_str("The router is shutting down."),
            Self::NoCapacity { model, waited, .. } if waited.is_zero() => write!(
                f,
                "The model `{model}` is at capacity and its queue is full. Please try again later."
            ),
            Self::NoCapacity { model, waited, .. } => write!(
                f,
                "The model `{model}` had no capacity free within {:.1} s. Please try again later.",
                waited.as_secs_f64()
            ),
            Self::NotFound { path } => write!(f, "Route {path} not found."),
            Self::MethodNotAllowed => f.write_str("Method not allowed."),
            Self::Unauthorized { missing: true } => f.write_str(
                "No API key provided: send it as `Authorization: Bearer <key>` (or `x-api-key`).",
            ),
            Self::Unauthorized { missing: false } => f.write_str("Incorrect API key provided."),
            Self::RateLimited {
                limit,
                per_minute,
                retry_after,
            } => {
                let what = match limit {
                    RateLimit::Requests => "requests per minute (RPM)",
                    RateLimit::Tokens => "tokens per minute (TPM)",
                };
                write!(
                    f,
                    "Rate limit reached for {what}: limit {per_minute}. Please try again in {:.3}s.",
                    retry_after.as_secs_f64()
                )
            }
            Self::Unrouted => f.write_str(
                "No engine was chosen for this request (the router's service stack has no routing layer).",
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect { source, .. }
            | Self::Upstream { source, .. }
            | Self::Broken { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_nested_vllm_shape() {
        let err = Error::ModelNotFound { model: "x".into() };
        let json = serde_json::to_value(err.body()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"message": "The model `x` does not exist.",
                "type": "NotFoundError", "param": "model", "code": 404}})
        );
    }

    #[test]
    fn statuses_follow_the_architecture_table() {
        let id = EndpointId::new("e1");
        assert_eq!(Error::bad_request("x", None).status(), 400);
        assert_eq!(Error::BodyTooLarge { limit: 1 }.status(), 413);
        let late = Error::BodyTimeout {
            after: std::time::Duration::from_millis(1500),
        };
        assert_eq!(late.status(), 408);
        assert_eq!(late.body().error.kind, "RequestTimeoutError");
        assert_eq!(
            late.to_string(),
            "The request body did not arrive within 1.5 s."
        );
        assert_eq!(Error::NoReadyEndpoint { model: "m".into() }.status(), 503);
        let connect = Error::Connect {
            endpoint: id.clone(),
            source: "refused".into(),
        };
        assert_eq!(connect.status(), 502);
        assert!(connect.is_retryable());
        let timeout = Error::Timeout {
            endpoint: id,
            phase: TimeoutPhase::FirstByte,
        };
        assert_eq!(timeout.status(), 504);
        assert!(!timeout.is_retryable());
    }

    #[test]
    fn gateway_errors_have_openai_codes_and_retry_after() {
        let json = serde_json::to_value(Error::Unauthorized { missing: false }.body()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"message": "Incorrect API key provided.",
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
        );
        let limited = Error::RateLimited {
            limit: RateLimit::Tokens,
            per_minute: 1000,
            retry_after: std::time::Duration::from_millis(1200),
        };
        let resp = limited.to_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "2");
        let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["type"], "tokens");
        assert_eq!(
            Error::NotFound { path: "/x".into() }.body().error.code,
            ErrorCode::Status(404)
        );
    }
}
