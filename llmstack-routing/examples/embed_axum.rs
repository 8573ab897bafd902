//! An axum gateway embedding `llmstack-routing`: its own static list of engines, the
//! router as tower middleware, and a hyper client forwarding to the chosen engine.
//!
//! ```text
//! cargo run -p llmstack-routing --example embed-axum -- \
//!     127.0.0.1:8080 my-model http://127.0.0.1:8001 http://127.0.0.1:8002
//! ```
//!
//! Prints `listening on http://ADDR` once bound (port 0 picks a free port), then serves
//! `POST /v1/chat/completions` and `POST /v1/completions`. Responses stream through as
//! the engine sends them; routing errors (unknown model: 404) are OpenAI error bodies.

use std::io::Write;

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::header;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llmstack_routing::{
    Endpoint, EndpointSet, EndpointState, Error, LeastLoaded, RouteLayer, RoutedTo, Router, Update,
};
use tokio::sync::watch;
use tower::{Layer, ServiceExt, service_fn};

/// Request bodies larger than this are refused (413).
const MAX_BODY: usize = 16 << 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, model, urls) = match args.as_slice() {
        [listen, model, urls @ ..] if !urls.is_empty() => (listen, model, urls),
        _ => return Err("usage: embed-axum LISTEN_ADDR MODEL URL [URL...]".into()),
    };
    // The endpoint set, static here: a gateway with its own discovery keeps `_tx` and
    // sends a new set on every change (each request reads the latest).
    let mut endpoints = Vec::new();
    for url in urls {
        let ep = Endpoint::new(url.parse()?).with_model(model.as_str());
        ep.uri_for("/")
            .ok_or(format!("not an http://host:port URL: {url}"))?;
        endpoints.push(ep.with_state(EndpointState::Ready));
    }
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(endpoints));
    let (_tx, rx) = watch::channel(set);

    // LeastLoaded: this gateway scrapes no engine metrics, so the router's own in-flight
    // counts (held by the guard in each response body until it ends) are the load
    // signal, and least loaded spreads concurrent requests by them. PrefixAware would
    // need `Router::with_prefix_index` and pays off for multi-turn chats.
    let layer = RouteLayer::new(Router::new(LeastLoaded), rx);

    // The inner service: sends the request, same path and headers, to the engine the
    // router put in its extensions.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let forward = service_fn(move |req: http::Request<Bytes>| {
        let client = client.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            let to = parts.extensions.remove::<RoutedTo>();
            let to = to.ok_or(Error::bad_request("not routed", None))?; // Route always sets it
            let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            parts.uri = to.endpoint.uri_for(path).unwrap_or_default(); // checked at start
            parts.headers.remove(header::HOST); // the client sets the engine's
            let req = http::Request::from_parts(parts, Full::new(body));
            client.request(req).await.map_err(|e| Error::Upstream {
                endpoint: to.endpoint.id.clone(),
                source: e.into(),
            })
        }
    });
    let route = layer.layer(forward);

    let handler = move |req: Request| {
        let route = route.clone();
        async move {
            let (parts, body) = req.into_parts();
            // Over the limit (or the client went away while sending): 413.
            let Ok(body) = to_bytes(body, MAX_BODY).await else {
                return error(&Error::BodyTooLarge { limit: MAX_BODY });
            };
            match route.oneshot(http::Request::from_parts(parts, body)).await {
                // `Body::new` wraps the engine's body and the in-flight guard riding it:
                // streamed frame by frame, never buffered. Routing errors (unknown
                // model, no ready engine, bad body) are already OpenAI error responses.
                Ok(resp) => resp.map(Body::new),
                Err(e) => error(&e),
            }
        }
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(handler.clone()))
        .route("/v1/completions", post(handler));

    let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The OpenAI error response for a forwarding failure: the router's own mapping.
fn error(e: &Error) -> Response {
    e.to_response().map(Body::from)
}
