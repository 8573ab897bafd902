//! Static discovery: the configured list, once.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use http::Uri;
use llmstack_core::{BoxError, Discover, Endpoint, ModelCard, Update};

use crate::{ConfigError, DiscoveryConfig};

/// The endpoints described by `--static-backends`, `--static-models` and
/// `--static-model-labels`: one endpoint per distinct URL (a repeated URL collects all
/// its models), in order of first appearance, all [`Pending`](llmstack_core::EndpointState::Pending).
///
/// Fails on a URL that is not an absolute `http://` URL.
pub fn static_endpoints(config: &DiscoveryConfig) -> Result<Vec<Endpoint>, ConfigError> {
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (i, raw) in config.static_backends.iter().enumerate() {
        let url = parse_url(raw).map_err(ConfigError)?;
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

/// An engine base URL: absolute, `http`, with a host; a trailing `/` is dropped.
pub(crate) fn parse_url(raw: &str) -> Result<Uri, String> {
    let raw = raw.trim().trim_end_matches('/');
    let url: Uri = raw
        .parse()
        .map_err(|e| format!("backend URL `{raw}` is not a URL: {e}"))?;
    match url.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "backend URL `{raw}`: https engines are not supported yet (TLS to engines is not in this build)"
            ));
        }
        _ => return Err(format!("backend URL `{raw}` must start with http://")),
    }
    if url.host().is_none_or(str::is_empty) {
        return Err(format!("backend URL `{raw}` has no host"));
    }
    if url.query().is_some() {
        return Err(format!("backend URL `{raw}` must not have a query string"));
    }
    Ok(url)
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
}
