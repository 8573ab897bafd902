//! The vocabulary every llmstack crate shares: endpoints and their sets, discovery
//! updates, the routing facts of one request, and the error type with its OpenAI body.
//!
//! Discovery produces [`Update`]s; [`EndpointSet::apply`] is the only code that
//! interprets them, and the resulting immutable snapshot is what routing policies read.
//! The routing layer reads a [`RouteRequest`] from the raw request body (without
//! re-serialising it), routes on it, and the original bytes are forwarded. The layers of
//! the request path pass each other facts in request and response extensions
//! ([`RoutedTo`], [`Exclude`], [`RouteFacts`], [`UpstreamFailure`], [`SeenModel`],
//! [`Tenant`], [`OnUsage`]) so
//! that none depends on another's crate. Every failure along the way is an [`Error`],
//! which knows its HTTP status, its OpenAI error body and its response
//! ([`Error::to_response`], the one mapping). [`settings`] has what every library's
//! settings share: [`SettingErrors`] collects every invalid value at once.
//!
//! ```
//! use llmstack_core::{Endpoint, EndpointSet, RouteRequest, Update};
//!
//! let engine = Endpoint::new("http://127.0.0.1:8000".parse()?).with_model("llama");
//! let mut set = EndpointSet::default();
//! assert!(set.apply(Update::Reset(vec![engine])));
//! assert_eq!(set.candidates("llama").len(), 1);
//!
//! let body = br#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
//! let req = RouteRequest::from_json(body, None)?;
//! assert_eq!(req.model(), Some("llama"));
//! assert!(req.stream());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod discover;
mod endpoint;
mod error;
mod facts;
pub mod kv;
mod multipart;
mod request;
mod routes;
mod set;
pub mod settings;
mod stats;

pub use discover::{BoxError, Discover, Update};
pub use endpoint::{Endpoint, EndpointId, EndpointState, ModelCard, Role};
pub use error::{Error, ErrorBody, ErrorCode, ErrorObject, RateLimit, TimeoutPhase};
pub use facts::{
    Avoid, Exclude, HeldUntilDone, OnUsage, Priority, RouteFacts, RoutedTo, SeenModel, Tenant,
    UpstreamFailure, Usage,
};
pub use kv::{KvSink, KvSource, PromptTokens, Tokenize};
pub use multipart::{
    FormPart, MultipartError, multipart_boundary, multipart_parts, multipart_text_field,
};
pub use request::{Content, Message, Part, Prompt, PromptView, RequestKind, RouteRequest};
pub use routes::{BodyKind, is_engine_control, openai_route, response_id, route_method};
pub use set::EndpointSet;
pub use settings::{SettingError, SettingErrors};
pub use stats::{EngineStats, ModelLoad, StatsReader, StatsSnapshot};
