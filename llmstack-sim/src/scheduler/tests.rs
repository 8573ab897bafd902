use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::hash::HashAlgo;
use crate::kv_events::KvEvent;
use crate::profile::LatencyProfile;

/// Drives an [`EngineCore`] on a virtual clock: each step lasts what the profile says.
struct Harness {
    core: EngineCore,
    m: EngineMetrics,
    t0: Instant,
    now: Instant,
    profile: LatencyProfile,
    rx: HashMap<u64, mpsc::UnboundedReceiver<SeqEvent>>,
    arrival: HashMap<u64, Instant>,
    first_token: HashMap<u64, Instant>,
    tokens: HashMap<u64, Vec<u32>>,
    finish: HashMap<u64, Finish>,
    cached: HashMap<u64, u32>,
    plans: Vec<StepPlan>,
    next: u64,
}

fn limits(block_size: usize, max_num_seqs: usize, budget: usize) -> CoreLimits {
    CoreLimits {
        block_size,
        max_num_seqs,
        max_num_batched_tokens: budget,
        max_model_len: 1 << 20,
        max_loras: 1,
    }
}

impl Harness {
    fn new(limits: CoreLimits, blocks: usize) -> Self {
        let pool = BlockPool::new(blocks, true, true);
        let hasher = BlockHasher::new(HashAlgo::Sha256, "vllm-none-hash");
        let now = Instant::now();
        Self {
            core: EngineCore::new(limits, pool, hasher),
            m: EngineMetrics::new(1 << 20),
            t0: now,
            now,
            profile: LatencyProfile::llama3_8b_h100(),
            rx: HashMap::new(),
            arrival: HashMap::new(),
            first_token: HashMap::new(),
            tokens: HashMap::new(),
            finish: HashMap::new(),
            cached: HashMap::new(),
            plans: Vec::new(),
            next: 1,
        }
    }

    fn seq(&mut self, prompt: Vec<u32>, max_tokens: usize) -> NewSeq {
        let id = self.next;
        self.next += 1;
        let (sink, rx) = mpsc::unbounded_channel();
        self.rx.insert(id, rx);
        self.arrival.insert(id, self.now);
        NewSeq {
            id,
            index: 0,
            prompt: prompt.into(),
            max_tokens,
            min_tokens: 0,
            ignore_eos: true,
            natural_len: usize::MAX,
            stop_token_ids: Arc::from(Vec::new()),
            lora: None,
            cache_salt: None,
            stream: true,
            seed: id,
            arrival: self.now,
            sink,
        }
    }

    fn add(&mut self, prompt: Vec<u32>, max_tokens: usize) -> u64 {
        let s = self.seq(prompt, max_tokens);
        let id = s.id;
        self.core.add(s);
        id
    }

    /// One step; `None` when nothing could be scheduled.
    fn step(&mut self) -> Option<StepPlan> {
        let plan = self.core.schedule(self.now, &mut self.m, true);
        if plan.is_empty() {
            return None;
        }
        self.now += self.profile.step_duration(&plan, 1.0);
        self.core.finish_step(&plan, self.now, &mut self.m);
        self.drain();
        self.plans.push(plan.clone());
        Some(plan)
    }

    fn drain(&mut self) {
        for (id, rx) in &mut self.rx {
            while let Ok(ev) = rx.try_recv() {
                let toks = self.tokens.entry(*id).or_default();
                match ev.tokens {
                    Emitted::One(t) => toks.push(t),
                    Emitted::All(v) => toks.extend(v),
                    Emitted::Nothing => {}
                }
                if !toks.is_empty() {
                    self.first_token.entry(*id).or_insert(self.now);
                }
                self.cached.insert(*id, ev.cached_tokens);
                if let Some(f) = ev.finish {
                    self.finish.insert(*id, f);
                }
            }
        }
    }

    fn run(&mut self) {
        for _ in 0..100_000 {
            if self.step().is_none() {
                return;
            }
        }
        panic!("did not finish");
    }

    fn ttft_ms(&self, id: u64) -> f64 {
        (self.first_token[&id] - self.arrival[&id]).as_secs_f64() * 1000.0
    }

    fn cached(&self, id: u64) -> u32 {
        self.cached[&id]
    }
}

fn toks(range: std::ops::Range<u32>) -> Vec<u32> {
    range.map(|t| t + 1000).collect()
}

