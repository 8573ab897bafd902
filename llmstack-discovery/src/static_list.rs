//! Static discovery: the configured list, once.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use http::Uri;
use llmstack_core::{BoxError, Discover, Endpoint, ModelCard, Update};

use crate::{ConfigError, DiscoveryConfig, UpdateStream};

/// The endpoints described by `--static-backends`, `--static-models` and
/// `--static-model-labels`: one endpoint per distinct URL (a repeated URL collects all
/// its models), in order of first appearance, all [`Pending`](llmstack_core::EndpointState::Pending).
///
/// Fails on a URL that is not an absolute `http://` URL.
pub fn static_endpoints(config: &DiscoveryConfig) -> Result<Vec<Endpoint>, ConfigError> {
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (i, raw) in config.static_backends.iter().enumerate() {
        let url = parse_url(raw)?;
        let index = match endpoints.iter().position(|e| e.url == url) {
            Some(index) => index,
            None => {
                endpoints.push(Endpoint::new(url));
                endpoints.len() - 1
            }
        };
        let ep = &mut endpoints[index];
        if let Some(model) = config.static_models.get(i).map(|m| m.trim())
            && !ep.serves(model)
        {
            ep.models.push(ModelCard::named(model));
        }
        if let Some(label) = config.static_model_labels.get(i) {
            ep.labels.insert("model".into(), label.trim().into());
        }
    }
    Ok(endpoints)
}

/// A discovery source that yields `Reset(endpoints)` once and then stays pending
/// forever (a static list never changes).
pub fn static_discovery(endpoints: Vec<Endpoint>) -> impl Discover {
    Once(Some(Update::Reset(endpoints)))
}

/// A static list kept in a file: yields `Reset(initial)`, then reads `path` every
/// `interval` and, when its bytes changed, yields `Reset(load(path))` if that
/// succeeded and differs from the last list. A file that cannot be read or parsed
/// keeps the last good list: the error is logged once per content and counted in
/// `llmstack_discovery_errors_total{source="static"}`. Polling (not inotify) also sees
/// Kubernetes ConfigMap updates, which swap a symlink.
///
/// The task is owned by the returned stream. Needs a Tokio runtime.
pub fn reloading_static_discovery<F>(
    path: PathBuf,
    interval: Duration,
    initial: Vec<Endpoint>,
    load: F,
) -> UpdateStream
where
    F: Fn(&Path) -> Result<Vec<Endpoint>, BoxError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(async move {
        // Compared at the first tick: a change between the caller's read and now is seen.
        let mut last_bytes: Option<Vec<u8>> = None;
        let mut last = initial.clone();
        if tx.send(Ok(Update::Reset(initial))).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let bytes = tokio::fs::read(&path).await;
            let (changed, parsed) = match &bytes {
                Ok(b) if last_bytes.as_deref() == Some(b.as_slice()) => continue,
                Ok(_) => (true, load(&path)),
                Err(e) => (
                    last_bytes.is_some(),
                    Err(format!("cannot read {}: {e}", path.display()).into()),
                ),
            };
            last_bytes = bytes.ok();
            match parsed {
                Ok(endpoints) if endpoints != last => {
                    tracing::info!(path = %path.display(), endpoints = endpoints.len(), "static backends reloaded");
                    last.clone_from(&endpoints);
                    if tx.send(Ok(Update::Reset(endpoints))).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) if changed => {
                    metrics::counter!("llmstack_discovery_errors_total", "source" => "static")
                        .increment(1);
                    tracing::warn!(error = %e, "static backends not reloaded; keeping the last list");
                }
                Err(_) => {}
            }
        }
    });
    UpdateStream::new(rx, Some(task))
}

struct Once(Option<Update>);

impl Stream for Once {
    type Item = Result<Update, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.0.take() {
            Some(update) => Poll::Ready(Some(Ok(update))),
            // Never woken again: the list is final.
            None => Poll::Pending,
        }
    }
}

/// An engine base URL: absolute, `http`, with a host; a trailing `/` is dropped. The
/// error says why in a sentence naming the URL.
pub(crate) fn parse_url(raw: &str) -> Result<Uri, ConfigError> {
    parse_url_inner(raw).map_err(|e| ConfigError(e.to_string()))
}

fn parse_url_inner(raw: &str) -> Result<Uri, UrlError> {
    let raw = raw.trim().trim_end_matches('/');
    let url: Uri = raw.parse().map_err(|source| UrlError::NotAUrl {
        raw: raw.to_owned(),
        source,
    })?;
    let raw = || raw.to_owned();
    match url.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(UrlError::Https { raw: raw() }),
        _ => return Err(UrlError::NotHttp { raw: raw() }),
    }
    if url.host().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost { raw: raw() });
    }
    if url.query().is_some() {
        return Err(UrlError::Query { raw: raw() });
    }
    Ok(url)
}

