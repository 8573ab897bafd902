//! The router's own metrics: the Prometheus recorder and per-request accounting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use llmstack_core::{EndpointId, EndpointState, Error};
use llmstack_metrics::names;
use metrics::{Counter, Histogram, SharedString, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio::time::Instant;

use crate::state::Shared;

/// Latency buckets (seconds): sub-millisecond router work up to long generations.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];
/// Inter-token buckets (seconds): an 8B decode step is 6–15 ms.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How long a gauge lives without being set (see [`recorder`]).
const GAUGE_IDLE: Duration = Duration::from_secs(60);

/// The process's Prometheus recorder, installed on first use (the server is the only
/// code that installs one). When an embedding program installed another recorder first,
/// the router's series go to that one and this handle renders nothing of them.
pub(crate) fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Per-engine gauges are refreshed at every render while the engine is known
            // and its stats fresh; an engine removed or gone silent drops out after a
            // minute instead of showing its last value forever.
            let builder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .set_buckets_for_metric(
                    Matcher::Full(names::REQUEST_DURATION.into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::TTFT.into()), LATENCY_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::ITL.into()), ITL_BUCKETS)
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "histogram buckets rejected; using defaults");
                    PrometheusBuilder::new().build_recorder()
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows only its own series"
                );
            }
            names::describe();
            handle
        })
        .clone()
}

/// Keeps histograms bounded: the exporter drains its buckets on upkeep.
pub(crate) async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// `/metrics`: refreshes the gauges read from shared state, then renders.
pub(crate) fn render(shared: &Shared, handle: &PrometheusHandle) -> String {
    let set = shared.endpoints();
    let stats = shared.stats.snapshot();
    let mut by_state = [0u32; 3];
    // Every model ever served or configured, so one whose engines all left reads 0.
    let mut ready_by_model: std::collections::HashMap<&str, u32> =
        set.seen_models().map(|m| (m, 0)).collect();
    for ep in set.iter() {
        for model in &ep.models {
            *ready_by_model.entry(model.id.as_str()).or_default() +=
                u32::from(ep.state == EndpointState::Ready);
        }
        let engine = SharedString::from(ep.id.to_string());
        by_state[match ep.state {
            EndpointState::Pending => 0,
            EndpointState::Ready => 1,
            EndpointState::Unready => 2,
        }] += 1;
        gauge!(names::IN_FLIGHT, "engine" => engine.clone())
            .set(shared.in_flight.get(&ep.id) as f64);
        if let Some(s) = stats.get(&ep.id) {
            gauge!(names::ENGINE_RUNNING, "engine" => engine.clone()).set(s.running);
            gauge!(names::ENGINE_WAITING, "engine" => engine.clone()).set(s.waiting);
            gauge!(names::ENGINE_KV_CACHE_USAGE, "engine" => engine.clone()).set(s.kv_cache_usage);
            if let Some(rate) = s.prefix_cache_hit_rate {
                gauge!(names::ENGINE_PREFIX_CACHE_HIT, "engine" => engine).set(rate);
            }
        }
    }
    for (state, n) in ["pending", "ready", "unready"].into_iter().zip(by_state) {
        gauge!(names::ENDPOINTS, "state" => state).set(f64::from(n));
    }
    for (model, n) in ready_by_model {
        gauge!(names::MODEL_READY_ENDPOINTS, "model" => model.to_owned()).set(f64::from(n));
    }
    handle.render()
}

/// The status class: `2xx`, `3xx`, `4xx` or `5xx` (anything else counts as `5xx`).
fn class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// One proxied request, from arrival until its response is settled.
///
/// Settled exactly once: by an error, by handing over to the response body, or (when the
/// client leaves before any of that) on drop, as status `cancelled`.
#[derive(Debug)]
pub(crate) struct Tally {
    route: &'static str,
    /// A model some engine serves (bounded), or `None`: labelled `unknown`.
    model: Option<String>,
    start: Instant,
    settled: bool,
}

/// The metric handles of one (route, status class, engine, model) combination.
#[derive(Debug)]
pub(crate) struct RequestMeters {
    requests: Counter,
    duration: Histogram,
    ttft: Histogram,
    itl: Histogram,
    prompt: Counter,
    completion: Counter,
}

/// Resolved metric handles, so the request path does not build label sets and look up
/// the registry for every request (that cost ~2 µs per request).
///
/// Bounded: keys are routes × status classes × discovered engines × models they serve;
/// the cache is cleared if it ever holds more than [`MAX_METERS`] entries.
#[derive(Debug, Default)]
pub(crate) struct Meters {
    requests: Mutex<MeterIndex>,
    decisions: Mutex<HashMap<(&'static str, &'static str), Counter>>,
}

const MAX_METERS: usize = 10_000;

