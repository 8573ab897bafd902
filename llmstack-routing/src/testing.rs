//! Helpers for the unit tests.

use std::sync::Arc;

use llmstack_core::Endpoint;

/// `n` endpoints serving model `m` on 127.0.0.1:9000 and up.
pub(crate) fn eps(n: u16) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            let url = format!("http://127.0.0.1:{}", 9000 + i)
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid URL"));
            Arc::new(Endpoint::new(url).with_model("m"))
        })
        .collect()
}
