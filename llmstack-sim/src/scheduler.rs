//! The vLLM V1 scheduler, step by step, without clocks or I/O.
//!
//! [`EngineCore::schedule`] plans one engine step: running sequences first (a prefill chunk
//! or one decode token each, within the `max_num_batched_tokens` budget, preempting the
//! newest running sequence when KV blocks run out), then waiting ones in FCFS order while
//! no preemption happened, each admitted only when blocks for its whole remaining prompt
//! are free after its prefix-cache hit. [`EngineCore::finish_step`] applies the step:
//! sequences whose known tokens are all computed sample one token, and finished ones free
//! their blocks. The engine task ([`crate::engine`]) wraps this in time and channels.
//!
//! The sequence vocabulary lives in `sequence`, the limits and step plan in `plan`; how a
//! sequence ends is [`crate::finish`]'s, shared with the metrics.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

use crate::block_pool::{BlockPool, StoredExtra};
use crate::finish::{Finish, FinishReason, FinishedSeq};
use crate::hash::{BlockHasher, ExtraKey};
use crate::metrics::EngineMetrics;
use crate::tokenizer;

mod plan;
mod sequence;

pub use sequence::SeqState;

pub(crate) use plan::{CoreLimits, StepPlan};
pub(crate) use sequence::{Emitted, LoraRef, NewSeq, SeqEvent};

use sequence::Seq;

/// Scheduler, KV-cache pool and sequences of one engine.
#[derive(Debug)]
pub(crate) struct EngineCore {
    limits: CoreLimits,
    pool: BlockPool,
    hasher: BlockHasher,
    seqs: HashMap<u64, Seq>,
    running: Vec<u64>,
    /// FCFS queue; ids of aborted sequences stay as tombstones and are skipped.
    waiting: VecDeque<u64>,
    num_waiting: usize,
    /// Tokens the simulated model draws its answers from.
    vocab: Vec<u32>,
    /// The token it ends an answer with.
    eos: u32,
}

// === impl EngineCore ===

impl EngineCore {
    pub(crate) fn new(limits: CoreLimits, pool: BlockPool, hasher: BlockHasher) -> Self {
        Self {
            limits,
            pool,
            hasher,
            seqs: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            num_waiting: 0,
            vocab: tokenizer::output_vocab(),
            eos: tokenizer::EOT,
        }
    }

    /// The same core generating from `vocab` (not empty) and ending answers with `eos`
    /// (default: the pseudo-tokenizer's words and [`tokenizer::EOT`]).
    pub(crate) fn with_output(mut self, vocab: Vec<u32>, eos: u32) -> Self {
        if !vocab.is_empty() {
            self.vocab = vocab;
        }
        self.eos = eos;
        self
    }

    pub(crate) fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub(crate) fn pool_mut(&mut self) -> &mut BlockPool {
        &mut self.pool
    }

    pub(crate) fn num_running(&self) -> usize {
        self.running.len()
    }

    pub(crate) fn num_waiting(&self) -> usize {
        self.num_waiting
    }

    pub(crate) fn has_work(&self) -> bool {
        !self.running.is_empty() || self.num_waiting > 0
    }

