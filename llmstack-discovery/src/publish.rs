//! Following a discovery source: its updates applied to an endpoint set, each new
//! snapshot published on a `watch` channel.

use std::pin::Pin;

use llmstack_core::{BoxError, Discover, EndpointSet};
use tokio::sync::{oneshot, watch};

/// Applies every update of `source` to the set in `tx` ([`EndpointSet::apply`]) and
/// publishes the result when it changed, calling `on_change` with the new set first
/// (to free what removed endpoints held, count updates, …). `first` is told the
/// outcome of the source's first item once it is applied: `Ok` for an update (even one
/// that changes nothing), the error for an error (a source that cannot start, such as
/// an unusable DNS name). Later errors are logged; the set keeps its last state.
///
/// Runs until the source ends, which sources do not do in normal operation: spawn it
/// and keep (or abort) its handle.
pub async fn publish(
    mut source: impl Discover,
    tx: watch::Sender<EndpointSet>,
    mut on_change: impl FnMut(&EndpointSet) + Send,
    first: Option<oneshot::Sender<Result<(), BoxError>>>,
) {
    let mut first = first;
    while let Some(update) = std::future::poll_fn(|cx| Pin::new(&mut source).poll_next(cx)).await {
        let outcome = match update {
            Ok(update) => {
                let mut set = tx.borrow().clone();
                if set.apply(update) {
                    on_change(&set);
                    tx.send_replace(set);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "discovery error");
                Err(e)
            }
        };
        if let Some(first) = first.take() {
            // The receiver may have given up waiting already.
            let _ignored = first.send(outcome);
        }
    }
    tracing::error!("discovery ended; the endpoint set is frozen");
}
