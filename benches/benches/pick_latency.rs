//! Latency distribution of one routing decision (`Router::route`) at 1,000 engines, and
//! the prefix index's memory per indexed chunk (`PrefixIndex::memory_bytes`: the
//! allocated capacity of all its tables).
//!
//! `cargo bench -p llmstack-benches --bench pick_latency` prints a Markdown table.
//! Criterion reports means; the issue's goal is a p99, so this times every call.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use tokio::time::Instant;

use llmstack_benches::{endpoints, long_chat};
use llmstack_core::{EndpointId, EndpointSet, RouteRequest, Update};
use llmstack_routing::{
    LeastLoaded, PolicyExt, PowerOfTwo, PrefixAware, PrefixConfig, PrefixIndex, RoundRobin, Router,
    SessionAffinity, Target,
};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}

fn time_routes(name: &str, router: &Router, set: &EndpointSet, bodies: &[Vec<u8>], n: usize) {
    let reqs: Vec<RouteRequest<'_>> = bodies
        .iter()
        .map(|b| RouteRequest::from_json(b, Some("user")).unwrap())
        .collect();
    let mut times = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let req = &reqs[i % reqs.len()];
        let start = Instant::now();
        let mut routed = router.route(set, None, req, &Target::default()).unwrap();
        router.accepted(&mut routed);
        let took = start.elapsed();
        drop(black_box(routed));
        if i >= n / 10 {
            times.push(took); // the first tenth warms caches
        }
    }
    times.sort();
    println!(
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        percentile(&times, 0.999),
        times.last().unwrap().as_secs_f64() * 1e6,
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let calls = if quick { 2_000 } else { 100_000 };
    let eps = endpoints(1000);
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(eps.iter().map(|e| (**e).clone()).collect()));

    println!("Router::route at 1,000 engines ({calls} calls each, µs):\n");
    println!("| policy, prompt | p50 | p90 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|");
    let prefix = Router::new(PrefixAware::default()).with_prefix_index(PrefixConfig::default());
    for user in 0..2000 {
        let body = long_chat(user, 2048);
        let req = RouteRequest::from_json(&body, None).unwrap();
        let mut routed = prefix.route(&set, None, &req, &Target::default()).unwrap();
        prefix.accepted(&mut routed);
    }
    let long: Vec<Vec<u8>> = (0..64).map(|u| long_chat(u, 8192)).collect();
    time_routes("prefixaware, 8k tokens", &prefix, &set, &long, calls);
    // The shared system prompt on every engine: 1,000 holders of its chunks.
    for ep in &eps {
        let body = long_chat(9999, 600);
        let req = RouteRequest::from_json(&body, None).unwrap();
        let target = Target {
            pinned: Some(ep.id.as_str()),
            ..Target::default()
        };
        let mut routed = prefix.route(&set, None, &req, &target).unwrap();
        prefix.accepted(&mut routed);
    }
    time_routes(
        "prefixaware, 8k tokens, system prompt on all 1,000 engines",
        &prefix,
        &set,
        &long,
        calls,
    );
    let short: Vec<Vec<u8>> = (0..64).map(|u| long_chat(u, 256)).collect();
    time_routes("prefixaware, 256 tokens", &prefix, &set, &short, calls);
    let keyed: Vec<Vec<u8>> = (0..64)
        .map(|u| format!(r#"{{"model":"m","user":"u{u}","prompt":"hi"}}"#).into_bytes())
        .collect();
    for (name, router) in [
        ("roundrobin", Router::new(RoundRobin::default())),
        ("leastloaded", Router::new(LeastLoaded)),
        ("power_of_two", Router::new(PowerOfTwo)),
        (
            "session",
            Router::new(SessionAffinity::default().or(LeastLoaded)),
        ),
    ] {
        time_routes(&format!("{name}, short"), &router, &set, &keyed, calls);
    }

    // Memory: fill 8 engines' shares to their budget with distinct chains.
    let config = PrefixConfig::default();
    let mut index = PrefixIndex::new(config);
    let ids: Vec<EndpointId> = eps[..8].iter().map(|e| e.id.clone()).collect();
    let budget = config.chunks_for(config.default_capacity_tokens);
    let mut next = 1u64;
    for round in 0..(budget * 2 / 64) {
        for (e, id) in ids.iter().enumerate() {
            // Conversations of 64 chunks; one in four shares its head with engine 0's.
            let chain: Vec<u64> = (0..64u64)
                .map(|k| {
                    if round % 4 == 0 && k < 16 && e > 0 {
                        (round as u64) << 32 | k
                    } else {
                        next += 1;
                        next << 8
                    }
                })
                .collect();
            index.insert(id, &chain, None);
        }
    }
    let used = index.memory_bytes();
    let chunks = index.len();
    println!(
        "\nPrefix index, 8 engines × {budget} chunks (default budget: {} tokens, {}-byte chunks):",
        config.default_capacity_tokens, config.chunk_bytes
    );
    println!(
        "- {chunks} indexed (chunk, engine) pairs; {:.1} MiB allocated; **{:.1} bytes per indexed chunk**",
        used as f64 / (1 << 20) as f64,
        used as f64 / chunks as f64,
    );
    assert!(chunks <= 8 * budget, "over budget");
}
