//! Fuzz targets (property tests) for what `llmstack_metrics` reads from engines: the
//! Prometheus text of `/metrics` ([`parse`], [`engine_stats`]) and the response bodies
//! the accounting layer scans for token usage and content events ([`AccountLayer`]).
//!
//! Each target feeds structured inputs (exposition lines with vLLM's names, labels and
//! every float spelling; SSE streams with content, usage and error events, cut into
//! chunks anywhere) and arbitrary text or bytes, and checks that nothing panics and that
//! what is read agrees with what was generated.
//!
//! `LLMSTACK_FUZZ_CASES` sets the number of cases per target (default 2000, the CI
//! short mode); `scripts/fuzz` runs the long mode in release.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::{Body, Frame};
use llmstack_core::{EndpointId, EngineStats, OnUsage, RouteFacts, Usage};
use llmstack_metrics::{AccountLayer, Sample, engine_stats, parse, vllm};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// Cases per target: `LLMSTACK_FUZZ_CASES`, else 2000.
fn cases() -> u32 {
    std::env::var("LLMSTACK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Equal floats, NaN equal to NaN (and `-0.0` distinct from `0.0`).
fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

// === the exposition ===

/// Every series name the stats read, and a few others.
fn series_name() -> impl Strategy<Value = String> {
    let known: Vec<&'static str> = [
        vllm::RUNNING,
        vllm::WAITING,
        vllm::KV_CACHE_USAGE,
        vllm::PREFIX_CACHE_QUERIES,
        vllm::PREFIX_CACHE_HITS,
        vllm::PREEMPTIONS,
        &[vllm::CACHE_CONFIG_INFO, vllm::LORA_REQUESTS_INFO],
        &["vllm:other", "process_cpu_seconds_total"],
    ]
    .concat();
    prop_oneof![
        8 => prop::sample::select(known).prop_map(str::to_owned),
        1 => "[a-zA-Z_:][a-zA-Z0-9_:]{0,16}",
    ]
}

/// Any short text, and characters the format escapes.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 ,._/-]{0,12}",
        2 => vec(any::<char>(), 0..8).prop_map(|c| c.into_iter().collect()),
        1 => vec(
            prop::sample::select(&['"', '\\', '\n', 'n', '}', '{', '=', ',', ' ', '#', '\r', 'é'][..]),
            0..6,
        )
        .prop_map(|c| c.into_iter().collect()),
    ]
}

/// A label: the ones the stats read, with values of their kind, or any other.
fn label() -> impl Strategy<Value = (String, String)> {
    let lora = vec(
        prop::sample::select(&["sql-lora", " chat-lora ", "", "a b"][..]),
        0..4,
    )
    .prop_map(|v| v.join(","));
    prop_oneof![
        3 => prop::sample::select(&["m", "meta-llama/Llama-3.1-8B-Instruct", "", "m \"q\""][..])
            .prop_map(|m| ("model_name".to_owned(), m.to_owned())),
        1 => (0u8..4).prop_map(|e| ("engine".to_owned(), e.to_string())),
        2 => prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (0u64..100_000).prop_map(|n| n.to_string()),
            (u64::MAX - 3..=u64::MAX).prop_map(|n| n.to_string()),
            text(),
        ]
        .prop_map(|v| ("num_gpu_blocks".to_owned(), v)),
        1 => prop_oneof![any::<u32>().prop_map(|n| n.to_string()), Just("16".to_owned()), text()]
            .prop_map(|v| ("block_size".to_owned(), v)),
        1 => (
            prop::sample::select(&["running_lora_adapters", "waiting_lora_adapters"][..]),
            lora,
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
        1 => ("[a-zA-Z_][a-zA-Z0-9_]{0,8}", text()),
    ]
}