/// (route, status class) → engine → model → handles.
type MeterIndex = HashMap<
    (&'static str, &'static str),
    HashMap<EndpointId, HashMap<Box<str>, Arc<RequestMeters>>>,
>;

/// A response body on its way: counts content chunks, reads `usage`, and records the
/// request when dropped (body ended, failed, or the client left).
#[derive(Debug)]
pub(crate) struct BodyTally {
    start: Instant,
    meters: Arc<RequestMeters>,
    sse: bool,
    last_content: Option<Instant>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

// === impl Tally ===

impl Tally {
    /// A request on `route` that arrived at `start`; its model label is `unknown` until
    /// the router knows the model is one it serves (labels stay bounded).
    pub(crate) fn new(route: &'static str, start: Instant) -> Self {
        Self {
            route,
            model: None,
            start,
            settled: false,
        }
    }

    /// Labels the request with a model some engine serves.
    pub(crate) fn set_model(&mut self, model: &str) {
        self.model = Some(model.to_owned());
    }

    /// The request ended with a router-generated error (a rare path: plain macros).
    pub(crate) fn error(&mut self, err: &Error) {
        self.settle(class(err.status()));
    }

    fn settle(&mut self, status: &'static str) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let model = SharedString::from(self.model.take().unwrap_or_else(|| "unknown".into()));
        counter!(names::REQUESTS, "route" => self.route, "model" => model.clone(),
            "engine" => "", "status" => status)
        .increment(1);
        histogram!(names::REQUEST_DURATION, "route" => self.route, "model" => model)
            .record(self.start.elapsed().as_secs_f64());
    }

    /// Accounting for the body of `engine`'s response.
    pub(crate) fn body(
        mut self,
        meters: &Meters,
        engine: &EndpointId,
        status: u16,
        sse: bool,
    ) -> BodyTally {
        self.settled = true;
        let model = self.model.as_deref().unwrap_or("unknown");
        BodyTally {
            start: self.start,
            meters: meters.request(self.route, class(status), engine, model),
            sse,
            last_content: None,
            prompt_tokens: None,
            completion_tokens: None,
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        // The client left before an answer started: still one request, accounted for.
        self.settle("cancelled");
    }
}

// === impl Meters ===

impl Meters {
    fn request(
        &self,
        route: &'static str,
        status: &'static str,
        engine: &EndpointId,
        model: &str,
    ) -> Arc<RequestMeters> {
        let mut all = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = all
            .get(&(route, status))
            .and_then(|by_engine| by_engine.get(engine))
            .and_then(|by_model| by_model.get(model))
        {
            return Arc::clone(m);
        }
        let size: usize = all
            .values()
            .flat_map(HashMap::values)
            .map(HashMap::len)
            .sum();
        if size >= MAX_METERS {
            all.clear();
        }
        let labels = [
            ("model", SharedString::from(model.to_owned())),
            ("engine", SharedString::from(engine.to_string())),
        ];
        let by_model = [("model", SharedString::from(model.to_owned()))];
        let meters = Arc::new(RequestMeters {
            requests: counter!(names::REQUESTS, "route" => route, "model" => model.to_owned(),
                "engine" => engine.to_string(), "status" => status),
            duration: histogram!(names::REQUEST_DURATION, "route" => route, "model" => model.to_owned()),
            ttft: histogram!(names::TTFT, &by_model),
            itl: histogram!(names::ITL, &by_model),
            prompt: counter!(names::PROMPT_TOKENS, &labels),
            completion: counter!(names::COMPLETION_TOKENS, &labels),
        });
        all.entry((route, status))
            .or_default()
            .entry(engine.clone())
            .or_default()
            .insert(model.into(), Arc::clone(&meters));
        meters
    }

