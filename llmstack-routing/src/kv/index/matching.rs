//! Walking a prompt's block chain through the index and its pending overlay.

use std::sync::Arc;

use llmstack_core::{Endpoint, EndpointId};
use tokio::time::Instant;

use super::{Inner, KvMatch};
use crate::kv::chain::{KeySpace, next_key};
use crate::kv::pending::Pending;

/// One source still matching the prompt, or one engine matching on its pending blocks
/// alone.
struct Walk {
    /// The source (`None`: the engine's pending blocks alone).
    slot: Option<u32>,
    /// Its engine's position in the candidates.
    ep: usize,
    /// Its engine's pending tag, when it has pending blocks.
    tag: Option<u32>,
    /// Whether every block so far is on the GPU (or pending, which will be).
    gpu_run: bool,
    /// Leading blocks on the GPU.
    gpu_blocks: u32,
    /// Leading blocks matched.
    blocks: u32,
}

// === impl Inner ===

impl Inner {
    /// [`KvIndex::matches`](super::KvIndex::matches) for the sources of block size
    /// `size`, with the pending overlay and the time to judge it when anything is
    /// pending. Each candidate's best match is kept in `out`.
    pub(super) fn match_size(
        &self,
        space: &KeySpace<'_>,
        tokens: &[u32],
        size: u32,
        endpoints: &[Arc<Endpoint>],
        pending: Option<(&Pending, Instant)>,
        out: &mut Vec<(usize, KvMatch)>,
    ) {
        let expected = |key: u64, tag: Option<u32>| match (pending, tag) {
            (Some((p, now)), Some(tag)) => p.holds(key, tag, now),
            _ => false,
        };
        let mut blocks = tokens.chunks_exact(size as usize);
        let Some(first) = blocks.next() else {
            return;
        };
        let mut prev = next_key(space.seed(), first);
        let mut alive: Vec<Walk> = Vec::new();
        self.blocks.for_each(prev, |h| {
            let Some(s) = self.slots[h.slot as usize].as_ref() else {
                return;
            };
            if s.block_size != size {
                return;
            }
            let Ok(ep) = endpoints.binary_search_by(|e| e.id.cmp(&s.source.endpoint)) else {
                return;
            };
            let tag = pending.and_then(|(p, _)| p.tag(&s.source.endpoint));
            let gpu = h.gpu > 0 || expected(prev, tag);
            alive.push(Walk {
                slot: Some(h.slot),
                ep,
                tag,
                gpu_run: gpu,
                gpu_blocks: u32::from(gpu),
                blocks: 1,
            });
        });
        if let Some((p, now)) = pending {
            // An engine with a source holding the first block walks with that source
            // (held or pending counts there); any other walks on its pending blocks.
            let mut walking: Vec<bool> = Vec::new();
            for (id, tag) in p.tags() {
                if !p.holds(prev, tag, now) {
                    continue;
                }
                let Ok(ep) = endpoints.binary_search_by(|e| e.id.cmp(id)) else {
                    continue;
                };
                if walking.is_empty() {
                    walking = vec![false; endpoints.len()];
                    for a in &alive {
                        walking[a.ep] = true;
                    }
                }
                if std::mem::replace(&mut walking[ep], true) {
                    continue;
                }
                alive.push(Walk {
                    slot: None,
                    ep,
                    tag: Some(tag),
                    gpu_run: true,
                    gpu_blocks: 1,
                    blocks: 1,
                });
            }
        }
        for (depth, block) in (1u32..).zip(blocks) {
            if alive.is_empty() {
                break;
            }
            prev = next_key(prev, block);
            let indexed = self.blocks.contains(prev);
            if !indexed && pending.is_none() {
                break;
            }
            let mut any = false;
            for a in alive.iter_mut().filter(|a| a.blocks == depth) {
                let held = a
                    .slot
                    .filter(|_| indexed)
                    .and_then(|s| self.blocks.get(prev, s));
                let on_gpu = held.is_some_and(|h| h.gpu > 0);
                let pending = !on_gpu && expected(prev, a.tag);
                if held.is_none() && !pending {
                    continue;
                }
                a.gpu_run &= on_gpu || pending;
                a.gpu_blocks += u32::from(a.gpu_run);
                a.blocks += 1;
                any = true;
            }
            if !any {
                break;
            }
        }
        for a in alive {
            let m = KvMatch {
                gpu_tokens: a.gpu_blocks.saturating_mul(size),
                tokens: a.blocks.saturating_mul(size),
            };
            match out.iter_mut().find(|(j, _)| *j == a.ep) {
                Some((_, best)) if (m.gpu_tokens, m.tokens) > (best.gpu_tokens, best.tokens) => {
                    *best = m;
                }
                Some(_) => {}
                None => out.push((a.ep, m)),
            }
        }
    }

    /// How many leading `keys` one source of `endpoint` holds on its GPU. O(its match).
    pub(super) fn gpu_depth(&self, endpoint: &EndpointId, keys: &[u64]) -> usize {
        let Some((&first, rest)) = keys.split_first() else {
            return 0;
        };
        let mut best = 0;
        self.blocks.for_each(first, |h| {
            let mine = self.slots[h.slot as usize]
                .as_ref()
                .is_some_and(|s| s.source.endpoint == *endpoint);
            if mine && h.gpu > 0 {
                let on_gpu = |k: &&u64| self.blocks.get(**k, h.slot).is_some_and(|h| h.gpu > 0);
                best = best.max(1 + rest.iter().take_while(on_gpu).count());
            }
        });
        best
    }
}
