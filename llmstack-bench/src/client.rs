//! Sending one chat request and timing what comes back.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::Prompt;

/// A pooled HTTP/1 client for one OpenAI-compatible base URL.
#[derive(Debug, Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    /// Chat URLs of one or more endpoints, taken in turn.
    chat_urls: Arc<[String]>,
    next: Arc<AtomicUsize>,
    model: String,
    stream: bool,
}

/// What one request gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The HTTP status; `None` when no answer came (connect failure, cut connection).
    pub status: Option<u16>,
    /// Time to the first content-bearing chunk (streamed requests).
    pub ttft: Option<Duration>,
    /// Gaps between content-bearing chunks.
    pub itl: Vec<Duration>,
    /// Request to end of response.
    pub e2e: Duration,
    /// `usage.prompt_tokens`, when reported.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens`, when reported.
    pub completion_tokens: Option<u64>,
    /// The generated text (multi-round QA appends it to the history).
    pub text: String,
}

/// Why [`Client::get_text`] (and so [`engine_counters`](crate::engine_counters)) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum GetError {
    /// The request could not be built (a malformed URL).
    Request(http::Error),
    /// No answer came (connect failure, cut connection).
    Transport {
        /// The URL asked.
        url: String,
        /// The client's error.
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body could not be read.
    Body(hyper::Error),
    /// The answer was not 2xx.
    Status {
        /// The URL asked.
        url: String,
        /// Its answer.
        status: http::StatusCode,
    },
}

// === impl Client ===

impl Client {
    /// A client for `base_url` (`http://host:port`, the `/v1/...` paths are added; a
    /// comma-separated list is taken in turn, to load several engines directly), asking
    /// for `model`, streaming with usage when `stream`.
    pub fn new(base_url: &str, model: &str, stream: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            http: HyperClient::builder(TokioExecutor::new())
                .pool_max_idle_per_host(usize::MAX)
                .build(connector),
            chat_urls: base_url
                .split(',')
                .map(|u| format!("{}/v1/chat/completions", u.trim().trim_end_matches('/')))
                .collect(),
            next: Arc::new(AtomicUsize::new(0)),
            model: model.to_owned(),
            stream,
        }
    }

    /// `GET url` as text (the engines' `/metrics`); fails on a transport error or a
    /// non-2xx answer.
    pub async fn get_text(&self, url: &str) -> Result<String, GetError> {
        let req = http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .map_err(GetError::Request)?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|source| GetError::Transport {
                url: url.to_owned(),
                source,
            })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(GetError::Body)?
            .to_bytes();
        if !status.is_success() {
            return Err(GetError::Status {
                url: url.to_owned(),
                status,
            });
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends one chat request (`temperature` 0, `ignore_eos` so answers have the asked
    /// length; `stream_options.include_usage` when streaming) with the user's
    /// `x-user-id` session header, and times the answer.
    pub async fn send(&self, prompt: &Prompt) -> Outcome {
        let mut body = json!({"model": self.model, "messages": prompt.messages,
            "max_tokens": prompt.max_tokens, "temperature": 0, "ignore_eos": true});
        if self.stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let mut req = http::Request::post(
            &self.chat_urls[self.next.fetch_add(1, Ordering::Relaxed) % self.chat_urls.len()],
        )
        .header("content-type", "application/json");
        if let Some(session) = &prompt.session {
            req = req.header("x-user-id", session.as_str());
        }
        let start = Instant::now();
        let failed = |start: Instant| Outcome {
            status: None,
            ttft: None,
            itl: Vec::new(),
            e2e: start.elapsed(),
            prompt_tokens: None,
            completion_tokens: None,
            text: String::new(),
        };
        let Ok(req) = req.body(Full::new(Bytes::from(body.to_string()))) else {
            return failed(start);
        };
        let Ok(resp) = self.http.request(req).await else {
            return failed(start);
        };
        let status = resp.status().as_u16();
        let mut out = Outcome {
            status: Some(status),
            ..failed(start)
        };
        let mut body = resp.into_body();
        let mut last: Option<Instant> = None;
        let mut pending = Vec::new();
        let mut whole = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                out.status = None; // cut mid-body
                break;
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if !self.stream {
                whole.extend_from_slice(&data);
                continue;
            }
            pending.extend_from_slice(&data);
            let now = Instant::now();
            while let Some(end) = memchr::memmem::find(&pending, b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let Some(json) = event.strip_prefix(b"data: ") else {
                    continue;
                };
                let Ok(chunk) = serde_json::from_slice::<Value>(json) else {
                    continue;
                };
                let content = chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or_default();
                if !content.is_empty() {
                    match last {
                        None => out.ttft = Some(now.duration_since(start)),
                        Some(prev) => out.itl.push(now.duration_since(prev)),
                    }
                    last = Some(now);
                    out.text.push_str(content);
                }
                read_usage(&chunk, &mut out);
            }
        }
        if !self.stream
            && let Ok(answer) = serde_json::from_slice::<Value>(&whole)
        {
            out.text = answer["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            read_usage(&answer, &mut out);
        }
        out.e2e = start.elapsed();
        out
    }
}

// === impl GetError ===

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Request(e) => write!(f, "{e}"),
            Self::Transport { url, source } => write!(f, "{url}: {source}"),
            Self::Body(e) => write!(f, "{e}"),
            Self::Status { url, status } => write!(f, "{url} answered {status}"),
        }
    }
}

impl std::error::Error for GetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Request(e) => Some(e),
            Self::Transport { source, .. } => Some(source),
            Self::Body(e) => Some(e),
            Self::Status { .. } => None,
        }
    }
}

fn read_usage(v: &Value, out: &mut Outcome) {
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        out.prompt_tokens = usage["prompt_tokens"].as_u64();
        out.completion_tokens = usage["completion_tokens"].as_u64();
    }
}
