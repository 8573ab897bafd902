//! Hot paths: `RouteRequest::from_json` on a 1 KB chat body, candidate selection and every
//! policy at 8, 64, 512 and 1,000 engines, the whole prefix-aware routing decision at
//! 1,000 engines with an 8k-token prompt, `engine_stats` on a vLLM 0.33 exposition, and
//! discovery updates (one pod event, a re-list) applied to a 1,000-engine set.
#![allow(clippy::unwrap_used, missing_docs)]

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use llmstack_benches::{endpoints, long_chat};
use llmstack_core::{EndpointSet, RouteRequest, Update};
use llmstack_routing::{
    Candidates, LeastLoaded, Load, Policy, PowerOfTwo, PrefixAware, PrefixConfig, PromptHashes,
    Random, RoundRobin, Router, SessionAffinity, Target, select,
};

fn chat_body() -> Vec<u8> {
    let content = "The quick brown fox jumps over the lazy dog. ".repeat(22);
    format!(
        r#"{{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"{content}"}}],"max_tokens":16,"stream":true,"temperature":0}}"#
    )
    .into_bytes()
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
    for n in [8, 64, 512, 1000] {
        let eps = endpoints(n);
        let loads: Vec<Load> = (0..n)
            .map(|i| Load {
                in_flight: (i * 7 % 13) as u32,
                cached_tokens: if i % 97 == 0 { 4096 } else { 0 },
                ..Load::default()
            })
            .collect();
        let holders: Vec<(usize, u32)> = (0..n).step_by(97).map(|i| (i, 4096)).collect();
        let candidates = Candidates::new(&eps, &loads, 8192).with_cached(&holders);
        let mut keyed = RouteRequest::from_json(br#"{"model":"m"}"#, None).unwrap();
        keyed.set_session_key(Cow::Borrowed("user-1234"));
        let policies: [(&str, Box<dyn Policy>); 6] = [
            ("roundrobin", Box::new(RoundRobin::default())),
            ("random", Box::new(Random)),
            ("leastloaded", Box::new(LeastLoaded)),
            ("power_of_two", Box::new(PowerOfTwo)),
            ("session", Box::new(SessionAffinity::default())),
            ("prefixaware", Box::new(PrefixAware::default())),
        ];
        for (name, policy) in &policies {
            group.bench_with_input(BenchmarkId::new(*name, n), &candidates, |b, c| {
                b.iter(|| black_box(policy.pick(&keyed, c)))
            });
        }
        let mut set = EndpointSet::default();
        set.apply(Update::Reset(eps.iter().map(|e| (**e).clone()).collect()));
        let rr = RoundRobin::default();
        group.bench_with_input(BenchmarkId::new("select_roundrobin", n), &set, |b, set| {
            b.iter(|| black_box(select(&rr, set, &keyed, &Target::default()).unwrap()))
        });
    }
    group.finish();
}

/// The whole prefix-aware decision (`Router::route`: candidates, loads, prompt parse
/// and hash, index match and insert, guard) at 1,000 engines with an 8k-token prompt,
/// over an index already holding 2,000 conversations.
fn prefix_route(c: &mut Criterion) {
    let eps = endpoints(1000);
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(eps.iter().map(|e| (**e).clone()).collect()));
    let router = Router::new(PrefixAware::default()).with_prefix_index(PrefixConfig::default());
    for user in 0..2000 {
        let body = long_chat(user, 2048);
        let req = RouteRequest::from_json(&body, None).unwrap();
        let mut routed = router.route(&set, None, &req, &Target::default()).unwrap();
        router.accepted(&mut routed);
    }
    let body = long_chat(7, 8192);
    let req = RouteRequest::from_json(&body, None).unwrap();
    c.bench_function("router_route_prefixaware_1000_engines_8k_prompt", |b| {
        b.iter(|| {
            let mut routed = router.route(&set, None, &req, &Target::default()).unwrap();
            router.accepted(&mut routed);
            black_box(routed)
        })
    });
    c.bench_function("prompt_hashes_8k_chat", |b| {
        b.iter(|| black_box(PromptHashes::of(&req, 128)))
    });
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

/// What a Kubernetes pod event (`Add` of one changed engine) and a re-list (`Reset` of
/// all 1,000, unchanged) cost the discovery task: `EndpointSet::apply` builds the next
/// snapshot (the router's readers keep the old one).
fn discovery_updates(c: &mut Criterion) {
    let eps: Vec<_> = endpoints(1000).iter().map(|e| (**e).clone()).collect();
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(eps.clone()));
    let mut changed = eps[500].clone();
    changed.labels.insert("rev".into(), "2".into());
    c.bench_function("endpoint_set_apply_pod_event_1000_engines", |b| {
        b.iter_batched(
            || (set.clone(), Update::Add(vec![changed.clone()])),
            |(mut set, update)| black_box(set.apply(update)),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("endpoint_set_apply_relist_1000_engines", |b| {
        b.iter_batched(
            || (set.clone(), Update::Reset(eps.clone())),
            |(mut set, update)| black_box(set.apply(update)),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    route_request,
    policies,
    prefix_route,
    parse_metrics,
    discovery_updates
);
criterion_main!(benches);
