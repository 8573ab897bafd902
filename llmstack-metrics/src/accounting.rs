//! Request accounting as tower middleware: [`AccountLayer`] counts every request once,
//! with its status, duration, time to first token, inter-token latency and tokens.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use foldhash::fast::RandomState;
use http::{Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use llmstack_core::{EndpointId, OnUsage, RouteFacts, SeenModel, Usage, openai_route};
use memchr::memmem::Finder;
use metrics::{Counter, Histogram, SharedString, counter, histogram};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::names;

/// Accounts for every request through it: a tower [`Layer`] producing [`Account`].
/// Put it outside the retry and routing layers (a request is counted once, however
/// many engines it tried); it reads the [`RouteFacts`] the routing layer leaves on the
/// response.
///
/// Series (see [`names`]): `llmstack_requests_total{route,model,engine,status}` and
/// `llmstack_request_duration_seconds{route,model}` when the response body ends, fails
/// or is dropped (status `cancelled` when the client left before the response head);
/// `llmstack_time_to_first_token_seconds` and `…_inter_token_latency_seconds` per
/// content-bearing SSE event; prompt and completion tokens from `usage`;
/// `llmstack_routing_decisions_total{policy,reason}`; for cache-aware policies,
/// `llmstack_kv_predicted_cached_tokens_total{engine}` (the router's prediction, 2xx
/// answers) and `llmstack_kv_reported_cached_tokens_total{engine}` (the engine's
/// `usage.prompt_tokens_details.cached_tokens`, when it reports them). `route` is the OpenAI path
/// ([`openai_route`]) or `other`; `model` is a model some engine serves, or `unknown`.
/// Metric handles are resolved once per label set and cached (bounded), so the
/// request path does not build label sets. When an engine's response carries an
/// [`OnUsage`] extension (a rate limit inside wants to know), it is called once with
/// the request's [`Usage`] when the body ends, fails or is dropped.
#[derive(Debug, Clone, Default)]
pub struct AccountLayer {
    meters: Arc<Meters>,
}

/// See [`AccountLayer`].
#[derive(Clone)]
pub struct Account<S> {
    inner: S,
    meters: Arc<Meters>,
}

/// The metric handles of one (route, status class, engine, model) combination.
#[derive(Debug)]
struct RequestMeters {
    requests: Counter,
    /// Requests of these labels whose body broke off: status `broken` (made on first
    /// use, so no empty series appear).
    broken: std::sync::OnceLock<Counter>,
    /// The labels, for `broken`.
    labels: [SharedString; 3],
    duration: Histogram,
    ttft: Histogram,
    itl: Histogram,
    prompt: Counter,
    completion: Counter,
    /// Cached prompt tokens the router predicted, by engine.
    predicted: Counter,
    /// Cached prompt tokens the engine reported, by engine.
    reported: Counter,
}

/// Resolved metric handles. Bounded: keys are routes × status classes × engines ×
/// models they serve; the cache is cleared if it ever holds more than [`MAX_METERS`].
#[derive(Debug, Default)]
struct Meters {
    requests: Mutex<MeterIndex>,
    /// (policy, reason) → `llmstack_routing_decisions_total` handle.
    decisions: Mutex<HashMap<(&'static str, &'static str), Counter, RandomState>>,
}

const MAX_METERS: usize = 10_000;

/// (route, status class) → engine → model → handles.
type MeterIndex = HashMap<
    (&'static str, &'static str),
    HashMap<EndpointId, HashMap<Box<str>, Arc<RequestMeters>, RandomState>, RandomState>,
    RandomState,
>;

/// One request, from arrival until its response is settled: by a response without an
/// engine (recorded at once), by handing over to the response body, or on drop (the
/// client left first: `cancelled`).
#[derive(Debug)]
struct Tally {
    route: &'static str,
    start: Instant,
    /// Filled by the routing layer: labels a request whose client left early.
    model: SeenModel,
    settled: bool,
}

/// A response body on its way: counts content chunks, reads `usage`, and records the
/// request when dropped (body ended, failed, or the client left).
#[derive(Debug)]
struct BodyTally {
    start: Instant,
    meters: Arc<RequestMeters>,
    sse: bool,
    last_content: Option<Instant>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    /// Content-bearing SSE events seen.
    content_events: u64,
    /// Told the usage when the body ends (a rate limit inside wants it).
    on_usage: Option<OnUsage>,
    /// The body failed, or an SSE error event came: the request counts as `broken`.
    broken: bool,
    /// `usage.prompt_tokens_details.cached_tokens`, when the engine reported it.
    cached_tokens: Option<u64>,
    /// The router's prediction of the cached tokens (cache-aware policies; 2xx only).
    predicted: Option<u32>,
}

pin_project! {
    /// The future of [`Account`].
    pub struct AccountFuture<F> {
        #[pin]
        inner: F,
        tally: Option<Tally>,
        meters: Arc<Meters>,
    }
}

pin_project! {
    /// A response body accounted for by [`Account`]: the inner body, unchanged.
    pub struct AccountBody<B> {
        #[pin]
        inner: B,
        tally: Option<BodyTally>,
    }
}

// === impl AccountLayer ===

impl AccountLayer {
    /// A layer with its own cache of metric handles (the series go to the installed
    /// `metrics` recorder).
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for AccountLayer {
    type Service = Account<S>;

    fn layer(&self, inner: S) -> Account<S> {
        Account {
            inner,
            meters: Arc::clone(&self.meters),
        }
    }
}

// === impl Account ===

impl<S: fmt::Debug> fmt::Debug for Account<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> Service<Request<B>> for Account<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<AccountBody<RB>>;
    type Error = S::Error;
    type Future = AccountFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = openai_route(req.uri().path()).map_or("other", |(r, _)| r);
        let model = SeenModel::default();
        req.extensions_mut().insert(model.clone());
        AccountFuture {
            tally: Some(Tally::new(route, Instant::now(), model)),
            inner: self.inner.call(req),
            meters: Arc::clone(&self.meters),
        }
    }
}

