//! Round-robin, per model.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use llmstack_core::RouteRequest;

use crate::{Candidates, Policy};

/// Bound on the number of per-model counters kept (they are cleared when exceeded).
const MAX_MODELS: usize = 4096;

/// Takes the candidates in turn, with an independent rotation per model, so each
/// model's engines get an even share whatever the mix of models.
///
/// The rotation is an index into the candidate list (kept in id order by the endpoint
/// set): when the list changes, the rotation carries on from the same position modulo
/// the new length. State: one counter per model, bounded.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: Mutex<HashMap<Box<str>, usize, foldhash::fast::RandomState>>,
}

impl Policy for RoundRobin {
    fn pick(&self, req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        if candidates.len() <= 1 {
            return (!candidates.is_empty()).then_some(0);
        }
        let model = req.model().unwrap_or_default();
        // A poisoned lock only means another pick panicked mid-update of a counter; the
        // counter is still a valid number.
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let turn = match next.get_mut(model) {
            Some(turn) => turn,
            None => {
                if next.len() >= MAX_MODELS {
                    next.clear();
                }
                next.entry(model.into()).or_insert(0)
            }
        };
        let pick = *turn % candidates.len();
        *turn = turn.wrapping_add(1);
        Some(pick)
    }

    fn name(&self) -> &'static str {
        "roundrobin"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::eps;

    fn req(model: &str) -> String {
        format!(r#"{{"model":"{model}"}}"#)
    }

    #[test]
    fn k_rounds_over_n_hit_each_k_times() {
        for n in 1..8u16 {
            let policy = RoundRobin::default();
            let candidates = eps(n);
            let body = req("m");
            let r = RouteRequest::from_json(body.as_bytes(), None).unwrap();
            let mut hits = vec![0; n as usize];
            for _ in 0..5 * n {
                hits[policy
                    .pick(&r, &Candidates::new(&candidates, &[], 0))
                    .unwrap()] += 1;
            }
            assert!(hits.iter().all(|&h| h == 5), "n={n}: {hits:?}");
        }
    }

    #[test]
    fn each_model_rotates_on_its_own() {
        let policy = RoundRobin::default();
        let candidates = eps(2);
        let (a, b) = (req("a"), req("b"));
        let ra = RouteRequest::from_json(a.as_bytes(), None).unwrap();
        let rb = RouteRequest::from_json(b.as_bytes(), None).unwrap();
        // Interleaved models: each still alternates between both engines.
        let picks: Vec<usize> = (0..4)
            .flat_map(|_| {
                [
                    policy.pick(&ra, &Candidates::new(&candidates, &[], 0)),
                    policy.pick(&rb, &Candidates::new(&candidates, &[], 0)),
                ]
            })
            .map(Option::unwrap)
            .collect();
        assert_eq!(picks, [0, 0, 1, 1, 0, 0, 1, 1]);
    }

    #[test]
    fn empty_candidates_give_none() {
        let policy = RoundRobin::default();
        let body = req("m");
        let r = RouteRequest::from_json(body.as_bytes(), None).unwrap();
        assert_eq!(policy.pick(&r, &Candidates::new(&[], &[], 0)), None);
    }
}
