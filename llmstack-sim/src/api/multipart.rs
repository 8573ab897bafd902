//! A `multipart/form-data` reader for buffered bodies (RFC 7578): the boundary from the
//! `Content-Type` header, then each part's `Content-Disposition` name and filename, its
//! `Content-Type`, and its bytes (shared with the body, not copied).

use std::borrow::Cow;

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
    llmstack_core::multipart_boundary(content_type).map(Into::into)
}

/// Splits `body` into its parts (the parser is `llmstack-core`'s, shared with the
/// router); the parts' data share the body's buffer.
pub(crate) fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, Error> {
    let parts = llmstack_core::multipart_parts(body, boundary).map_err(|e| Error(e.0))?;
    Ok(parts
        .into_iter()
        .map(|p| Part {
            name: p.name.into_owned(),
            filename: p.filename.map(Cow::into_owned),
            content_type: p.content_type.map(str::to_owned),
            data: body.slice_ref(p.data),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_share_the_body() {
        let b = Bytes::from(
            "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--b--\r\n",
        );
        let parts = parse(&b, &boundary("multipart/form-data; boundary=b").unwrap()).unwrap();
        assert_eq!(parts[0].name, "file");
        assert_eq!(parts[0].filename.as_deref(), Some("a.wav"));
        assert_eq!(&parts[0].data[..], b"RIFF");
        let at = b.windows(4).position(|w| w == b"RIFF").unwrap();
        assert_eq!(parts[0].data.as_ptr(), b[at..].as_ptr(), "no copy");
        assert!(parse(&Bytes::from_static(b"nothing"), "b").is_err());
    }
}
