//! Router-side tokenization: a request's prompt as the token ids a vLLM engine will
//! prefill, computed from the model's Hugging Face files, so a KV-aware router can match
//! the prompt's blocks against the blocks engines announce (issue 15).
//!
//! What vLLM does, and so what this crate does:
//!
//! - **chat**: the messages are prepared as vLLM prepares them (content as strings or as
//!   lists of text parts, by vLLM's detection of what the template iterates; tool-call
//!   arguments parsed; `developer` turned into `system` for templates that do not know
//!   it), rendered with the model's chat template in an environment set up as
//!   transformers' `apply_chat_template` sets it up (`trim_blocks`, `lstrip_blocks`,
//!   `tojson` as Python's `json.dumps`, `raise_exception`, `strftime_now`, Python's
//!   string methods and value printing) with `add_generation_prompt=True`, and the text
//!   encoded **without** adding special tokens (the template wrote them);
//! - **completions**: a string prompt encoded **with** special tokens (the
//!   post-processor's BOS); a prompt of token ids used as is.
//!
//! Encoding goes through a cache of prompt pieces: the rendered text is cut at the
//! tokenizer's added tokens exactly where Hugging Face cuts it, each token maps to its
//! id, and each run of text between them is encoded once and cached by its xxh3 hash. A
//! conversation's next turn re-renders the whole history but only encodes its new
//! pieces. A tokenizer for which piecewise encoding would differ from whole-text encoding
//! is detected at load and encodes whole texts.
//!
//! The pieces: [`ModelTokenizer`] (one model: [`ModelTokenizer::from_dir`],
//! [`ModelTokenizer::encode_chat`], [`ModelTokenizer::encode`],
//! [`ModelTokenizer::stats`]), [`Tokenizers`] (every served model, the router's
//! [`llmstack_core::Tokenize`]), [`find_in_hf_cache`] (a model's files in the Hugging
//! Face hub cache) and [`TokenizerConfig`] (`tokenizer_config.json`).
//!
//! ```
//! use llmstack_core::{RouteRequest, Tokenize};
//! use llmstack_tokenize::{ModelTokenizer, Tokenizers};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");
//! let model = ModelTokenizer::from_dir(dir)?;
//! let prompt = model.render_chat(r#"[{"role":"user","content":"Hi!"}]"#, true)?;
//! assert_eq!(
//!     prompt,
//!     "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
//!      <|start_header_id|>assistant<|end_header_id|>\n\n"
//! );
//!
//! let mut tokenizers = Tokenizers::new();
//! tokenizers.insert("llama", model);
//! let body = br#"{"model":"llama","messages":[{"role":"user","content":"Hi!"}]}"#;
//! let req = RouteRequest::from_json(body, None)?;
//! let tokens = tokenizers.tokenize("llama", &req).expect("a chat with text content");
//! assert_eq!(tokens.ids[0], 4096); // <|begin_of_text|>, written by the template
//!
//! // The second turn encodes only what is new.
//! let model = tokenizers.get("llama").expect("inserted");
//! let before = model.stats().segments_encoded;
//! model.encode_chat(r#"[{"role":"user","content":"Hi!"},{"role":"assistant","content":"Hello."},
//!                      {"role":"user","content":"Bye."}]"#)?;
//! assert_eq!(model.stats().segments_encoded - before, 2); // "\n\nHello." and "\n\nBye."
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod args;
mod config;
mod content_format;
mod conversation;
mod error;
mod fast;
mod hub;
mod live;
mod model;
mod pycompat;
mod registry;
mod segments;
mod template;

pub use args::{TokenizerArgs, TokenizerSources};
pub use config::{CONFIG_FILE, TEMPLATE_FILE, TokenizerConfig};
pub use content_format::ContentFormat;
pub use error::TokenizerError;
pub use hub::{find_in_hf_cache, hf_cache_root};
pub use live::{Found, LiveTokenizers};
pub use model::{DEFAULT_CACHE_BUDGET, ModelTokenizer, TOKENIZER_FILE, TokenizerStats};
pub use registry::Tokenizers;

#[cfg(test)]
mod tests;