#[test]
fn prefix_hit_is_capped_at_prompt_minus_one_and_block_aligned() {
    let mut h = Harness::new(limits(16, 64, 8192), 100);
    let a = h.add(toks(0..32), 4);
    h.run();
    assert_eq!(h.cached(a), 0);
    // The same 32 tokens are fully cached, but the last prompt token is always recomputed:
    // the hit is capped at 31 and rounded down to a block.
    let b = h.add(toks(0..32), 4);
    h.run();
    assert_eq!(h.cached(b), 16);
    // A longer prompt extending the first reuses both full blocks.
    let c = h.add(toks(0..40), 4);
    h.run();
    assert_eq!(h.cached(c), 32);
    // A different first block breaks the chain from the start.
    let mut other = toks(0..40);
    other[0] = 7;
    let d = h.add(other, 4);
    h.run();
    assert_eq!(h.cached(d), 0);
    assert_eq!(h.m.prefix_cache_queries, 32 + 32 + 40 + 40);
    assert_eq!(h.m.prefix_cache_hits, 16 + 32);
}

#[test]
fn generated_tokens_are_cached_too() {
    let mut h = Harness::new(limits(16, 64, 8192), 100);
    let a = h.add(toks(0..16), 17);
    h.run();
    // Prompt (16) + 17 outputs: the block of the first 16 outputs is full and cached.
    let mut next = toks(0..16);
    next.extend(&h.tokens[&a][..16]);
    next.push(5);
    let b = h.add(next, 1);
    h.run();
    assert_eq!(h.cached(b), 32);
}

#[test]
fn chunked_prefill_splits_long_prompts_at_the_budget() {
    let mut h = Harness::new(limits(16, 64, 64), 100);
    let a = h.add(toks(0..200), 3);
    h.run();
    let prefill: Vec<usize> = h.plans.iter().map(|p| p.prefill_tokens).collect();
    assert_eq!(prefill, vec![64, 64, 64, 8, 0, 0]);
    // The first token comes from the step that computed the last prompt chunk.
    let first_four: f64 = h.plans[..4]
        .iter()
        .map(|p| h.profile.step_duration(p, 1.0).as_secs_f64() * 1000.0)
        .sum();
    assert!((h.ttft_ms(a) - first_four).abs() < 1e-6);
    assert_eq!(h.tokens[&a].len(), 3);
}

#[test]
fn running_decodes_come_before_new_prefill_in_the_budget() {
    let mut h = Harness::new(limits(16, 64, 40), 200);
    let a = h.add(toks(0..10), 50);
    h.step(); // a prefills and samples its first token
    let _b = h.add(toks(100..180), 1);
    let plan = h.step().unwrap();
    assert_eq!(
        plan.scheduled[0],
        (a, 1),
        "the running decode is scheduled first"
    );
    assert_eq!(plan.num_decode, 1);
    assert_eq!(
        plan.prefill_tokens, 39,
        "the waiting prefill gets what is left of the budget"
    );
}

#[test]
fn waiting_requests_are_admitted_fcfs_with_head_of_line_blocking() {
    // 10 usable blocks of 16 tokens.
    let mut h = Harness::new(limits(16, 64, 8192), 11);
    let a = h.add(toks(0..100), 40); // 7 blocks for its prompt
    h.step();
    let b = h.add(toks(200..260), 1); // needs 4 blocks: does not fit (3 free)
    let c = h.add(toks(300..310), 1); // needs 1 block: would fit, but waits behind b
    let plan = h.step().unwrap();
    assert_eq!(
        plan.scheduled.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![a]
    );
    assert_eq!(h.core.num_waiting(), 2);
    h.run();
    assert!(h.first_token[&b] <= h.first_token[&c], "FCFS: b before c");
}

#[test]
fn kv_pressure_preempts_the_newest_request_which_resumes_later() {
    // 8 usable blocks; two requests that each grow to 4+ blocks.
    let mut h = Harness::new(limits(16, 64, 8192), 9);
    let a = h.add(toks(0..30), 40);
    let b = h.add(toks(100..130), 40);
    h.run();
    assert!(h.m.num_preemptions >= 1, "someone was preempted");
    for id in [a, b] {
        assert_eq!(
            h.tokens[&id].len(),
            40,
            "every token arrives once, preemption or not"
        );
        assert_eq!(h.finish[&id].reason, FinishReason::Length);
    }
    // The older request was never the victim: it finished first.
    let done = |id| {
        h.plans
            .iter()
            .rposition(|p| p.scheduled.iter().any(|s| s.0 == id))
            .unwrap()
    };
    assert!(done(a) < done(b));
    assert_eq!(h.core.pool().num_free(), 8, "all blocks returned");
}

