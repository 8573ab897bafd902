//! [`RateLimitLayer`]: each tenant's requests and tokens per minute, as token buckets.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use llmstack_core::{Error, OnUsage, RateLimit as Limit, RouteFacts, Tenant, Usage};
use llmstack_metrics::names;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

mod bucket;

use bucket::Bucket;

/// Limits each tenant to its requests and tokens per minute: a tower [`Layer`]
/// producing [`RateLimit`]. Buckets are per layer (one router replica): with N
/// replicas behind a Service, a tenant gets up to N times its limits.
#[derive(Debug, Clone, Default)]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
}

/// Charges each request to its [`Tenant`] (from the request's extensions, put there by
/// authentication); requests without a tenant, or of a tenant without limits, pass.
///
/// - **Requests per minute** (`rpm`): a bucket of `rpm` requests, refilled
///   continuously; each request takes one.
/// - **Tokens per minute** (`tpm`): a bucket of `tpm` tokens. A request is charged its
///   prompt estimated from the body (a token per [`BYTES_PER_TOKEN`] bytes) before it
///   is routed, and corrected once its response ends by the `usage` the engine
///   reported (prompt plus completion tokens; a stream without `usage` counts its
///   content events): accounting outside calls the [`OnUsage`] this layer leaves on
///   the response. A request that no engine answered gets its estimate back. A
///   tenant may overdraw by up to one minute's tokens; it then waits.
///
/// A request over a limit is answered 429 with OpenAI's `rate_limit_exceeded` body and
/// `Retry-After` ([`Error::RateLimited`]), without calling the inner service, and
/// counted in `llmstack_rate_limited_total{tenant,limit}`. Every response of a limited
/// tenant carries OpenAI's `x-ratelimit-limit-requests`,
/// `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` (and `-tokens`)
/// headers: the limit, what is left, and the time until the bucket is full again.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

/// A token per this many request-body bytes, for the estimate before routing.
pub const BYTES_PER_TOKEN: usize = 4;

/// Every tenant's buckets.
#[derive(Debug, Default)]
struct Limiter {
    tenants: Mutex<HashMap<Arc<str>, Buckets, foldhash::fast::RandomState>>,
}

/// One tenant's buckets.
#[derive(Debug)]
struct Buckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// What one admitted request was charged, and the headers to answer with.
struct Grant {
    tenant: Arc<str>,
    estimate: u64,
    headers: Headers,
}

/// The numbers of OpenAI's `x-ratelimit-*` headers, for the limits a tenant has:
/// written straight into the response (no map in between).
#[derive(Debug, Clone, Copy, Default)]
struct Headers {
    requests: Option<Numbers>,
    tokens: Option<Numbers>,
}

/// One limit's header values.
#[derive(Debug, Clone, Copy)]
struct Numbers {
    limit: u64,
    remaining: u64,
    reset: Duration,
}

/// At most this many tenants' buckets are kept; beyond it, full ones are dropped.
const MAX_TENANTS: usize = 10_000;

// === impl RateLimitLayer ===

