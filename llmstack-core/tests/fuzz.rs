//! Fuzz targets (property tests) for the parsers of `llmstack_core` that read untrusted
//! input: [`RouteRequest::from_json`] (request bodies), the `multipart/form-data` reader
//! and [`openai_route`] (request paths).
//!
//! Each target feeds structured inputs (JSON objects with the fields the parser looks
//! for, well-formed forms) and raw or mutated bytes, and checks that nothing panics and
//! that what the parser returns agrees with what was generated.
//!
//! `LLMSTACK_FUZZ_CASES` sets the number of cases per target (default 2000, the CI
//! short mode); `scripts/fuzz` runs the long mode in release.

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::fmt;

use llmstack_core::{
    BodyKind, Content, FormPart, Message, Part, Prompt, PromptView, RouteRequest,
    multipart_boundary, multipart_parts, multipart_text_field, openai_route,
};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Number, Value};

/// Cases per target: `LLMSTACK_FUZZ_CASES`, else 2000.
fn cases() -> u32 {
    std::env::var("LLMSTACK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// === generators ===

/// Short strings: plain names, arbitrary Unicode, and characters JSON must escape.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9/._:-]{0,12}",
        2 => vec(any::<char>(), 0..8).prop_map(|c| c.into_iter().collect()),
        1 => vec(
            prop::sample::select(&['"', '\\', '\n', '\u{0}', '\u{7f}', '\u{2028}', 'é', '😀', '/', ' '][..]),
            0..6,
        )
        .prop_map(|c| c.into_iter().collect()),
    ]
}

/// The top-level keys the parser looks for, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(
            &["model", "stream", "prompt", "messages", "input", "user", "session_id", "x-session"][..]
        )
        .prop_map(str::to_owned),
        1 => text(),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u32..100).prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => number(),
        3 => text().prop_map(Value::String),
    ]
}

/// Any JSON value, nested.
fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            vec((key(), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A prompt in one of the four OpenAI shapes, or something else.
fn prompt() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => text().prop_map(Value::String),
        2 => vec(text().prop_map(Value::String), 0..4).prop_map(Value::Array),
        2 => vec(any::<u32>().prop_map(Value::from), 0..6).prop_map(Value::Array),
        1 => vec(vec(any::<u32>().prop_map(Value::from), 0..4).prop_map(Value::Array), 0..3)
            .prop_map(Value::Array),
        1 => vec(leaf(), 0..4).prop_map(Value::Array),
        1 => json(),
    ]
}

/// Chat `messages`: mostly well-formed (roles, string / null / parts content), with odd
/// members now and then.
fn messages() -> impl Strategy<Value = Value> {
    let part = (
        prop_oneof![Just("text".to_owned()), text()],
        prop_oneof![text().prop_map(Value::String), Just(Value::Null), leaf()],
        0u8..4,
    )
        .prop_map(|(kind, text, shape)| {
            let mut m = serde_json::Map::new();
            if shape != 0 {
                m.insert("type".into(), Value::String(kind));
            }
            if shape != 1 {
                m.insert("text".into(), text);
            }
            Value::Object(m)
        });
    let content = prop_oneof![
        4 => text().prop_map(Value::String),
        1 => Just(Value::Null),
        2 => vec(part, 0..3).prop_map(Value::Array),
        1 => leaf(),
    ];
    let message = (
        prop::sample::select(&["system", "user", "assistant", "tool"][..]),
        content,
        0u8..8,
        leaf(),
    )
        .prop_map(|(role, content, shape, extra)| {
            let mut m = serde_json::Map::new();
            match shape {
                0 => {}
                1 => {
                    m.insert("role".into(), extra.clone());
                }
                _ => {
                    m.insert("role".into(), Value::String(role.into()));
                }
            }
            if shape != 2 {
                m.insert("content".into(), content);
            }
            if shape == 3 {
                m.insert("name".into(), extra);
            }
            Value::Object(m)
        });
    prop_oneof![
        6 => vec(message, 0..4).prop_map(Value::Array),
        1 => json(),
    ]
}

