//! Property-based tests of the public API of `llmstack_routing`: every policy's pick
//! range, round-robin fairness, session stability and bounded load, the prefix index's
//! budget and LRU order against a reference model, prefix-aware routing through the
//! [`Router`], and the chain property of [`PromptHashes`].

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use llmstack_core::{Endpoint, EndpointId, EndpointSet, EndpointState, RouteRequest, Update};
use llmstack_routing::{
    Candidates, LeastLoaded, Load, Policy, PolicyExt, PowerOfTwo, PrefixAware, PrefixConfig,
    PrefixIndex, PromptHashes, Random, RoundRobin, Router, SessionAffinity, Target,
};
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

/// `cases` cases, and no regression files written next to the tests.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A ready endpoint serving model `m`, with the id derived from a distinct URL.
fn endpoint(i: usize) -> Endpoint {
    Endpoint::new(
        format!("http://10.0.{}.{}:8000", i / 256, i % 256)
            .parse()
            .unwrap(),
    )
    .with_model("m")
    .with_state(EndpointState::Ready)
}

/// A fixed pool of 100 endpoints; tests take a prefix as their candidates.
fn pool() -> &'static [Arc<Endpoint>] {
    static POOL: OnceLock<Vec<Arc<Endpoint>>> = OnceLock::new();
    POOL.get_or_init(|| (0..100).map(|i| Arc::new(endpoint(i))).collect())
}

/// An endpoint set holding `endpoint(i)` for each `i`.
fn set_of(indices: impl IntoIterator<Item = usize>) -> EndpointSet {
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(indices.into_iter().map(endpoint).collect()));
    set
}

/// A request for `model` without a prompt, with `key` as its session key.
fn request(model: &'static str, key: Option<&str>) -> RouteRequest<'static> {
    let body: &'static [u8] = match model {
        "m" => br#"{"model":"m"}"#,
        _ => br#"{"model":"o"}"#,
    };
    let mut req = RouteRequest::from_json(body, None).unwrap();
    if let Some(key) = key {
        req.set_session_key(Cow::Owned(key.to_owned()));
    }
    req
}

/// A request count as a float: mostly ordinary, sometimes anything (NaN, infinities,
/// negatives, subnormals).
fn count_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => 0f32..10_000.0,
        1 => Just(0.0),
        1 => proptest::num::f32::ANY,
    ]
}

