//! The scraper task: every engine's `/metrics`, concurrently, on an interval.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llmstack_core::{Endpoint, EndpointId, EndpointSet, EngineStats, StatsReader, StatsSnapshot};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::{engine_stats, names};

/// Largest `/metrics` answer read (a vLLM exposition is ~50 KB).
const MAX_METRICS_BODY: usize = 8 << 20;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Settings of the scraper.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    /// Time between two scrapes of one engine (sub-second is fine).
    pub interval: Duration,
    /// Deadline of one scrape.
    pub timeout: Duration,
    /// Bearer token for the engines (vLLM `--api-key`).
    pub api_key: Option<String>,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            api_key: None,
        }
    }
}

/// Starts the scraper over the endpoints published on `endpoints`; returns the reader of
/// its snapshots and the task (abort it to stop scraping).
///
/// Every `interval`, each current endpoint's `GET /metrics` is started, unless that
/// endpoint's previous scrape is still running: a slow or dead engine delays nobody
/// else, and each result is published as soon as it arrives (a fresh snapshot shares
/// nothing mutable with the previous one). A failed scrape keeps the engine's last stats,
/// which go stale after three intervals. Endpoints that are gone disappear at the next
/// tick. Needs a Tokio runtime.
pub fn spawn_scraper(
    endpoints: watch::Receiver<EndpointSet>,
    config: ScrapeConfig,
) -> (StatsReader, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(StatsSnapshot::new(config.interval)));
    let task = tokio::spawn(run(endpoints, config, tx));
    (StatsReader::new(rx), task)
}

async fn run(
    endpoints: watch::Receiver<EndpointSet>,
    config: ScrapeConfig,
    tx: watch::Sender<Arc<StatsSnapshot>>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.timeout));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(3))
        .build(connector);
    let mut stats: HashMap<EndpointId, EngineStats> = HashMap::new();
    let mut scraping: HashSet<EndpointId> = HashSet::new();
    let mut jobs: JoinSet<(EndpointId, Result<Bytes, ScrapeError>)> = JoinSet::new();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let publish = |stats: &HashMap<EndpointId, EngineStats>| {
        tx.send_replace(Arc::new(StatsSnapshot::with_engines(
            config.interval,
            stats.clone(),
        )));
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let set = endpoints.borrow().clone();
                let before = stats.len();
                stats.retain(|id, _| set.get(id.as_str()).is_some());
                if stats.len() != before {
                    publish(&stats);
                }
                for ep in set.iter() {
                    if scraping.insert(ep.id.clone()) {
                        jobs.spawn(scrape(client.clone(), Arc::clone(ep), config.clone()));
                    }
                }
            }
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                let Ok((id, result)) = done else { continue };
                scraping.remove(&id);
                match result {
                    Ok(body) => {
                        let text = String::from_utf8_lossy(&body);
                        let fresh = engine_stats(&text, stats.get(&id), Instant::now());
                        stats.insert(id, fresh);
                        publish(&stats);
                    }
                    Err(reason) => {
                        tracing::debug!(endpoint = %id, %reason, "scrape failed");
                    }
                }
            }
        }
    }
}

async fn scrape(
    client: HttpClient,
    ep: Arc<Endpoint>,
    config: ScrapeConfig,
) -> (EndpointId, Result<Bytes, ScrapeError>) {
    let start = Instant::now();
    let result = tokio::time::timeout(config.timeout, fetch(&client, &ep, &config))
        .await
        .unwrap_or_else(|elapsed| Err(ScrapeError::Timeout(elapsed)));
    let engine = ep.id.to_string();
    match &result {
        Ok(_) => metrics::gauge!(names::SCRAPE_DURATION, "engine" => engine)
            .set(start.elapsed().as_secs_f64()),
        Err(_) => metrics::counter!(names::SCRAPE_ERRORS, "engine" => engine).increment(1),
    }
    (ep.id.clone(), result)
}

async fn fetch(
    client: &HttpClient,
    ep: &Endpoint,
    config: &ScrapeConfig,
) -> Result<Bytes, ScrapeError> {
    let uri = ep.uri_for("/metrics").ok_or(ScrapeError::NoHost)?;
    let mut req = http::Request::get(uri);
    if let Some(key) = &config.api_key {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let req = req.body(Empty::new()).map_err(ScrapeError::Request)?;
    let resp = client.request(req).await.map_err(ScrapeError::Connect)?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_METRICS_BODY)
        .collect()
        .await
        .map_err(ScrapeError::Body)?
        .to_bytes();
    if !status.is_success() {
        return Err(ScrapeError::Status(status));
    }
    Ok(body)
}

/// Why one scrape failed (logged, and counted in `SCRAPE_ERRORS`).
#[derive(Debug)]
enum ScrapeError {
    /// The endpoint URL has no host to ask.
    NoHost,
    /// The request could not be built.
    Request(http::Error),
    /// No answer came: refused, reset, connect timeout.
    Connect(hyper_util::client::legacy::Error),
    /// The body could not be read, or was over `MAX_METRICS_BODY`.
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// The answer was not 2xx.
    Status(http::StatusCode),
    /// No whole answer within `ScrapeConfig::timeout`.
    Timeout(tokio::time::error::Elapsed),
}

// === impl ScrapeError ===

impl fmt::Display for ScrapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHost => f.write_str("the endpoint URL has no host"),
            Self::Request(e) => write!(f, "{e}"),
            // The debug form names the cause (`ConnectError("tcp connect error", …)`),
            // which the display form does not.
            Self::Connect(e) => write!(f, "{e:?}"),
            Self::Body(e) => write!(f, "{e}"),
            Self::Status(status) => write!(f, "/metrics answered {status}"),
            Self::Timeout(_) => f.write_str("timed out"),
        }
    }
}

impl std::error::Error for ScrapeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NoHost | Self::Status(_) => None,
            Self::Request(e) => Some(e),
            Self::Connect(e) => Some(e),
            Self::Body(e) => Some(&**e),
            Self::Timeout(e) => Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[tokio::test]
    async fn errors_read_as_logged() {
        assert_eq!(
            ScrapeError::NoHost.to_string(),
            "the endpoint URL has no host"
        );
        let status = ScrapeError::Status(http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            status.to_string(),
            "/metrics answered 503 Service Unavailable"
        );
        assert!(status.source().is_none());
        let elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
            .await
            .unwrap_err();
        let timeout = ScrapeError::Timeout(elapsed);
        assert_eq!(timeout.to_string(), "timed out");
        assert!(timeout.source().is_some(), "the elapsed deadline");
    }
}