/// A value for top-level field `key`: mostly of the type the parser expects.
fn value_for(key: &str) -> BoxedStrategy<Value> {
    match key {
        "model" => prop_oneof![8 => text().prop_map(Value::String), 1 => json()].boxed(),
        "stream" => prop_oneof![
            6 => any::<bool>().prop_map(Value::Bool),
            1 => Just(Value::Null),
            1 => json(),
        ]
        .boxed(),
        "prompt" | "input" => prompt().boxed(),
        "messages" => messages().boxed(),
        _ => json().boxed(),
    }
}

/// One top-level member: the key, its value, and whether to write either with every
/// character `\u`-escaped.
#[derive(Debug, Clone)]
struct Member {
    key: String,
    value: Value,
    escape_key: bool,
    escape_value: bool,
}

fn member() -> impl Strategy<Value = Member> {
    (key(), 0u8..16, 0u8..16).prop_flat_map(|(key, ek, ev)| {
        value_for(&key).prop_map(move |value| Member {
            key: key.clone(),
            value,
            escape_key: ek == 0,
            escape_value: ev == 0,
        })
    })
}

/// A JSON object with these members (duplicates kept), spaced with `ws`.
fn object(members: &[Member], ws: &str) -> Vec<u8> {
    let mut out = format!("{ws}{{{ws}");
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            out.push_str(&format!("{ws},{ws}"));
        }
        if m.escape_key {
            out.push_str(&escaped(&m.key));
        } else {
            out.push_str(&serde_json::to_string(&m.key).unwrap());
        }
        out.push_str(&format!("{ws}:{ws}"));
        match &m.value {
            Value::String(s) if m.escape_value => out.push_str(&escaped(s)),
            v => out.push_str(&serde_json::to_string(v).unwrap()),
        }
    }
    out.push_str(&format!("{ws}}}{ws}"));
    out.into_bytes()
}

/// `s` as a JSON string with every character written as `\uXXXX` (surrogate pairs
/// beyond the BMP).
fn escaped(s: &str) -> String {
    let mut out = String::from('"');
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

fn whitespace() -> impl Strategy<Value = String> {
    prop::sample::select(&["", " ", "\n", "\t", "\r\n  "][..]).prop_map(str::to_owned)
}

fn session_field() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(
        &[
            None,
            Some("session_id"),
            Some("x-session"),
            Some("user"),
            Some("model"),
            Some("stream"),
            Some(""),
        ][..],
    )
}

/// One edit of a body: overwrite, insert or delete a byte, or cut it short.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![
        prop::sample::select(&b"{}[]\",:\\ntu0-.e\x00\xff\xc3 "[..]),
        any::<u8>()
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(body: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        let len = body.len();
        match *e {
            Edit::Set(i, b) if len > 0 => body[i % len] = b,
            Edit::Insert(i, b) => body.insert(i % (len + 1), b),
            Edit::Delete(i) if len > 0 => {
                body.remove(i % len);
            }
            Edit::Truncate(i) => body.truncate(i % (len + 1)),
            _ => {}
        }
    }
}

// === the oracle: what a body means, read another way ===

/// The top-level members of a JSON object, duplicates included, each as its raw text:
/// `None` when serde_json does not read `body` as one object whose every member
/// value is a valid [`Value`].
fn members_of(body: &[u8]) -> Option<Vec<(String, &RawValue)>> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                let raw: &'de RawValue = map.next_value()?;
                serde_json::from_str::<Value>(raw.get()).map_err(de::Error::custom)?;
                out.push((k, raw));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let members = (&mut de).deserialize_map(V).ok()?;
    de.end().ok()?;
    Some(members)
}

/// What [`RouteRequest::from_json`] should make of an object with these members:
/// `None` when it must fail.
#[derive(Debug, Default)]
struct Expected<'a> {
    model: Option<String>,
    stream: bool,
    session: Option<String>,
    user: Option<String>,
    prompt: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    input: Option<&'a RawValue>,
}

fn expected<'a>(
    members: &[(String, &'a RawValue)],
    session_field: Option<&str>,
) -> Option<Expected<'a>> {
    let mut e = Expected::default();
    for (k, raw) in members {
        let v: Value = serde_json::from_str(raw.get()).unwrap();
        match k.as_str() {
            "model" => match v {
                Value::String(s) => e.model = Some(s),
                _ => return None,
            },
            "stream" => match v {
                Value::Bool(b) => e.stream = b,
                Value::Null => e.stream = false,
                _ => return None,
            },
            "prompt" => e.prompt = Some(raw),
            "messages" => e.messages = Some(raw),
            "input" => e.input = Some(raw),
            k if Some(k) == session_field => e.session = scalar(&v, raw),
            "user" => e.user = scalar(&v, raw),
            _ => {}
        }
    }
    Some(e)
}

