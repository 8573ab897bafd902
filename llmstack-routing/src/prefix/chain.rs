//! The prompt hash chain: a prompt rendered canonically, cut into chunks, each chunk
//! hashed together with everything before it.

use llmstack_core::{Content, Prompt, PromptView, RouteRequest};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The chain hashes of one prompt's full chunks, and its size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptHashes {
    /// One hash per full chunk, each covering the whole prefix up to its chunk's end.
    pub hashes: Vec<u64>,
    /// Bytes of canonical rendering (full chunks and the partial tail).
    pub bytes: usize,
}

/// Streams bytes into fixed-size chunks and chain-hashes each full one.
pub(super) struct Chunker {
    size: usize,
    buf: Vec<u8>,
    prev: u64,
    out: PromptHashes,
}

// === impl PromptHashes ===

impl PromptHashes {
    /// Hashes the canonical rendering of `req`'s prompt in `chunk_bytes` chunks. The
    /// chain is seeded with the model name (another model or adapter never shares a
    /// cache). A request without a (parsable) prompt gives no hashes. Non-text content
    /// parts (images, audio) are rendered by their type alone: two prompts differing
    /// only in an image look alike here, and their size is not counted.
    pub fn of(req: &RouteRequest<'_>, chunk_bytes: usize) -> Self {
        let model = req.model().unwrap_or_default();
        let mut chunker = Chunker::new(chunk_bytes.max(1), xxh3_64_with_seed(model.as_bytes(), 0));
        match req.prompt_view() {
            Some(PromptView::Chat(messages)) => {
                for m in &messages {
                    chunker.feed(m.role.as_bytes());
                    chunker.feed(b"\x1f");
                    match &m.content {
                        Content::None => {}
                        Content::Text(text) => chunker.feed(text.as_bytes()),
                        Content::Parts(parts) => {
                            for part in parts {
                                match &part.text {
                                    Some(text) => chunker.feed(text.as_bytes()),
                                    None => chunker.feed(part.kind.as_bytes()),
                                }
                                chunker.feed(b"\x1e");
                            }
                        }
                    }
                    chunker.feed(b"\x1d");
                }
            }
            Some(PromptView::Completion(p) | PromptView::Input(p)) => match p {
                Prompt::Text(text) => chunker.feed(text.as_bytes()),
                Prompt::Texts(texts) => {
                    for text in &texts {
                        chunker.feed(text.as_bytes());
                        chunker.feed(b"\x1d");
                    }
                }
                Prompt::Tokens(tokens) => chunker.tokens(&tokens),
                Prompt::TokenLists(lists) => {
                    for tokens in &lists {
                        chunker.tokens(tokens);
                        chunker.feed(b"\x1d");
                    }
                }
            },
            None => {}
        }
        chunker.finish()
    }
}

// === impl Chunker ===

impl Chunker {
    pub(super) fn new(size: usize, seed: u64) -> Self {
        Self {
            size,
            buf: Vec::new(),
            prev: seed,
            out: PromptHashes::default(),
        }
    }

    fn hash(&mut self, chunk: &[u8]) {
        self.prev = xxh3_64_with_seed(chunk, self.prev);
        self.out.hashes.push(self.prev);
    }

    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        self.out.bytes += bytes.len();
        if !self.buf.is_empty() {
            let take = (self.size - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() < self.size {
                return;
            }
            let chunk = std::mem::take(&mut self.buf);
            self.hash(&chunk);
            self.buf = chunk;
            self.buf.clear();
        }
        let mut chunks = bytes.chunks_exact(self.size);
        for chunk in chunks.by_ref() {
            self.hash(chunk);
        }
        self.buf.extend_from_slice(chunks.remainder());
    }

    fn tokens(&mut self, tokens: &[u32]) {
        for t in tokens {
            self.feed(&t.to_le_bytes());
        }
    }

    pub(super) fn finish(self) -> PromptHashes {
        self.out
    }
}