#[test]
fn max_num_seqs_caps_the_batch() {
    let mut h = Harness::new(limits(16, 2, 8192), 100);
    for i in 0..5 {
        h.add(toks(i * 100..i * 100 + 20), 3);
    }
    let plan = h.step().unwrap();
    assert_eq!(plan.scheduled.len(), 2);
    assert_eq!(h.core.num_running(), 2);
    assert_eq!(h.core.num_waiting(), 3);
}

#[test]
fn ttft_grows_with_queue_depth() {
    let mut h = Harness::new(limits(16, 1, 8192), 1000);
    let ids: Vec<u64> = (0..6)
        .map(|i| h.add(toks(i * 1000..i * 1000 + 500), 8))
        .collect();
    h.run();
    let ttfts: Vec<f64> = ids.iter().map(|&id| h.ttft_ms(id)).collect();
    for w in ttfts.windows(2) {
        assert!(
            w[1] > w[0] + 50.0,
            "each request waits for the previous one: {ttfts:?}"
        );
    }
}

#[test]
fn cached_prefix_shortens_ttft_as_the_model_says() {
    let mut h = Harness::new(limits(16, 64, 8192), 1000);
    let a = h.add(toks(0..1024), 1);
    h.run();
    let b = h.add(toks(0..1024), 1);
    h.run();
    let p = &h.profile;
    // Cold: 1024 new tokens on nothing cached.
    let cold = p.step_ms(0, 0, 1024, 1024.0 * 512.0);
    // Warm: 1008 cached (1023 rounded down to a block), 16 new on top.
    let warm = p.step_ms(0, 0, 16, 16.0 * (1008.0 + 8.0));
    assert!(
        (h.ttft_ms(a) - cold).abs() < 1e-6,
        "{} vs {cold}",
        h.ttft_ms(a)
    );
    assert!(
        (h.ttft_ms(b) - warm).abs() < 1e-6,
        "{} vs {warm}",
        h.ttft_ms(b)
    );
    assert!(warm < cold / 3.0);
}

#[test]
fn itl_follows_the_decode_model() {
    let mut h = Harness::new(limits(16, 64, 8192), 1000);
    let a = h.add(toks(0..100), 10);
    h.run();
    let decode_steps: Vec<&StepPlan> = h.plans.iter().filter(|p| p.num_decode == 1).collect();
    assert_eq!(decode_steps.len(), 9);
    let step = h.profile.step_ms(1, decode_steps[0].decode_ctx, 0, 0.0);
    assert!((7.0..7.1).contains(&step), "{step}");
    assert_eq!(h.m.itl.count(), 9);
    assert!((h.m.itl.sum() * 1000.0 / 9.0 - 7.0).abs() < 0.1);
    assert_eq!(h.tokens[&a].len(), 10);
    let _ = h.t0;
}

#[test]
fn eos_and_stop_tokens_end_generation() {
    let mut h = Harness::new(limits(16, 64, 8192), 100);
    let mut s = h.seq(toks(0..10), 100);
    s.ignore_eos = false;
    s.natural_len = 3;
    let a = s.id;
    h.core.add(s);
    let mut s = h.seq(toks(0..10), 100);
    s.ignore_eos = false;
    s.natural_len = 5;
    s.min_tokens = 8;
    let b = s.id;
    h.core.add(s);
    h.run();
    assert_eq!(h.tokens[&a].len(), 3);
    assert_eq!(*h.tokens[&a].last().unwrap(), tokenizer::EOT);
    assert_eq!(h.finish[&a].reason, FinishReason::Stop);
    assert_eq!(h.tokens[&b].len(), 8, "min_tokens defers EOS");
    // A stop token id ends generation with stop_reason = the id.
    let vocab = tokenizer::output_vocab();
    let mut s = h.seq(toks(0..10), 100);
    s.stop_token_ids = vocab.clone().into();
    let c = s.id;
    h.core.add(s);
    h.run();
    assert_eq!(h.tokens[&c].len(), 1);
    assert_eq!(h.finish[&c].stop_token, Some(h.tokens[&c][0]));
    assert_eq!(h.m.finished(FinishReason::Stop), 3);
}

