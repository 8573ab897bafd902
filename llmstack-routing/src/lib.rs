//! Chooses the engine for each request: the [`Policy`] trait, the policies, candidate
//! selection and in-flight accounting.
//!
//! The server hands every request's [`RouteRequest`] and the current [`EndpointSet`]
//! snapshot to [`select`], which narrows the set to the endpoints that may take the
//! request (the model, readiness, a pinned id, endpoints that already failed it) and
//! asks the policy to choose among them. The chosen endpoint's [`InFlight`] guard then
//! travels with the response until its body ends. This crate knows nothing of
//! discovery or scraping: it is tested with made-up snapshots.
//!
//! ```
//! use llmstack_core::{Endpoint, EndpointSet, RouteRequest, Update};
//! use llmstack_routing::{RoundRobin, Target, select};
//!
//! let mut set = EndpointSet::default();
//! set.apply(Update::Reset(vec![
//!     Endpoint::new("http://127.0.0.1:8001".parse()?).with_model("llama"),
//!     Endpoint::new("http://127.0.0.1:8002".parse()?).with_model("llama"),
//! ]));
//! let policy = RoundRobin::default();
//! let req = RouteRequest::from_json(br#"{"model":"llama","prompt":"hi"}"#, None)?;
//! let first = select(&policy, &set, &req, &Target::default())?;
//! let second = select(&policy, &set, &req, &Target::default())?;
//! assert_ne!(first.id, second.id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod in_flight;
mod policy;
mod round_robin;
mod select;
mod session;

pub use config::{RoutingConfig, RoutingLogic};
pub use in_flight::{InFlight, InFlightGuard};
pub use llmstack_core::{Endpoint, EndpointSet, RouteRequest};
pub use policy::Policy;
pub use round_robin::RoundRobin;
pub use select::{Target, select};
pub use session::SessionAffinity;
