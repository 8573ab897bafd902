use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use http_body_util::{BodyExt, Full};
use llmstack_core::{Endpoint, EndpointState, Update};

use super::*;
use crate::{LeastLoaded, PolicyExt};

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

#[tokio::test]
async fn a_handle_changes_the_router_session_key_and_aliases_for_later_requests() {
    let (layer, _tx) = layer();
    let handle = layer.handle();
    let mut route = layer.layer(Echo(Arc::new(AtomicUsize::new(0))));
    let in_flight = layer.router().in_flight().clone();
    let engine = |resp: Response<RouteBody<Full<Bytes>>>| async move {
        let facts = resp.extensions().get::<RouteFacts>().cloned().unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (facts, body)
    };
    // Least loaded: one request held open, the next goes to the other engine.
    let held = route.call(request(r#"{"model":"m"}"#)).await.unwrap();
    assert_eq!(
        held.extensions().get::<RouteFacts>().unwrap().policy,
        "leastloaded"
    );
    // Session affinity from now on, counting in flight on the same counters.
    let router = Router::new(crate::SessionAffinity::default().or(LeastLoaded))
        .with_in_flight(handle.router().in_flight().clone());
    handle.set_router(router);
    handle.set_session_key(Some("x-user"));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let mut req = request(r#"{"model":"m"}"#);
        req.headers_mut().insert("x-user", "alice".parse().unwrap());
        let (facts, body) = engine(route.call(req).await.unwrap()).await;
        assert_eq!(facts.policy, "session");
        seen.insert(body);
    }
    assert_eq!(seen.len(), 1, "one user, one engine: {seen:?}");
    assert_eq!(
        in_flight.total(),
        1,
        "the request started before is still counted"
    );
    drop(held);
    assert_eq!(in_flight.total(), 0, "and ends on the shared counters");
    // Aliases: `a` is `m` now; without them it is an unknown model.
    handle.set_aliases(&BTreeMap::from([("a".to_owned(), "m".to_owned())]));
    let ok = route.call(request(r#"{"model":"a"}"#)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    handle.set_aliases(&BTreeMap::new());
    handle.set_session_key(None);
    let gone = route.call(request(r#"{"model":"a"}"#)).await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    // A layer built from the same start is not affected by a handle of another.
    assert_eq!(layer.router().policy_name(), "session");
}
