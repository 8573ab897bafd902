//! The prefix index: which engine was recently sent which prompt prefixes, bounded by
//! each engine's KV capacity and evicted least-recently-used first, like the engine's
//! own prefix cache.
//!
//! Prompts are rendered canonically (chat: role and text of each message, in order;
//! completions: the prompt text or token ids), cut into fixed-size chunks, and each
//! chunk is hashed together with the hash of everything before it (a hash chain, like
//! vLLM's block hashes). A chain hash therefore names a whole prefix, and a
//! conversation's next turn extends the chain of the previous one.

mod chain;
mod config;
mod index;
mod lru;

pub use chain::PromptHashes;
pub use config::{MAX_CAPACITY_TOKENS, PrefixConfig};
pub use index::PrefixIndex;

#[cfg(test)]
mod tests;