    /// Counts a routing decision.
    pub(crate) fn decision(&self, policy: &'static str, reason: &'static str) {
        let mut decisions = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        decisions
            .entry((policy, reason))
            .or_insert_with(
                || counter!(names::ROUTING_DECISIONS, "policy" => policy, "reason" => reason),
            )
            .increment(1);
    }
}

/// Counts an engine failure seen by the proxy, and the retry it caused if any.
pub(crate) fn upstream_error(engine: &str, err: &Error, retried: bool) {
    counter!(names::UPSTREAM_ERRORS, "engine" => engine.to_owned(), "kind" => err.label())
        .increment(1);
    if retried {
        counter!(names::RETRIES, "engine" => engine.to_owned(), "reason" => err.label())
            .increment(1);
    }
}

// === impl BodyTally ===

impl BodyTally {
    /// Looks at one chunk of the response as it passes: content-bearing SSE events time
    /// the first token and the gaps between tokens; `usage` numbers are kept. A scan for
    /// a few byte patterns, not a JSON parse.
    pub(crate) fn on_data(&mut self, data: &[u8]) {
        if self.sse {
            // Engines may send several events in one chunk: each content event counts.
            let mut now = None;
            for event in data
                .split(|&b| b == b'\n')
                .filter(|line| line.starts_with(b"data:"))
            {
                if !has_content(event) {
                    continue;
                }
                let now = *now.get_or_insert_with(Instant::now);
                match self.last_content {
                    None => self
                        .meters
                        .ttft
                        .record(now.duration_since(self.start).as_secs_f64()),
                    Some(last) => self
                        .meters
                        .itl
                        .record(now.duration_since(last).as_secs_f64()),
                }
                self.last_content = Some(now);
            }
        }
        if let Some(p) = number_after(data, b"\"prompt_tokens\":")
            .or_else(|| number_after(data, b"\"input_tokens\":"))
        {
            self.prompt_tokens = Some(p);
        }
        if let Some(c) = number_after(data, b"\"completion_tokens\":")
            .or_else(|| number_after(data, b"\"output_tokens\":"))
        {
            self.completion_tokens = Some(c);
        }
    }
}

impl Drop for BodyTally {
    fn drop(&mut self) {
        self.meters.requests.increment(1);
        self.meters
            .duration
            .record(self.start.elapsed().as_secs_f64());
        if let Some(p) = self.prompt_tokens {
            self.meters.prompt.increment(p);
        }
        if let Some(c) = self.completion_tokens {
            self.meters.completion.increment(c);
        }
    }
}

/// Whether an SSE chunk carries generated content: a non-empty `content`/`text` string
/// (chat, completions, Anthropic deltas) or a Responses `delta` string. The role-only
/// first chat chunk (`"content":""`) does not count.
fn has_content(data: &[u8]) -> bool {
    [&b"\"content\":\""[..], b"\"text\":\"", b"\"delta\":\""]
        .iter()
        .any(|pat| {
            memchr::memmem::find_iter(data, pat)
                .any(|at| data.get(at + pat.len()).is_some_and(|&b| b != b'"'))
        })
}

/// The unsigned integer right after `key` (e.g. `"prompt_tokens":12`), if any.
fn number_after(data: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(data, key)? + key.len();
    let digits = data[at..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_bearing_chunks() {
        assert!(!has_content(
            br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(has_content(
            br#"data: {"choices":[{"delta":{"content":" Hi"}}]}"#
        ));
        assert!(has_content(
            br#"data: {"choices":[{"text":"x","index":0}]}"#
        ));
        assert!(!has_content(
            br#"data: {"choices":[{"text":"","finish_reason":"length"}]}"#
        ));
        assert!(!has_content(
            br#"data: {"choices":[{"delta":{"reasoning_content":""}}]}"#
        ));
        assert!(has_content(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"a\"}"));
        assert!(!has_content(b"data: [DONE]"));
    }

    /// The accounting of one streamed body, checked with a local debugging recorder (no
    /// global state): one request, one TTFT, ITL per later content event, usage tokens.
    #[test]
    fn a_streamed_body_is_accounted_once_when_dropped() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let meters = Meters::default();
            let mut tally = Tally::new("/v1/chat/completions", Instant::now());
            tally.set_model("m");
            let mut body = tally.body(&meters, &EndpointId::new("e1"), 200, true);
            body.on_data(
                b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            );
            body.on_data(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n");
            body.on_data(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
            drop(body);
            meters.decision("roundrobin", "picked");
        });
        let values: HashMap<String, DebugValue> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
            .collect();
        assert_eq!(values[names::REQUESTS], DebugValue::Counter(1));
        assert_eq!(values[names::PROMPT_TOKENS], DebugValue::Counter(7));
        assert_eq!(values[names::COMPLETION_TOKENS], DebugValue::Counter(2));
        assert_eq!(values[names::ROUTING_DECISIONS], DebugValue::Counter(1));
        let DebugValue::Histogram(ttft) = &values[names::TTFT] else {
            panic!()
        };
        assert_eq!(ttft.len(), 1, "the role-only chunk is not the first token");
        let DebugValue::Histogram(itl) = &values[names::ITL] else {
            panic!()
        };
        assert_eq!(itl.len(), 1);
    }

    #[test]
    fn usage_numbers() {
        let chunk = br#"{"usage":{"prompt_tokens":17,"total_tokens":33,"completion_tokens":16,"prompt_tokens_details":null}}"#;
        assert_eq!(number_after(chunk, b"\"prompt_tokens\":"), Some(17));
        assert_eq!(number_after(chunk, b"\"completion_tokens\":"), Some(16));
        assert_eq!(
            number_after(b"\"prompt_tokens\":null", b"\"prompt_tokens\":"),
            None
        );
        assert_eq!(
            number_after(
                b"\"prompt_tokens\": 99999999999999999999999",
                b"\"prompt_tokens\":"
            ),
            None
        );
    }
}
