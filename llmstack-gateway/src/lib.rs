//! Gateway layers for llmstack: what a router in production adds in front of the
//! routing layer, as tower layers that the `llmstack-server` binary and embedders
//! stack alike.
//!
//! - [`AuthLayer`]: API keys ([`ApiKeys`]: a YAML or plain file, reloaded when it
//!   changes, and a list), each naming a [`Tenant`](llmstack_core::Tenant) with a
//!   priority and limits; 401 with OpenAI's `invalid_api_key` body otherwise.
//! - [`RateLimitLayer`]: each tenant's requests and tokens per minute (token buckets,
//!   tokens estimated before routing and corrected from `usage` after); 429 with
//!   `Retry-After` and OpenAI's `x-ratelimit-*` headers.
//! - [`OutlierLayer`]: engines that fail requests in a row are ejected (routing passes
//!   over them while another engine serves the model) with a doubling backoff, then
//!   tried again with one request at a time.
//!
//! Where they go in the request path (outermost first):
//!
//! ```text
//!  RequestId → Accounting → Auth → ReadBody → RateLimit → Retry → Outlier → Route → Forward
//! ```
//!
//! Authentication reads only the head, so a client without a key is refused before
//! its body is read; the rate limit needs the body (its size) for the token estimate,
//! and accounting outside both counts their refusals and reports token usage back
//! ([`OnUsage`](llmstack_core::OnUsage)).
//!
//! ```
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use llmstack_gateway::{ApiKeys, AuthLayer};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let keys = ApiKeys::load(None, &["sk-test".to_owned()])?;
//! let inner = service_fn(|_: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok")))
//! });
//! let auth = AuthLayer::new(keys).layer(inner);
//!
//! let refused = auth.clone().oneshot(Request::new(())).await?;
//! assert_eq!(refused.status(), 401);
//! let with_key = Request::builder().header("authorization", "Bearer sk-test").body(())?;
//! assert_eq!(auth.oneshot(with_key).await?.status(), 200);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod admission;
mod args;
mod auth;
mod keys;
mod limit;
mod outlier;

pub use admission::{Admission, AdmissionConfig, AdmissionFuture, AdmissionLayer};
pub use args::{GatewayArgs, GatewayConfig};
pub use auth::{Auth, AuthFuture, AuthLayer};
pub use keys::{ApiKeys, DEFAULT_TENANT, KeysError, X_API_KEY};
pub use limit::{BYTES_PER_TOKEN, RateLimit, RateLimitFuture, RateLimitLayer};
pub use outlier::{EngineHealth, Outlier, OutlierConfig, OutlierFuture, OutlierLayer, Outliers};
