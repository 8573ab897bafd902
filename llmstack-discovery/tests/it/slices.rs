//! Kubernetes discovery in EndpointSlice mode, against RECORDED apiserver responses.
//!
//! `k8s_discovery` watches `discovery.k8s.io/v1` EndpointSlices, but the real apiserver
//! the tests have (kube-apiserver v1.20.2, `llmstack_test_support::kube_apiserver`)
//! serves EndpointSlices only as `discovery.k8s.io/v1beta1` (v1 answers 404). So this
//! test replays a LIST and a WATCH recorded from that apiserver and converted to v1 by
//! Kubernetes' own v1beta1 → v1 rules (`fixtures/README.md` says exactly how), from a
//! small fake API server (hyper, plain HTTP on 127.0.0.1). What is real: every byte of
//! the slices, the watch events, the `410 Expired` ERROR event a resumed watch got after
//! an apiserver restart, and the re-list after it. What is not: the HTTP server, and the
//! v1 conversion.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use llmstack_core::Update;
use llmstack_discovery::k8s::k8s_discovery;
use llmstack_discovery::{K8sConfig, K8sMode, UpdateStream};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// The selector the fixtures were recorded with (the Service's slices).
const SELECTOR: &str = "kubernetes.io/service-name=vllm";
const PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

/// The first list: slices `vllm-r8dx4` (vllm-0, vllm-1 ready; vllm-2 not) and
/// `vllm-ptpgh` (vllm-3), at resourceVersion 189.
const LIST_1: &str = include_str!("fixtures/endpointslices/list-1.json");
/// The watch from 189: vllm-2 turns ready (MODIFIED `vllm-r8dx4`), a slice for vllm-4
/// appears (ADDED `vllm-fqz8n`), an annotation of `vllm-ptpgh` changes (MODIFIED, same
/// endpoints), `vllm-fqz8n` goes away (DELETED).
const WATCH_1: &str = include_str!("fixtures/endpointslices/watch-1.json");
/// What the same watch got after the apiserver restarted: `410 Expired`.
const WATCH_EXPIRED: &str = include_str!("fixtures/endpointslices/watch-expired.json");
/// The list after that: `vllm-ptpgh` (vllm-3) was deleted while no watch was open.
const LIST_2: &str = include_str!("fixtures/endpointslices/list-2.json");

/// One request the fake apiserver got.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    watch: bool,
    label_selector: Option<String>,
    resource_version: Option<String>,
}

#[derive(Debug)]
struct Script {
    rv_1: String,
    rv_2: String,
    lists: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// Signalled when the client resumes watching from the second list's version.
    resumed: Notify,
}

/// A fake apiserver replaying the fixtures: the first LIST gets `LIST_1`, later ones
/// `LIST_2`; a WATCH from `LIST_1`'s version gets `WATCH_1` then `WATCH_EXPIRED` (then
/// the response ends), a WATCH from `LIST_2`'s version stays open with no events.
/// Anything else (another path, a missing or wrong `labelSelector`) is answered with an
/// error Status, so the discovery never sees its endpoints.
struct FakeApiServer {
    addr: SocketAddr,
    script: Arc<Script>,
    task: JoinHandle<()>,
}