/// A session key from a JSON value: a string's text, `null` none, else the raw JSON.
fn scalar(v: &Value, raw: &RawValue) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        _ => Some(raw.get().to_owned()),
    }
}

fn u32_of(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// The completion prompt (or embeddings input) a value stands for, if any.
fn expected_prompt(v: &Value) -> Option<Prompt<'static>> {
    let owned = |s: &str| Cow::Owned(s.to_owned());
    match v {
        Value::String(s) => Some(Prompt::Text(owned(s))),
        Value::Array(items) => match items.first() {
            None => Some(Prompt::Texts(Vec::new())),
            Some(Value::String(_)) => items
                .iter()
                .map(|i| i.as_str().map(owned))
                .collect::<Option<_>>()
                .map(Prompt::Texts),
            Some(Value::Array(_)) => items
                .iter()
                .map(|i| i.as_array()?.iter().map(u32_of).collect::<Option<Vec<_>>>())
                .collect::<Option<_>>()
                .map(Prompt::TokenLists),
            Some(_) => items
                .iter()
                .map(u32_of)
                .collect::<Option<_>>()
                .map(Prompt::Tokens),
        },
        _ => None,
    }
}

/// The chat messages a value stands for: `Some(None)` when it is not a list of
/// messages, `None` when this oracle does not know (a struct written as an array,
/// which serde accepts).
fn expected_chat(v: &Value) -> Option<Option<Vec<Message<'static>>>> {
    let owned = |s: &str| Cow::Owned(s.to_owned());
    let Value::Array(items) = v else {
        return Some(None);
    };
    let mut out = Vec::new();
    for item in items {
        let m = match item {
            Value::Object(m) => m,
            Value::Array(_) => return None,
            _ => return Some(None),
        };
        let Some(Value::String(role)) = m.get("role") else {
            return Some(None);
        };
        let content = match m.get("content") {
            None | Some(Value::Null) => Content::None,
            Some(Value::String(s)) => Content::Text(owned(s)),
            Some(Value::Array(parts)) => {
                let mut out = Vec::new();
                for p in parts {
                    let p = match p {
                        Value::Object(p) => p,
                        Value::Array(_) => return None,
                        _ => return Some(None),
                    };
                    let Some(Value::String(kind)) = p.get("type") else {
                        return Some(None);
                    };
                    let text = match p.get("text") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(t)) => Some(owned(t)),
                        Some(_) => return Some(None),
                    };
                    out.push(Part {
                        kind: owned(kind),
                        text,
                    });
                }
                Content::Parts(out)
            }
            Some(_) => return Some(None),
        };
        out.push(Message {
            role: owned(role),
            content,
        });
    }
    Some(Some(out))
}

// === the checks ===