/// A sample value as written, and the number it means: Go's and Rust's float
/// spellings, the special values, huge and tiny exponents.
fn value() -> impl Strategy<Value = (String, f64)> {
    let float = prop_oneof![
        3 => (0u32..64).prop_map(f64::from),
        2 => 0.0..1.0f64,
        2 => any::<f64>().prop_map(finite),
        1 => prop::sample::select(&[f64::MAX, -f64::MAX, 1e308, f64::MIN_POSITIVE, 5e-324, -0.0][..]),
    ];
    prop_oneof![
        6 => (float, 0u8..5).prop_map(|(v, style)| {
            let repr = match style {
                0 => format!("{v}"),
                1 => format!("{v:e}"),
                2 => format!("{v:E}"),
                3 => go_float(v),
                _ if v.is_sign_negative() => format!("{v}"),
                _ => format!("+{v}"),
            };
            (repr, v)
        }),
        2 => prop::sample::select(&[
            ("NaN", f64::NAN),
            ("+Inf", f64::INFINITY),
            ("-Inf", f64::NEG_INFINITY),
            ("Inf", f64::INFINITY),
            ("inf", f64::INFINITY),
            ("-infinity", f64::NEG_INFINITY),
            ("nan", f64::NAN),
            ("1e400", f64::INFINITY),
            ("-1e400", f64::NEG_INFINITY),
            ("1e-400", 0.0),
            ("1.7976931348623157e308", f64::MAX),
            ("2e308", f64::INFINITY),
            ("1e+09", 1e9),
            ("0", 0.0),
            ("-0", -0.0),
            ("00012", 12.0),
            (".5", 0.5),
            ("5.", 5.0),
        ][..])
        .prop_map(|(r, v)| (r.to_owned(), v)),
    ]
}

/// `f`, or the largest float for NaN and the infinities (no filter: its rejections
/// would add up over millions of cases).
fn finite(f: f64) -> f64 {
    if f.is_finite() {
        f
    } else {
        f64::MAX.copysign(f)
    }
}

/// `v` as Go writes a float in the exposition: `1.795481992456e+09`.
fn go_float(v: f64) -> String {
    let s = format!("{v:e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let exp: i32 = exp.parse().unwrap();
            let sign = if exp < 0 { '-' } else { '+' };
            format!("{mantissa}e{sign}{:02}", exp.abs())
        }
        None => s,
    }
}

/// A label value written with the format's escapes.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One sample line as generated, with how it is spaced.
#[derive(Debug, Clone)]
struct GenSample {
    name: String,
    /// `None`: no braces at all.
    labels: Option<Vec<(String, String)>>,
    value: (String, f64),
    timestamp: Option<i64>,
    lead: &'static str,
    inner: &'static str,
    sep: &'static str,
    eq: &'static str,
    trailing_comma: bool,
    gap: &'static str,
}

#[derive(Debug, Clone)]
enum Line {
    Sample(GenSample),
    /// A line that is not a sample (comment, blank, broken): skipped.
    Skipped(String),
}

fn gen_sample() -> impl Strategy<Value = GenSample> {
    (
        series_name(),
        prop::option::weighted(0.8, vec(label(), 0..4)),
        value(),
        prop::option::weighted(0.2, any::<i64>()),
        (
            prop::sample::select(&["", " ", "\t", "  "][..]),
            prop::sample::select(&["", " "][..]),
            prop::sample::select(&[",", ", ", " , ", ",,"][..]),
            prop::sample::select(&["=", " = ", "= "][..]),
            any::<bool>(),
            prop::sample::select(&["", " ", "\t", "  "][..]),
        ),
    )
        .prop_map(
            |(name, labels, value, timestamp, (lead, inner, sep, eq, trailing_comma, gap))| {
                GenSample {
                    name,
                    labels,
                    value,
                    timestamp,
                    lead,
                    inner,
                    sep,
                    eq,
                    trailing_comma,
                    gap,
                }
            },
        )
}

