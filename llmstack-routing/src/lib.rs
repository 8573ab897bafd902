//! Chooses the engine for each request: the [`Policy`] trait and the policies, the load
//! view, the prefix index, in-flight accounting, and the tower [`RouteLayer`].
//!
//! The pieces, inside out:
//!
//! - [`Policy`]: a pure, synchronous `pick` over [`Candidates`] (the engines that may
//!   take the request, each with its [`Load`]). Policies compose with
//!   [`PolicyExt::or`]: a policy that declines hands over to the next.
//! - [`Router`]: the whole decision. It narrows the [`EndpointSet`] to the request's
//!   candidates ([`candidates`]: model, readiness, `?id=` pinning, endpoints that
//!   already failed it), reads each one's [`Load`] from the [`InFlight`] counters and
//!   the freshest [`StatsSnapshot`](llmstack_core::StatsSnapshot), fills in cached
//!   prefixes from the [`PrefixIndex`] when it has one, asks the policy, and returns
//!   the endpoint with an [`InFlightGuard`] that counts the request until dropped.
//! - [`RouteLayer`] / [`Route`]: the router as tower middleware, the one place a request
//!   is routed (`llmstack-server` stacks it too). It reads the request once (model from
//!   JSON or a multipart form, session key, alias, `?id=` pinning), the choice goes into
//!   request extensions ([`RoutedTo`]), the guard rides the response body until it
//!   ends, and [`RouteFacts`] go on every response for the layers outside.
//! - [`RoutingArgs`]: the settings as flags, environment or file keys (with the `clap`
//!   feature, a `clap::Args`), resolved into a [`RoutingConfig`].
//!
//! The policies ([`RoutingLogic`] names them as production-stack's `--routing-logic`):
//!
//! | policy | chooses | state |
//! |---|---|---|
//! | [`RoundRobin`] | candidates in turn, per model | one counter per model |
//! | [`Random`] | uniformly at random | none |
//! | [`LeastLoaded`] | lowest [`load_score`], ties rotate | none |
//! | [`PowerOfTwo`] | lower [`load_score`] of two random candidates | none |
//! | [`SessionAffinity`] | rendezvous hash of the session key, bounded load; declines without a key | none |
//! | [`PrefixAware`] | lowest expected prefill + queue cost over cached prefixes | the router's [`PrefixIndex`] |
//! | [`KvAware`] | the same cost over the blocks engines announced in KV events | a [`KvIndex`] (exact; the same on every replica) and a tokenizer |
//!
//! A request for a LoRA adapter only ever has candidates that list the adapter; the
//! load-aware policies prefer engines whose scrape shows it running
//! ([`Load::adapter_warm`]).
//!
//! This crate knows nothing of discovery or scraping: it is tested with made-up
//! snapshots.
//!
//! ```
//! use llmstack_core::{Endpoint, EndpointSet, EndpointState, RouteRequest, Update};
//! use llmstack_routing::{LeastLoaded, Router, Target};
//!
//! let mut set = EndpointSet::default();
//! set.apply(Update::Reset(vec![
//!     Endpoint::new("http://127.0.0.1:8001".parse()?).with_model("llama").with_state(EndpointState::Ready),
//!     Endpoint::new("http://127.0.0.1:8002".parse()?).with_model("llama").with_state(EndpointState::Ready),
//! ]));
//! let router = Router::new(LeastLoaded);
//! let req = RouteRequest::from_json(br#"{"model":"llama","prompt":"hi"}"#, None)?;
//! let first = router.route(&set, None, &req, &Target::default())?;
//! // The first request is still in flight: the second goes to the other engine.
//! let second = router.route(&set, None, &req, &Target::default())?;
//! assert_ne!(first.endpoint.id, second.endpoint.id);
//! drop((first, second));
//! assert_eq!(router.in_flight().total(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod args;
mod config;
mod extract;
mod in_flight;
mod kv;
mod layer;
mod load_aware;
mod policy;
mod prefix;
mod prefix_aware;
mod responses;
mod round_robin;
mod router;
mod select;
mod session;
#[cfg(test)]
mod testing;

pub use args::RoutingArgs;
pub use config::{DEFAULT_PEER_PORT, RoutingConfig, RoutingLogic};
pub use in_flight::{
    InFlight, InFlightGuard, LiveLoads, Load, PeerAddrs, SHARE_EXPIRY, SHARE_HEARTBEAT,
};
pub use kv::{KeySpace, KvIndex, KvMatch, SourceBlocks, block_keys};
pub use layer::{Route, RouteBody, RouteFuture, RouteHandle, RouteLayer};
pub use llmstack_core::{
    Endpoint, EndpointSet, EndpointState, Error, Exclude, RouteFacts, RouteRequest, RoutedTo,
    Update,
};
pub use load_aware::{LeastLoaded, PowerOfTwo, Random, load_score};
pub use policy::{Candidates, Fallback, Policy, PolicyExt};
pub use prefix::{MAX_CAPACITY_TOKENS, PrefixConfig, PrefixIndex, PromptHashes};
pub use prefix_aware::{KvAware, PrefixAware};
pub use responses::DEFAULT_RESPONSES;
pub use round_robin::RoundRobin;
pub use router::{Routed, Router};
pub use select::{CandidateList, Target, candidates, select};
pub use session::SessionAffinity;