/// Everything [`RouteRequest::from_json`] promises about `body`, whatever it is.
fn check_body(body: &[u8], session_field: Option<&str>) -> Result<(), TestCaseError> {
    let parsed = RouteRequest::from_json(body, session_field);
    let members = members_of(body);
    let want = members.as_deref().map(|m| expected(m, session_field));
    let req = match parsed {
        Err(e) => {
            // A valid JSON object fails only for a `model` or `stream` of the wrong type.
            prop_assert!(
                !matches!(want, Some(Some(_))),
                "a valid object was refused: {e}"
            );
            prop_assert!(!e.to_string().is_empty());
            return Ok(());
        }
        Ok(req) => req,
    };
    prop_assert!(
        !matches!(want, Some(None)),
        "a bad model or stream was accepted"
    );
    let _ = format!("{req:?}");
    prop_assert!(req.prompt_len() <= body.len());
    let view = req.prompt_view();
    if let Some(Some(want)) = &want {
        prop_assert_eq!(req.model(), want.model.as_deref());
        prop_assert_eq!(req.stream(), want.stream);
        prop_assert_eq!(
            req.session_key(),
            want.session.as_deref().or(want.user.as_deref())
        );
        let raw = want.messages.or(want.prompt).or(want.input);
        prop_assert_eq!(req.prompt_len(), raw.map_or(0, |r| r.get().len()));
        // The prompt, parsed on demand.
        let value = |r: &RawValue| serde_json::from_str::<Value>(r.get()).unwrap();
        if let Some(m) = want.messages {
            if let Some(chat) = expected_chat(&value(m)) {
                prop_assert_eq!(view, chat.map(PromptView::Chat));
            }
        } else if let Some(p) = want.prompt {
            prop_assert_eq!(view, expected_prompt(&value(p)).map(PromptView::Completion));
        } else if let Some(i) = want.input {
            prop_assert_eq!(view, expected_prompt(&value(i)).map(PromptView::Input));
        } else {
            prop_assert_eq!(view, None);
        }
    }
    match req.model() {
        None => prop_assert_eq!(req.body_with_model(body, "x"), None),
        Some(model) => {
            // The model is read from the body: written as is when nothing is escaped.
            if !body.contains(&b'\\') {
                let quoted = format!("\"{model}\"");
                prop_assert!(
                    memchr::memmem::find(body, quoted.as_bytes()).is_some(),
                    "model {model:?} is not in the body"
                );
            }
            // Rewriting the model changes the model and nothing else.
            let out = req.body_with_model(body, "x");
            prop_assert!(out.is_some(), "no rewrite for model {model:?}");
            let out = out.unwrap_or_default();
            let again = RouteRequest::from_json(&out, session_field);
            prop_assert!(again.is_ok(), "the rewritten body is refused: {again:?}");
            let again = again.unwrap_or_default();
            prop_assert_eq!(again.model(), Some("x"));
            prop_assert_eq!(again.stream(), req.stream());
            prop_assert_eq!(again.session_key(), req.session_key());
            prop_assert_eq!(again.kind(), req.kind());
            prop_assert_eq!(again.prompt_len(), req.prompt_len());
            if members.is_some() {
                let v = serde_json::from_slice::<Value>(&out);
                prop_assert!(v.is_ok(), "the rewritten body is not JSON");
                let v = v.unwrap_or_default();
                prop_assert_eq!(v.get("model").and_then(Value::as_str), Some("x"));
            }
        }
    }
    Ok(())
}

// === targets ===

proptest! {
    #![proptest_config(config())]

    /// Generated request bodies: the fields the router reads, of the right and wrong
    /// types, duplicated, escaped, among other fields.
    #[test]
    fn fuzz_route_request_structured(
        members in vec(member(), 0..7),
        ws in whitespace(),
        session_field in session_field(),
    ) {
        let body = object(&members, &ws);
        // The generated object is valid JSON: the oracle must read it.
        prop_assert!(members_of(&body).is_some(), "{}", String::from_utf8_lossy(&body));
        check_body(&body, session_field)?;
    }

    /// Generated bodies with a few bytes changed, inserted, deleted or cut off.
    #[test]
    fn fuzz_route_request_mutated(
        members in vec(member(), 0..5),
        edits in vec(edit(), 1..4),
        session_field in session_field(),
    ) {
        let mut body = object(&members, "");
        apply(&mut body, &edits);
        check_body(&body, session_field)?;
    }

    /// Arbitrary bytes, and arbitrary bytes after an opening brace.
    #[test]
    fn fuzz_route_request_bytes(
        bytes in vec(any::<u8>(), 0..64),
        brace in any::<bool>(),
        session_field in session_field(),
    ) {
        let mut body = if brace { b"{\"model\":".to_vec() } else { Vec::new() };
        body.extend_from_slice(&bytes);
        check_body(&body, session_field)?;
    }
}

// === multipart ===

/// Characters RFC 2046 allows in a boundary (a space only inside).
const BCHARS: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?";

fn boundary() -> impl Strategy<Value = String> {
    let ch = prop::sample::select(BCHARS.chars().collect::<Vec<_>>());
    prop_oneof![
        3 => vec(ch.clone(), 1..71).prop_map(|c| c.into_iter().collect::<String>()),
        1 => (vec(ch.clone(), 1..20), vec(ch, 1..20)).prop_map(|(a, b)| {
            format!("{} {}", a.into_iter().collect::<String>(), b.into_iter().collect::<String>())
        }),
    ]
}

