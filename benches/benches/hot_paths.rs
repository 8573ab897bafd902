//! Hot paths: `RouteRequest::from_json` on a 1 KB chat body, candidate selection and the
//! policies at 8, 64 and 512 engines, and `engine_stats` on a vLLM 0.33 exposition.
#![allow(clippy::unwrap_used, missing_docs)]

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use llmstack_core::{Endpoint, EndpointSet, EndpointState, RouteRequest, Update};
use llmstack_routing::{Policy, RoundRobin, SessionAffinity, Target, select};

fn chat_body() -> Vec<u8> {
    let content = "The quick brown fox jumps over the lazy dog. ".repeat(22);
    format!(
        r#"{{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"{content}"}}],"max_tokens":16,"stream":true,"temperature":0}}"#
    )
    .into_bytes()
}

fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            let url = format!(
                "http://10.{}.{}.{}:8000",
                i / 65536,
                (i / 256) % 256,
                i % 256
            );
            Arc::new(
                Endpoint::new(url.parse().unwrap())
                    .with_model("m")
                    .with_state(EndpointState::Ready),
            )
        })
        .collect()
}

fn route_request(c: &mut Criterion) {
    let body = chat_body();
    c.bench_function("route_request_from_json_1kb_chat", |b| {
        b.iter(|| {
            let req = RouteRequest::from_json(black_box(&body), Some("x-user-id")).unwrap();
            black_box(req.model());
        })
    });
}

fn policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_pick");
    for n in [8, 64, 512] {
        let candidates = endpoints(n);
        let mut keyed = RouteRequest::from_json(br#"{"model":"m"}"#, None).unwrap();
        keyed.set_session_key(Cow::Borrowed("user-1234"));
        let rr = RoundRobin::default();
        let session: SessionAffinity = SessionAffinity::default();
        group.bench_with_input(BenchmarkId::new("roundrobin", n), &candidates, |b, c| {
            b.iter(|| black_box(rr.pick(&keyed, c)))
        });
        group.bench_with_input(BenchmarkId::new("session", n), &candidates, |b, c| {
            b.iter(|| black_box(session.pick(&keyed, c)))
        });
        let mut set = EndpointSet::default();
        set.apply(Update::Reset(
            candidates.iter().map(|e| (**e).clone()).collect(),
        ));
        group.bench_with_input(BenchmarkId::new("select_roundrobin", n), &set, |b, set| {
            b.iter(|| black_box(select(&rr, set, &keyed, &Target::default()).unwrap()))
        });
    }
    group.finish();
}

fn parse_metrics(c: &mut Criterion) {
    let text = include_str!("../../llmstack-metrics/tests/fixtures/vllm-0.33.txt");
    c.bench_function("engine_stats_vllm_0_33", |b| {
        b.iter(|| {
            black_box(llmstack_metrics::engine_stats(
                black_box(text),
                None,
                tokio::time::Instant::now(),
            ))
        })
    });
}

criterion_group!(benches, route_request, policies, parse_metrics);
criterion_main!(benches);
