//! A `multipart/form-data` reader for buffered bodies (RFC 7578): the boundary from the
//! `Content-Type` header, then each part's `Content-Disposition` name and filename, its
//! `Content-Type`, and its bytes (borrowed from the body, not copied).
//!
//! Hand-written rather than a multipart crate: audio requests are small and already
//! buffered, the router only needs two text fields of them, and a streaming parser (with
//! its dependencies) would buy nothing.

use std::borrow::Cow;
use std::fmt;

/// One form field or uploaded file, borrowed from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormPart<'a> {
    /// The `name` of its `Content-Disposition`.
    pub name: Cow<'a, str>,
    /// The `filename`, for file uploads.
    pub filename: Option<Cow<'a, str>>,
    /// The part's own `Content-Type`, when given.
    pub content_type: Option<&'a str>,
    /// The content.
    pub data: &'a [u8],
}

/// Why a body is not valid multipart (the text says what is wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartError(pub String);

// === impl FormPart ===

impl<'a> FormPart<'a> {
    /// The content as text; fails when it is not UTF-8.
    pub fn text(&self) -> Result<&'a str, MultipartError> {
        std::str::from_utf8(self.data)
            .map_err(|_| MultipartError(format!("field {:?} is not UTF-8", self.name)))
    }
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MultipartError {}

/// The boundary of a `multipart/form-data` content type, unquoted; `None` for other
/// types, a missing or empty boundary, or one longer than RFC 2046's 70 characters.
pub fn multipart_boundary(content_type: &str) -> Option<Cow<'_, str>> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| unquote(v.trim()))
            .filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

/// Splits `body` into its parts. Anything before the first delimiter (preamble) and after
/// the closing one (epilogue) is ignored; a missing boundary, an unterminated part, part
/// headers that never end or are not `form-data` with a name are errors.
pub fn multipart_parts<'a>(
    body: &'a [u8],
    boundary: &str,
) -> Result<Vec<FormPart<'a>>, MultipartError> {
    let err = |why: &str| MultipartError(why.to_owned());
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let close = [b"\r\n", delimiter].concat();
    // The first delimiter starts the body or a line.
    let mut pos = if body.starts_with(delimiter) {
        0
    } else {
        find(body, &close, 0).ok_or_else(|| err("no boundary in the body"))? + 2
    };
    let mut parts = Vec::new();
    loop {
        pos += delimiter.len();
        if body.get(pos..pos + 2) == Some(b"--") {
            return Ok(parts);
        }
        // Transport padding, then the line break that ends the delimiter line.
        while matches!(body.get(pos), Some(b' ' | b'\t')) {
            pos += 1;
        }
        if body.get(pos..pos + 2) != Some(b"\r\n") {
            return Err(err("malformed boundary line"));
        }
        pos += 2;
        let head_end = find(body, b"\r\n\r\n", pos).ok_or_else(|| err("part headers never end"))?;
        let head = std::str::from_utf8(&body[pos..head_end])
            .map_err(|_| err("part headers are not UTF-8"))?;
        let data_start = head_end + 4;
        let data_end =
            find(body, &close, data_start).ok_or_else(|| err("missing closing boundary"))?;
        parts.push(part(head, &body[data_start..data_end])?);
        pos = data_end + 2;
    }
}

/// The text of the field `name` among `parts`: `Ok(None)` when the form has no such
/// field; an error when it is there twice (servers disagree on which one counts) or is
/// not UTF-8.
pub fn multipart_text_field<'a>(
    parts: &[FormPart<'a>],
    name: &str,
) -> Result<Option<&'a str>, MultipartError> {
    let mut found = parts.iter().filter(|p| p.name == name);
    let first = found.next();
    if found.next().is_some() {
        return Err(MultipartError(format!(
            "the form has more than one {name:?} field"
        )));
    }
    first.map(FormPart::text).transpose()
}

/// One part from its header block and content.
fn part<'a>(head: &'a str, data: &'a [u8]) -> Result<FormPart<'a>, MultipartError> {
    let mut name = None;
    let mut filename = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| MultipartError(format!("malformed part header {line:?}")))?;
        let key = key.trim();
        if key.eq_ignore_ascii_case("content-disposition") {
            let mut params = value.split(';');
            if !params
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("form-data"))
            {
                return Err(MultipartError("part is not form-data".into()));
            }
            for p in params {
                if let Some((k, v)) = p.split_once('=') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "name" => name = Some(unquote(v.trim())),
                        "filename" => filename = Some(unquote(v.trim())),
                        _ => {}
                    }
                }
            }
        } else if key.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim());
        }
    }
    Ok(FormPart {
        name: name.ok_or_else(|| MultipartError("part without a name".into()))?,
        filename,
        content_type,
        data,
    })
}

/// Removes surrounding double quotes and backslash escapes (borrowed when there are none).
fn unquote(v: &str) -> Cow<'_, str> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            Cow::Owned(out)
        }
        None => Cow::Borrowed(v),
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(hay.get(from..)?, needle).map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    #[test]
    fn boundary_from_the_content_type() {
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=abc123").as_deref(),
            Some("abc123")
        );
        assert_eq!(
            multipart_boundary("Multipart/Form-Data;charset=utf-8; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(multipart_boundary("application/json"), None);
        assert_eq!(multipart_boundary("multipart/form-data"), None);
        assert_eq!(multipart_boundary("multipart/form-data; boundary="), None);
    }

    #[test]
    fn fields_and_files() {
        let b = body(
            "preamble\n--XyZ\nContent-Disposition: form-data; name=\"model\"\n\nwhisper\n--XyZ\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\nContent-Type: audio/wav\n\nRIFF\n\nbytes\n--XyZ--\nepilogue",
        );
        let parts = multipart_parts(&b, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "model");
        assert_eq!(parts[0].text().unwrap(), "whisper");
        assert_eq!(parts[0].filename, None);
        assert_eq!(parts[1].filename.as_deref(), Some("a.wav"));
        assert_eq!(parts[1].content_type, Some("audio/wav"));
        assert_eq!(parts[1].data, b"RIFF\r\n\r\nbytes");
        assert_eq!(multipart_text_field(&parts, "model"), Ok(Some("whisper")));
        assert_eq!(multipart_text_field(&parts, "language"), Ok(None));
        let twice = [parts[0].clone(), parts[0].clone()];
        assert!(multipart_text_field(&twice, "model").is_err());
    }

    #[test]
    fn empty_form_and_padding() {
        assert_eq!(multipart_parts(&body("--b--\n"), "b").unwrap(), vec![]);
        let b = body("--b  \nContent-Disposition: form-data; name=x\n\n\n--b--");
        let parts = multipart_parts(&b, "b").unwrap();
        assert_eq!((&*parts[0].name, parts[0].data), ("x", &b""[..]));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for bad in [
            "no boundary here",
            "--b\nContent-Disposition: form-data; name=\"x\"\n\nvalue without end",
            "--b\nContent-Disposition: form-data; name=\"x\"\nheaders never end",
            "--b\nContent-Disposition: attachment; name=\"x\"\n\nv\n--b--",
            "--b\nContent-Type: text/plain\n\nno name\n--b--",
            "--b\nBroken header\n\nv\n--b--",
            "--bjunk\nContent-Disposition: form-data; name=x\n\nv\n--b--",
        ] {
            assert!(multipart_parts(&body(bad), "b").is_err(), "{bad:?}");
        }
    }
}