impl<F, RB, E> Future for AccountFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<AccountBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(mut tally) = this.tally.take() else {
            return Poll::Pending; // polled after completion
        };
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                tally.settle("5xx", None);
                return Poll::Ready(Err(e));
            }
        };
        let facts = resp.extensions().get::<RouteFacts>();
        if let Some(facts) = facts {
            this.meters.decision(facts);
        }
        let model = facts.and_then(|f| f.model.as_deref());
        let status = class(resp.status().as_u16());
        let engine = facts.and_then(|f| f.engine.as_ref());
        let tally = match engine {
            Some(engine) => {
                let sse = resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let on_usage = resp.extensions().get::<OnUsage>().cloned();
                let mut body = tally.body(this.meters, engine, model, status, sse);
                body.on_usage = on_usage;
                if status == "2xx" {
                    body.predicted = facts.and_then(|f| f.predicted_cached_tokens);
                }
                Some(body)
            }
            None => {
                // Answered by the router itself: a rare path, plain macros.
                tally.settle(status, model);
                None
            }
        };
        Poll::Ready(Ok(resp.map(|inner| AccountBody { inner, tally })))
    }
}

impl<F> fmt::Debug for AccountFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountFuture").finish_non_exhaustive()
    }
}

/// Counts one routing decision in `llmstack_routing_decisions_total{policy,reason}`:
/// [`Account`] does for every response, a retry layer for each attempt it drops.
pub fn count_decision(facts: &RouteFacts) {
    counter!(names::ROUTING_DECISIONS, "policy" => facts.policy, "reason" => facts.reason)
        .increment(1);
}

// === impl AccountBody ===

impl<B: Body<Data = Bytes>> Body for AccountBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(tally)) = (f.data_ref(), this.tally.as_mut()) {
                    tally.on_data(data);
                }
            }
            // End or failure: the request is over.
            None => drop(this.tally.take()),
            Some(Err(_)) => {
                if let Some(mut tally) = this.tally.take() {
                    tally.broken = true;
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for AccountBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountBody")
            .field("tally", &self.tally)
            .finish_non_exhaustive()
    }
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

// === impl Tally ===

impl Tally {
    fn new(route: &'static str, start: Instant, model: SeenModel) -> Self {
        Self {
            route,
            start,
            model,
            settled: false,
        }
    }

    fn settle(&mut self, status: &'static str, model: Option<&str>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let model = SharedString::from(model.unwrap_or("unknown").to_owned());
        counter!(names::REQUESTS, "route" => self.route, "model" => model.clone(),
            "engine" => "", "status" => status)
        .increment(1);
        histogram!(names::REQUEST_DURATION, "route" => self.route, "model" => model)
            .record(self.start.elapsed().as_secs_f64());
    }

    /// Accounting for the body of `engine`'s response.
    fn body(
        mut self,
        meters: &Meters,
        engine: &EndpointId,
        model: Option<&str>,
        status: &'static str,
        sse: bool,
    ) -> BodyTally {
        self.settled = true;
        BodyTally {
            start: self.start,
            meters: meters.request(self.route, status, engine, model.unwrap_or("unknown")),
            sse,
            last_content: None,
            prompt_tokens: None,
            completion_tokens: None,
            content_events: 0,
            on_usage: None,
            broken: false,
            cached_tokens: None,
            predicted: None,
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        // The client left before an answer started: still one request, accounted for.
        let model = self.model.get().cloned();
        self.settle("cancelled", model.as_deref());
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
            broken: std::sync::OnceLock::new(),
            labels: [
                SharedString::from(route),
                SharedString::from(model.to_owned()),
                SharedString::from(engine.to_string()),
            ],
            duration: histogram!(names::REQUEST_DURATION, "route" => route, "model" => model.to_owned()),
            ttft: histogram!(names::TTFT, &by_model),
            itl: histogram!(names::ITL, &by_model),
            prompt: counter!(names::PROMPT_TOKENS, &labels),
            completion: counter!(names::COMPLETION_TOKENS, &labels),
            predicted: counter!(names::KV_PREDICTED_CACHED_TOKENS, "engine" => engine.to_string()),
            reported: counter!(names::KV_REPORTED_CACHED_TOKENS, "engine" => engine.to_string()),
        });
        all.entry((route, status))
            .or_default()
            .entry(engine.clone())
            .or_default()
            .insert(model.into(), Arc::clone(&meters));
        meters
    }
}

