//! The request path of the OpenAI routes: the library layers, stacked.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use llmstack_metrics::{Account, AccountBody, AccountLayer};
use llmstack_proxy::{
    Forward, ForwardBody, ProxyConfig, ReadBody, ReadBodyLayer, Retry, RetryLayer,
};
use llmstack_routing::{Route, RouteBody, RouteLayer};
use tower::ServiceBuilder;

/// The request path of the OpenAI routes.
pub(crate) type Proxied = Account<ReadBody<Retry<Route<Forward>>>>;

/// Every response body the router sends: a proxied answer or a local one.
pub(crate) type Body = Either<AccountBody<RouteBody<ForwardBody>>, Full<Bytes>>;

/// Stacks the request path: accounting outside (a request counts once, however many
/// engines it tried), then the body read (bounded), retries on other engines, routing,
/// and forwarding. (`RequestIdLayer` wraps everything the listeners serve.)
pub(crate) fn proxied(route: RouteLayer, forward: Forward, config: &ProxyConfig) -> Proxied {
    ServiceBuilder::new()
        .layer(AccountLayer::new())
        .layer(ReadBodyLayer::new(config.max_body))
        .layer(RetryLayer::new(config.retries).counting(Arc::clone(forward.counters())))
        .layer(route)
        .service(forward)
}