/// Why a backend URL (`raw`, trimmed) was refused; the display is the [`ConfigError`]
/// message.
#[derive(Debug)]
enum UrlError {
    /// Not a URI at all.
    NotAUrl {
        raw: String,
        source: http::uri::InvalidUri,
    },
    /// `https://`: no TLS to engines in this build.
    Https { raw: String },
    /// Another scheme, or none.
    NotHttp { raw: String },
    /// No host, or an empty one.
    NoHost { raw: String },
    /// A query string.
    Query { raw: String },
}

// === impl UrlError ===

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAUrl { raw, source } => {
                write!(f, "backend URL `{raw}` is not a URL: {source}")
            }
            Self::Https { raw } => write!(
                f,
                "backend URL `{raw}`: https engines are not supported yet (TLS to engines is not in this build)"
            ),
            Self::NotHttp { raw } => write!(f, "backend URL `{raw}` must start with http://"),
            Self::NoHost { raw } => write!(f, "backend URL `{raw}` has no host"),
            Self::Query { raw } => write!(f, "backend URL `{raw}` must not have a query string"),
        }
    }
}

impl std::error::Error for UrlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NotAUrl { source, .. } => Some(source),
            Self::Https { .. }
            | Self::NotHttp { .. }
            | Self::NoHost { .. }
            | Self::Query { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backends: &[&str], models: &[&str]) -> DiscoveryConfig {
        DiscoveryConfig {
            static_backends: backends.iter().map(|s| s.to_string()).collect(),
            static_models: models.iter().map(|s| s.to_string()).collect(),
            ..DiscoveryConfig::default()
        }
    }

    #[test]
    fn repeated_urls_collect_models() {
        let eps = static_endpoints(&config(
            &["http://a:1", "http://b:2/", "http://a:1"],
            &["m", "m", "n"],
        ))
        .unwrap();
        assert_eq!(eps.len(), 2);
        assert!(eps[0].serves("m") && eps[0].serves("n"));
        assert!(eps[1].serves("m") && !eps[1].serves("n"));
        assert_ne!(eps[0].id, eps[1].id);
        // Ids are stable: the same config gives the same ids.
        let again = static_endpoints(&config(&["http://b:2", "http://a:1"], &[])).unwrap();
        assert_eq!(again[0].id, eps[1].id);
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_ignored() {
        use std::future::poll_fn;
        let dir = std::env::temp_dir().join(format!("llmstack-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("backends.txt");
        std::fs::write(&path, "http://a:1").unwrap();
        let load = |p: &Path| {
            let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
            let backends: Vec<&str> = text.split(',').collect();
            static_endpoints(&config(&backends, &[])).map_err(BoxError::from)
        };
        let initial = load(&path).unwrap();
        let mut stream =
            reloading_static_discovery(path.clone(), Duration::from_millis(20), initial, load);
        let mut next = async || {
            let item = tokio::time::timeout(
                Duration::from_secs(5),
                poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)),
            )
            .await;
            match item {
                Ok(Some(Ok(Update::Reset(eps)))) => {
                    eps.iter().map(|e| e.url.to_string()).collect::<Vec<_>>()
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(next().await, ["http://a:1/"]);
        std::fs::write(&path, "ftp://broken").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&path, "http://a:1,http://b:2").unwrap();
        assert_eq!(
            next().await,
            ["http://a:1/", "http://b:2/"],
            "the broken content was skipped"
        );
        std::fs::write(&path, "http://b:2").unwrap();
        assert_eq!(next().await, ["http://b:2/"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validation_explains_itself() {
        let err = |c: DiscoveryConfig| c.validate().unwrap_err().0;
        assert!(err(config(&[], &[])).contains("--static-backends"));
        assert!(err(config(&["ftp://x"], &[])).contains("http://"));
        assert!(err(config(&["https://x"], &[])).contains("https"));
        assert!(err(config(&["http://a:1", "http://b:1"], &["m"])).contains("parallel"));
        assert!(
            config(&["http://a:1/v", "http://localhost:8000"], &["m", "n"])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn refused_urls_are_named() {
        let msg = |raw: &str| parse_url(raw).unwrap_err().0;
        assert_eq!(
            msg(" ftp://x/ "),
            "backend URL `ftp://x` must start with http://"
        );
        assert_eq!(
            msg("https://x"),
            "backend URL `https://x`: https engines are not supported yet (TLS to engines is not in this build)"
        );
        assert_eq!(
            msg("http://a:1/v?q=1"),
            "backend URL `http://a:1/v?q=1` must not have a query string"
        );
        let err = parse_url_inner("a b").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("backend URL `a b` is not a URL: "),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some(), "the URI error");
    }
}