impl RateLimitLayer {
    /// A layer with its own buckets.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

// === impl RateLimit ===

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, RB> Service<Request<Bytes>> for RateLimit<S>
where
    S: Service<Request<Bytes>, Response = Response<RB>>,
    RB: From<Bytes>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = RateLimitFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let Some(tenant) = req
            .extensions()
            .get::<Tenant>()
            .filter(|t| t.rpm.is_some() || t.tpm.is_some())
        else {
            return RateLimitFuture::passed(self.inner.call(req));
        };
        let estimate = (req.body().len() / BYTES_PER_TOKEN).max(1) as u64;
        match self.limiter.admit(tenant, estimate, Instant::now()) {
            Ok(grant) => RateLimitFuture {
                state: State::Called {
                    future: self.inner.call(req),
                    grant: Some((Arc::clone(&self.limiter), grant)),
                },
            },
            Err(refused) => {
                let (e, headers) = *refused;
                let limit = match e {
                    Error::RateLimited {
                        limit: Limit::Tokens,
                        ..
                    } => "tokens",
                    _ => "requests",
                };
                metrics::counter!(names::RATE_LIMITED, "tenant" => tenant.name.to_string(), "limit" => limit)
                    .increment(1);
                let mut resp = e.to_response().map(RB::from);
                headers.write(resp.headers_mut());
                RateLimitFuture {
                    state: State::Refused {
                        response: Some(resp),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The future of [`RateLimit`].
    pub struct RateLimitFuture<F, RB> {
        #[pin]
        state: State<F, RB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, RB> {
        Called { #[pin] future: F, grant: Option<(Arc<Limiter>, Grant)> },
        Refused { response: Option<Response<RB>> },
    }
}

impl<F, RB> RateLimitFuture<F, RB> {
    fn passed(future: F) -> Self {
        Self {
            state: State::Called {
                future,
                grant: None,
            },
        }
    }
}

impl<F, RB, E> Future for RateLimitFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { response } => match response.take() {
                Some(resp) => Poll::Ready(Ok(resp)),
                None => Poll::Pending, // polled after completion
            },
            StateProj::Called { future, grant } => {
                let mut resp = ready!(future.poll(cx))?;
                let Some((limiter, grant)) = grant.take() else {
                    return Poll::Ready(Ok(resp));
                };
                let answered = resp
                    .extensions()
                    .get::<RouteFacts>()
                    .is_some_and(|f| f.engine.is_some());
                if answered {
                    let (tenant, estimate) = (grant.tenant, grant.estimate);
                    resp.extensions_mut().insert(OnUsage::new(move |usage| {
                        limiter.settle(&tenant, estimate, usage, Instant::now());
                    }));
                } else {
                    limiter.refund(&grant.tenant, grant.estimate);
                }
                grant.headers.write(resp.headers_mut());
                Poll::Ready(Ok(resp))
            }
        }
    }
}

impl<F, RB> fmt::Debug for RateLimitFuture<F, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitFuture").finish_non_exhaustive()
    }
}

// === impl Limiter ===

impl Limiter {
    /// Takes a request and `estimate` tokens from `tenant`'s buckets, or neither when
    /// one is short: then the error and the headers to answer with.
    fn admit(
        &self,
        tenant: &Tenant,
        estimate: u64,
        now: Instant,
    ) -> Result<Grant, Box<(Error, Headers)>> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if tenants.len() >= MAX_TENANTS && !tenants.contains_key(&tenant.name) {
            tenants.retain(|_, b| !b.full(now));
        }
        let buckets = tenants
            .entry(Arc::clone(&tenant.name))
            .or_insert_with(|| Buckets {
                requests: None,
                tokens: None,
            });
        // Limits follow the tenant (a reloaded keys file may change them).
        Bucket::follow(&mut buckets.requests, tenant.rpm, now);
        Bucket::follow(&mut buckets.tokens, tenant.tpm, now);
        let short = [
            (Limit::Requests, buckets.requests.as_mut(), 1),
            (Limit::Tokens, buckets.tokens.as_mut(), estimate),
        ]
        .into_iter()
        .filter_map(|(limit, bucket, n)| Some((limit, bucket?.wait_for(n, now)?)))
        .max_by_key(|(_, wait)| *wait);
        if let Some((limit, retry_after)) = short {
            let per_minute = match limit {
                Limit::Requests => tenant.rpm,
                Limit::Tokens => tenant.tpm,
            };
            let e = Error::RateLimited {
                limit,
                per_minute: per_minute.unwrap_or(0),
                retry_after,
            };
            return Err(Box::new((e, buckets.headers(now))));
        }
        if let Some(b) = buckets.requests.as_mut() {
            b.take(1.0);
        }
        if let Some(b) = buckets.tokens.as_mut() {
            b.take(estimate as f64);
        }
        Ok(Grant {
            tenant: Arc::clone(&tenant.name),
            estimate,
            headers: buckets.headers(now),
        })
    }

