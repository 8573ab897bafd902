//! The model a request names, read for admission: the JSON body's top-level `model`,
//! or the `model` field of a multipart form (the audio routes).

use std::borrow::Cow;

use bytes::Bytes;
use http::{Request, header};
use llmstack_core::{
    BodyKind, multipart_boundary, multipart_parts, multipart_text_field, openai_route,
};

/// The top-level `model` of a JSON body, for the rare body [`top_level_model`] hands
/// over (an escape in the name); every other field is skipped unread.
#[derive(serde::Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

/// The string value of the top-level `model` key of a JSON object, found without
/// parsing the rest: a scan that jumps from quote to quote inside strings (most of a
/// chat body is message text) and counts nesting outside them, so a `model` key inside
/// a message or a tool schema is not taken. About a tenth of a full parse. A name with
/// an escape in it is read by serde instead. On a body that is not valid JSON the
/// answer may be anything; routing refuses such a body (400) after admission.
pub(crate) fn top_level_model(body: &[u8]) -> Option<Cow<'_, str>> {
    let mut depth = 0usize;
    let mut at = 0usize;
    // Whether the string that ended last was a key at depth 1 named `model`.
    let mut model_key = false;
    while let Some(&b) = body.get(at) {
        match b {
            b'"' => {
                let start = at + 1;
                let end = string_end(body, start)?;
                let text = &body[start..end];
                at = end + 1;
                if depth != 1 {
                    continue;
                }
                // A key is followed by `:`.
                let next = body[at..].iter().position(|c| !c.is_ascii_whitespace());
                let is_key = next.is_some_and(|n| body[at + n] == b':');
                if is_key {
                    model_key = text == b"model";
                    continue;
                }
                if model_key {
                    if text.contains(&b'\\') {
                        return serde_json::from_slice::<Named<'_>>(body).ok()?.model;
                    }
                    return std::str::from_utf8(text).ok().map(Cow::Borrowed);
                }
            }
            b'{' | b'[' => {
                depth += 1;
                at += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                at += 1;
                if depth == 0 {
                    return None;
                }
            }
            _ => {
                // A non-string value of `model` (a number, null): no name.
                if model_key && depth == 1 && !b.is_ascii_whitespace() && b != b':' && b != b',' {
                    return None;
                }
                at += 1;
            }
        }
    }
    None
}

/// The index of the quote that closes the string starting at `start`.
fn string_end(body: &[u8], mut start: usize) -> Option<usize> {
    loop {
        let n = memchr::memchr2(b'"', b'\\', body.get(start..)?)?;
        let at = start + n;
        if body[at] == b'"' {
            return Some(at);
        }
        // A backslash escapes the next byte (`\"`, `\\`, `\u…` all fine).
        start = at + 2;
    }
}

/// The model `req` names, if its body names one it can be read from (a body that is not
/// JSON or not a form names none: routing answers it 400; the routes addressing one
/// engine name none).
pub(super) fn named(req: &Request<Bytes>) -> Option<Cow<'_, str>> {
    let kind = openai_route(req.uri().path()).map_or(BodyKind::Json, |(_, kind)| kind);
    match kind {
        BodyKind::Json => top_level_model(req.body()),
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
        BodyKind::Addressed => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// JSON values that hide `model` keys and quotes in nested places.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z\\\\\"{}\\[\\]:, model\\u{e9}]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::vec(
                    (prop_oneof![Just("model".to_owned()), "[a-z\"]{1,6}"], inner),
                    0..4
                )
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("LLMSTACK_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// On every JSON object, the scan finds what a full parse finds.
        #[test]
        fn fuzz_model_scan_agrees_with_serde(
            fields in prop::collection::vec((prop_oneof![Just("model".to_owned()), "[a-z\"\\\\]{1,6}"], value()), 0..6),
            pretty in any::<bool>(),
        ) {
            let object = serde_json::Value::Object(fields.into_iter().collect());
            let text = if pretty {
                serde_json::to_vec_pretty(&object).unwrap()
            } else {
                serde_json::to_vec(&object).unwrap()
            };
            let expected = object.get("model").and_then(|m| m.as_str());
            let found = top_level_model(&text);
            prop_assert_eq!(found.as_deref(), expected);
        }

        /// Arbitrary bytes never panic.
        #[test]
        fn fuzz_model_scan_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = top_level_model(&body);
        }
    }

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