/// A `Content-Type` naming `boundary`, quoted when it must be or by chance, among other
/// parameters.
fn content_type(boundary: String) -> impl Strategy<Value = String> {
    (
        prop::sample::select(
            &[
                "multipart/form-data",
                "Multipart/Form-Data",
                "MULTIPART/FORM-DATA",
            ][..],
        ),
        any::<bool>(),
        prop::sample::select(&["", " ", "  "][..]),
        prop::sample::select(&["", "; charset=utf-8", ";foo=\"a;b\"", "; x"][..]),
        prop::sample::select(&["", "; charset=utf-8", "; boundary=", "; boundary=\"\""][..]),
        prop::sample::select(&["boundary", "Boundary", "BOUNDARY"][..]),
    )
        .prop_map(move |(mime, quote, sp, before, after, name)| {
            let value = if quote || boundary.contains(' ') {
                format!("\"{boundary}\"")
            } else {
                boundary.clone()
            };
            format!("{mime}{before};{sp}{name}{sp}={sp}{value}{sp}{after}")
        })
}

/// A form field name or file name: any text but line breaks and `;` (the parameter
/// separator, which this reader does not allow even quoted).
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&["model", "language", "file", "prompt", "stream", "temperature"][..])
            .prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
        1 => vec(any::<char>().prop_map(|c| if matches!(c, '\r' | '\n' | ';') { '_' } else { c }), 0..8)
            .prop_map(|c| c.into_iter().collect::<String>()),
    ]
}