impl Meters {
    /// Counts a routing decision with a cached handle (the `counter!` macro builds and
    /// looks up its label set each time: about a microsecond).
    fn decision(&self, facts: &RouteFacts) {
        let mut decisions = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        decisions
            .entry((facts.policy, facts.reason))
            .or_insert_with(|| {
                counter!(names::ROUTING_DECISIONS, "policy" => facts.policy, "reason" => facts.reason)
            })
            .increment(1);
    }
}

// === impl BodyTally ===

impl BodyTally {
    /// Looks at one chunk of the response as it passes: content-bearing SSE events time
    /// the first token and the gaps between tokens; `usage` numbers are kept. A scan for
    /// a few byte patterns, not a JSON parse.
    fn on_data(&mut self, data: &[u8]) {
        if self.sse {
            // Engines may send several events in one chunk: each content event counts.
            let mut now = None;
            for event in data
                .split(|&b| b == b'\n')
                .filter(|line| line.starts_with(b"data:"))
            {
                // An error event (the engine's, or the router's for an engine that
                // broke off): the stream failed.
                if event.starts_with(b"data: {\"error\"") {
                    self.broken = true;
                    continue;
                }
                if !has_content(event) {
                    continue;
                }
                self.content_events += 1;
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
        // Every key below ends so: most stream chunks have none, and one scan says so.
        if FINDERS.any.find(data).is_none() {
            return;
        }
        if let Some(p) =
            number_after(data, &FINDERS.prompt).or_else(|| number_after(data, &FINDERS.input))
        {
            self.prompt_tokens = Some(p);
        }
        if let Some(c) =
            number_after(data, &FINDERS.completion).or_else(|| number_after(data, &FINDERS.output))
        {
            self.completion_tokens = Some(c);
        }
        if let Some(c) = number_after(data, &FINDERS.cached) {
            self.cached_tokens = Some(c);
        }
    }
}

impl Drop for BodyTally {
    fn drop(&mut self) {
        if self.broken {
            let [route, model, engine] = self.meters.labels.clone();
            self.meters
                .broken
                .get_or_init(|| {
                    counter!(names::REQUESTS, "route" => route, "model" => model,
                        "engine" => engine, "status" => "broken")
                })
                .increment(1);
        } else {
            self.meters.requests.increment(1);
        }
        self.meters
            .duration
            .record(self.start.elapsed().as_secs_f64());
        if let Some(p) = self.prompt_tokens {
            self.meters.prompt.increment(p);
        }
        if let Some(c) = self.completion_tokens {
            self.meters.completion.increment(c);
        }
        if let Some(p) = self.predicted {
            self.meters.predicted.increment(u64::from(p));
        }
        if let Some(c) = self.cached_tokens {
            self.meters.reported.increment(c);
        }
        if let Some(on_usage) = &self.on_usage {
            on_usage.report(Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.completion_tokens,
                content_events: self.content_events,
            });
        }
    }
}

/// Whether an SSE chunk carries generated content: a non-empty `content`/`text` string
/// (chat, completions, Anthropic deltas) or a Responses `delta` string. The role-only
/// first chat chunk (`"content":""`) does not count.
fn has_content(data: &[u8]) -> bool {
    FINDERS.content.iter().any(|pat| {
        pat.find_iter(data).any(|at| {
            data.get(at + pat.needle().len())
                .is_some_and(|&b| b != b'"')
        })
    })
}

/// The keys searched in every response chunk, built once (a searcher costs more to
/// build than to run on a chunk).
struct Finders {
    /// Where a non-empty string value means content: `"content":"`, `"text":"`,
    /// `"delta":"`.
    content: [Finder<'static>; 3],
    /// The end of every token-count key below.
    any: Finder<'static>,
    /// The token counts of `usage` (OpenAI's and Anthropic's).
    prompt: Finder<'static>,
    input: Finder<'static>,
    completion: Finder<'static>,
    output: Finder<'static>,
    /// `usage.prompt_tokens_details.cached_tokens`.
    cached: Finder<'static>,
}

static FINDERS: LazyLock<Finders> = LazyLock::new(|| Finders {
    content: [
        Finder::new(b"\"content\":\""),
        Finder::new(b"\"text\":\""),
        Finder::new(b"\"delta\":\""),
    ],
    any: Finder::new(b"_tokens\":"),
    prompt: Finder::new(b"\"prompt_tokens\":"),
    input: Finder::new(b"\"input_tokens\":"),
    completion: Finder::new(b"\"completion_tokens\":"),
    output: Finder::new(b"\"output_tokens\":"),
    cached: Finder::new(b"\"cached_tokens\":"),
});

/// The unsigned integer right after `key` (e.g. `"prompt_tokens":12`), if any.
fn number_after(data: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(data)? + key.needle().len();
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
mod tests;
