//! The request path of the OpenAI routes: the library layers, stacked.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use llmstack_gateway::{
    Admission, AdmissionLayer, ApiKeys, Auth, AuthLayer, Outlier, OutlierLayer, Outliers,
    RateLimit, RateLimitLayer,
};
use llmstack_metrics::{Account, AccountBody, AccountLayer};
use llmstack_proxy::{
    Forward, ForwardBody, ProxyConfig, ReadBody, ReadBodyLayer, Retry, RetryLayer,
};
use llmstack_routing::{Route, RouteBody, RouteLayer};
use tower::{Layer, ServiceBuilder};

/// The request path of the OpenAI routes.
pub(crate) type Proxied =
    Account<Auth<ReadBody<RateLimit<Admission<Retry<Outlier<Route<Forward>>>>>>>>;

/// Every response body the router sends: a proxied answer or a local one.
pub(crate) type Body = Either<AccountBody<RouteBody<ForwardBody>>, Full<Bytes>>;

/// A request for an OpenAI route with a method other than `POST`: answered 405, and
/// accounted for like every request to those routes.
pub(crate) type Refused = Account<Refuse>;

/// Answers 405 (`Error::MethodNotAllowed`) to anything.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refuse;

impl tower::Service<http::Request<hyper::body::Incoming>> for Refuse {
    type Response = http::Response<RouteBody<ForwardBody>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<hyper::body::Incoming>) -> Self::Future {
        let resp = llmstack_core::Error::MethodNotAllowed.to_response();
        std::future::ready(Ok(resp.map(RouteBody::from)))
    }
}

/// The refusal path: [`Refuse`] under the accounting layer.
pub(crate) fn refused() -> Refused {
    AccountLayer::new().layer(Refuse)
}

/// The gateway layers' shared state, built by the server.
pub(crate) struct Gateway {
    /// API keys; none: no authentication.
    pub(crate) keys: Option<ApiKeys>,
    /// The admission queue.
    pub(crate) admission: AdmissionLayer,
    /// Outlier ejection.
    pub(crate) outliers: Outliers,
}

/// Stacks the request path: accounting outside (a request counts once, however many
/// engines it tried, and refusals count too), then API keys (`keys`: none is no
/// authentication; before the body is read), the body read (bounded), the tenant's
/// rate limits, admission (a request waits once, however many engines it tries),
/// retries on other engines, outlier ejection (each attempt counts), routing, and
/// forwarding. (`RequestIdLayer` wraps everything the listeners serve.)
pub(crate) fn proxied(
    route: RouteLayer,
    forward: Forward,
    config: &ProxyConfig,
    gateway: Gateway,
) -> Proxied {
    ServiceBuilder::new()
        .layer(AccountLayer::new())
        .layer(gateway.keys.map_or_else(AuthLayer::off, AuthLayer::new))
        .layer(ReadBodyLayer::new(config.max_body).timeout(config.body_timeout))
        .layer(RateLimitLayer::new())
        .layer(gateway.admission)
        .layer(RetryLayer::new(config.retries).counting(Arc::clone(forward.counters())))
        .layer(OutlierLayer::new(gateway.outliers))
        .layer(route)
        .service(forward)
}
