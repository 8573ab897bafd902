//! Random choice and the load-aware policies: least loaded, power of two choices.

use llmstack_core::RouteRequest;

use crate::policy::argmin_by;
use crate::{Candidates, Load, Policy};

/// A uniformly random candidate. Stateless; no load information used.
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl Policy for Random {
    fn pick(&self, _req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        (!candidates.is_empty()).then(|| fastrand::usize(..candidates.len()))
    }

    fn name(&self) -> &'static str {
        "random"
    }
}

/// The load score both load-aware policies minimise, in requests: the engine's
/// estimated requests ([`Load::requests`]), plus its pending prefill expressed in
/// requests of the current prompt's size, plus one request when the request's LoRA
/// adapter is known not to be running there (loading it costs a batch slot).
pub fn load_score(load: &Load, prompt_tokens: u32) -> f64 {
    let per_request = f64::from(prompt_tokens.max(256));
    let adapter = if load.adapter_warm == Some(false) {
        1.0
    } else {
        0.0
    };
    load.requests() + load.pending_prefill() / per_request / 4.0 + adapter
}

/// The candidate with the lowest [`load_score`]; ties rotate, so an idle pool is
/// walked evenly rather than always starting at the first engine. Never declines while
/// there are candidates. Cost: one pass over the candidates.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn pick(&self, _req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        let tokens = candidates.prompt_tokens();
        argmin_by(candidates.len(), |i| {
            load_score(&candidates.load(i), tokens)
        })
    }

    fn name(&self) -> &'static str {
        "leastloaded"
    }
}

/// Power of two choices: two distinct random candidates, the one with the lower
/// [`load_score`] wins (the first drawn on a tie). Constant cost whatever the pool
/// size, and no herd: concurrent routers rarely pick the same minimum. Never declines
/// while there are candidates.
#[derive(Debug, Default, Clone, Copy)]
pub struct PowerOfTwo;

impl Policy for PowerOfTwo {
    fn pick(&self, _req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        let n = candidates.len();
        if n <= 1 {
            return (n == 1).then_some(0);
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let tokens = candidates.prompt_tokens();
        let score = |i| load_score(&candidates.load(i), tokens);
        Some(if score(b) < score(a) { b } else { a })
    }

    fn name(&self) -> &'static str {
        "power_of_two"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::eps;

    fn loads(requests: &[u32]) -> Vec<Load> {
        requests
            .iter()
            .map(|&in_flight| Load {
                in_flight,
                ..Load::default()
            })
            .collect()
    }

    #[test]
    fn least_loaded_takes_the_minimum_and_rotates_ties() {
        let eps = eps(4);
        let req = RouteRequest::from_json(br#"{"model":"m"}"#, None).unwrap();
        let l = loads(&[3, 1, 2, 1]);
        let c = Candidates::new(&eps, &l, 0);
        let picks: std::collections::BTreeSet<usize> = (0..20)
            .map(|_| LeastLoaded.pick(&req, &c).unwrap())
            .collect();
        assert_eq!(picks, [1, 3].into(), "only the minima, both of them");
        // Scraped load from elsewhere counts too.
        let mut l = loads(&[0, 0]);
        l[0].foreign = 2.0;
        assert_eq!(
            LeastLoaded.pick(&req, &Candidates::new(&eps[..2], &l, 0)),
            Some(1)
        );
        // A cold adapter costs one request.
        let mut l = loads(&[1, 0]);
        l[0].adapter_warm = Some(true);
        l[1].adapter_warm = Some(false);
        let c = Candidates::new(&eps[..2], &l, 0);
        assert!((0..10).all(|_| LeastLoaded.pick(&req, &c).is_some()));
    }

    #[test]
    fn power_of_two_never_picks_the_most_loaded_of_two() {
        let eps = eps(2);
        let req = RouteRequest::from_json(br#"{"model":"m"}"#, None).unwrap();
        let l = loads(&[5, 0]);
        let c = Candidates::new(&eps, &l, 0);
        assert!((0..50).all(|_| PowerOfTwo.pick(&req, &c) == Some(1)));
        let one = Candidates::new(&eps[..1], &l, 0);
        assert_eq!(PowerOfTwo.pick(&req, &one), Some(0));
        assert_eq!(PowerOfTwo.pick(&req, &Candidates::new(&[], &[], 0)), None);
    }
}
