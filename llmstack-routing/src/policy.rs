//! The policy trait.

use std::sync::Arc;

use llmstack_core::{Endpoint, RouteRequest};

/// A pure, synchronous chooser: given one request and the endpoints eligible for it,
/// pick one.
///
/// `candidates` is never empty and every member may take the request (it serves the
/// model, is routable, is not excluded); [`select`](crate::select) guarantees that, so
/// policies only rank. Return the index of the choice, or `None` to decline (the
/// request then fails with 503). No I/O, no `async`, no lock held across anything that
/// can block: `pick` runs on the request path of every request.
pub trait Policy: Send + Sync + 'static {
    /// The choice, as an index into `candidates`.
    fn pick(&self, req: &RouteRequest<'_>, candidates: &[Arc<Endpoint>]) -> Option<usize>;

    /// The policy's name, as `--routing-logic` spells it (for logs and metrics).
    fn name(&self) -> &'static str;
}

impl<P: Policy + ?Sized> Policy for Arc<P> {
    fn pick(&self, req: &RouteRequest<'_>, candidates: &[Arc<Endpoint>]) -> Option<usize> {
        (**self).pick(req, candidates)
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }
}

impl<P: Policy + ?Sized> Policy for Box<P> {
    fn pick(&self, req: &RouteRequest<'_>, candidates: &[Arc<Endpoint>]) -> Option<usize> {
        (**self).pick(req, candidates)
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }
}