#[test]
fn abort_frees_blocks_and_counts() {
    let mut h = Harness::new(limits(16, 64, 8192), 100);
    let a = h.add(toks(0..40), 100);
    let b = h.add(toks(100..140), 100);
    h.step();
    let waiting = h.add(toks(200..240), 100);
    let now = h.now;
    h.core
        .abort(&[a, waiting], FinishReason::Abort, now, &mut h.m);
    h.drain();
    assert_eq!(h.finish[&a].reason, FinishReason::Abort);
    assert_eq!(h.core.num_running(), 1);
    assert_eq!(h.core.num_waiting(), 0);
    assert_eq!(h.m.finished(FinishReason::Abort), 2);
    h.core.abort(&[b], FinishReason::Abort, now, &mut h.m);
    assert_eq!(h.core.pool().num_free(), 99);
    assert!(!h.core.has_work());
}

#[test]
fn lora_adapters_beyond_max_loras_are_deferred() {
    let mut h = Harness::new(limits(16, 64, 8192), 100);
    let lora = |n: &str| {
        Some(LoraRef {
            name: n.into(),
            path: format!("/a/{n}").into(),
        })
    };
    let mut s = h.seq(toks(0..10), 5);
    s.lora = lora("x");
    h.core.add(s);
    let mut s = h.seq(toks(0..10), 5);
    s.lora = lora("y");
    let y = s.id;
    h.core.add(s);
    let base = h.add(toks(50..60), 5);
    let plan = h.step().unwrap();
    let ids: Vec<u64> = plan.scheduled.iter().map(|s| s.0).collect();
    assert!(
        !ids.contains(&y),
        "a second adapter waits while max_loras = 1"
    );
    assert!(ids.contains(&base), "base-model requests are not held back");
    assert_eq!(h.m.waiting_deferred, 1);
    h.run();
    assert_eq!(h.tokens[&y].len(), 5);
}

#[test]
fn lora_and_salt_isolate_cache_entries() {
    let mut h = Harness::new(limits(16, 64, 8192), 100);
    h.add(toks(0..40), 1);
    h.run();
    let mut s = h.seq(toks(0..40), 1);
    s.cache_salt = Some("tenant".into());
    let salted = s.id;
    h.core.add(s);
    h.run();
    assert_eq!(h.cached(salted), 0);
}

#[test]
fn kv_events_follow_vllm_moments() {
    let mut h = Harness::new(limits(16, 64, 8192), 5); // 4 usable blocks
    let a = h.add(toks(0..33), 1);
    h.step();
    let ev = h.core.pool_mut().take_events();
    assert_eq!(ev.len(), 1, "one BlockStored per request per step: {ev:?}");
    match &ev[0] {
        KvEvent::BlockStored {
            block_hashes,
            parent_block_hash,
            token_ids,
            ..
        } => {
            assert_eq!(block_hashes.len(), 2);
            assert_eq!(*parent_block_hash, None);
            assert_eq!(token_ids, &toks(0..32));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.finish[&a].reason, FinishReason::Length);
    // Freeing emits nothing; eviction on reuse does.
    assert!(h.core.pool_mut().take_events().is_empty());
    h.add(toks(500..560), 1);
    h.step();
    let ev = h.core.pool_mut().take_events();
    let removed = ev
        .iter()
        .filter(|e| matches!(e, KvEvent::BlockRemoved { .. }))
        .count();
    assert_eq!(removed, 2, "{ev:?}");
}

#[test]
fn speedup_divides_step_time() {
    let p = LatencyProfile::llama3_8b_h100();
    let plan = StepPlan {
        scheduled: vec![(1, 1)],
        num_decode: 1,
        decode_ctx: 100,
        ..StepPlan::default()
    };
    let base = p.step_duration(&plan, 1.0);
    let fast = p.step_duration(&plan, 10.0);
    assert!((base.as_secs_f64() / fast.as_secs_f64() - 10.0).abs() < 1e-9);
    assert!(base > Duration::from_millis(7));
}

#[test]
fn no_prefix_cache_stats_when_caching_is_off() {
    let pool = BlockPool::new(100, false, false);
    let hasher = BlockHasher::new(HashAlgo::Sha256, "vllm-none-hash");
    let mut h = Harness::new(limits(16, 64, 8192), 100);
    h.core = EngineCore::new(limits(16, 64, 8192), pool, hasher);
    h.add(toks(0..40), 1);
    h.run();
    h.add(toks(0..40), 1);
    h.run();
    assert_eq!((h.m.prefix_cache_queries, h.m.prefix_cache_hits), (0, 0));
    assert_eq!(h.m.prompt_tokens, 80);
}
