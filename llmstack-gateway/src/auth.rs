//! [`AuthLayer`]: requests without a known API key are answered 401.

use std::fmt;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::header;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::keys::{ApiKeys, X_API_KEY};

/// Authenticates requests by API key: a tower [`Layer`] producing [`Auth`]. Without
/// keys ([`AuthLayer::off`]) every request passes as it is.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    keys: Option<ApiKeys>,
}

/// Looks the request's key up in [`ApiKeys`]. A known key's
/// [`Tenant`](llmstack_core::Tenant) goes into the request's extensions (for rate
/// limits and admission) and the key's headers (`Authorization`, `x-api-key`) are
/// removed, so the router's keys never reach an engine (the forwarder puts the
/// engine's own key on, when it has one). Anything else is answered 401 with OpenAI's
/// `invalid_api_key` body ([`Error::Unauthorized`](llmstack_core::Error::Unauthorized))
/// without calling the inner service (and counted in
/// `llmstack_auth_failures_total{reason}`). The request body is not read.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Option<ApiKeys>,
}

/// The future of [`Auth`]: the inner service's, or the refusal.
pub type AuthFuture<F, RB, E> = Either<F, Ready<Result<Response<RB>, E>>>;

// === impl AuthLayer ===

impl AuthLayer {
    /// Requests need one of `keys`.
    pub fn new(keys: ApiKeys) -> Self {
        Self { keys: Some(keys) }
    }

    /// No authentication: every request passes.
    pub fn off() -> Self {
        Self { keys: None }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

// === impl Auth ===

impl<S: fmt::Debug> fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .field("keys", &self.keys)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: From<Bytes>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(keys) = &self.keys else {
            return Either::Left(self.inner.call(req));
        };
        match keys.authenticate(req.headers()) {
            Ok(tenant) => {
                let headers = req.headers_mut();
                headers.remove(header::AUTHORIZATION);
                headers.remove(&X_API_KEY);
                req.extensions_mut().insert(tenant);
                Either::Left(self.inner.call(req))
            }
            Err(e) => Either::Right(ready(Ok(e.to_response().map(RB::from)))),
        }
    }
}
