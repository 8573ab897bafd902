//! Helpers for llmstack's integration tests: a small HTTP client over hyper, an SSE
//! reader that records arrival times, background requests and polling.
//!
//! Test-only code (`publish = false`, a dev-dependency only): it panics on transport
//! errors instead of returning them, which is what a test wants.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc, missing_docs)]

pub mod dnsmasq;
pub mod kube_apiserver;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::time::Instant;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

pub async fn send(
    c: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    send_bytes(c, method, url, headers, Bytes::from(body.to_owned())).await
}

pub async fn send_bytes(
    c: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = c.request(req.body(Full::new(body)).unwrap()).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn get(c: &HttpClient, url: &str) -> Answer {
    send(c, Method::GET, url, &[], "").await
}

pub async fn post(c: &HttpClient, url: &str, body: &Value) -> Answer {
    send(
        c,
        Method::POST,
        url,
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await
}

/// One SSE event (its `event:` name, if any) and when it arrived.
#[derive(Debug)]
pub struct Event {
    pub name: Option<String>,
    pub data: String,
    pub at: Instant,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A streaming POST: the SSE events with arrival times, the time the request was sent,
/// and whether the body ended with an error (connection closed mid-stream).
#[derive(Debug)]
pub struct Stream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub start: Instant,
    pub events: Vec<Event>,
    pub raw: String,
    pub broken: bool,
}

pub async fn stream(c: &HttpClient, url: &str, body: &Value) -> Stream {
    stream_bytes(
        c,
        url,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
}

/// [`stream`] with any headers and body.
pub async fn stream_bytes(
    c: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Stream {
    let start = Instant::now();
    let mut req = Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = c.request(req.body(Full::new(body)).unwrap()).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let mut body = res.into_body();
    let mut raw = String::new();
    let mut pending = String::new();
    let mut events = Vec::new();
    let mut broken = false;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => {
                broken = true;
                break;
            }
            Some(Ok(f)) => {
                let Ok(data) = f.into_data() else { continue };
                let s = std::str::from_utf8(&data).unwrap();
                raw.push_str(s);
                pending.push_str(s);
                let now = Instant::now();
                while let Some(pos) = pending.find("\n\n") {
                    let ev: String = pending.drain(..pos + 2).collect();
                    let ev = ev.trim_end();
                    let (name, data) = match ev.strip_prefix("event: ") {
                        Some(rest) => {
                            let (name, data) = rest.split_once('\n').unwrap();
                            (Some(name.to_owned()), data)
                        }
                        None => (None, ev),
                    };
                    let data = data
                        .strip_prefix("data: ")
                        .unwrap_or_else(|| panic!("not SSE: {ev:?}"));
                    events.push(Event {
                        name,
                        data: data.to_owned(),
                        at: now,
                    });
                }
            }
        }
    }
    Stream {
        status,
        headers,
        start,
        events,
        raw,
        broken,
    }
}

/// [`post`] in a background task.
pub fn spawn_post(c: &HttpClient, url: String, body: Value) -> tokio::task::JoinHandle<Answer> {
    let c = c.clone();
    tokio::spawn(async move { post(&c, &url, &body).await })
}

/// [`stream`] in a background task.
pub fn spawn_stream(c: &HttpClient, url: String, body: Value) -> tokio::task::JoinHandle<Stream> {
    let c = c.clone();
    tokio::spawn(async move { stream(&c, &url, &body).await })
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The value of a sample in a Prometheus exposition (`name{labels}` exact prefix match
/// on the name and every given label).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse().ok())?
        })
}
