//! Where an engine publishes its KV events: `GET /kv_event_sources` (vLLM 0.33), else
//! the configured port convention.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use llmstack_core::Endpoint;

use super::KvEventsConfig;

/// Largest `/kv_event_sources` answer read (one small object per rank).
const MAX_SOURCES_BODY: usize = 64 << 10;

pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// One data-parallel rank's sockets, as `tcp://host:port` to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publisher {
    /// The PUB socket.
    pub(crate) endpoint: String,
    /// The ROUTER socket answering replay requests, if any.
    pub(crate) replay: Option<String>,
}

/// What asking an engine gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Discovery {
    /// Its publishers, by rank (never empty).
    Found(BTreeMap<u32, Publisher>),
    /// It publishes nothing a subscriber can connect to (why).
    Unavailable(String),
    /// It could not be asked (why).
    Failed(String),
}

/// Finds `ep`'s publishers: its `/kv_event_sources`, else (the route missing, empty or
/// unanswered) the configured ports on its host.
pub(crate) async fn discover(
    client: &HttpClient,
    ep: &Endpoint,
    config: &KvEventsConfig,
) -> Discovery {
    let Some(host) = ep.url.host() else {
        return Discovery::Failed("the endpoint URL has no host".into());
    };
    let asked = tokio::time::timeout(config.timeout, fetch(client, ep))
        .await
        .unwrap_or_else(|_| Err("GET /kv_event_sources timed out".into()));
    let why = match asked.and_then(|body| match body {
        Some(body) => parse_sources(&body, host),
        None => Ok(BTreeMap::new()),
    }) {
        Ok(found) if !found.is_empty() => return Discovery::Found(found),
        Ok(_) => Discovery::Unavailable(
            "the engine reports no KV-event publisher (start it with --kv-events-config)".into(),
        ),
        Err(why) => Discovery::Failed(why),
    };
    match by_port(config, host) {
        Some(found) => Discovery::Found(found),
        None => why,
    }
}

/// `GET /kv_event_sources`: the body, or `None` when the engine has no such route.
async fn fetch(client: &HttpClient, ep: &Endpoint) -> Result<Option<Bytes>, String> {
    let uri = ep
        .uri_for("/kv_event_sources")
        .ok_or("the endpoint URL has no host")?;
    let req = http::Request::get(uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    // The debug form names the cause (`ConnectError("tcp connect error", …)`).
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    if status == http::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = Limited::new(resp.into_body(), MAX_SOURCES_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("/kv_event_sources answered {status}"));
    }
    Ok(Some(body))
}

/// Reads `/kv_event_sources`: an object keyed by rank (`"0"`, `"1"`, …), each with the
/// resolved `endpoint` and `replay_endpoint` (`tcp://*:port` meaning the engine's own
/// `host`). Ranks that do not publish over ZMQ TCP are left out.
pub(crate) fn parse_sources(body: &[u8], host: &str) -> Result<BTreeMap<u32, Publisher>, String> {
    let sources: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| format!("/kv_event_sources: {e}"))?;
    let mut found = BTreeMap::new();
    for (rank, source) in &sources {
        let Ok(rank) = rank.parse::<u32>() else {
            continue;
        };
        let enabled = source
            .get("enable_kv_cache_events")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true);
        let zmq = source
            .get("publisher")
            .and_then(serde_json::Value::as_str)
            .is_none_or(|p| p == "zmq");
        let endpoint = source
            .get("endpoint")
            .and_then(serde_json::Value::as_str)
            .and_then(|e| resolve(e, host));
        let (true, true, Some(endpoint)) = (enabled, zmq, endpoint) else {
            continue;
        };
        let replay = source
            .get("replay_endpoint")
            .and_then(serde_json::Value::as_str)
            .and_then(|e| resolve(e, host));
        found.insert(rank, Publisher { endpoint, replay });
    }
    Ok(found)
}

/// The endpoint to connect to for a publisher's `endpoint`: a wildcard host (`*`,
/// `0.0.0.0`, `::`) is the engine's `host`; `None` for what a TCP subscriber cannot
/// reach (`ipc://`, `inproc://`, port 0).
pub(crate) fn resolve(endpoint: &str, host: &str) -> Option<String> {
    let rest = endpoint.strip_prefix("tcp://")?;
    let (h, port) = rest.rsplit_once(':')?;
    if port.parse::<u16>().ok()? == 0 {
        return None;
    }
    Some(if matches!(h, "*" | "0.0.0.0" | "::" | "[::]" | "") {
        format!("tcp://{host}:{port}")
    } else {
        endpoint.to_owned()
    })
}

/// The configured port convention: rank 0 on the engine's host.
fn by_port(config: &KvEventsConfig, host: &str) -> Option<BTreeMap<u32, Publisher>> {
    let port = config.port?;
    let publisher = Publisher {
        endpoint: format!("tcp://{host}:{port}"),
        replay: config.replay_port.map(|p| format!("tcp://{host}:{p}")),
    };
    Some(BTreeMap::from([(0, publisher)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_are_the_engines_own() {
        assert_eq!(
            resolve("tcp://*:5557", "10.0.0.7").as_deref(),
            Some("tcp://10.0.0.7:5557")
        );
        assert_eq!(
            resolve("tcp://0.0.0.0:5558", "engine-1").as_deref(),
            Some("tcp://engine-1:5558")
        );
        assert_eq!(
            resolve("tcp://[::]:5557", "[fd00::1]").as_deref(),
            Some("tcp://[fd00::1]:5557")
        );
        assert_eq!(
            resolve("tcp://10.1.2.3:41234", "engine-1").as_deref(),
            Some("tcp://10.1.2.3:41234"),
            "a resolved address is kept"
        );
        assert_eq!(resolve("tcp://*:0", "h"), None);
        assert_eq!(resolve("ipc:///tmp/kv", "h"), None);
        assert_eq!(resolve("tcp://*", "h"), None);
    }

    #[test]
    fn sources_by_rank() {
        let body = br#"{
            "0": {"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557",
                  "replay_endpoint": "tcp://*:5600", "topic": "kv"},
            "1": {"endpoint": "tcp://*:5558", "replay_endpoint": null},
            "2": {"enable_kv_cache_events": false, "endpoint": "tcp://*:5559"},
            "3": {"publisher": "null", "endpoint": "tcp://*:5560"},
            "x": {"endpoint": "tcp://*:5561"}
        }"#;
        let found = parse_sources(body, "127.0.0.1").unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[&0].endpoint, "tcp://127.0.0.1:5557");
        assert_eq!(found[&0].replay.as_deref(), Some("tcp://127.0.0.1:5600"));
        assert_eq!(found[&1].endpoint, "tcp://127.0.0.1:5558");
        assert_eq!(found[&1].replay, None);
        assert!(parse_sources(b"{}", "h").unwrap().is_empty());
        assert!(parse_sources(b"[1]", "h").is_err());
    }

    #[test]
    fn the_port_convention_is_rank_zero() {
        let config = KvEventsConfig {
            port: Some(5557),
            replay_port: Some(5600),
            ..KvEventsConfig::default()
        };
        let found = by_port(&config, "e1").unwrap();
        assert_eq!(
            found[&0],
            Publisher {
                endpoint: "tcp://e1:5557".into(),
                replay: Some("tcp://e1:5600".into())
            }
        );
        assert_eq!(by_port(&KvEventsConfig::default(), "e1"), None);
    }
}
