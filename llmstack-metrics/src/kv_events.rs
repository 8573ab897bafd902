//! vLLM's KV-cache events: the wire format's decoder and the subscriber that follows
//! every engine's publishers.
//!
//! An engine started with `--kv-events-config` publishes, per engine step, a batch of
//! `BlockStored` / `BlockRemoved` / `AllBlocksCleared` events on a ZMQ PUB socket (one
//! per data-parallel rank), numbered so that a subscriber can tell when it missed some,
//! and keeps the last batches for replay on a ROUTER socket. [`KvSubscriber`] finds
//! those sockets for each engine of the [`EndpointSet`](llmstack_core::EndpointSet),
//! subscribes, and hands every batch, in order, to a [`KvSink`](llmstack_core::KvSink)
//! (the router's KV index), telling it to reset a source whose history it can no
//! longer follow. [`decode`] and [`decode_message`] read the format on their own.

mod decode;
mod discover;
mod follow;
mod sequence;
mod status;
mod subscriber;

pub use decode::{DecodeError, DecodeErrorKind, Decoded, decode, decode_batch, decode_message};
pub use status::{KvSourceState, KvSourceStatus};
pub use subscriber::{KvEventsConfig, KvSubscriber};