/// `s` quoted, with `"` and `\` escaped.
fn quoted(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[derive(Debug, Clone)]
struct GenPart {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
    /// Write the name unquoted (when it is a token).
    bare: bool,
    /// An extra header line before the disposition.
    extra_header: bool,
}

fn gen_part() -> impl Strategy<Value = GenPart> {
    (
        field_name(),
        prop::option::weighted(0.2, field_name()),
        prop::option::weighted(
            0.2,
            prop::sample::select(
                &[
                    "audio/wav",
                    "text/plain; charset=utf-8",
                    "application/octet-stream",
                ][..],
            ),
        ),
        prop_oneof![
            3 => text().prop_map(String::into_bytes),
            1 => vec(any::<u8>(), 0..32),
            1 => vec(prop::sample::select(&b"\r\n-ab"[..]), 0..16),
        ],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(name, filename, content_type, data, bare, extra_header)| GenPart {
                name,
                filename,
                content_type: content_type.map(str::to_owned),
                data,
                bare,
                extra_header,
            },
        )
}

/// A form of `parts` under `boundary`, with a preamble, transport padding and an
/// epilogue.
fn form(
    parts: &[GenPart],
    boundary: &str,
    preamble: &str,
    padding: &str,
    epilogue: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    if !preamble.is_empty() {
        out.extend_from_slice(preamble.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for p in parts {
        out.extend_from_slice(format!("--{boundary}{padding}\r\n").as_bytes());
        if p.extra_header {
            out.extend_from_slice(b"X-Extra: a: b\r\n");
        }
        let token = !p.name.is_empty()
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        let name = if p.bare && token {
            p.name.clone()
        } else {
            quoted(&p.name)
        };
        out.extend_from_slice(format!("Content-Disposition: form-data; name={name}").as_bytes());
        if let Some(f) = &p.filename {
            out.extend_from_slice(format!("; filename={}", quoted(f)).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if let Some(ct) = &p.content_type {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&p.data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--").as_bytes());
    out.extend_from_slice(epilogue.as_bytes());
    out
}

/// What the reader promises about any body: parts borrow from it.
fn check_parts(body: &[u8], parts: &[FormPart<'_>]) -> Result<(), TestCaseError> {
    let range = body.as_ptr_range();
    for p in parts {
        let r = p.data.as_ptr_range();
        prop_assert!(range.start <= r.start && r.end <= range.end);
        let _ = p.text();
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Well-formed forms: every part comes back as written, and each text field
    /// round-trips (or is refused when it is there twice or is not UTF-8).
    #[test]
    fn fuzz_multipart_structured(
        (b, ct) in boundary().prop_flat_map(|b| (Just(b.clone()), content_type(b))),
        parts in vec(gen_part(), 0..5),
        preamble in "[a-zA-Z .]{0,10}",
        padding in prop::sample::select(&["", " ", "\t ", "  "][..]),
        epilogue in prop_oneof![Just(String::new()), Just("\r\n".to_owned()), "[ -~]{0,10}"],
        lookup in field_name(),
    ) {
        let got = multipart_boundary(&ct);
        prop_assert_eq!(got.as_deref(), Some(b.as_str()), "{}", ct);
        let body = form(&parts, &b, &preamble, padding, &epilogue);
        let close = format!("\r\n--{b}");
        // A part's data holding the delimiter ends the part early: no round trip then.
        let clean = parts
            .iter()
            .all(|p| memchr::memmem::find(&p.data, close.as_bytes()).is_none());
        let got = multipart_parts(&body, &b);
        if !clean {
            if let Ok(got) = &got {
                check_parts(&body, got)?;
            }
            return Ok(());
        }
        prop_assert!(got.is_ok(), "{:?} for {:?}", got, String::from_utf8_lossy(&body));
        let got = got.unwrap_or_default();
        check_parts(&body, &got)?;
        prop_assert_eq!(got.len(), parts.len());
        for (g, p) in got.iter().zip(&parts) {
            prop_assert_eq!(&*g.name, p.name.as_str());
            prop_assert_eq!(g.filename.as_deref(), p.filename.as_deref());
            prop_assert_eq!(g.content_type, p.content_type.as_deref());
            prop_assert_eq!(g.data, &p.data[..]);
        }
        for name in parts.iter().map(|p| p.name.as_str()).chain([lookup.as_str()]) {
            let same: Vec<&GenPart> = parts.iter().filter(|p| p.name == name).collect();
            let field = multipart_text_field(&got, name);
            match same[..] {
                [] => prop_assert_eq!(field, Ok(None)),
                [p] => match std::str::from_utf8(&p.data) {
                    Ok(text) => prop_assert_eq!(field, Ok(Some(text))),
                    Err(_) => prop_assert!(field.is_err()),
                },
                _ => prop_assert!(field.is_err()),
            }
        }
    }

    /// Forms with a few bytes changed, and arbitrary bodies and boundaries: never a
    /// panic; parts always borrow from the body.
    #[test]
    fn fuzz_multipart_bytes(
        b in prop_oneof![boundary(), ".{0,4}"],
        parts in vec(gen_part(), 0..3),
        edits in vec(edit(), 0..4),
        raw in prop_oneof![Just(None), vec(any::<u8>(), 0..64).prop_map(Some)],
        lookup in field_name(),
        ct in prop_oneof![".{0,40}", "multipart/form-data;.{0,30}"],
    ) {
        if let Some(boundary) = multipart_boundary(&ct) {
            prop_assert!(!boundary.is_empty() && boundary.len() <= 70);
        }
        let body = match raw {
            Some(raw) => raw,
            None => {
                let mut body = form(&parts, &b, "", "", "");
                apply(&mut body, &edits);
                body
            }
        };
        if let Ok(got) = multipart_parts(&body, &b) {
            check_parts(&body, &got)?;
            let _ = multipart_text_field(&got, &lookup);
            for p in &got {
                let _ = multipart_text_field(&got, &p.name);
            }
        }
    }

    /// Request paths: only the forwarded routes are recognised, each as itself.
    #[test]
    fn fuzz_openai_route(
        path in prop_oneof![
            ".{0,30}",
            "/v1/[a-z/]{0,24}",
            prop::sample::select(&[
                "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/audio/transcriptions",
                "/v1/audio/translations", "/score", "/v1/models", "/health", "",
            ][..]).prop_map(str::to_owned),
        ],
        suffix in prop_oneof![Just(String::new()), ".{0,3}"],
    ) {
        let path = format!("{path}{suffix}");
        if let Some((route, kind)) = openai_route(&path) {
            prop_assert_eq!(route, path.as_str());
            prop_assert_eq!(kind == BodyKind::Multipart, route.starts_with("/v1/audio/t"));
        }
    }
}
