//! The router on KV events: exact holders win, resets are followed at once, and what it
//! cannot decide falls back to the prefix index with a reason.

use std::sync::Arc;

use llmstack_core::kv::{BlockStored, KvBatch, KvEvent, Medium};
use llmstack_core::{
    Endpoint, EndpointSet, EndpointState, KvSink, KvSource, Prompt, PromptTokens, PromptView,
    RouteRequest, Tokenize, Update,
};

use crate::{KvIndex, RoutingConfig, RoutingLogic, Target};

/// A word-per-token tokenizer for model `m` (the tokenizer is an interface of ours; the
/// real one, `llmstack-tokenize`, is tested against Hugging Face's files in its crate).
struct Words;

impl Tokenize for Words {
    fn tokenize(&self, model: &str, req: &RouteRequest<'_>) -> Option<PromptTokens> {
        if model != "m" {
            return None;
        }
        let Some(PromptView::Completion(Prompt::Text(text))) = req.prompt_view() else {
            return None;
        };
        let ids: Vec<u32> = text
            .split_whitespace()
            .map(|w| {
                w.bytes()
                    .fold(7u32, |h, b| h.wrapping_mul(31) ^ u32::from(b))
            })
            .collect();
        Some(PromptTokens { ids: ids.into() })
    }

    fn knows(&self, model: &str) -> bool {
        model == "m"
    }
}

fn set() -> EndpointSet {
    let mut set = EndpointSet::default();
    set.apply(Update::Reset(
        (0..3)
            .map(|i| {
                Endpoint::new(format!("http://127.0.0.1:{}", 9100 + i).parse().unwrap())
                    .with_model("m")
                    .with_model("other")
                    .with_state(EndpointState::Ready)
            })
            .collect(),
    ));
    set
}

fn prompt(words: usize) -> String {
    (0..words).map(|w| format!("w{w} ")).collect()
}

