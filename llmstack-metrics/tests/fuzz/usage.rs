//! The usage targets: the accounting layer ([`AccountLayer`]) scanning generated SSE
//! streams and JSON bodies, cut into chunks anywhere, and arbitrary bytes, for token
//! usage and content events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::{Body, Frame};
use llmstack_core::{EndpointId, OnUsage, RouteFacts, Usage};
use llmstack_metrics::AccountLayer;
use proptest::collection::vec;
use proptest::prelude::*;
use tower_layer::Layer;
use tower_service::Service;

use crate::config;

/// A response body of these chunks, ending with an error when `fail`.
struct Chunks {
    chunks: VecDeque<Bytes>,
    fail: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        Poll::Ready(match self.chunks.pop_front() {
            Some(c) => Some(Ok(Frame::data(c))),
            None if self.fail => Some(Err("broken")),
            None => None,
        })
    }
}

/// An engine answering with one response.
struct Engine {
    chunks: Vec<Bytes>,
    fail: bool,
    content_type: Option<&'static str>,
    reported: Arc<Mutex<Vec<Usage>>>,
}

impl Service<Request<()>> for Engine {
    type Response = Response<Chunks>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Chunks>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        let mut resp = Response::new(Chunks {
            chunks: self.chunks.drain(..).collect(),
            fail: self.fail,
        });
        if let Some(ct) = self.content_type {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
        }
        resp.extensions_mut().insert(RouteFacts {
            model: Some("m".into()),
            policy: "roundrobin",
            reason: "picked",
            engine: Some(EndpointId::new("e1")),
            predicted_cached_tokens: None,
        });
        let reported = Arc::clone(&self.reported);
        resp.extensions_mut()
            .insert(OnUsage::new(move |u| reported.lock().unwrap().push(u)));
        std::future::ready(Ok(resp))
    }
}

/// The usage the accounting layer reports for a response of these chunks (polled to
/// the end without a runtime: nothing in it waits).
fn account(chunks: &[Vec<u8>], content_type: Option<&'static str>, fail: bool) -> Vec<Usage> {
    let reported = Arc::new(Mutex::new(Vec::new()));
    let engine = Engine {
        chunks: chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
        fail,
        content_type,
        reported: Arc::clone(&reported),
    };
    let mut svc = AccountLayer::new().layer(engine);
    let mut cx = Context::from_waker(Waker::noop());
    let req = Request::builder()
        .uri("/v1/chat/completions")
        .body(())
        .unwrap();
    let fut = pin!(svc.call(req));
    let Poll::Ready(Ok(resp)) = fut.poll(&mut cx) else {
        panic!("the engine answers at once")
    };
    let mut body = Box::pin(resp.into_body());
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(None | Some(Err(_))) => break,
            Poll::Pending => panic!("the body is ready"),
        }
    }
    drop(body);
    reported.lock().unwrap().clone()
}

/// What the accounting documents, read naively: per chunk, the number after the first
/// `"prompt_tokens":` (else `"input_tokens":`) and `"completion_tokens":` (else
/// `"output_tokens":`), spaces skipped, the last chunk with one winning; in a stream,
/// each `data:` line that is not an error event and has a non-empty `content`, `text`
/// or `delta` string counts as a content event.
fn expected_usage(chunks: &[Vec<u8>], sse: bool) -> Usage {
    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
    fn number_after(data: &[u8], key: &[u8]) -> Option<u64> {
        let at = find(data, key)? + key.len();
        let rest = &data[at..];
        let start = rest.iter().position(|b| *b != b' ').unwrap_or(rest.len());
        let digits: &[u8] = &rest[start..];
        let end = digits
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(digits.len());
        let digits = std::str::from_utf8(&digits[..end]).ok()?;
        if digits.is_empty() {
            return None;
        }
        digits.parse().ok()
    }
    fn has_content(line: &[u8]) -> bool {
        [&b"\"content\":\""[..], b"\"text\":\"", b"\"delta\":\""]
            .iter()
            .any(|pat| {
                (0..line.len()).any(|i| {
                    line[i..].starts_with(pat)
                        && line.get(i + pat.len()).is_some_and(|b| *b != b'"')
                })
            })
    }
    let mut usage = Usage::default();
    for chunk in chunks {
        if sse {
            for line in chunk.split(|b| *b == b'\n') {
                if line.starts_with(b"data:")
                    && !line.starts_with(b"data: {\"error\"")
                    && has_content(line)
                {
                    usage.content_events += 1;
                }
            }
        }
        if let Some(p) = number_after(chunk, b"\"prompt_tokens\":")
            .or_else(|| number_after(chunk, b"\"input_tokens\":"))
        {
            usage.prompt_tokens = Some(p);
        }
        if let Some(c) = number_after(chunk, b"\"completion_tokens\":")
            .or_else(|| number_after(chunk, b"\"output_tokens\":"))
        {
            usage.completion_tokens = Some(c);
        }
    }
    usage
}

/// A token count as an engine might write it (or not quite).
fn count() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<u64>().prop_map(|n| n.to_string()),
        4 => (0u64..5000).prop_map(|n| n.to_string()),
        1 => Just("18446744073709551616".to_owned()),
        1 => Just("99999999999999999999999".to_owned()),
        1 => (0u64..100).prop_map(|n| format!("  {n}")),
        1 => prop::sample::select(&["null", "-1", "1.5", "\"7\"", "", "007"][..]).prop_map(str::to_owned),
    ]
}

