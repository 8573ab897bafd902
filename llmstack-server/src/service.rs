//! The listeners' services: the route table that sends each request to the proxied
//! stack ([`crate::stack`]) or to a local answer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use llmstack_core::{Error, RouteFacts, UpstreamFailure, openai_route, route_method};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::local;
use crate::stack::{Body, Proxied, Refused};
use crate::state::Shared;

/// A listener's service: on the main listener, the OpenAI routes go through the
/// proxied stack and the rest are answered by the router ([`local`]); on the admin
/// listener, only `/metrics`, `/health`, `/ready` and `/engines` exist, with no key
/// needed. With API keys on, `/v1/models`, `/engines` and `/version` on the main
/// listener need one too (probes and `/metrics` do not).
#[derive(Clone)]
pub(crate) struct Listener {
    pub(crate) shared: Arc<Shared>,
    pub(crate) admin: bool,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

pin_project! {
    /// The future of [`Listener`]: the proxied stack's (not boxed: it is the hot path),
    /// or a local answer's.
    #[project = ListenerProj]
    pub(crate) enum ListenerFuture {
        Proxied {
            #[pin]
            future: <Proxied as Service<Request<Incoming>>>::Future,
            shared: Arc<Shared>,
        },
        Refused {
            #[pin]
            future: <Refused as Service<Request<Incoming>>>::Future,
        },
        Local { future: BoxFuture },
    }
}

impl Service<Request<Incoming>> for Listener {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ListenerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> ListenerFuture {
        let shared = Arc::clone(&self.shared);
        if let Some(root) = &shared.root_path {
            strip_root(&mut req, root);
        }
        if self.admin {
            return ListenerFuture::Local {
                future: Box::pin(async move { Ok(admin(shared, req).await) }),
            };
        }
        if let Some((route, _)) = openai_route(req.uri().path()) {
            if *req.method() != route_method(route) {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                let future = shared.refused.clone().call(req);
                return ListenerFuture::Refused { future };
            }
            shared.requests.fetch_add(1, Ordering::Relaxed);
            // Every layer of the stack is always ready (none applies backpressure), so
            // it is called without waiting for readiness.
            let future = shared.proxied.clone().call(req);
            return ListenerFuture::Proxied { future, shared };
        }
        ListenerFuture::Local {
            future: Box::pin(async move { Ok(main(shared, req).await) }),
        }
    }
}

impl Future for ListenerFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ListenerProj::Proxied { future, shared } => {
                let resp = match ready!(future.poll(cx)) {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
                let routed = resp
                    .extensions()
                    .get::<RouteFacts>()
                    .is_some_and(|f| f.engine.is_some());
                if !routed || resp.extensions().get::<UpstreamFailure>().is_some() {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                Poll::Ready(Ok(resp.map(Either::Left)))
            }
            ListenerProj::Refused { future } => match ready!(future.poll(cx)) {
                Ok(resp) => Poll::Ready(Ok(resp.map(Either::Left))),
                Err(never) => match never {},
            },
            ListenerProj::Local { future } => future.as_mut().poll(cx),
        }
    }
}

async fn admin(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let resp = match local::route(path) {
        Some(
            route @ (local::Local::Metrics
            | local::Local::Health
            | local::Local::Ready
            | local::Local::Engines),
        ) if req.method() == Method::GET || req.method() == Method::HEAD => {
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
    let open = matches!(
        route,
        local::Local::Health | local::Local::Ready | local::Local::Metrics
    );
    if let (Some(keys), false) = (&shared.keys, open)
        && let Err(e) = keys.authenticate(req.headers())
    {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return local(&e).map(Either::Right);
    }
    local::answer_async(&shared, route).await.map(Either::Right)
}

/// `--root-path`: a path under `root` is served as the path after it (`/vllm/v1/models`
/// as `/v1/models`, `/vllm` as `/`), as production-stack's FastAPI root path does.
fn strip_root<B>(req: &mut Request<B>, root: &str) {
    let Some(rest) = req.uri().path().strip_prefix(root) else {
        return;
    };
    if !rest.is_empty() && !rest.starts_with('/') {
        return; // `/vllmx` is not under `/vllm`
    }
    let path = if rest.is_empty() { "/" } else { rest };
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = target.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
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
    Future = llmstack_proxy::RequestIdFuture<ListenerFuture>,
> + Clone {
    let service = llmstack_proxy::RequestIdLayer.layer(listener);
    hyper::service::service_fn(move |req| service.clone().call(req))
}
