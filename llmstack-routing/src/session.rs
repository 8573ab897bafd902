//! Session affinity: requests with the same session key go to the same engine.

use std::sync::Arc;

use llmstack_core::{Endpoint, RouteRequest};

use crate::{Policy, RoundRobin};

/// Sends every request carrying a session key (the `--session-key` header or body
/// field) to the same engine while the candidates stay the same, by rendezvous
/// (highest-random-weight) hashing of the key with each candidate's id; requests without
/// a key go to `fallback`.
///
/// When an engine leaves, only its sessions move; when one joins, it takes about 1/n of
/// them. No state is kept. Cost: one short hash per candidate.
#[derive(Debug, Default)]
pub struct SessionAffinity<F = RoundRobin> {
    fallback: F,
}

impl<F: Policy> SessionAffinity<F> {
    /// Session affinity, with `fallback` for requests without a key.
    pub fn new(fallback: F) -> Self {
        Self { fallback }
    }
}

/// FNV-1a of the key, then of the endpoint id, finished with a 64-bit mix (so nearby
/// keys spread out).
fn weight(key: &str, endpoint: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0xff]).chain(endpoint.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl<F: Policy> Policy for SessionAffinity<F> {
    fn pick(&self, req: &RouteRequest<'_>, candidates: &[Arc<Endpoint>]) -> Option<usize> {
        match req.session_key() {
            Some(key) => candidates
                .iter()
                .enumerate()
                .max_by_key(|(_, ep)| weight(key, ep.id.as_str()))
                .map(|(i, _)| i),
            None => self.fallback.pick(req, candidates),
        }
    }

    fn name(&self) -> &'static str {
        "session"
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn eps(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    format!("http://10.0.0.{i}:8000").parse().unwrap(),
                ))
            })
            .collect()
    }

    fn pick(policy: &SessionAffinity, key: &str, candidates: &[Arc<Endpoint>]) -> String {
        let mut req = RouteRequest::from_json(br#"{"model":"m"}"#, None).unwrap();
        req.set_session_key(Cow::Owned(key.to_owned()));
        candidates[policy.pick(&req, candidates).unwrap()]
            .id
            .to_string()
    }

    #[test]
    fn a_session_stays_put_and_unrelated_removals_move_nothing() {
        let policy: SessionAffinity = SessionAffinity::default();
        let all = eps(8);
        let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
        let before: Vec<String> = keys.iter().map(|k| pick(&policy, k, &all)).collect();
        for (k, e) in keys.iter().zip(&before) {
            assert_eq!(&pick(&policy, k, &all), e, "stable");
        }
        // Spread: every engine gets a fair share of 400 sessions.
        for ep in &all {
            let n = before.iter().filter(|e| **e == ep.id.to_string()).count();
            assert!((25..=75).contains(&n), "{n}");
        }
        // Remove engine 3: only its sessions move.
        let gone = all[3].id.to_string();
        let fewer: Vec<Arc<Endpoint>> = all
            .iter()
            .filter(|e| e.id.to_string() != gone)
            .cloned()
            .collect();
        for (k, e) in keys.iter().zip(&before) {
            let now = pick(&policy, k, &fewer);
            if *e != gone {
                assert_eq!(&now, e, "{k} moved although its engine stayed");
            }
        }
    }

    #[test]
    fn no_key_falls_back() {
        let policy: SessionAffinity = SessionAffinity::default();
        let all = eps(3);
        let req = RouteRequest::from_json(br#"{"model":"m"}"#, None).unwrap();
        let picks: Vec<usize> = (0..6).map(|_| policy.pick(&req, &all).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2], "round-robin");
        assert_eq!(policy.pick(&req, &[]), None);
    }
}
