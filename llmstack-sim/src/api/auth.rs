//! vLLM's `--api-key` check (its `AuthenticationMiddleware`), run before routing and
//! before any body is read.
//!
//! Only paths starting `/v1`, `/v2`, `/inference` or `/cohere` (after percent-decoding,
//! as uvicorn hands FastAPI the decoded path) are guarded, `OPTIONS` always passes, and a
//! failure is 401 with the bare body `{"error":"Unauthorized"}` (Starlette's compact
//! `JSONResponse`), not the usual error object. `x-request-id` is still added to it,
//! since vLLM's request-id middleware wraps the authentication one.
//!
//! The header is read as vLLM does: Latin-1 decoded, split at the first space, scheme
//! `Bearer` in any case, the rest compared whole. Like vLLM, the check compares SHA-256
//! digests of the presented and accepted keys against every accepted key without
//! stopping early; the simulator compares the digests with plain `==`, which is not
//! constant-time but only leaks timing about digests, never about the keys (vLLM uses
//! `secrets.compare_digest`). Good enough for a simulator; not a hardened gate.

use http::{HeaderMap, Method, Response, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::api::body::SimBody;
use crate::api::reply::json_response;
use crate::config::ApiKey;

/// Path prefixes vLLM authenticates (byte prefixes of the decoded path, so `/v1x` too).
const GUARDED_PREFIXES: [&[u8]; 4] = [b"/v1", b"/v2", b"/inference", b"/cohere"];

/// The accepted keys, kept as SHA-256 digests.
pub(crate) struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    /// Shows how many keys there are, never the keys or their digests.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.digests.len())
            .finish()
    }
}

impl ApiKeys {
    /// The check for `keys`; with none, every request passes.
    pub(crate) fn new(keys: &[ApiKey]) -> Self {
        Self {
            digests: keys.iter().map(|k| digest(k.expose().as_bytes())).collect(),
        }
    }

    /// Whether a request may go on: always when no key is configured, for `OPTIONS` and
    /// for unguarded paths; otherwise only with a valid `Authorization: Bearer` header.
    pub(crate) fn admits(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        self.digests.is_empty()
            || method == Method::OPTIONS
            || !is_guarded(path)
            || self.verify(headers)
    }

    /// vLLM's `verify_token`: the first `Authorization` header, Latin-1 decoded,
    /// `scheme SP param` with a case-insensitive `bearer` scheme and `param` one of the
    /// keys.
    fn verify(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value: String = value.as_bytes().iter().copied().map(char::from).collect();
        let (scheme, param) = value.split_once(' ').unwrap_or((value.as_str(), ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let presented = digest(param.as_bytes());
        self.digests
            .iter()
            .fold(false, |found, d| found | (*d == presented))
    }
}

/// vLLM's answer to a missing or wrong key.
pub(crate) fn unauthorized() -> Response<SimBody> {
    json_response(
        StatusCode::UNAUTHORIZED,
        br#"{"error":"Unauthorized"}"#.to_vec(),
    )
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether the percent-decoded `path` starts with a guarded prefix.
fn is_guarded(path: &str) -> bool {
    let decoded = percent_decode(path.as_bytes());
    GUARDED_PREFIXES.iter().any(|p| decoded.starts_with(p))
}

/// `%XX` (two hex digits) decoded to its byte, anything else kept, as Python's
/// `urllib.parse.unquote` does byte-wise.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    fn hex(c: u8) -> Option<u8> {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    /// The byte `%XX` at `i` stands for, if it is one.
    fn escape(s: &[u8], i: usize) -> Option<u8> {
        match s.get(i..i + 3)? {
            [b'%', hi, lo] => Some((hex(*hi)? << 4) | hex(*lo)?),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        match escape(s, i) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(auth: Option<&[u8]>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn guarded_paths_are_vllms_prefixes_after_decoding() {
        for p in [
            "/v1/chat/completions",
            "/v1",
            "/v1x",
            "/v2/rerank",
            "/inference/v1/generate",
            "/cohere/v2/chat",
            "/%761/models",
            "/v%31/nope",
        ] {
            assert!(is_guarded(p), "{p}");
        }
        for p in [
            "/health",
            "/metrics",
            "/tokenize",
            "/invocations",
            "/sim/faults",
            "//v1/models",
            "/V1/models",
            "/%7",
            "/%zz",
        ] {
            assert!(!is_guarded(p), "{p}");
        }
        assert_eq!(percent_decode(b"/a%2Fb%+1%4"), b"/a/b%+1%4");
    }

    #[test]
    fn bearer_header_parsing_follows_vllm() {
        let keys = ApiKeys::new(&["k1".into(), "k 2".into()]);
        let ok = |v: &[u8]| keys.verify(&headers(Some(v)));
        assert!(ok(b"Bearer k1"));
        assert!(ok(b"bEaReR k1"));
        assert!(
            ok(b"Bearer k 2"),
            "the param is everything after the first space"
        );
        assert!(!ok(b"Bearer k1 "), "not trimmed");
        assert!(!ok(b"Bearer  k1"));
        assert!(!ok(b"Basic k1"));
        assert!(!ok(b"k1"));
        assert!(!ok(b"Bearer"));
        assert!(!ok(b"Bearer k3"));
        assert!(!keys.verify(&headers(None)));
        // Latin-1 decoding: byte 0xE9 is "é", whose UTF-8 is two bytes.
        let latin = ApiKeys::new(&["é".into()]);
        assert!(latin.verify(&headers(Some(b"Bearer \xe9"))));
        assert!(!latin.verify(&headers(Some("Bearer é".as_bytes()))));
    }

    #[test]
    fn admission_skips_unkeyed_engines_options_and_open_paths() {
        let none = ApiKeys::new(&[]);
        assert!(none.admits(&Method::POST, "/v1/completions", &headers(None)));
        let keys = ApiKeys::new(&["k".into()]);
        assert!(!keys.admits(&Method::POST, "/v1/completions", &headers(None)));
        assert!(keys.admits(&Method::OPTIONS, "/v1/completions", &headers(None)));
        assert!(keys.admits(&Method::GET, "/health", &headers(None)));
        assert!(keys.admits(
            &Method::POST,
            "/v1/completions",
            &headers(Some(b"Bearer k"))
        ));
        assert_eq!(format!("{keys:?}"), "ApiKeys { count: 1 }");
    }
}
