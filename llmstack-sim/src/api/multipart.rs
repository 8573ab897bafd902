//! A `multipart/form-data` reader for buffered bodies (RFC 7578): the boundary from the
//! `Content-Type` header, then each part's `Content-Disposition` name and filename, its
//! `Content-Type`, and its bytes (shared with the body, not copied).

use bytes::Bytes;

/// One form field or uploaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    /// The `name` of its `Content-Disposition`.
    pub(crate) name: String,
    /// The `filename`, for file uploads.
    pub(crate) filename: Option<String>,
    /// The part's own `Content-Type`, when given.
    pub(crate) content_type: Option<String>,
    /// The content.
    pub(crate) data: Bytes,
}

impl Part {
    /// The content as text.
    pub(crate) fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.data)
            .map_err(|_| Error(format!("field {:?} is not UTF-8", self.name)))
    }
}

/// Why a body is not valid multipart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error(pub(crate) String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The boundary of a `multipart/form-data` content type (`None` for other types).
pub(crate) fn boundary(content_type: &str) -> Option<String> {
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

/// Removes surrounding double quotes and backslash escapes.
fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        }
        None => v.to_owned(),
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Splits `body` into its parts.
pub(crate) fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, Error> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The first delimiter starts the body or a line (anything before it is preamble).
    let mut pos = if body.starts_with(delimiter) {
        0
    } else {
        let mut with_crlf = b"\r\n".to_vec();
        with_crlf.extend_from_slice(delimiter);
        find(body, &with_crlf, 0).ok_or_else(|| Error("no boundary in the body".into()))? + 2
    };
    let mut close = b"\r\n".to_vec();
    close.extend_from_slice(delimiter);
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
            return Err(Error("malformed boundary line".into()));
        }
        pos += 2;
        let head_end =
            find(body, b"\r\n\r\n", pos).ok_or_else(|| Error("part headers never end".into()))?;
        let head = std::str::from_utf8(&body[pos..head_end])
            .map_err(|_| Error("part headers are not UTF-8".into()))?;
        let data_start = head_end + 4;
        let data_end = find(body, &close, data_start)
            .ok_or_else(|| Error("missing closing boundary".into()))?;
        parts.push(part(head, body.slice(data_start..data_end))?);
        pos = data_end + 2;
    }
}

/// One part from its header block and content.
fn part(head: &str, data: Bytes) -> Result<Part, Error> {
    let mut name = None;
    let mut filename = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| Error(format!("malformed part header {line:?}")))?;
        let key = key.trim();
        if key.eq_ignore_ascii_case("content-disposition") {
            let mut params = value.split(';');
            if !params
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("form-data"))
            {
                return Err(Error("part is not form-data".into()));
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
            content_type = Some(value.trim().to_owned());
        }
    }
    Ok(Part {
        name: name.ok_or_else(|| Error("part without a name".into()))?,
        filename,
        content_type,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Bytes {
        Bytes::from(s.replace('\n', "\r\n"))
    }

    #[test]
    fn boundary_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc123").as_deref(),
            Some("abc123")
        );
        assert_eq!(
            boundary("Multipart/Form-Data;charset=utf-8; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("multipart/form-data; boundary="), None);
    }

    #[test]
    fn fields_and_files() {
        let b = body(
            "preamble\n--XyZ\nContent-Disposition: form-data; name=\"model\"\n\nwhisper\n--XyZ\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\nContent-Type: audio/wav\n\nRIFF\n\nbytes\n--XyZ--\nepilogue",
        );
        let parts = parse(&b, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "model");
        assert_eq!(parts[0].text().unwrap(), "whisper");
        assert_eq!(parts[0].filename, None);
        assert_eq!(parts[1].filename.as_deref(), Some("a.wav"));
        assert_eq!(parts[1].content_type.as_deref(), Some("audio/wav"));
        assert_eq!(&parts[1].data[..], b"RIFF\r\n\r\nbytes");
    }

    #[test]
    fn empty_form_and_padding() {
        assert_eq!(parse(&body("--b--\n"), "b").unwrap(), vec![]);
        let b = body("--b  \nContent-Disposition: form-data; name=x\n\n\n--b--");
        let parts = parse(&b, "b").unwrap();
        assert_eq!(
            (parts[0].name.as_str(), &parts[0].data[..]),
            ("x", &b""[..])
        );
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
            assert!(parse(&body(bad), "b").is_err(), "{bad:?}");
        }
    }
}