/// One event of an engine's stream.
#[derive(Debug, Clone)]
enum Event {
    /// A chunk with this generated text in a `content`, `text` or `delta` field.
    Content(&'static str, String),
    /// `usage` with the OpenAI or the Anthropic key names.
    Usage {
        anthropic: bool,
        prompt: String,
        completion: String,
    },
    Error,
    Done,
    Ping,
    Raw(Vec<u8>),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (
            prop::sample::select(&["content", "text", "delta", "reasoning_content"][..]),
            prop_oneof![Just(String::new()), ".{0,6}"],
        )
            .prop_map(|(f, t)| Event::Content(f, t)),
        2 => (any::<bool>(), count(), count()).prop_map(|(anthropic, prompt, completion)| Event::Usage {
            anthropic,
            prompt,
            completion,
        }),
        1 => Just(Event::Error),
        1 => Just(Event::Done),
        1 => Just(Event::Ping),
        1 => vec(any::<u8>(), 0..16).prop_map(Event::Raw),
    ]
}

impl Event {
    fn render(&self, out: &mut Vec<u8>) {
        let s = match self {
            Event::Content(field, text) => {
                let text = serde_json::to_string(text).unwrap();
                match *field {
                    "delta" => format!(
                        "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":{text}}}\n\n"
                    ),
                    "text" => {
                        format!("data: {{\"choices\":[{{\"index\":0,\"text\":{text}}}]}}\n\n")
                    }
                    f => format!("data: {{\"choices\":[{{\"delta\":{{\"{f}\":{text}}}}}]}}\n\n"),
                }
            }
            Event::Usage {
                anthropic: false,
                prompt,
                completion,
            } => format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"total_tokens\":0,\"completion_tokens\":{completion}}}}}\n\n"
            ),
            Event::Usage {
                anthropic: true,
                prompt,
                completion,
            } => format!(
                "event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"input_tokens\":{prompt},\"output_tokens\":{completion}}}}}\n\n"
            ),
            Event::Error => {
                "data: {\"error\":{\"message\":\"engine failed\",\"content\":\"x\"}}\n\n".to_owned()
            }
            Event::Done => "data: [DONE]\n\n".to_owned(),
            Event::Ping => ": ping\n\n".to_owned(),
            Event::Raw(bytes) => {
                out.extend_from_slice(bytes);
                return;
            }
        };
        out.extend_from_slice(s.as_bytes());
    }
}

/// `body` cut at these points (any byte, inside a key or a number included).
fn cut(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for a in at.into_iter().chain([body.len()]) {
        chunks.push(body[start..a].to_vec());
        start = a;
    }
    chunks
}

proptest! {
    #![proptest_config(config())]

    /// Generated streams (and JSON bodies), cut into chunks anywhere: the usage
    /// reported once, as the documented scan reads it; when no key is cut, exactly the
    /// numbers generated.
    #[test]
    fn fuzz_usage_structured(
        events in vec(event(), 0..8),
        cuts in prop_oneof![Just(Vec::new()), vec(any::<usize>(), 0..6)],
        content_type in prop::sample::select(&[
            Some("text/event-stream"),
            Some("text/event-stream; charset=utf-8"),
            Some("application/json"),
            None,
        ][..]),
        fail in prop::bool::weighted(0.1),
    ) {
        let mut body = Vec::new();
        for e in &events {
            e.render(&mut body);
        }
        let chunks = cut(&body, &cuts);
        let sse = content_type.is_some_and(|ct| ct.starts_with("text/event-stream"));
        let reported = account(&chunks, content_type, fail);
        prop_assert_eq!(reported.len(), 1, "reported once");
        let want = expected_usage(&chunks, sse);
        prop_assert_eq!(reported[0], want);
        // In one chunk without raw bytes, the last usage event's numbers, when they are
        // numbers, and one content event per non-empty content.
        if chunks.len() == 1 && !events.iter().any(|e| matches!(e, Event::Raw(_))) {
            let last = events.iter().rev().find_map(|e| match e {
                Event::Usage { prompt, completion, .. } => Some((prompt, completion)),
                _ => None,
            });
            // The unsigned integer right after the key: its leading digits.
            let number = |s: &str| {
                let s = s.trim_start_matches(' ');
                let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
                s[..end].parse::<u64>().ok()
            };
            if let Some((p, c)) = last
                && events.iter().filter(|e| matches!(e, Event::Usage { .. })).count() == 1
            {
                prop_assert_eq!(reported[0].prompt_tokens, number(p));
                prop_assert_eq!(reported[0].completion_tokens, number(c));
            }
            if sse {
                let contents = events
                    .iter()
                    .filter(|e| matches!(e, Event::Content(f, t) if *f != "reasoning_content" && !t.is_empty()))
                    .count();
                prop_assert_eq!(reported[0].content_events, contents as u64);
            }
        }
    }

    /// Arbitrary bytes, and bytes of the scanned keys: never a panic, the usage
    /// reported once.
    #[test]
    fn fuzz_usage_bytes(
        chunks in vec(prop_oneof![
            vec(any::<u8>(), 0..48),
            vec(prop_oneof![
                Just(b"\"prompt_tokens\":".to_vec()),
                Just(b"\"completion_tokens\":".to_vec()),
                Just(b"\"output_tokens\": ".to_vec()),
                Just(b"data: ".to_vec()),
                Just(b"\"content\":\"".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"99999999999999999999".to_vec()),
                vec(any::<u8>(), 0..4),
            ], 0..8).prop_map(|v| v.concat()),
        ], 0..4),
        sse in any::<bool>(),
    ) {
        let ct = sse.then_some("text/event-stream");
        let reported = account(&chunks, ct, false);
        prop_assert_eq!(reported.len(), 1);
        prop_assert_eq!(reported[0], expected_usage(&chunks, sse));
    }
}
