use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use http_body_util::{BodyExt, Full};
use llmstack_core::{Endpoint, EndpointState, Update};

use super::*;
use crate::LeastLoaded;

/// The inner service: answers with the routed endpoint's id, counting calls. (A
/// stand-in for a forwarder: these tests are about the layer's bookkeeping.)
#[derive(Clone)]
struct Echo(Arc<AtomicUsize>);

impl Service<Request<Bytes>> for Echo {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        self.0.fetch_add(1, Ordering::Relaxed);
        let to = req
            .extensions()
            .get::<RoutedTo>()
            .map(|r| r.endpoint.id.to_string());
        std::future::ready(Ok(Response::new(Full::new(Bytes::from(
            to.unwrap_or_default(),
        )))))
    }
}

fn layer() -> (RouteLayer, watch::Sender<EndpointSet>) {
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(
        (1..=2)
            .map(|i| {
                Endpoint::new(format!("http://127.0.0.1:{i}").parse().unwrap())
                    .with_model("m")
                    .with_state(EndpointState::Ready)
            })
            .collect(),
    ));
    let (tx, rx) = watch::channel(set);
    (RouteLayer::new(Router::new(LeastLoaded), rx), tx)
}

fn request(body: &'static str) -> Request<Bytes> {
    Request::new(Bytes::from_static(body.as_bytes()))
}

#[tokio::test]
async fn the_guard_lives_until_the_body_ends_or_is_dropped() {
    let (layer, _tx) = layer();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut route = layer.layer(Echo(Arc::clone(&calls)));
    let in_flight = layer.router().in_flight().clone();

    let a = route.call(request(r#"{"model":"m"}"#)).await.unwrap();
    let b = route.call(request(r#"{"model":"m"}"#)).await.unwrap();
    assert_eq!(in_flight.total(), 2);
    let a = a.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(in_flight.total(), 1, "a's body ended");
    let b = b.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(in_flight.total(), 0, "b's body ended");
    assert_ne!(
        a, b,
        "least loaded: the second request went to the other engine"
    );
    let c = route.call(request(r#"{"model":"m"}"#)).await.unwrap();
    assert_eq!(in_flight.total(), 1);
    drop(c);
    assert_eq!(in_flight.total(), 0, "c's body was dropped unread");
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

/// Answers with `status`.
#[derive(Clone)]
struct Status(u16);

impl Service<Request<Bytes>> for Status {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Bytes>) -> Self::Future {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::from_u16(self.0).unwrap();
        std::future::ready(Ok(resp))
    }
}

#[tokio::test]
async fn the_prefix_index_learns_only_accepted_requests() {
    let (_, tx) = layer();
    let router = Router::new(crate::PrefixAware::default())
        .with_prefix_index(crate::PrefixConfig::default());
    let layer = RouteLayer::new(router, tx.subscribe());
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a long shared question ".repeat(100)
    );
    let body: &'static str = Box::leak(body.into_boxed_str());
    let indexed = || layer.router().with_index(crate::PrefixIndex::len).unwrap();
    let mut refused = layer.layer(Status(503));
    drop(refused.call(request(body)).await.unwrap());
    assert_eq!(indexed(), 0, "a refused request teaches nothing");
    let mut ok = layer.layer(Status(200));
    drop(ok.call(request(body)).await.unwrap());
    assert!(indexed() > 0);
}

#[tokio::test]
async fn routing_errors_answer_without_calling_the_inner_service() {
    let (layer, tx) = layer();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut route = layer.layer(Echo(Arc::clone(&calls)));
    for (body, status) in [
        (r#"{"model":"nope"}"#, 404),
        ("not json", 400),
        (r#"{"prompt":"no model"}"#, 400),
    ] {
        let resp = route.call(request(body)).await.unwrap();
        assert_eq!(resp.status(), status, "{body}");
        let json: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(json["error"]["code"], status, "{json}");
    }
    // Every engine gone: the model is known, none ready.
    tx.send_modify(|set| {
        set.apply(Update::Reset(vec![]));
    });
    let resp = route.call(request(r#"{"model":"m"}"#)).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(layer.router().in_flight().total(), 0);
}