    /// Distinct LoRA adapters of running and waiting sequences (for `lora_requests_info`).
    pub(crate) fn lora_names(&self) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let collect = |ids: &mut dyn Iterator<Item = &u64>| {
            let mut names: Vec<Arc<str>> = Vec::new();
            for id in ids {
                if let Some(l) = self.seqs.get(id).and_then(|s| s.new.lora.as_ref())
                    && !names.contains(&l.name)
                {
                    names.push(l.name.clone());
                }
            }
            names
        };
        (
            collect(&mut self.running.iter()),
            collect(&mut self.waiting.iter()),
        )
    }

    /// Queues a new sequence at the back of the waiting queue.
    pub(crate) fn add(&mut self, new: NewSeq) {
        let id = new.id;
        let seq = Seq {
            output: Vec::with_capacity(new.max_tokens.min(4096)),
            new,
            num_computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            num_registered: 0,
            admitted: false,
            cached_tokens: 0,
            first_scheduled: None,
            first_token: None,
            last_token: None,
            num_preemptions: 0,
        };
        self.seqs.insert(id, seq);
        self.waiting.push_back(id);
        self.num_waiting += 1;
    }

    /// Plans one step (see the module docs). Blocks are allocated and full blocks cached
    /// now, as vLLM does at scheduling time; tokens are produced by [`Self::finish_step`].
    pub(crate) fn schedule(
        &mut self,
        now: Instant,
        m: &mut EngineMetrics,
        admit: bool,
    ) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.limits.max_num_batched_tokens;
        // Set again by admission; a step that admits nothing defers nothing.
        m.waiting_deferred = 0;
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(seq) = self.seqs.get(&id) else {
                self.running.remove(i);
                continue;
            };
            let start = seq.num_computed;
            let num_new = (seq.total_len() - start).min(budget);
            let need = self
                .blocks_for(start + num_new)
                .saturating_sub(seq.blocks.len());
            let mut fresh = Vec::new();
            let mut scheduled = true;
            while need > 0 && !self.pool.allocate(need, &mut fresh) {
                let Some(victim) = self.running.pop() else {
                    break;
                };
                self.preempt(victim, m);
                preempted = true;
                if victim == id {
                    scheduled = false;
                    break;
                }
            }
            if !scheduled {
                break;
            }
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.blocks.extend(fresh);
            }
            self.register_full_blocks(id, start + num_new);
            self.plan_entry(&mut plan, id, start, num_new);
            budget -= num_new;
            i += 1;
        }
        if !preempted && admit {
            self.admit_waiting(now, m, &mut plan, &mut budget);
        }
        m.observe_iteration_tokens(plan.num_tokens());
        plan
    }

    fn admit_waiting(
        &mut self,
        now: Instant,
        m: &mut EngineMetrics,
        plan: &mut StepPlan,
        budget: &mut usize,
    ) {
        let bs = self.limits.block_size;
        let mut deferred = Vec::new();
        let mut active_loras: HashSet<Arc<str>> = self
            .running
            .iter()
            .filter_map(|id| self.seqs.get(id)?.new.lora.as_ref().map(|l| l.name.clone()))
            .collect();
        while *budget > 0 && self.running.len() < self.limits.max_num_seqs {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            if let Some(lora) = &seq.new.lora
                && !active_loras.contains(&lora.name)
                && active_loras.len() >= self.limits.max_loras
            {
                deferred.push(id);
                continue;
            }
            let total = seq.total_len();
            self.ensure_hashes(id, total / bs);
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            let hit = self.pool.lookup(&seq.hashes, (total - 1) / bs);
            let hit_tokens = hit.len() * bs;
            let need_all = self.blocks_for(total) - hit.len();
            if need_all + self.pool.count_unreferenced(&hit) > self.pool.num_free() {
                self.waiting.push_front(id);
                break;
            }
            let num_new = (total - hit_tokens).min(*budget);
            let need_now = self.blocks_for(hit_tokens + num_new) - hit.len();
            self.pool.touch(&hit);
            let mut blocks = hit;
            if !self.pool.allocate(need_now, &mut blocks) {
                // Unreachable: the full prompt was checked to fit above.
                self.pool.free(&blocks);
                self.waiting.push_front(id);
                break;
            }
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            seq.blocks = blocks;
            seq.num_computed = hit_tokens;
            seq.num_registered = hit_tokens / bs;
            if let Some(l) = &seq.new.lora {
                active_loras.insert(l.name.clone());
            }
            if !seq.admitted {
                seq.admitted = true;
                seq.cached_tokens = hit_tokens;
                seq.first_scheduled = Some(now);
                if self.pool.caching_enabled() {
                    m.prefix_cache_queries += total as u64;
                    m.prefix_cache_hits += hit_tokens as u64;
                }
                m.queue_time
                    .observe(now.saturating_duration_since(seq.new.arrival).as_secs_f64());
            }
            self.num_waiting -= 1;
            self.running.push(id);
            self.register_full_blocks(id, hit_tokens + num_new);
            self.plan_entry(plan, id, hit_tokens, num_new);
            *budget -= num_new;
        }
        m.waiting_deferred = deferred.len();
        for id in deferred.into_iter().rev() {
            self.waiting.push_front(id);
        }
        if self.waiting.len() > 2 * self.num_waiting + 64 {
            let seqs = &self.seqs;
            self.waiting.retain(|id| seqs.contains_key(id));
        }
    }

    fn plan_entry(&self, plan: &mut StepPlan, id: u64, start: usize, num_new: usize) {
        plan.scheduled.push((id, num_new));
        let Some(seq) = self.seqs.get(&id) else {
            return;
        };
        if num_new == 1 && start >= seq.new.prompt.len() {
            plan.num_decode += 1;
            plan.decode_ctx += start + 1;
        } else {
            plan.prefill_tokens += num_new;
            plan.prefill_attention += num_new as f64 * (start as f64 + num_new as f64 / 2.0);
        }
    }

    /// Applies a planned step at time `now`: advances computed tokens, samples new tokens,
    /// emits events and retires finished sequences.
    pub(crate) fn finish_step(&mut self, plan: &StepPlan, now: Instant, m: &mut EngineMetrics) {
        let mut finished = false;
        for &(id, num_new) in &plan.scheduled {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            seq.num_computed += num_new;
            if seq.num_computed < seq.total_len() {
                continue;
            }
            let k = seq.output.len();
            let eos_allowed = !seq.new.ignore_eos && k + 1 >= seq.new.min_tokens;
            let token = if eos_allowed && k + 1 >= seq.new.natural_len {
                self.eos
            } else {
                let r = splitmix(seq.new.seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                self.vocab[(r % self.vocab.len() as u64) as usize]
            };
            seq.output.push(token);
            match seq.last_token {
                None => {
                    let prompt = seq.new.prompt.len() as u64;
                    m.ttft
                        .observe(now.saturating_duration_since(seq.new.arrival).as_secs_f64());
                    m.prompt_tokens += prompt;
                    m.prompt_tokens_cached += seq.cached_tokens as u64;
                    seq.first_token = Some(now);
                }
                Some(last) => m
                    .itl
                    .observe(now.saturating_duration_since(last).as_secs_f64()),
            }
            seq.last_token = Some(now);
            m.generation_tokens += 1;
            let stop_allowed = k + 1 >= seq.new.min_tokens;
            let stop_token =
                (stop_allowed && seq.new.stop_token_ids.contains(&token)).then_some(token);
            let reason = if token == self.eos && eos_allowed || stop_token.is_some() {
                Some(FinishReason::Stop)
            } else if seq.output.len() >= seq.new.max_tokens
                || seq.total_len() >= self.limits.max_model_len
            {
                Some(FinishReason::Length)
            } else {
                None
            };
            match reason {
                None => {
                    if seq.new.stream {
                        let _closed = seq.new.sink.send(SeqEvent {
                            index: seq.new.index,
                            tokens: Emitted::One(token),
                            finish: None,
                            cached_tokens: seq.cached_tokens as u32,
                        });
                    }
                }
                Some(reason) => {
                    finished = true;
                    self.retire(id, reason, stop_token, Some(token), now, m);
                }
            }
        }
        if finished {
            let seqs = &self.seqs;
            self.running.retain(|id| seqs.contains_key(id));
        }
    }

    /// Ends sequences early (client gone, stop string seen by the frontend, sleep).
    /// Running ones are dropped from the batch at once; their blocks are freed.
    pub(crate) fn abort(
        &mut self,
        ids: &[u64],
        reason: FinishReason,
        now: Instant,
        m: &mut EngineMetrics,
    ) {
        let mut any_running = false;
        for &id in ids {
            if !self.seqs.contains_key(&id) {
                continue;
            }
            if self.running.contains(&id) {
                any_running = true;
            } else {
                self.num_waiting -= 1;
            }
            self.retire(id, reason, None, None, now, m);
        }
        if any_running {
            let seqs = &self.seqs;
            self.running.retain(|id| seqs.contains_key(id));
        }
    }

    /// Ids of every sequence, running first.
    pub(crate) fn all_ids(&self) -> Vec<u64> {
        let mut ids = self.running.clone();
        ids.extend(self.waiting.iter().filter(|id| self.seqs.contains_key(id)));
        ids
    }

    /// Preempts every running sequence (they restart from the waiting queue's head).
    pub(crate) fn preempt_all(&mut self, m: &mut EngineMetrics) {
        while let Some(id) = self.running.pop() {
            self.preempt(id, m);
        }
    }

    /// Per-sequence state for `/sim/state`.
    pub(crate) fn seq_states(&self) -> Vec<SeqState> {
        let running: HashSet<u64> = self.running.iter().copied().collect();
        self.all_ids()
            .into_iter()
            .filter_map(|id| {
                let s = self.seqs.get(&id)?;
                Some(SeqState {
                    id,
                    status: if running.contains(&id) {
                        "running"
                    } else {
                        "waiting"
                    },
                    prompt_tokens: s.new.prompt.len(),
                    computed_tokens: s.num_computed,
                    output_tokens: s.output.len(),
                    cached_tokens: s.cached_tokens,
                    preemptions: s.num_preemptions,
                })
            })
            .collect()
    }

    fn retire(
        &mut self,
        id: u64,
        reason: FinishReason,
        stop_token: Option<u32>,
        last: Option<u32>,
        now: Instant,
        m: &mut EngineMetrics,
    ) {
        let Some(seq) = self.seqs.remove(&id) else {
            return;
        };
        self.pool.free(&seq.blocks);
        let finish = Finish { reason, stop_token };
        let tokens = if seq.new.stream {
            last.map_or(Emitted::Nothing, Emitted::One)
        } else {
            Emitted::All(seq.output.clone())
        };
        let _closed = seq.new.sink.send(SeqEvent {
            index: seq.new.index,
            tokens,
            finish: Some(finish),
            cached_tokens: seq.cached_tokens as u32,
        });
        m.record_finished(&FinishedSeq {
            reason,
            arrival: seq.new.arrival,
            first_scheduled: seq.first_scheduled,
            first_token: seq.first_token,
            last_token: seq.last_token,
            now,
            prompt_tokens: seq.new.prompt.len(),
            generation_tokens: seq.output.len(),
            max_tokens: seq.new.max_tokens,
            cached_tokens: seq.cached_tokens,
            preemptions: seq.num_preemptions,
        });
    }

    fn preempt(&mut self, id: u64, m: &mut EngineMetrics) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        self.pool.free(&seq.blocks);
        seq.blocks.clear();
        seq.num_computed = 0;
        seq.num_registered = 0;
        seq.num_preemptions += 1;
        m.num_preemptions += 1;
        self.waiting.push_front(id);
        self.num_waiting += 1;
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.limits.block_size)
    }

    /// Extends the sequence's hash chain to its first `n_blocks` full blocks.
    fn ensure_hashes(&mut self, id: u64, n_blocks: usize) {
        let bs = self.limits.block_size;
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        let mut buf = Vec::with_capacity(bs);
        while seq.hashes.len() < n_blocks {
            let b = seq.hashes.len();
            buf.clear();
            buf.extend((b * bs..(b + 1) * bs).map(|i| seq.token(i)));
            let mut extra = Vec::new();
            if let Some(l) = &seq.new.lora {
                extra.push(ExtraKey::Lora {
                    name: l.name.to_string(),
                    path: l.path.to_string(),
                });
            }
            if b == 0
                && let Some(salt) = &seq.new.cache_salt
            {
                extra.push(ExtraKey::CacheSalt(salt.to_string()));
            }
            let h = self.hasher.hash_block(seq.hashes.last(), &buf, &extra);
            seq.hashes.push(h);
        }
    }

    /// Caches the sequence's blocks that are full once `upto` tokens are computed.
    fn register_full_blocks(&mut self, id: u64, upto: usize) {
        let bs = self.limits.block_size;
        let full = upto / bs;
        self.ensure_hashes(id, full);
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        let from = seq.num_registered;
        if full <= from {
            return;
        }
        let tokens: Vec<u32> = (from * bs..full * bs).map(|i| seq.token(i)).collect();
        let parent = from.checked_sub(1).map(|p| &seq.hashes[p]);
        self.pool.cache_blocks(
            &seq.blocks[from..full],
            &seq.hashes[from..full],
            parent,
            &tokens,
            StoredExtra {
                block_size: bs,
                lora_name: seq.new.lora.as_ref().map(|l| &*l.name),
                cache_salt: seq.new.cache_salt.as_deref(),
            },
        );
        seq.num_registered = full;
    }
}

/// SplitMix64: a tiny, good-enough mixer for deterministic pseudo-random choices.
pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
