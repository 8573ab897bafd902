//! The `multipart/form-data` targets: [`multipart_boundary`], [`multipart_parts`] and
//! [`multipart_text_field`] on well-formed forms, which must round-trip, and on mutated
//! or arbitrary bodies, which must not panic.

use llmstack_core::{FormPart, multipart_boundary, multipart_parts, multipart_text_field};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::config;
use crate::generate::{apply, edit, text};

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
}
