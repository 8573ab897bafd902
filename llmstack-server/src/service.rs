//! The listeners' services: the route table that sends each request to the proxied
//! stack ([`crate::stack`]) or to a local answer.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use llmstack_core::{Error, RouteFacts, UpstreamFailure, openai_route};
use tower::{Layer, Service};

use crate::local;
use crate::stack::Body;
use crate::state::Shared;

/// A listener's service: on the main listener, the OpenAI routes go through the
/// proxied stack and the rest are answered by the router ([`local`]); on the admin
/// listener, only `/metrics`, `/health` and `/ready` exist.
#[derive(Clone)]
pub(crate) struct Listener {
    pub(crate) shared: Arc<Shared>,
    pub(crate) admin: bool,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for Listener {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> BoxFuture {
        let shared = Arc::clone(&self.shared);
        if self.admin {
            Box::pin(async move { Ok(admin(shared, req).await) })
        } else {
            Box::pin(async move { Ok(main(shared, req).await) })
        }
    }
}

async fn admin(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let resp = match local::route(path) {
        Some(route @ (local::Local::Metrics | local::Local::Health | local::Local::Ready))
            if req.method() == Method::GET || req.method() == Method::HEAD =>
        {
            local::answer_async(&shared, route).await
        }
        Some(_) | None => local(&Error::NotFound {
            path: path.to_owned(),
        }),
    };
    resp.map(Either::Right)
}

async fn main(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if openai_route(path).is_some() {
        if req.method() != Method::POST {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return local(&Error::MethodNotAllowed).map(Either::Right);
        }
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let mut proxied = shared.proxied.clone();
        let resp =
            match poll_fn(|cx| Service::<Request<Incoming>>::poll_ready(&mut proxied, cx)).await {
                Ok(()) => match proxied.call(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                },
                Err(never) => match never {},
            };
        let routed = resp
            .extensions()
            .get::<RouteFacts>()
            .is_some_and(|f| f.engine.is_some());
        if !routed || resp.extensions().get::<UpstreamFailure>().is_some() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        return resp.map(Either::Left);
    }
    let Some(route) =
        local::route(path).filter(|l| *l != local::Local::Metrics || shared.main_port_metrics)
    else {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return local(&Error::NotFound {
            path: path.to_owned(),
        })
        .map(Either::Right);
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return local(&Error::MethodNotAllowed).map(Either::Right);
    }
    local::answer_async(&shared, route).await.map(Either::Right)
}

/// An error the router answers itself.
fn local(err: &Error) -> Response<Full<Bytes>> {
    err.to_response().map(Full::new)
}

/// A listener's service for hyper: request ids and spans around `listener`, called
/// directly for each request (the listener is always ready).
pub(crate) fn hyper(
    listener: Listener,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = llmstack_proxy::RequestIdFuture<BoxFuture>,
> + Clone {
    let service = llmstack_proxy::RequestIdLayer.layer(listener);
    hyper::service::service_fn(move |req| service.clone().call(req))
}
