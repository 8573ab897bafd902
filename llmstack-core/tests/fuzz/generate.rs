//! Generators of request bodies: JSON values with the fields the router reads, objects
//! written with escapes and odd spacing, and the byte edits that mutate a body (which
//! the multipart targets use too).

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Number, Value};

/// Short strings: plain names, arbitrary Unicode, and characters JSON must escape.
pub(crate) fn text() -> impl Strategy<Value = String> {
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
pub(crate) struct Member {
    key: String,
    value: Value,
    escape_key: bool,
    escape_value: bool,
}

pub(crate) fn member() -> impl Strategy<Value = Member> {
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
pub(crate) fn object(members: &[Member], ws: &str) -> Vec<u8> {
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

pub(crate) fn whitespace() -> impl Strategy<Value = String> {
    prop::sample::select(&["", " ", "\n", "\t", "\r\n  "][..]).prop_map(str::to_owned)
}

pub(crate) fn session_field() -> impl Strategy<Value = Option<&'static str>> {
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
pub(crate) enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

pub(crate) fn edit() -> impl Strategy<Value = Edit> {
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

pub(crate) fn apply(body: &mut Vec<u8>, edits: &[Edit]) {
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
