//! Session affinity: requests with the same session key go to the same engine.

use llmstack_core::RouteRequest;

use crate::{Candidates, Policy};

/// Sends every request carrying a session key to the same engine while the candidates
/// stay the same: rendezvous (highest-random-weight) hashing of the key with each
/// candidate's id, with bounded load.
///
/// - The key is the `--session-key` header, else the same-named body field, else the
///   OpenAI `user` field ([`RouteRequest::session_key`]). Without one the policy
///   declines: compose a fallback with [`PolicyExt::or`](crate::PolicyExt::or) (the
///   configured `session` policy falls back to [`LeastLoaded`](crate::LeastLoaded)).
/// - Deterministic: the weights depend only on the key and the endpoint ids, so every
///   router replica with the same endpoint set sends a session to the same engine (as
///   long as the bound below is not reached).
/// - When an engine leaves, only its sessions move; when one joins, it takes about 1/n.
/// - Bounded load (consistent hashing with bounded loads, Mirrokni et al.): an engine
///   whose estimated requests reach `⌈(1 + ε) × mean + slack⌉` (the mean counting this
///   request) is skipped for the session's next-highest engine, so a hot session or an
///   unlucky hash never piles more than that on one engine. Defaults: ε = 0.25, slack
///   = 4 requests (a few requests of imbalance cost an engine little; moving a session
///   costs its cached prefix).
///
/// No state is kept. Cost: one short hash per candidate.
#[derive(Debug, Clone, Copy)]
pub struct SessionAffinity {
    epsilon: f64,
    slack: f64,
}

impl Default for SessionAffinity {
    fn default() -> Self {
        Self {
            epsilon: 0.25,
            slack: 4.0,
        }
    }
}

impl SessionAffinity {
    /// Session affinity with load bound factor `1 + epsilon` and `slack` extra
    /// requests (each clamped to ≥ 0; `f64::INFINITY` disables the bound).
    pub fn new(epsilon: f64, slack: f64) -> Self {
        let clamp = |v: f64, default| if v.is_nan() { default } else { v.max(0.0) };
        Self {
            epsilon: clamp(epsilon, 0.25),
            slack: clamp(slack, 4.0),
        }
    }

    /// The bound on an engine's estimated requests for one more session request over
    /// `n` engines carrying `total` requests: `⌈(1 + ε) × (total + 1) / n + slack⌉`.
    /// An engine at or above it is skipped.
    pub fn bound(&self, total: f64, n: usize) -> f64 {
        ((1.0 + self.epsilon) * (total + 1.0) / n.max(1) as f64 + self.slack).ceil()
    }
}

/// The 64-bit hash of a session key (FNV-1a).
fn key_hash(key: &str) -> u64 {
    fnv(0xcbf2_9ce4_8422_2325, key.as_bytes())
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The weight of an endpoint for a key: the key's hash and the id's
/// ([`EndpointId::stable_hash`](llmstack_core::EndpointId::stable_hash)) combined by a
/// 64-bit finaliser (so nearby keys and ids spread out).
fn weight(key: u64, endpoint: u64) -> u64 {
    let mut h = key ^ endpoint.rotate_left(29);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Policy for SessionAffinity {
    fn pick(&self, req: &RouteRequest<'_>, candidates: &Candidates<'_>) -> Option<usize> {
        let key = key_hash(req.session_key()?);
        let n = candidates.len();
        // One pass reads every load (for the mean) and weight; the second only compares.
        let scored: Vec<(u64, f64)> = candidates
            .endpoints()
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                (
                    weight(key, ep.id.stable_hash()),
                    candidates.load(i).requests(),
                )
            })
            .collect();
        let total: f64 = scored.iter().map(|s| s.1).sum();
        let bound = self.bound(total, n);
        // The highest weight among engines under the bound; at least one is (the least
        // loaded is at most the mean, which is below the bound).
        let mut best: Option<(usize, u64)> = None;
        let mut any: Option<(usize, u64)> = None;
        for (i, &(w, requests)) in scored.iter().enumerate() {
            if any.is_none_or(|(_, b)| w > b) {
                any = Some((i, w));
            }
            if requests < bound && best.is_none_or(|(_, b)| w > b) {
                best = Some((i, w));
            }
        }
        best.or(any).map(|(i, _)| i)
    }

    fn name(&self) -> &'static str {
        "session"
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use llmstack_core::Endpoint;

    use super::*;
    use crate::{Load, PolicyExt, RoundRobin};

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
        candidates[policy
            .pick(&req, &Candidates::new(candidates, &[], 0))
            .unwrap()]
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
    fn no_key_declines_and_a_fallback_decides() {
        let all = eps(3);
        let c = Candidates::new(&all, &[], 0);
        let req = RouteRequest::from_json(br#"{"model":"m"}"#, None).unwrap();
        assert_eq!(SessionAffinity::default().pick(&req, &c), None);
        let policy = SessionAffinity::default().or(RoundRobin::default());
        let picks: Vec<usize> = (0..6).map(|_| policy.pick(&req, &c).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2], "round-robin");
        assert_eq!(policy.name(), "session");
        let user = RouteRequest::from_json(br#"{"model":"m","user":"u1"}"#, None).unwrap();
        let first = policy.pick(&user, &c);
        assert!(
            (0..5).all(|_| policy.pick(&user, &c) == first),
            "`user` is a key"
        );
    }

    #[test]
    fn an_overloaded_home_engine_is_skipped() {
        let all = eps(4);
        let policy = SessionAffinity::default();
        let mut req = RouteRequest::from_json(br#"{"model":"m"}"#, None).unwrap();
        req.set_session_key(Cow::Borrowed("alice"));
        let home = policy.pick(&req, &Candidates::new(&all, &[], 0)).unwrap();
        let mut loads = vec![Load::default(); 4];
        loads[home].in_flight = 8;
        // Mean with this request: 9/4, bound ⌈1.25 × 2.25 + 4⌉ = 7 ≤ 8.
        let moved = policy
            .pick(&req, &Candidates::new(&all, &loads, 0))
            .unwrap();
        assert_ne!(moved, home);
        loads[home].in_flight = 2;
        assert_eq!(
            policy.pick(&req, &Candidates::new(&all, &loads, 0)),
            Some(home),
            "under the bound it stays home"
        );
    }
}