fn body(text: &str, model: &str) -> String {
    format!(r#"{{"model":"{model}","prompt":"{text}"}}"#)
}

/// Engine `ep` announces the full blocks of `text` (block size 4) as stored.
fn announce(index: &KvIndex, ep: &Endpoint, text: &str) {
    let req = body(text, "m");
    let req = RouteRequest::from_json(req.as_bytes(), None).unwrap();
    let ids = Words.tokenize("m", &req).unwrap().ids;
    let blocks = ids.len() / 4;
    let stored = BlockStored {
        block_hashes: (0..blocks as u64).map(|b| b + 1000).collect(),
        parent_block_hash: None,
        token_ids: ids[..blocks * 4].to_vec(),
        block_size: 4,
        medium: Medium::Gpu,
        full_attention: true,
        ..BlockStored::default()
    };
    let source = KvSource {
        endpoint: ep.id.clone(),
        dp_rank: 0,
    };
    index.apply(
        &source,
        &KvBatch {
            ts: 0.0,
            events: vec![KvEvent::BlockStored(stored)],
            dp_rank: 0,
        },
    );
}

#[test]
fn the_engine_that_announced_the_prefix_gets_the_request() {
    let index = Arc::new(KvIndex::new());
    let config = RoutingConfig {
        routing_logic: RoutingLogic::Kvaware,
        ..RoutingConfig::default()
    };
    let router = config
        .router()
        .with_kv_index(Arc::clone(&index), Arc::new(Words));
    assert_eq!(router.policy_name(), "kvaware");
    let set = set();
    let eps = set.candidates("m");
    let text = prompt(40);
    let req_body = body(&text, "m");
    let req = RouteRequest::from_json(req_body.as_bytes(), None).unwrap();

    // No engine has published anything yet: the router's own prefix index decides.
    let routed = router.route(&set, None, &req, &Target::default()).unwrap();
    assert_eq!(routed.reason, "no_events");
    drop(routed);

    // Engine 2 announces the prompt: it gets the request, every time, whoever sent
    // the earlier ones.
    announce(&index, &eps[2], &text);
    for _ in 0..3 {
        let routed = router.route(&set, None, &req, &Target::default()).unwrap();
        assert_eq!(routed.endpoint.id, eps[2].id);
        assert_eq!(routed.reason, "kv_cached");
        // 40 tokens, all cached; vLLM recomputes the last one.
        assert_eq!(routed.cached_tokens, 39);
    }

    // The engine's cache was reset: the index follows on the next batch.
    let source = KvSource {
        endpoint: eps[2].id.clone(),
        dp_rank: 0,
    };
    index.apply(
        &source,
        &KvBatch {
            ts: 0.0,
            events: vec![KvEvent::AllBlocksCleared],
            dp_rank: 0,
        },
    );
    let routed = router.route(&set, None, &req, &Target::default()).unwrap();
    assert_eq!(routed.reason, "picked");
    assert_eq!(routed.cached_tokens, 0);

    // A model the tokenizer does not know: the prefix index, with the reason.
    let other = body(&text, "other");
    let req = RouteRequest::from_json(other.as_bytes(), None).unwrap();
    let routed = router.route(&set, None, &req, &Target::default()).unwrap();
    assert_eq!(routed.reason, "no_tokenizer");
}

#[test]
fn a_hot_prefix_spreads_once_its_holder_is_busy() {
    let index = Arc::new(KvIndex::new());
    let router = RoutingConfig {
        routing_logic: RoutingLogic::Kvaware,
        ..RoutingConfig::default()
    }
    .router()
    .with_kv_index(Arc::clone(&index), Arc::new(Words));
    let set = set();
    let eps = set.candidates("m");
    let text = prompt(400);
    announce(&index, &eps[0], &text);
    let req_body = body(&text, "m");
    let req = RouteRequest::from_json(req_body.as_bytes(), None).unwrap();
    let mut held = Vec::new();
    let mut on_holder = 0;
    for _ in 0..20 {
        let routed = router.route(&set, None, &req, &Target::default()).unwrap();
        on_holder += usize::from(routed.endpoint.id == eps[0].id);
        held.push(routed);
    }
    // The holder's queue costs 65 tokens a request (64 + its one uncached token); a
    // cold engine's 464 (64 + 400 of prefill): the holder takes most, not all.
    assert!(
        (12..20).contains(&on_holder),
        "{on_holder} of 20 on the holder"
    );
    for ep in &eps[1..] {
        assert!(held.iter().any(|r| r.endpoint.id == ep.id));
    }
}

#[test]
fn an_accepted_prompt_is_expected_on_its_engine_before_its_events() {
    let index = Arc::new(KvIndex::new());
    let router = RoutingConfig {
        routing_logic: RoutingLogic::Kvaware,
        ..RoutingConfig::default()
    }
    .router()
    .with_kv_index(Arc::clone(&index), Arc::new(Words));
    let set = set();
    let eps = set.candidates("m");
    // Some engine has published (unrelated blocks): the index decides.
    announce(&index, &eps[0], &prompt(8).replace('w', "z"));
    let route = |text: &str| {
        let b = body(text, "m");
        let req = RouteRequest::from_json(b.as_bytes(), None).unwrap();
        router.route(&set, None, &req, &Target::default()).unwrap()
    };
    let turn = prompt(40);
    let next = format!("{turn}y0 y1 y2 y3 y4 y5 y6 y7 y8 y9");

    // The first turn is accepted by the engine picked; its events have not arrived
    // when the next turn does, which still finds that engine.
    let mut routed = route(&turn);
    assert_eq!(routed.reason, "picked");
    let engine = routed.endpoint.id.clone();
    router.accepted(&mut routed);
    drop(routed);
    for _ in 0..3 {
        let routed = route(&next);
        assert_eq!(routed.endpoint.id, engine);
        assert_eq!(routed.reason, "kv_cached");
        // The first turn's 10 full blocks.
        assert_eq!(routed.cached_tokens, 40);
    }

    // A request the engine did not accept is not expected anywhere.
    let other = prompt(40).replace('w', "v");
    drop(route(&other));
    let routed = route(&format!("{other}y0"));
    assert_eq!((routed.reason, routed.cached_tokens), ("picked", 0));
    drop(routed);

    // The engine's cache was reset (`POST /reset_prefix_cache`): its next batch drops
    // its pending blocks too.
    let source = KvSource {
        endpoint: engine.clone(),
        dp_rank: 0,
    };
    index.apply(
        &source,
        &KvBatch {
            ts: 0.0,
            events: vec![KvEvent::AllBlocksCleared],
            dp_rank: 0,
        },
    );
    let routed = route(&next);
    assert_eq!((routed.reason, routed.cached_tokens), ("picked", 0));
}
