//! Reading one text field of a buffered `multipart/form-data` body (audio requests carry
//! their `model` there).
//!
//! Hand-written rather than a multipart crate: the router only needs to find two short
//! text fields in a body it already holds in memory and then forwards untouched, so a
//! streaming parser (and its dependencies) would buy nothing.

/// The boundary of a `multipart/form-data` content type, without quotes.
///
/// `None` when the content type is not multipart/form-data or has no boundary.
pub fn multipart_boundary(content_type: &str) -> Option<&str> {
    let mut parts = content_type.split(';');
    let mime = parts.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"'))
            .filter(|b| !b.is_empty())
    })
}

/// The value of the text field `name` in a multipart body with `boundary`.
///
/// `Ok(None)` when the body is well formed but has no such field; `Err` with a reason
/// when the body does not start with the boundary or a part's headers are not
/// terminated (a malformed body). Non-UTF-8 values are an error too.
pub fn multipart_text_field<'a>(
    body: &'a [u8],
    boundary: &str,
    name: &str,
) -> Result<Option<&'a str>, &'static str> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut pos = find(body, delim, 0).ok_or("the body does not contain the multipart boundary")?;
    loop {
        pos += delim.len();
        if body.get(pos..pos + 2) == Some(b"--") {
            return Ok(None); // closing delimiter
        }
        let headers_start = pos;
        let headers_end =
            find(body, b"\r\n\r\n", headers_start).ok_or("a multipart part has no header end")?;
        let value_start = headers_end + 4;
        let next = find(body, delim, value_start).ok_or("a multipart part is not terminated")?;
        let value_end = next
            .checked_sub(2)
            .filter(|&e| e >= value_start)
            .unwrap_or(value_start);
        let headers = std::str::from_utf8(&body[headers_start..headers_end])
            .map_err(|_| "multipart part headers are not UTF-8")?;
        if field_name(headers) == Some(name) {
            let value = std::str::from_utf8(&body[value_start..value_end])
                .map_err(|_| "a multipart text field is not UTF-8")?;
            return Ok(Some(value));
        }
        pos = next;
    }
}

/// The `name` parameter of a part's `Content-Disposition: form-data` header.
fn field_name(headers: &str) -> Option<&str> {
    headers.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if !key.trim().eq_ignore_ascii_case("content-disposition") {
            return None;
        }
        value.split(';').find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k.trim() == "name").then(|| v.trim().trim_matches('"'))
        })
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\x00\x01--Xy\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ\r\ncontent-disposition: form-data; name=stream\r\n\r\ntrue\r\n--XyZ--\r\n";

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=XyZ"),
            Some("XyZ")
        );
        assert_eq!(
            multipart_boundary("Multipart/Form-Data;boundary=\"a b\""),
            Some("a b")
        );
        assert_eq!(multipart_boundary("application/json"), None);
        assert_eq!(multipart_boundary("multipart/form-data"), None);
    }

    #[test]
    fn finds_fields_after_binary_parts() {
        assert_eq!(
            multipart_text_field(BODY, "XyZ", "model"),
            Ok(Some("whisper-1"))
        );
        assert_eq!(
            multipart_text_field(BODY, "XyZ", "stream"),
            Ok(Some("true"))
        );
        assert_eq!(multipart_text_field(BODY, "XyZ", "language"), Ok(None));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(multipart_text_field(b"garbage", "XyZ", "model").is_err());
        assert!(multipart_text_field(b"--XyZ\r\nno header end", "XyZ", "model").is_err());
        assert!(
            multipart_text_field(b"--XyZ\r\nA: b\r\n\r\nvalue without end", "XyZ", "model")
                .is_err()
        );
    }
}
