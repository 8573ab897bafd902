//! Header hygiene between client and engine.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// `x-request-id`.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1: `Connection`, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`), proxy
/// credentials (`Proxy-Authenticate`, `Proxy-Authorization`), `Expect`, and any header
/// named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present finds them (most messages carry none; looking
    // each hop-by-hop name up would hash it even when absent).
    let mut hop: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    if hop.is_empty() {
        return;
    }
    hop.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
    );
    for name in hop {
        headers.remove(name);
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), proxy credentials, and `Expect` (the router
/// answers it itself and sends engines a complete body).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
    )
}

/// The client's `X-Request-Id` if it is a sane token, else a new random 32-hex id.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID) {
        let ok =
            !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let bits = u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(..));
    for (i, c) in id.iter_mut().enumerate() {
        *c = HEX[((bits >> (4 * i)) & 0xf) as usize];
    }
    // Always 32 lowercase hex digits: a valid header value.
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.append(header::CONNECTION, "x-other".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic abc".parse().unwrap());
        h.insert(header::EXPECT, "100-continue".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn each_hop_by_hop_name_alone_is_stripped() {
        let hop_by_hop = [
            header::CONNECTION,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            header::PROXY_AUTHENTICATE,
            header::PROXY_AUTHORIZATION,
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::EXPECT,
        ];
        for name in &hop_by_hop {
            assert!(is_hop_by_hop(name), "{name}");
            let mut h = HeaderMap::new();
            h.insert(name, "x".parse().unwrap());
            h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name}");
            assert_eq!(h.len(), 1);
        }
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        h.insert("x-connection", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn request_ids_are_kept_or_generated() {
        let mut h = HeaderMap::new();
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, request_id(&h));
        h.insert(&REQUEST_ID, "abc-1".parse().unwrap());
        assert_eq!(request_id(&h), "abc-1");
        h.insert(&REQUEST_ID, "has space".parse().unwrap());
        assert_eq!(request_id(&h).len(), 32);
    }
}
