//! Discovery updates and the `Discover` trait.

use futures_core::Stream;

use crate::{Endpoint, EndpointId};

/// A type-erased error, as used across tower boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A change to the set of endpoints, as produced by a discovery source.
///
/// Only [`EndpointSet::apply`](crate::EndpointSet::apply) interprets updates.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The complete set: everything not listed is gone. DNS and Kubernetes deliver
    /// snapshots, and every source starts with one.
    Reset(Vec<Endpoint>),
    /// New endpoints, or new versions of known ones (same id: replaced).
    Add(Vec<Endpoint>),
    /// Endpoints that are gone. Unknown ids are ignored.
    Remove(Vec<EndpointId>),
}

/// A source of endpoint updates: any stream of `Result<Update, BoxError>`.
///
/// Streams do not end in normal operation: transient errors are logged, counted and
/// retried with backoff inside the implementation. An `Err` item is reported by the
/// consumer and does not end the stream; the end of the stream means the source is
/// gone for good (the server treats it as a fatal condition).
pub trait Discover: Stream<Item = Result<Update, BoxError>> + Send + Unpin + 'static {}

impl<T> Discover for T where T: Stream<Item = Result<Update, BoxError>> + Send + Unpin + 'static {}