impl GenSample {
    fn render(&self) -> String {
        let mut out = format!("{}{}", self.lead, self.name);
        match &self.labels {
            None => {}
            Some(labels) => {
                out.push('{');
                out.push_str(self.inner);
                let written: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}{}\"{}\"", self.eq, escape(v)))
                    .collect();
                out.push_str(&written.join(self.sep));
                if self.trailing_comma {
                    out.push(',');
                }
                out.push_str(self.inner);
                out.push('}');
            }
        }
        // Without braces, the name ends at whitespace.
        let gap = match (self.labels.is_none(), self.gap) {
            (true, "") => " ",
            (_, gap) => gap,
        };
        out.push_str(gap);
        out.push_str(&self.value.0);
        if let Some(ts) = self.timestamp {
            out.push_str(&format!(" {ts}"));
        }
        out
    }
}

fn line() -> impl Strategy<Value = Line> {
    let skipped = prop_oneof![
        Just(
            "# HELP vllm:num_requests_running Number of requests in model execution batches."
                .to_owned()
        ),
        Just("# TYPE vllm:num_requests_running gauge".to_owned()),
        "#[ -~]{0,20}",
        "[ \t]{0,3}",
        // A name and labels without a value.
        (series_name(), "[ \t]{0,2}").prop_map(|(n, sp)| format!("{n}{sp}")),
        series_name().prop_map(|n| format!("{n}{{model_name=\"m\"}}")),
        // Labels that never close.
        (series_name(), text()).prop_map(|(n, v)| format!("{n}{{model_name=\"{}", escape(&v))),
        (series_name(), text()).prop_map(|(n, v)| format!("{n}{{model_name=\"{}\" 1", escape(&v))),
        // A label without a quoted value.
        series_name().prop_map(|n| format!("{n}{{model_name=m}} 1")),
        // Values that are not numbers.
        (
            series_name(),
            prop::sample::select(
                &[
                    "abc", "1.2.3", "--1", "0x10", "1e", "NaNx", "+-1", "1_000", "Inf1"
                ][..]
            ),
        )
            .prop_map(|(n, v)| format!("{n} {v}")),
        // No name.
        "\\{[ -~]{0,12}",
    ];
    prop_oneof![
        4 => gen_sample().prop_map(Line::Sample),
        1 => skipped.prop_map(Line::Skipped),
    ]
}

