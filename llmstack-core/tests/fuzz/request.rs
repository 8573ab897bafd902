//! The request-body targets: [`RouteRequest::from_json`] on generated, mutated and
//! arbitrary bodies, checked against an oracle that reads the body with serde_json.

use std::borrow::Cow;
use std::fmt;

use llmstack_core::{Content, Message, Part, Prompt, PromptView, RouteRequest};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config;
use crate::generate::{apply, edit, member, object, session_field, whitespace};

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
