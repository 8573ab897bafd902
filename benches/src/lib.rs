//! Criterion micro-benchmarks of llmstack's hot paths (`cargo bench -p llmstack-benches`):
//! reading a request's routing facts, choosing an engine, parsing an engine's `/metrics`.
//! CI only compiles them (`cargo bench --no-run`); figures go to docs/benchmarks.md.

use std::sync::Arc;

use llmstack_core::{Endpoint, EndpointState};

/// `n` ready endpoints serving model `m`, at distinct made-up addresses.
pub fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            let url = format!(
                "http://10.{}.{}.{}:8000",
                i / 65536,
                (i / 256) % 256,
                i % 256
            );
            let url = url.parse().unwrap_or_else(|_| unreachable!("a valid URL"));
            Arc::new(
                Endpoint::new(url)
                    .with_model("m")
                    .with_state(EndpointState::Ready),
            )
        })
        .collect()
}

/// A streamed chat body of about `tokens` tokens (at 4 bytes each) for model `m`: a
/// shared system prompt, then turns unique to `user`.
pub fn long_chat(user: usize, tokens: usize) -> Vec<u8> {
    let system = "You are a helpful assistant. Answer precisely. ".repeat(40);
    let mut turns = String::new();
    let mut t = 0;
    while system.len() + turns.len() < tokens * 4 {
        let text = format!("user {user} turn {t}: tell me more about topic {t}. ").repeat(8);
        turns.push_str(&format!(r#",{{"role":"user","content":"{text}"}}"#));
        t += 1;
    }
    format!(
        r#"{{"model":"m","stream":true,"messages":[{{"role":"system","content":"{system}"}}{turns}]}}"#
    )
    .into_bytes()
}
