//! The model a request names, read for admission: the JSON body's top-level `model`,
//! or the `model` field of a multipart form (the audio routes).

use std::borrow::Cow;

use bytes::Bytes;
use http::{Request, header};
use llmstack_core::{
    BodyKind, multipart_boundary, multipart_parts, multipart_text_field, openai_route,
};

/// The top-level `model` of a JSON body; every other field is skipped unread.
#[derive(serde::Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

/// The model `req` names, if its body names one it can be read from (a body that is not
/// JSON or not a form names none: routing answers it 400).
pub(super) fn named(req: &Request<Bytes>) -> Option<Cow<'_, str>> {
    let kind = openai_route(req.uri().path()).map_or(BodyKind::Json, |(_, kind)| kind);
    match kind {
        BodyKind::Json => serde_json::from_slice::<Named<'_>>(req.body()).ok()?.model,
        BodyKind::Multipart => {
            let boundary = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(multipart_boundary)?;
            let form = multipart_parts(req.body(), &boundary).ok()?;
            let model = multipart_text_field(&form, "model").ok()??;
            Some(Cow::Owned(model.trim().to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_form_bodies_name_their_model() {
        let req = |path: &str, ct: &str, body: &'static [u8]| {
            Request::post(path)
                .header(header::CONTENT_TYPE, ct)
                .body(Bytes::from_static(body))
                .unwrap()
        };
        let chat = req(
            "/v1/chat/completions",
            "application/json",
            br#"{"messages":[{"role":"user","content":"model"}],"model":"llama","stream":true}"#,
        );
        assert_eq!(named(&chat).as_deref(), Some("llama"));
        let escaped = req(
            "/v1/completions",
            "application/json",
            br#"{"model":"a\"b"}"#,
        );
        assert_eq!(named(&escaped).as_deref(), Some("a\"b"));
        for bad in [&b"not json"[..], br#"{"model":7}"#, br#"{"prompt":"x"}"#] {
            assert_eq!(
                named(&req("/v1/completions", "application/json", bad)),
                None
            );
        }
        let form = req(
            "/v1/audio/transcriptions",
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper \r\n--XyZ--\r\n",
        );
        assert_eq!(named(&form).as_deref(), Some("whisper"));
    }
}
