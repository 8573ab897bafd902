//! Kubernetes discovery against a real kube-apiserver (v1.20.2 + etcd, see
//! `scripts/kube-apiserver`): the test plays the kubelet. It creates Pods, patches
//! their status to Running/Ready with loopback IPs where `llmstack-sim` engines listen,
//! deletes them, and checks that the router's `/engines` and its traffic follow.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use llmstack_discovery::{DiscoveryKind, K8sConfig};
use llmstack_server::Server;
use llmstack_sim::SimEngine;
use llmstack_test_support::kube_apiserver::KubeApiServer;
use serde_json::{Value, json};

use crate::support::*;

const M: &str = "m";

/// An engine pod as a Deployment would create it: label `app=vllm`, the engine's port
/// given by annotation or by a container port named `http`.
fn pod(name: &str, port: u16, annotate: bool) -> Pod {
    let annotations = if annotate {
        json!({"llmstack.io/port": port.to_string()})
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "vllm", "model": M},
                     "annotations": annotations},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai",
                 "ports": [{"name": "http", "containerPort": if annotate { 8000 } else { port }}]}]}
    }))
    .unwrap()
}

/// What the kubelet writes once the engine is up (or not ready).
async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

async fn kube_client(api: &KubeApiServer) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(api.kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The router's engines as (url, state).
async fn engines(c: &HttpClient, url: &str) -> Vec<(String, String)> {
    let list = get(c, &format!("{url}/engines")).await.json();
    let mut out: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["url"].as_str().unwrap().trim_end_matches('/').to_owned(),
                e["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until the router's engines are exactly `want` (base URLs), all ready; returns
/// how long that took. Up to 60 s: after an apiserver outage, kube's reconnect backoff
/// may have grown to tens of seconds on a slow machine.
async fn until_engines(c: &HttpClient, url: &str, want: &[&SimEngine]) -> Duration {
    let start = tokio::time::Instant::now();
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|e| (e.base_url(), "ready".to_owned()))
        .collect();
    want.sort();
    let ok = eventually(Duration::from_secs(60), || {
        let want = want.clone();
        async move { engines(c, url).await == want }
    })
    .await;
    assert!(ok, "want {want:?}, have {:?}", engines(c, url).await);
    start.elapsed()
}

/// The router's id of `engine`.
async fn id_of(c: &HttpClient, url: &str, engine: &SimEngine) -> String {
    let list = get(c, &format!("{url}/engines")).await.json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"].as_str().unwrap().trim_end_matches('/') == engine.base_url())
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Sends `n` chats and returns how many each engine finished meanwhile.
async fn spread(c: &HttpClient, url: &str, sims: &[SimEngine], n: usize) -> Vec<f64> {
    let mut before = Vec::new();
    for e in sims {
        before.push(finished(c, e, "length").await);
    }
    for _ in 0..n {
        let a = post(c, &format!("{url}/v1/chat/completions"), &chat(M, 2)).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let mut out = Vec::new();
    for (e, b) in sims.iter().zip(before) {
        out.push(finished(c, e, "length").await - b);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_come_go_and_drain_and_a_deletion_during_a_disconnect_is_seen() {
    let mut api = KubeApiServer::start().await;
    let kube = kube_client(&api).await;
    let pods: Api<Pod> = Api::namespaced(kube, "default");
    // Engines where pod IPs point: 127.0.0.2 and 127.0.0.3 (each its own port).
    let mut sims = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3"] {
        // H100 timing: a 600-token stream lasts about 4 s, long enough to outlive
        // its engine's removal.
        let config = h100(M);
        sims.push(
            SimEngine::start(config, format!("{ip}:0").parse().unwrap(), 0)
                .await
                .unwrap(),
        );
    }
    let mut config = config_for(&[]);
    config.discovery.service_discovery = DiscoveryKind::K8s;
    config.discovery.k8s = K8sConfig {
        label_selector: "app=vllm".into(),
        kubeconfig: Some(api.kubeconfig_path()),
        ..K8sConfig::default()
    };
    let server = Server::start(config).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    let c = client();
    assert!(engines(&c, &url).await.is_empty());

    // Created, then scheduled but not ready: not routable. Another app's pod never is.
    pods.create(
        &PostParams::default(),
        &pod("vllm-0", sims[0].addr().port(), true),
    )
    .await
    .unwrap();
    let mut other = pod("web-0", sims[1].addr().port(), true);
    other.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    pods.create(&PostParams::default(), &other).await.unwrap();
    set_status(&pods, "web-0", "127.0.0.3", true).await;
    set_status(&pods, "vllm-0", "127.0.0.2", false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(engines(&c, &url).await.is_empty());

    // Ready: routed to (the annotation gives the port).
    set_status(&pods, "vllm-0", "127.0.0.2", true).await;
    let routed = until_engines(&c, &url, &[&sims[0]]).await;
    assert_eq!(spread(&c, &url, &sims, 4).await, [4.0, 0.0]);

    // A second engine (port from the container port named `http`): traffic spreads.
    pods.create(
        &PostParams::default(),
        &pod("vllm-1", sims[1].addr().port(), false),
    )
    .await
    .unwrap();
    set_status(&pods, "vllm-1", "127.0.0.3", true).await;
    until_engines(&c, &url, &[&sims[0], &sims[1]]).await;
    assert_eq!(spread(&c, &url, &sims, 4).await, [2.0, 2.0]);

    // Not ready any more: out; ready again: back.
    set_status(&pods, "vllm-1", "127.0.0.3", false).await;
    let unready = until_engines(&c, &url, &[&sims[0]]).await;
    assert_eq!(spread(&c, &url, &sims, 2).await, [2.0, 0.0]);
    set_status(&pods, "vllm-1", "127.0.0.3", true).await;
    until_engines(&c, &url, &[&sims[0], &sims[1]]).await;

    // Draining: a stream on vllm-0 while its pod terminates (a finalizer keeps the
    // terminating pod visible, as a kubelet's grace period would) finishes whole; new
    // requests go to vllm-1 at once.
    pods.patch(
        "vllm-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["llmstack.io/test"]}})),
    )
    .await
    .unwrap();
    let id = id_of(&c, &url, &sims[0]).await;
    let mut long = open(
        &c,
        &format!("{url}/v1/completions?id={id}"),
        &streamed(M, 600),
    )
    .await;
    read_frames(&mut long, 1).await;
    pods.delete("vllm-0", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = until_engines(&c, &url, &[&sims[1]]).await;
    assert_eq!(
        sims[0].state().await.unwrap().running,
        1,
        "the stream is still running on the engine that left"
    );
    assert_eq!(spread(&c, &url, &sims, 3).await, [0.0, 3.0]);
    let rest = read_to_end(&mut long).await;
    assert!(
        rest.ends_with("data: [DONE]\n\n"),
        "the stream finished: …{}",
        &rest[rest.len().saturating_sub(200)..]
    );
    pods.patch(
        "vllm-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();

    // vllm-0 comes back as a new pod (new UID): a new engine id.
    pods.create(
        &PostParams::default(),
        &pod("vllm-0", sims[0].addr().port(), true),
    )
    .await
    .unwrap();
    set_status(&pods, "vllm-0", "127.0.0.2", true).await;
    until_engines(&c, &url, &[&sims[0], &sims[1]]).await;

    // The watch is cut (apiserver killed) and vllm-1 is deleted meanwhile, straight from
    // etcd: no DELETED event ever reaches a watch. The watcher re-lists after
    // reconnecting, and the router drops the engine.
    api.stop_apiserver().await;
    delete_from_etcd(&c, api.etcd_url(), "/registry/pods/default/vllm-1").await;
    api.start_apiserver().await;
    let relisted = until_engines(&c, &url, &[&sims[0]]).await;
    eprintln!(
        "k8s discovery: Ready → routed {routed:?}, not Ready → out {unready:?}, \
         terminating → out {terminating:?}, apiserver back → deletion seen {relisted:?}"
    );
    assert_eq!(spread(&c, &url, &sims, 2).await, [2.0, 0.0]);
    let idle = eventually(Duration::from_secs(5), || async {
        get(&c, &format!("{url}/health")).await.json()["in_flight"] == 0
    })
    .await;
    assert!(idle, "nothing left in flight");

    // The last pod goes: the model is still known (503, not 404) and the per-model
    // readiness gauge the alert rules read says 0.
    let ready_m = || async {
        let text = get(&c, &format!("{url}/metrics")).await;
        sample(
            text.text(),
            "llmstack_model_ready_endpoints",
            &[("model", M)],
        )
    };
    assert_eq!(ready_m().await, Some(1.0));
    pods.delete("vllm-0", &DeleteParams::default())
        .await
        .unwrap();
    until_engines(&c, &url, &[]).await;
    assert_eq!(ready_m().await, Some(0.0));
    let a = post(&c, &format!("{url}/v1/chat/completions"), &chat(M, 2)).await;
    assert_eq!(a.status, 503, "{}", a.text());
}

/// The rest of a response body as text.
async fn read_to_end(res: &mut http::Response<hyper::body::Incoming>) -> String {
    use http_body_util::BodyExt;
    let mut out = Vec::new();
    while let Some(frame) = res.body_mut().frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            out.extend_from_slice(&data);
        }
    }
    String::from_utf8(out).unwrap()
}

/// Deletes `key` in etcd through its v3 JSON gateway.
async fn delete_from_etcd(c: &HttpClient, etcd: &str, key: &str) {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let body: Value = json!({"key": key});
    let a = post(c, &format!("{etcd}/v3/kv/deleterange"), &body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["deleted"], "1", "{}", a.text());
}