/// A sample as [`parse`] returns it, owned.
#[derive(Debug, Clone)]
struct Owned {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Owned {
    fn of(s: &Sample<'_>) -> Self {
        Self {
            name: s.name.to_owned(),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            value: s.value,
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The stats of these samples, read the way the router documents it.
fn check_stats(
    samples: &[Owned],
    text: &str,
    previous: Option<&EngineStats>,
) -> Result<(), TestCaseError> {
    let vllm: Vec<&Owned> = samples
        .iter()
        .filter(|s| s.name.starts_with("vllm:"))
        .collect();
    let config: Vec<&&Owned> = vllm
        .iter()
        .filter(|s| s.name == vllm::CACHE_CONFIG_INFO)
        .collect();
    let blocks: Vec<u64> = config
        .iter()
        .filter_map(|s| s.label("num_gpu_blocks")?.parse().ok())
        .collect();
    // The sum of the engine's blocks over data-parallel ranks (saturating at u64::MAX).
    let blocks = Some(blocks.iter().copied().reduce(u64::saturating_add));
    let stats = engine_stats(text, previous, Instant::now());
    let pick = |names: &[&str]| -> Vec<&Owned> {
        names
            .iter()
            .map(|n| {
                vllm.iter()
                    .copied()
                    .filter(|s| s.name == *n)
                    .collect::<Vec<_>>()
            })
            .find(|v| !v.is_empty())
            .unwrap_or_default()
    };
    let running = pick(vllm::RUNNING);
    let waiting = pick(vllm::WAITING);
    let want = running.iter().map(|s| s.value).sum::<f64>();
    prop_assert!(
        same(stats.running, want),
        "running {} != {want}",
        stats.running
    );
    let want = waiting.iter().map(|s| s.value).sum::<f64>();
    prop_assert!(
        same(stats.waiting, want),
        "waiting {} != {want}",
        stats.waiting
    );
    let mut models: HashMap<&str, (f64, f64)> = HashMap::new();
    for s in &running {
        if let Some(m) = s.label("model_name") {
            models.entry(m).or_default().0 += s.value;
        }
    }
    for s in &waiting {
        if let Some(m) = s.label("model_name") {
            models.entry(m).or_default().1 += s.value;
        }
    }
    prop_assert_eq!(stats.models.len(), models.len());
    for (m, (r, w)) in models {
        let got = stats.models.get(m);
        prop_assert!(got.is_some(), "model {m:?} missing");
        let got = got.copied().unwrap_or_default();
        prop_assert!(
            same(got.running, r) && same(got.waiting, w),
            "model {m:?}: {got:?}"
        );
    }
    let usage = pick(vllm::KV_CACHE_USAGE);
    let want = if usage.is_empty() {
        0.0
    } else {
        usage.iter().map(|s| s.value).sum::<f64>() / usage.len() as f64
    };
    prop_assert!(same(stats.kv_cache_usage, want));
    let counter = |names: &[&str]| {
        pick(names)
            .iter()
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .sum::<f64>()
    };
    prop_assert!(same(
        stats.prefix_cache_queries,
        counter(vllm::PREFIX_CACHE_QUERIES)
    ));
    prop_assert!(same(
        stats.prefix_cache_hits,
        counter(vllm::PREFIX_CACHE_HITS)
    ));
    if let Some(rate) = stats.prefix_cache_hit_rate {
        prop_assert!(
            (0.0..=1.0).contains(&rate),
            "hit rate {rate} (queries {}, hits {}, previous {previous:?})",
            stats.prefix_cache_queries,
            stats.prefix_cache_hits
        );
    }
    if previous.is_none() {
        prop_assert_eq!(stats.prefix_cache_hit_rate, None);
    }
    prop_assert_eq!(stats.num_gpu_blocks, blocks.flatten());
    let want = config
        .iter()
        .find_map(|s| s.label("block_size")?.parse::<u32>().ok());
    prop_assert_eq!(stats.block_size, want);
    let lora = vllm
        .iter()
        .filter(|s| s.name == vllm::LORA_REQUESTS_INFO)
        .max_by(|a, b| a.value.total_cmp(&b.value));
    for (got, key) in [
        (&stats.lora_running, "running_lora_adapters"),
        (&stats.lora_waiting, "waiting_lora_adapters"),
    ] {
        let want: Vec<&str> = lora
            .and_then(|s| s.label(key))
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        prop_assert_eq!(got, &want);
        prop_assert!(got.iter().all(|a| !a.is_empty() && a.trim() == a));
    }
    Ok(())
}

/// The last scrape of the same engine, for the hit rate.
fn previous() -> impl Strategy<Value = Option<EngineStats>> {
    let counter = prop_oneof![
        Just(0.0),
        (0u32..100_000).prop_map(f64::from),
        any::<f64>().prop_map(finite),
        Just(f64::MAX),
    ];
    prop::option::of((counter.clone(), counter)).prop_map(|c| {
        c.map(|(queries, hits)| EngineStats {
            running: 0.0,
            waiting: 0.0,
            kv_cache_usage: 0.0,
            prefix_cache_queries: queries,
            prefix_cache_hits: hits,
            prefix_cache_hit_rate: None,
            num_gpu_blocks: None,
            block_size: None,
            lora_running: Vec::new(),
            lora_waiting: Vec::new(),
            models: HashMap::new(),
            scraped_at: Instant::now(),
        })
    })
}

proptest! {
    #![proptest_config(config())]

    /// Generated expositions: every sample line reads back as written (name, labels
    /// unescaped, value), every other line is skipped, and the stats add up.
    #[test]
    fn fuzz_exposition_structured(
        lines in vec(line(), 0..12),
        crlf in any::<bool>(),
        final_newline in any::<bool>(),
        previous in previous(),
    ) {
        let mut text = lines
            .iter()
            .map(|l| match l {
                Line::Sample(s) => s.render(),
                Line::Skipped(s) => s.clone(),
            })
            .collect::<Vec<_>>()
            .join(if crlf { "\r\n" } else { "\n" });
        if final_newline {
            text.push('\n');
        }
        let want: Vec<Owned> = lines
            .iter()
            .filter_map(|l| match l {
                Line::Sample(s) => Some(Owned {
                    name: s.name.clone(),
                    labels: s.labels.clone().unwrap_or_default(),
                    value: s.value.1,
                }),
                Line::Skipped(_) => None,
            })
            .collect();
        let got: Vec<Owned> = parse(&text).map(|s| Owned::of(&s)).collect();
        prop_assert_eq!(got.len(), want.len(), "{:?}", text);
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(&g.name, &w.name, "{:?}", text);
            prop_assert_eq!(&g.labels, &w.labels, "{:?}", text);
            prop_assert!(same(g.value, w.value), "{} != {} in {:?}", g.value, w.value, text);
        }
        check_stats(&want, &text, previous.as_ref())?;
    }

    /// Arbitrary text, and text of the format's characters: never a panic; samples
    /// have a name; the stats are those of what was parsed.
    #[test]
    fn fuzz_exposition_text(
        text in prop_oneof![
            ".{0,80}",
            "[a-z_:{}=\", \\\\\n\t#.0-9e+-]{0,80}",
            vec(prop_oneof![
                Just("vllm:num_requests_running".to_owned()),
                Just("vllm:cache_config_info".to_owned()),
                Just("vllm:prefix_cache_hits_total".to_owned()),
                Just("{num_gpu_blocks=\"".to_owned()),
                Just("\"}".to_owned()),
                Just(" NaN".to_owned()),
                Just(" 1e308".to_owned()),
                Just("\n".to_owned()),
                "[ -~]{0,3}",
            ], 0..20).prop_map(|v| v.concat()),
        ],
        previous in previous(),
    ) {
        let samples: Vec<Owned> = parse(&text).map(|s| Owned::of(&s)).collect();
        for s in &samples {
            prop_assert!(!s.name.is_empty());
            prop_assert!(!s.name.contains(|c: char| c == '{' || c.is_ascii_whitespace()), "{:?}", s.name);
        }
        check_stats(&samples, &text, previous.as_ref())?;
    }
}

// === the accounting layer's scan of response bodies ===

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

// === bugs the targets found, kept as regression tests ===

/// Found by `fuzz_exposition_structured`: `engine_stats` adds the `num_gpu_blocks`
/// labels of data-parallel ranks with `+` (`stats.rs`, `.reduce(|a, b| a + b)`), which
/// panics in debug builds (overflow checks) and wraps in release, for label values an
/// engine (or anything answering on its port) controls.
#[test]
fn num_gpu_blocks_that_overflow() {
    let text = "vllm:cache_config_info{num_gpu_blocks=\"3\"} 0\n\
                vllm:cache_config_info{num_gpu_blocks=\"18446744073709551613\"} 0\n";
    let stats = engine_stats(text, None, Instant::now());
    // Whatever the fix (saturate, or no sum), never fewer blocks than one rank has.
    assert!(
        stats
            .num_gpu_blocks
            .is_none_or(|n| n >= 18_446_744_073_709_551_613),
        "{:?}",
        stats.num_gpu_blocks
    );
}

/// Found by reading `engine_stats` for the fuzz target's invariant: prefix-cache
/// counters whose finite samples add up to infinity give `Some(NaN)` as the hit rate
/// (`inf / inf`; `clamp` keeps NaN), outside the documented 0..1.
#[test]
fn hit_rate_of_counters_that_sum_to_infinity() {
    let previous = engine_stats(
        "vllm:prefix_cache_queries_total 0\nvllm:prefix_cache_hits_total 0\n",
        None,
        Instant::now(),
    );
    let text = "vllm:prefix_cache_queries_total 1e308\n\
                vllm:prefix_cache_queries_total 1e308\n\
                vllm:prefix_cache_hits_total 1e308\n\
                vllm:prefix_cache_hits_total 1e308\n";
    let stats = engine_stats(text, Some(&previous), Instant::now());
    let rate = stats.prefix_cache_hit_rate;
    assert!(rate.is_none_or(|r| (0.0..=1.0).contains(&r)), "{rate:?}");
}