impl FakeApiServer {
    async fn start() -> Self {
        let script = Arc::new(Script {
            rv_1: resource_version(LIST_1),
            rv_2: resource_version(LIST_2),
            lists: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            resumed: Notify::new(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = script.clone();
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every connection.
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let script = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let script = script.clone();
                        async move { Ok::<_, Infallible>(respond(&script, &req)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { addr, script, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().unwrap().clone()
    }

    /// Stops accepting and cuts every connection.
    async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(script: &Script, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() != PATH {
        return status(StatusCode::NOT_FOUND, "NotFound", req.uri().path());
    }
    let query = query(req.uri().query().unwrap_or_default());
    let seen = Seen {
        watch: matches!(query.get("watch").map(String::as_str), Some("true" | "1")),
        label_selector: query.get("labelSelector").cloned(),
        resource_version: query.get("resourceVersion").cloned(),
    };
    script.seen.lock().unwrap().push(seen.clone());
    if seen.label_selector.as_deref() != Some(SELECTOR) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("unexpected labelSelector {:?}", seen.label_selector),
        );
    }
    if !seen.watch {
        let body = if script.lists.fetch_add(1, Ordering::SeqCst) == 0 {
            LIST_1
        } else {
            LIST_2
        };
        return json(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    }
    let rv = seen.resource_version.as_deref();
    if rv == Some(script.rv_1.as_str()) {
        // One chunk per event, as the apiserver flushes them; then the response ends.
        let events: Vec<Result<Frame<Bytes>, Infallible>> = WATCH_1
            .lines()
            .chain(WATCH_EXPIRED.lines())
            .map(|line| Ok(Frame::data(Bytes::from(format!("{line}\n")))))
            .collect();
        json(StreamBody::new(futures_util::stream::iter(events)).boxed())
    } else if rv == Some(script.rv_2.as_str()) {
        script.resumed.notify_one();
        json(StreamBody::new(futures_util::stream::pending()).boxed())
    } else {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("unexpected watch resourceVersion {rv:?}"),
        )
    }
}

fn json(body: Body) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut resp = json(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = code;
    resp
}

/// The decoded query parameters (`%XX` and `+`), the last one of a name winning.
fn query(q: &str) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let s = s.as_bytes();
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    match std::str::from_utf8(&s[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn resource_version(list: &str) -> String {
    let list: serde_json::Value = serde_json::from_str(list).unwrap();
    list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `(id, url)` of the endpoints of the next update, which must be a `Reset`, sorted.
async fn next_reset(stream: &mut UpdateStream, step: &str) -> Vec<(String, String)> {
    let within = Duration::from_secs(5);
    let item = tokio::time::timeout(within, poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)))
        .await
        .unwrap_or_else(|_| panic!("no update within {within:?} (expected: {step})"));
    match item.expect("the stream does not end").expect("no error") {
        Update::Reset(eps) => {
            let mut eps: Vec<(String, String)> = eps
                .iter()
                .map(|e| (e.id.as_str().to_owned(), e.url.to_string()))
                .collect();
            eps.sort();
            eps
        }
        other => panic!("slice mode sends only resets, got {other:?} (expected: {step})"),
    }
}

fn eps(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(id, url)| ((*id).to_owned(), (*url).to_owned()))
        .collect()
}

#[tokio::test]
async fn slices_follow_recorded_list_and_watch_and_relist_after_410() {
    let server = FakeApiServer::start().await;
    let mut kube_config = kube::Config::new(server.url().parse().unwrap());
    kube_config.default_namespace = "default".into();
    let client = kube::Client::try_from(kube_config).unwrap();
    let mut stream = k8s_discovery(
        client,
        K8sConfig {
            mode: K8sMode::EndpointSlices,
            label_selector: SELECTOR.into(),
            ..K8sConfig::default()
        },
    );

    // The recorded endpoints: `<pod>.<pod uid prefix>`, at the slice port named `http`.
    let vllm_0 = ("vllm-0.7d7fe7cc", "http://10.244.1.5:8000/");
    let vllm_1 = ("vllm-1.949873f5", "http://10.244.2.7:8000/");
    let vllm_2 = ("vllm-2.82226bb6", "http://10.244.1.9:8000/");
    let vllm_3 = ("vllm-3.c6446815", "http://10.244.3.4:8000/");
    let vllm_4 = ("vllm-4.7a51a7c3", "http://10.244.2.11:8000/");

    // The list: ready endpoints of both slices (vllm-2 is not ready).
    assert_eq!(
        next_reset(&mut stream, "the first list").await,
        eps(&[vllm_0, vllm_1, vllm_3])
    );
    // The watch events, one reset each; the annotation-only MODIFIED yields none.
    assert_eq!(
        next_reset(&mut stream, "MODIFIED: vllm-2 ready").await,
        eps(&[vllm_0, vllm_1, vllm_2, vllm_3])
    );
    assert_eq!(
        next_reset(&mut stream, "ADDED: the slice of vllm-4").await,
        eps(&[vllm_0, vllm_1, vllm_2, vllm_3, vllm_4])
    );
    assert_eq!(
        next_reset(&mut stream, "DELETED: the slice of vllm-4").await,
        eps(&[vllm_0, vllm_1, vllm_2, vllm_3])
    );
    // 410 Expired, then (after kube-runtime's backoff) a re-list without vllm-3's slice,
    // deleted while the watch was down: its endpoint is dropped.
    assert_eq!(
        next_reset(&mut stream, "the re-list after 410").await,
        eps(&[vllm_0, vllm_1, vllm_2])
    );
    // The watcher resumes from the new list's resourceVersion.
    tokio::time::timeout(Duration::from_secs(5), server.script.resumed.notified())
        .await
        .expect("a watch from the second list's resourceVersion");

    let seen = server.seen();
    let request = |watch: bool, rv: Option<&str>| Seen {
        watch,
        label_selector: Some(SELECTOR.into()),
        resource_version: rv.map(str::to_owned),
    };
    assert_eq!(
        seen,
        [
            request(false, None),
            request(true, Some("189")),
            request(false, None),
            request(true, Some("198")),
        ],
        "list, watch from the list's version, re-list, watch from the new version"
    );

    drop(stream);
    let addr = server.addr;
    server.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the fake apiserver is stopped"
    );
}

#[test]
fn query_parameters_are_decoded() {
    let q = query("&labelSelector=kubernetes.io%2Fservice-name%3Dvllm&watch=true&x=a+b%zz");
    assert_eq!(q["labelSelector"], SELECTOR);
    assert_eq!(q["watch"], "true");
    assert_eq!(q["x"], "a b%zz");
}