/// An arbitrary [`Load`].
fn load() -> impl Strategy<Value = Load> {
    (
        prop_oneof![0u32..64, any::<u32>()],
        count_f32(),
        prop_oneof![0u64..100_000, any::<u64>()],
        prop_oneof![0u32..10_000, any::<u32>()],
        proptest::option::of(any::<bool>()),
        proptest::option::of(count_f32()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(in_flight, foreign, pending, cached, warm, waiting, capacity)| Load {
                in_flight,
                foreign,
                pending_prefill_tokens: pending,
                cached_tokens: cached,
                adapter_warm: warm,
                waiting,
                kv_capacity_tokens: capacity,
                ..Load::default()
            },
        )
}

/// Pool size `n` (0..=80, so the sampled path of [`PrefixAware`] above 64 is reached),
/// loads for up to `n` candidates, cached prefixes of valid indices, prompt tokens.
#[allow(clippy::type_complexity)]
fn pick_case() -> impl Strategy<Value = (usize, Vec<Load>, Vec<(usize, u32)>, u32)> {
    prop_oneof![3 => 0usize..=8, 1 => 0usize..=80].prop_flat_map(|n| {
        let cached = if n == 0 {
            Just(Vec::new()).boxed()
        } else {
            vec((0..n, any::<u32>()), 0..4).boxed()
        };
        (
            Just(n),
            vec(load(), 0..=n),
            cached,
            prop_oneof![0u32..4096, any::<u32>()],
        )
    })
}

/// One step of the bounded-load simulation.
#[derive(Debug, Clone)]
enum Traffic {
    /// A request of session `key` arrives.
    Arrive(u16),
    /// A request in flight ends (on an engine chosen by the index).
    Depart(Index),
}

/// One step of the prefix-index model test.
#[derive(Debug, Clone)]
enum IndexOp {
    /// `insert(engine, chain, capacity)`, then `matches(query)` is checked.
    Insert {
        engine: usize,
        chain: Vec<u64>,
        capacity: Option<u64>,
        query: Vec<u64>,
    },
    /// `retain` everything but `engine`.
    Drop(usize),
}

/// Chain hashes of a sequence of chunk values: each one mixes in everything before it,
/// like [`PromptHashes`]' chain.
fn chain_of(raw: &[u64]) -> Vec<u64> {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    raw.iter()
        .map(|&x| {
            h = (h ^ x.wrapping_add(1)).wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 33;
            h
        })
        .collect()
}

/// The reference model of one engine's share of the prefix index: its chunks, most
/// recently used first, and its budget.
#[derive(Debug, Default)]
struct ModelSlot {
    lru: Vec<u64>,
    budget: usize,
}

impl ModelSlot {
    /// Inserting `[h0..hk]` (cut to the budget) moves `hk`, …, `h0` to the front in
    /// that order, then evicts from the back down to the budget.
    fn insert(&mut self, chain: &[u64], budget: usize) {
        self.budget = budget;
        for &h in chain[..chain.len().min(budget)].iter().rev() {
            self.lru.retain(|&x| x != h);
            self.lru.insert(0, h);
        }
        self.lru.truncate(budget);
    }
}

/// The index config with 4-byte chunks of 4 tokens: a capacity of `4 × b` tokens is a
/// budget of `b` chunks.
fn index_config(budget: usize) -> PrefixConfig {
    PrefixConfig {
        chunk_bytes: 4,
        bytes_per_token: 1.0,
        default_capacity_tokens: budget as u64 * 4,
        cache_share: 1.0,
    }
}

/// Sorted `(engine, depth)` pairs of [`PrefixIndex::matches`].
fn matches_of(index: &PrefixIndex, query: &[u64]) -> Vec<(String, usize)> {
    let mut m: Vec<(String, usize)> = index
        .matches(query, usize::MAX)
        .into_iter()
        .map(|(id, d)| (id.to_string(), d))
        .collect();
    m.sort();
    m
}

/// Checks the index against the model after one step; `peak` is the largest `len()`
/// seen so far.
fn check_index(
    index: &PrefixIndex,
    ids: &[EndpointId],
    model: &BTreeMap<usize, ModelSlot>,
    peak: usize,
) -> Result<(), TestCaseError> {
    let mut total = 0;
    for (e, id) in ids.iter().enumerate() {
        match model.get(&e) {
            Some(slot) => {
                let (used, budget) = index.usage(id).unwrap();
                prop_assert_eq!(budget, slot.budget, "budget of {}", id);
                prop_assert!(
                    used <= budget,
                    "{}: {} chunks over budget {}",
                    id,
                    used,
                    budget
                );
                prop_assert_eq!(used, slot.lru.len(), "usage of {}", id);
                prop_assert_eq!(index.held(id), slot.lru.clone(), "LRU order of {}", id);
                total += used;
            }
            None => {
                prop_assert_eq!(index.usage(id), None);
                prop_assert!(index.held(id).is_empty());
            }
        }
    }
    prop_assert_eq!(index.len(), total, "len is the sum of usages");
    prop_assert_eq!(index.is_empty(), total == 0);
    prop_assert!(
        index.memory_bytes() <= 64 * peak + 64 * 1024,
        "memory {} bytes for a peak of {} chunks",
        index.memory_bytes(),
        peak
    );
    Ok(())
}

/// A chat request body: a system prompt and one user message.
fn chat_body(system: &str, user: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "m",
        "stream": true,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
    }))
    .unwrap()
}

/// One arbitrary chat message: any role, string / null / multi-part content with any
/// characters (JSON escapes included).
fn message() -> impl Strategy<Value = Value> {
    const TEXT: &str = "(?s).{0,60}";
    let role = prop_oneof![
        Just("system"),
        Just("user"),
        Just("assistant"),
        Just("tool")
    ];
    let part = prop_oneof![
        TEXT.prop_map(|t| json!({"type": "text", "text": t})),
        Just(json!({"type": "image_url", "image_url": {"url": "http://x/y.png"}})),
    ];
    let content = prop_oneof![
        4 => TEXT.prop_map(Value::String),
        1 => Just(Value::Null),
        1 => vec(part, 0..4).prop_map(Value::Array),
    ];
    (role, content).prop_map(|(role, content)| json!({"role": role, "content": content}))
}

