//! The KV index: which engine holds which blocks of which token sequences, exactly as
//! the engines announced them in their KV-cache events (`BlockStored`, `BlockRemoved`,
//! `AllBlocksCleared`), for `--routing-logic kvaware`.
//!
//! Blocks are keyed by the router's own hash chain over each block's token ids
//! ([`chain`]): a block's key covers its tokens and every token before it, seeded by its
//! key space (LoRA adapter, `cache_salt`). The engine's own block hashes are only used
//! to find a stored block's parent and a removed block: nothing depends on reproducing
//! vLLM's hash function or seed. Every router replica that applies the same events in
//! the same order holds the same index.
//!
//! Over it, each replica keeps the blocks of its own recent decisions that the engines
//! have not announced yet ([`pending`], [`KvIndex::expect`]), so that a conversation's
//! next turn, arriving before those events, still finds its engine.

mod chain;
mod holders;
mod index;
mod pending;

pub(crate) use chain::chain_keys;
pub use chain::{KeySpace, block_keys};
pub use index::{KvIndex, KvMatch, SourceBlocks};

#[cfg(test)]
mod tests;
