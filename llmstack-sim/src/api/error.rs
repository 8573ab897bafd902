//! OpenAI-style error bodies exactly as vLLM 0.33 sends them:
//! `{"error":{"message","type","param","code"}}` with the HTTP status in `code`.
//! The responses that carry them are built in `reply`.

use http::StatusCode;
use serde::Serialize;

/// An error answer: status, vLLM's `type`, message and offending parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: u16,
}

// === impl ApiError ===

impl ApiError {
    /// 400 from a check after parsing (`BadRequestError`).
    pub(crate) fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestError",
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    /// 400 from request validation (pydantic in vLLM: type `Bad Request`).
    pub(crate) fn validation(kind: &str, loc: &str, msg: &str) -> Self {
        let loc_tuple = if loc.is_empty() {
            "('body',)".to_owned()
        } else {
            let parts: Vec<String> = loc
                .split('.')
                .map(|p| {
                    if p.parse::<usize>().is_ok() {
                        p.to_owned()
                    } else {
                        format!("'{p}'")
                    }
                })
                .collect();
            format!("('body', {})", parts.join(", "))
        };
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "Bad Request",
            message: format!(
                "1 validation error:\n  {{'type': '{kind}', 'loc': {loc_tuple}, 'msg': '{}', 'input': None}}",
                msg.replace('\'', "\\'")
            ),
            param: (!loc.is_empty()).then(|| loc.to_owned()),
        }
    }

    /// 404 for a model the engine does not serve.
    pub(crate) fn model_not_found(model: &str, valid: &[String]) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundError",
            message: format!(
                "The model `{model}` does not exist. Valid aliases: {}.",
                valid.join(", ")
            ),
            param: Some("model".into()),
        }
    }

    /// Any status with vLLM's type name for it.
    pub(crate) fn status(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            400 => "BadRequestError",
            404 => "NotFoundError",
            413 => "RequestEntityTooLarge",
            429 => "TooManyRequests",
            500 => "InternalServerError",
            501 => "NotImplementedError",
            503 => "ServiceUnavailableError",
            _ => "Error",
        };
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
        }
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> Vec<u8> {
        let env = Envelope {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.status.as_u16(),
            },
        };
        serde_json::to_vec(&env).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_match_vllm() {
        let e =
            ApiError::model_not_found("llama-70b", &["meta-llama/Llama-3.1-8B-Instruct".into()]);
        assert_eq!(
            String::from_utf8(e.body()).unwrap(),
            r#"{"error":{"message":"The model `llama-70b` does not exist. Valid aliases: meta-llama/Llama-3.1-8B-Instruct.","type":"NotFoundError","param":"model","code":404}}"#
        );
        let v = ApiError::validation("int_type", "max_tokens", "Input should be a valid integer");
        assert!(v.message.starts_with(
            "1 validation error:\n  {'type': 'int_type', 'loc': ('body', 'max_tokens')"
        ));
        assert_eq!(v.param.as_deref(), Some("max_tokens"));
        let p = ApiError::validation("missing", "messages.0.role", "Field required");
        assert!(
            p.message.contains("('body', 'messages', 0, 'role')"),
            "{}",
            p.message
        );
    }
}