/// The prompt hashes of a JSON body in `chunk`-byte chunks.
fn hashes_of(body: &Value, chunk: usize) -> PromptHashes {
    let bytes = serde_json::to_vec(body).unwrap();
    let req = RouteRequest::from_json(&bytes, None).unwrap();
    PromptHashes::of(&req, chunk)
}

proptest! {
    #![proptest_config(config(256))]

    /// Every policy (round-robin, random, least-loaded, power of two, prefix-aware,
    /// session affinity with a least-loaded fallback with or without a key, session
    /// affinity alone with a key), given `n` candidates with arbitrary loads (loads
    /// shorter than the candidates, cached prefixes given through `with_cached` or
    /// not), picks `Some(i)` with `i < n` when `n ≥ 1` and `None` exactly when there
    /// are no candidates; session affinity alone declines (`None`) without a key.
    #[test]
    fn every_policy_picks_in_range_and_declines_only_without_candidates(
        (n, loads, cached, prompt_tokens) in pick_case(),
        key in "[a-z0-9]{1,12}",
        keyed in any::<bool>(),
    ) {
        let eps = &pool()[..n];
        let with_key = request("m", Some(&key));
        let maybe_key = request("m", keyed.then_some(key.as_str()));
        let without_key = request("m", None);
        let policies: Vec<(&str, Box<dyn Policy>, &RouteRequest<'_>)> = vec![
            ("roundrobin", Box::new(RoundRobin::default()), &maybe_key),
            ("random", Box::new(Random), &maybe_key),
            ("leastloaded", Box::new(LeastLoaded), &maybe_key),
            ("power_of_two", Box::new(PowerOfTwo), &maybe_key),
            ("prefixaware", Box::new(PrefixAware::default()), &maybe_key),
            (
                "session.or(leastloaded)",
                Box::new(SessionAffinity::default().or(LeastLoaded)),
                &maybe_key,
            ),
            ("session", Box::new(SessionAffinity::default()), &with_key),
        ];
        for (name, policy, req) in &policies {
            for candidates in [
                Candidates::new(eps, &loads, prompt_tokens),
                Candidates::new(eps, &loads, prompt_tokens).with_cached(&cached),
            ] {
                // A few picks each: the stateful and random ones move on between them.
                for _ in 0..3 {
                    let pick = policy.pick(req, &candidates);
                    match pick {
                        Some(i) => prop_assert!(i < n, "{}: picked {} of {}", name, i, n),
                        None => prop_assert_eq!(n, 0, "{} declined with {} candidates", name, n),
                    }
                    prop_assert_eq!(pick.is_some(), n > 0, "{}", name);
                }
            }
        }
        let session = SessionAffinity::default();
        let candidates = Candidates::new(eps, &loads, prompt_tokens);
        prop_assert_eq!(session.pick(&without_key, &candidates), None, "no key: declines");
    }

    /// Round-robin fairness: from any prior state (warm-up picks over other pool
    /// sizes), `k × n` consecutive picks of one model over `n` candidates hit each
    /// index exactly `k` times, however many picks of another model are interleaved.
    #[test]
    fn round_robin_hits_each_candidate_equally(
        n in 1usize..=24,
        k in 1usize..=6,
        warmup in vec(1usize..=12, 0..20),
        interleave in vec(0usize..3, 1..8),
    ) {
        let policy = RoundRobin::default();
        let m = request("m", None);
        let o = request("o", None);
        for size in warmup {
            policy.pick(&m, &Candidates::new(&pool()[..size], &[], 0));
        }
        let eps = &pool()[..n];
        let mut hits = vec![0usize; n];
        for step in 0..k * n {
            for _ in 0..interleave[step % interleave.len()] {
                policy.pick(&o, &Candidates::new(eps, &[], 0)).unwrap();
            }
            hits[policy.pick(&m, &Candidates::new(eps, &[], 0)).unwrap()] += 1;
        }
        prop_assert!(hits.iter().all(|&h| h == k), "n={} k={}: {:?}", n, k, hits);
    }

    /// Session stability (idle loads, so the bound never binds): a key keeps its
    /// endpoint id as long as the endpoint set is the same; when endpoints are added
    /// each key either stays or moves to one of the added endpoints; when one endpoint
    /// is removed only the keys that were on it move.
    #[test]
    fn sessions_move_only_when_their_engine_changes(
        initial in btree_set(0usize..24, 1..10),
        added in btree_set(0usize..24, 0..6),
        removed in any::<Index>(),
        keys in vec("[a-zA-Z0-9_-]{1,16}", 1..40),
    ) {
        let added: BTreeSet<usize> = added.difference(&initial).copied().collect();
        let policy = SessionAffinity::default();
        let home = |set: &EndpointSet, key: &str| -> EndpointId {
            let list = set.candidates("m");
            let i = policy.pick(&request("m", Some(key)), &Candidates::new(list, &[], 0)).unwrap();
            list[i].id.clone()
        };
        let set = set_of(initial.iter().copied());
        let before: Vec<EndpointId> = keys.iter().map(|k| home(&set, k)).collect();
        // Same set, same answer (and from an equal set built again).
        let again = set_of(initial.iter().copied());
        for (k, e) in keys.iter().zip(&before) {
            prop_assert_eq!(&home(&again, k), e);
        }

        let mut grown = set.clone();
        grown.apply(Update::Add(added.iter().copied().map(endpoint).collect()));
        let added_ids: BTreeSet<EndpointId> = added.iter().map(|&i| endpoint(i).id).collect();
        for (k, e) in keys.iter().zip(&before) {
            let now = home(&grown, k);
            prop_assert!(
                now == *e || added_ids.contains(&now),
                "{} moved from {} to {}, not an added endpoint", k, e, now
            );
        }

        if initial.len() >= 2 {
            let gone = endpoint(*initial.iter().nth(removed.index(initial.len())).unwrap()).id;
            let mut shrunk = set.clone();
            shrunk.apply(Update::Remove(vec![gone.clone()]));
            for (k, e) in keys.iter().zip(&before) {
                let now = home(&shrunk, k);
                if *e == gone {
                    prop_assert_ne!(&now, &gone);
                } else {
                    prop_assert_eq!(&now, e, "{} moved although {} stayed", k, e);
                }
            }
        }
    }

    /// Bounded load: assigning session requests one at a time over `n` engines (each
    /// assignment counts one more in flight there, some requests end in between), the
    /// chosen engine's load before the pick is always below
    /// `bound(total, n)`, so no engine reaches more than the bound by being picked; a
    /// session goes to its home engine (its pick over idle engines) whenever the home
    /// is below the bound; and while nothing has departed, the most loaded engine
    /// never exceeds the current bound.
    #[test]
    fn session_load_stays_under_the_bound(
        n in 1usize..=16,
        traffic in vec(
            prop_oneof![
                3 => prop_oneof![0u16..4, 0u16..64].prop_map(Traffic::Arrive),
                1 => any::<Index>().prop_map(Traffic::Depart),
            ],
            1..300,
        ),
        params in proptest::option::of((0.0f64..2.0, 0.0f64..8.0)),
    ) {
        let policy = params
            .map_or_else(SessionAffinity::default, |(e, s)| SessionAffinity::new(e, s));
        let eps = &pool()[..n];
        let mut loads = vec![Load::default(); n];
        let mut departed = false;
        for step in traffic {
            match step {
                Traffic::Arrive(key) => {
                    let req = request("m", Some(&format!("session-{key}")));
                    let home = policy.pick(&req, &Candidates::new(eps, &[], 0)).unwrap();
                    let total: f64 = loads.iter().map(|l| f64::from(l.in_flight)).sum();
                    let bound = policy.bound(total, n);
                    let i = policy.pick(&req, &Candidates::new(eps, &loads, 0)).unwrap();
                    prop_assert!(
                        f64::from(loads[i].in_flight) < bound,
                        "picked engine {} at load {} with bound {} (loads {:?})",
                        i, loads[i].in_flight, bound,
                        loads.iter().map(|l| l.in_flight).collect::<Vec<_>>()
                    );
                    if f64::from(loads[home].in_flight) < bound {
                        prop_assert_eq!(i, home, "home below the bound, yet moved");
                    }
                    loads[i].in_flight += 1;
                    prop_assert!(f64::from(loads[i].in_flight) <= bound);
                    if !departed {
                        let max = loads.iter().map(|l| l.in_flight).max().unwrap();
                        prop_assert!(
                            f64::from(max) <= bound,
                            "max load {} over bound {}", max, bound
                        );
                    }
                }
                Traffic::Depart(which) => {
                    let busy: Vec<usize> = (0..n).filter(|&i| loads[i].in_flight > 0).collect();
                    if !busy.is_empty() {
                        loads[busy[which.index(busy.len())]].in_flight -= 1;
                        departed = true;
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Prefix index budget and LRU order against a reference model (4-byte chunks of
    /// 4 tokens, `budget` chunks per engine unless an insert reports a capacity): after
    /// every insert (or removal of an engine with `retain`), each engine's usage is at
    /// most its budget, `len()` is the sum of the usages, `held(id)` equals the model's
    /// LRU list (inserting `[h0..hk]`, cut to the budget, moves `hk`, …, `h0` to the
    /// front, then the back is evicted down to the budget), `matches(query)` reports
    /// for each engine the longest prefix of the query it holds entirely, and
    /// `memory_bytes()` stays within 64 bytes per chunk (at the peak) plus 64 KiB.
    #[test]
    fn prefix_index_keeps_budget_and_lru_order(
        budget in 0usize..8,
        ops in vec(
            prop_oneof![
                8 => (
                    0usize..3,
                    vec(0u64..12, 0..8),
                    prop_oneof![4 => Just(None), 1 => (0u64..48).prop_map(Some)],
                    vec(0u64..12, 0..6),
                ).prop_map(|(engine, chain, capacity, query)| IndexOp::Insert {
                    engine,
                    chain,
                    capacity,
                    query,
                }),
                1 => (0usize..3).prop_map(IndexOp::Drop),
            ],
            1..60,
        ),
    ) {
        let ids: Vec<EndpointId> = ["a", "b", "c"].into_iter().map(EndpointId::new).collect();
        let config = index_config(budget);
        let mut index = PrefixIndex::new(config);
        let mut model: BTreeMap<usize, ModelSlot> = BTreeMap::new();
        let mut peak = 0;
        for op in ops {
            match op {
                IndexOp::Insert { engine, chain, capacity, query } => {
                    // Real chains: a hash names its whole prefix, as PromptHashes makes
                    // them (the index relies on it).
                    let (chain, query) = (chain_of(&chain), chain_of(&query));
                    index.insert(&ids[engine], &chain, capacity);
                    let slot_budget = capacity.map_or(budget, |c| config.chunks_for(c));
                    prop_assert_eq!(slot_budget, capacity.map_or(budget, |c| c as usize / 4));
                    model.entry(engine).or_default().insert(&chain, slot_budget);
                    peak = peak.max(index.len());
                    check_index(&index, &ids, &model, peak)?;
                    let mut expected: Vec<(String, usize)> = model
                        .iter()
                        .filter_map(|(&e, slot)| {
                            let d = query.iter().take_while(|h| slot.lru.contains(h)).count();
                            (d > 0).then(|| (ids[e].to_string(), d))
                        })
                        .collect();
                    expected.sort();
                    let best = expected.iter().map(|e| e.1).max();
                    // The same engines; the deepest exact, the others at least half.
                    let got = matches_of(&index, &query);
                    prop_assert_eq!(
                        got.iter().map(|g| &g.0).collect::<Vec<_>>(),
                        expected.iter().map(|e| &e.0).collect::<Vec<_>>(),
                        "matches({:?})", query
                    );
                    for (g, e) in got.iter().zip(&expected) {
                        prop_assert!(g.1 <= e.1 && 2 * g.1 >= e.1, "{:?} vs {:?}", got, expected);
                        if Some(e.1) == best {
                            prop_assert_eq!(g.1, e.1);
                        }
                    }
                    // With a limit: the deepest holder comes first.
                    let top = index.matches(&query, 1);
                    prop_assert_eq!(top.first().map(|t| t.1), best);
                }
                IndexOp::Drop(engine) => {
                    let gone = ids[engine].clone();
                    index.retain(|id| *id != gone);
                    model.remove(&engine);
                    check_index(&index, &ids, &model, peak)?;
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(6))]

    /// The prefix index at a larger scale (arbitrary hashes, long chains, budgets of
    /// hundreds of chunks, engines dropped and re-added): usage stays within budget,
    /// `len()` is the sum of usages, and `memory_bytes()` stays within 64 bytes per
    /// chunk at the peak plus 64 KiB.
    #[test]
    fn prefix_index_memory_is_linear_in_its_peak(
        budget in 100usize..600,
        ops in vec((0usize..4, vec(any::<u64>(), 0..64), 0u8..20), 50..400),
    ) {
        let ids: Vec<EndpointId> = ["a", "b", "c", "d"].into_iter().map(EndpointId::new).collect();
        let mut index = PrefixIndex::new(index_config(budget));
        let mut peak = 0;
        for (engine, chain, dice) in ops {
            if dice == 0 {
                let gone = ids[engine].clone();
                index.retain(|id| *id != gone);
            } else {
                index.insert(&ids[engine], &chain, None);
            }
            peak = peak.max(index.len());
            let mut total = 0;
            for id in &ids {
                if let Some((used, b)) = index.usage(id) {
                    prop_assert!(used <= b);
                    total += used;
                }
            }
            prop_assert_eq!(index.len(), total);
            prop_assert!(
                index.memory_bytes() <= 64 * peak + 64 * 1024,
                "memory {} bytes for a peak of {} chunks",
                index.memory_bytes(),
                peak
            );
        }
    }
}

proptest! {
    #![proptest_config(config(12))]

    /// Identical prefixes stay together: through a [`Router`] with [`PrefixAware`] and
    /// a prefix index over `n` ready engines, the same long chat prompt (> 2 KB) routed
    /// again and again with each guard dropped at once always goes to the same engine,
    /// with a cached prefix after the first time. With the guards held (first byte
    /// received, so only the queue counts), every pick has the minimal
    /// [`PrefixAware::cost`] given the in-flight counts and the index's matches (and
    /// the router reports the cached tokens the index implies); and once the holder
    /// has more queued requests than the prompt is worth (64 × in flight > prompt
    /// tokens), a new request goes elsewhere.
    #[test]
    fn identical_prefixes_stay_together(
        n in 2usize..=6,
        system in "[a-zA-Z ,.]{2100,3000}",
        user in "[a-z ?]{1,200}",
        repeats in 2usize..12,
    ) {
        let set = set_of(0..n);
        let body = chat_body(&system, &user);
        let req = RouteRequest::from_json(&body, None).unwrap();
        let target = Target::default();
        let config = PrefixConfig::default();

        // No load: always the first engine chosen.
        let router = Router::new(PrefixAware::default()).with_prefix_index(config);
        let mut first = router.route(&set, None, &req, &target).unwrap();
        router.accepted(&mut first);
        prop_assert_eq!(first.cached_tokens, 0);
        let home = first.endpoint.id.clone();
        drop(first);
        for _ in 0..repeats {
            let mut routed = router.route(&set, None, &req, &target).unwrap();
            router.accepted(&mut routed);
            prop_assert_eq!(&routed.endpoint.id, &home);
            prop_assert!(routed.cached_tokens > 0);
        }
        prop_assert_eq!(router.in_flight().total(), 0);

        // Guards held: each pick is a cheapest one.
        let router = Router::new(PrefixAware::default()).with_prefix_index(config);
        let policy = PrefixAware::default();
        let hashes = PromptHashes::of(&req, config.chunk_bytes);
        let tokens = (hashes.bytes as f64 / config.bytes_per_token).ceil() as u32;
        prop_assert!(tokens > 500);
        let list = set.candidates("m");
        let mut held = Vec::new();
        let steps = (n * (tokens as usize / 64 + 2)).min(150);
        for _ in 0..steps {
            let matches: BTreeMap<EndpointId, u32> = router
                .with_index(|index| {
                    index
                        .matches(&hashes.hashes, usize::MAX)
                        .into_iter()
                        .map(|(id, d)| {
                            let cached = (d as f64 * config.chunk_tokens()) as u32;
                            (id.clone(), cached.min(tokens))
                        })
                        .collect()
                })
                .unwrap();
            let costs: BTreeMap<EndpointId, f64> = list
                .iter()
                .map(|ep| {
                    let load = Load {
                        in_flight: router.in_flight().get(&ep.id) as u32,
                        cached_tokens: matches.get(&ep.id).copied().unwrap_or(0),
                        ..Load::default()
                    };
                    (ep.id.clone(), policy.cost(&load, tokens))
                })
                .collect();
            let min = costs.values().copied().fold(f64::INFINITY, f64::min);
            let mut routed = router.route(&set, None, &req, &target).unwrap();
            let chosen = routed.endpoint.id.clone();
            prop_assert!(
                costs[&chosen] <= min,
                "chose {} at cost {}, the minimum is {} ({:?})", chosen, costs[&chosen], min, costs
            );
            prop_assert_eq!(routed.cached_tokens, matches.get(&chosen).copied().unwrap_or(0));
            router.accepted(&mut routed);
            routed.guard.first_byte();
            held.push(routed);
        }
        let used: BTreeSet<EndpointId> = held.iter().map(|r| r.endpoint.id.clone()).collect();
        prop_assert!(used.len() >= 2, "the hot prefix never spread: {:?}", used);
        drop(held);
        prop_assert_eq!(router.in_flight().total(), 0);

        // The simple form: pile more queue on the holder than the prompt is worth.
        let router = Router::new(PrefixAware::default()).with_prefix_index(config);
        let mut first = router.route(&set, None, &req, &target).unwrap();
        router.accepted(&mut first);
        let holder = first.endpoint;
        let queue: Vec<_> = (0..tokens / 64 + 1)
            .map(|_| router.in_flight().start(&holder.id))
            .collect();
        prop_assert!(64 * router.in_flight().get(&holder.id) > tokens as usize);
        let next = router.route(&set, None, &req, &target).unwrap();
        prop_assert_ne!(&next.endpoint.id, &holder.id);
        drop((next, queue));
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Prompt hashes are a chain: the hashes of a conversation are a prefix of the
    /// hashes of the same conversation extended by more messages (rendering is
    /// append-only and only full chunks are hashed), its rendered size grows, every
    /// full chunk is hashed (`hashes.len() == bytes / chunk`), and another model gives
    /// another chain.
    #[test]
    fn chat_hashes_extend_with_the_conversation(
        messages in vec(message(), 0..8),
        split in any::<Index>(),
        chunk in 1usize..64,
    ) {
        let k = split.index(messages.len() + 1);
        let short = hashes_of(&json!({"model": "m", "messages": messages[..k]}), chunk);
        let long = hashes_of(&json!({"model": "m", "messages": messages}), chunk);
        prop_assert!(
            long.hashes.starts_with(&short.hashes),
            "{} hashes are not a prefix of {}", short.hashes.len(), long.hashes.len()
        );
        prop_assert!(short.bytes <= long.bytes);
        for h in [&short, &long] {
            prop_assert_eq!(h.hashes.len(), h.bytes / chunk);
        }
        let other = hashes_of(&json!({"model": "n", "messages": messages}), chunk);
        prop_assert_eq!(other.bytes, long.bytes);
        if let (Some(a), Some(b)) = (long.hashes.first(), other.hashes.first()) {
            prop_assert_ne!(a, b, "the model seeds the chain");
        }
    }

    /// The same chain property for completion prompts given as token ids: the hashes of
    /// a token prefix are a prefix of the hashes of the whole prompt, and every full
    /// chunk of the 4-bytes-per-token rendering is hashed.
    #[test]
    fn token_prompt_hashes_extend_with_the_prompt(
        tokens in vec(any::<u32>(), 0..100),
        split in any::<Index>(),
        chunk in 1usize..64,
    ) {
        let k = split.index(tokens.len() + 1);
        let short = hashes_of(&json!({"model": "m", "prompt": tokens[..k]}), chunk);
        let long = hashes_of(&json!({"model": "m", "prompt": tokens}), chunk);
        prop_assert!(long.hashes.starts_with(&short.hashes));
        prop_assert_eq!(short.bytes, 4 * k);
        prop_assert_eq!(long.bytes, 4 * tokens.len());
        for h in [&short, &long] {
            prop_assert_eq!(h.hashes.len(), h.bytes / chunk);
        }
    }
}