    /// Charges `tenant` the difference between its request's `usage` and the estimate.
    fn settle(&self, tenant: &str, estimate: u64, usage: Usage, now: Instant) {
        let prompt = usage.prompt_tokens.unwrap_or(estimate);
        let completion = usage.completion_tokens.unwrap_or(usage.content_events);
        let used = prompt.saturating_add(completion);
        self.with_tokens(tenant, |b| {
            b.refill(now);
            b.take(used as f64 - estimate as f64);
        });
    }

    /// Gives `tenant` back the `estimate` of a request no engine answered.
    fn refund(&self, tenant: &str, estimate: u64) {
        self.with_tokens(tenant, |b| b.take(-(estimate as f64)));
    }

    fn with_tokens(&self, tenant: &str, f: impl FnOnce(&mut Bucket)) {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = tenants.get_mut(tenant).and_then(|b| b.tokens.as_mut()) {
            f(b);
        }
    }
}

// === impl Buckets ===

impl Buckets {
    fn full(&self, now: Instant) -> bool {
        [&self.requests, &self.tokens]
            .into_iter()
            .flatten()
            .all(|b| b.full_at(now))
    }

    /// The numbers of OpenAI's `x-ratelimit-*` headers for the limits this tenant has.
    fn headers(&self, now: Instant) -> Headers {
        let numbers = |b: &Bucket| Numbers {
            limit: b.per_minute(),
            remaining: b.remaining(now),
            reset: b.until_full(now),
        };
        Headers {
            requests: self.requests.as_ref().map(numbers),
            tokens: self.tokens.as_ref().map(numbers),
        }
    }
}

// === impl Headers ===

impl Headers {
    /// Adds the headers to `map`: every value written into one buffer, each header a
    /// slice of it (one allocation for all six).
    fn write(&self, map: &mut HeaderMap) {
        let mut text = String::with_capacity(96);
        let mut ends = [0usize; 6];
        let all = [self.requests, self.tokens];
        for (i, n) in all.iter().enumerate() {
            let Some(n) = n else { continue };
            push_digits(&mut text, n.limit);
            ends[3 * i] = text.len();
            push_digits(&mut text, n.remaining);
            ends[3 * i + 1] = text.len();
            write_go_duration(&mut text, n.reset);
            ends[3 * i + 2] = text.len();
        }
        map.reserve(6);
        let text = Bytes::from(text);
        let mut start = 0;
        for (i, n) in all.iter().enumerate() {
            if n.is_none() {
                continue;
            }
            let names = if i == 0 {
                &REQUEST_HEADERS
            } else {
                &TOKEN_HEADERS
            };
            for (name, end) in names.iter().zip(&ends[3 * i..3 * i + 3]) {
                if let Ok(v) = HeaderValue::from_maybe_shared(text.slice(start..*end)) {
                    map.insert(name.clone(), v);
                }
                start = *end;
            }
        }
    }
}

static REQUEST_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];

static TOKEN_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// A duration as OpenAI's reset headers write it: `0s`, `250ms`, `1.5s`, `6m0s`.
#[cfg(test)]
fn go_duration(d: Duration) -> String {
    let mut s = String::new();
    write_go_duration(&mut s, d);
    s
}

/// Appends `d` as OpenAI's reset headers write it (see `go_duration`).
fn write_go_duration(out: &mut String, d: Duration) {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms < 1000 {
        if ms > 0 {
            push_digits(out, ms);
            out.push('m');
        } else {
            out.push('0');
        }
    } else if ms < 60_000 {
        push_digits(out, ms / 1000);
        let mut frac = ms % 1000;
        if frac > 0 {
            out.push('.');
            let mut width = 3;
            while frac % 10 == 0 {
                frac /= 10;
                width -= 1;
            }
            let digits = out.len();
            push_digits(out, frac);
            for _ in out.len() - digits..width {
                out.insert(digits, '0');
            }
        }
    } else {
        let whole = ms / 1000;
        push_digits(out, whole / 60);
        out.push('m');
        push_digits(out, whole % 60);
    }
    out.push('s');
}

/// Appends `n` in decimal (the formatting machinery costs several times more).
fn push_digits(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits.
    out.push_str(std::str::from_utf8(&buf[at..]).unwrap_or_default());
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
