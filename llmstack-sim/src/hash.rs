//! vLLM's prefix-cache block hashes, recomputed byte for byte.
//!
//! vLLM hashes each full block `i` of a request's tokens as
//! `h_i = H((h_{i-1}, tuple(tokens_i), extra_keys_i))` with `h_{-1} = NONE_HASH = H(seed)`.
//! We implement the two algorithms that are reproducible outside Python:
//!
//! * `sha256` (vLLM's default): SHA-256 over the pickle (protocol 5) of the tuple;
//! * `sha256_cbor`: SHA-256 over canonical CBOR of the same tuple.
//!
//! With the default seed `"vllm-none-hash"` (vLLM ≥ 0.30 without `PYTHONHASHSEED`) and the
//! simulator's own token ids, the hashes are those a real engine would compute for the
//! same token ids; published KV events carry the low 64 bits (last 8 bytes, big-endian).
//! Extra keys (LoRA, cache salt) follow vLLM's tagged layout `("lora", name, path)`,
//! `("cache_salt", salt)`; that part is modelled on vLLM, not checked against it.

use sha2::{Digest, Sha256};

/// A full 32-byte block digest (the engine's own key).
pub type BlockHash = [u8; 32];

/// The hash algorithm (`--prefix-caching-hash-algo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgo {
    /// SHA-256 over pickle protocol 5 (vLLM's default since 0.10.2).
    #[default]
    Sha256,
    /// SHA-256 over canonical CBOR.
    Sha256Cbor,
}

impl HashAlgo {
    /// The name vLLM uses for this algorithm.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha256Cbor => "sha256_cbor",
        }
    }
}

impl std::str::FromStr for HashAlgo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sha256" => Ok(Self::Sha256),
            "sha256_cbor" => Ok(Self::Sha256Cbor),
            other => Err(format!(
                "unknown hash algorithm {other:?} (sha256, sha256_cbor)"
            )),
        }
    }
}

/// One tagged extra key mixed into a block hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraKey {
    /// `("lora", name, path)` on every block of a LoRA request.
    Lora {
        /// Adapter name.
        name: String,
        /// Adapter path.
        path: String,
    },
    /// `("cache_salt", salt)` on block 0 only.
    CacheSalt(String),
}

/// Computes block hashes for one engine.
#[derive(Debug, Clone)]
pub struct BlockHasher {
    algo: HashAlgo,
    none_hash: BlockHash,
}

impl BlockHasher {
    /// A hasher for `algo` whose `NONE_HASH` derives from `seed` (vLLM's default seed is
    /// `"vllm-none-hash"`; `PYTHONHASHSEED` replaces it when set).
    pub fn new(algo: HashAlgo, seed: &str) -> Self {
        let mut buf = Vec::with_capacity(seed.len() + 16);
        match algo {
            HashAlgo::Sha256 => pickle_seed(seed, &mut buf),
            HashAlgo::Sha256Cbor => cbor_text(seed, &mut buf),
        }
        Self {
            algo,
            none_hash: Sha256::digest(&buf).into(),
        }
    }

    /// The algorithm in use.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The hash of a block of `tokens` following `parent` (`None` for block 0).
    pub fn hash_block(
        &self,
        parent: Option<&BlockHash>,
        tokens: &[u32],
        extra: &[ExtraKey],
    ) -> BlockHash {
        let parent = parent.unwrap_or(&self.none_hash);
        let mut buf = Vec::with_capacity(64 + tokens.len() * 5);
        match self.algo {
            HashAlgo::Sha256 => pickle_block(parent, tokens, extra, &mut buf),
            HashAlgo::Sha256Cbor => cbor_block(parent, tokens, extra, &mut buf),
        }
        Sha256::digest(&buf).into()
    }
}

/// The value vLLM publishes for a hash in KV events: the low 64 bits, i.e. the last eight
/// bytes read big-endian.
pub fn published(hash: &BlockHash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[24..]);
    u64::from_be_bytes(b)
}

// === pickle protocol 5 ===

const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const SHORT_BINBYTES: u8 = 0x43;
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE: u8 = 0x58;
const MEMOIZE: u8 = 0x94;
const MARK: u8 = 0x28;
const TUPLE: u8 = 0x74;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const EMPTY_TUPLE: u8 = 0x29;
const NONE: u8 = 0x4e;
const BININT1: u8 = 0x4b;
const BININT2: u8 = 0x4d;
const BININT: u8 = 0x4a;
const STOP: u8 = 0x2e;

/// Writes `PROTO 5`, then a frame holding `body` (Python frames anything of 4+ bytes).
fn pickle_framed(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[PROTO, 5, FRAME]);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
}

fn pickle_str(s: &str, out: &mut Vec<u8>) {
    if s.len() < 256 {
        out.push(SHORT_BINUNICODE);
        out.push(s.len() as u8);
    } else {
        out.push(BINUNICODE);
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(s.as_bytes());
    out.push(MEMOIZE);
}

fn pickle_int(v: u32, out: &mut Vec<u8>) {
    if v < 256 {
        out.extend_from_slice(&[BININT1, v as u8]);
    } else if v < 65_536 {
        out.push(BININT2);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else {
        out.push(BININT);
        out.extend_from_slice(&(v as i32).to_le_bytes());
    }
}

/// Closes a tuple of `len` items whose elements were written after `MARK` (for len > 3).
fn pickle_tuple_end(len: usize, out: &mut Vec<u8>) {
    match len {
        0 => out.push(EMPTY_TUPLE),
        1 => out.push(TUPLE1),
        2 => out.push(TUPLE2),
        3 => out.push(TUPLE3),
        _ => out.push(TUPLE),
    }
    out.push(MEMOIZE);
}

fn pickle_seed(seed: &str, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(seed.len() + 8);
    pickle_str(seed, &mut body);
    body.push(STOP);
    pickle_framed(&body, out);
}

fn pickle_block(parent: &BlockHash, tokens: &[u32], extra: &[ExtraKey], out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(48 + tokens.len() * 5);
    body.extend_from_slice(&[SHORT_BINBYTES, 32]);
    body.extend_from_slice(parent);
    body.push(MEMOIZE);
    if tokens.len() > 3 {
        body.push(MARK);
    }
    for &t in tokens {
        pickle_int(t, &mut body);
    }
    pickle_tuple_end(tokens.len(), &mut body);
    if extra.is_empty() {
        body.push(NONE);
    } else {
        if extra.len() > 3 {
            body.push(MARK);
        }
        for key in extra {
            match key {
                ExtraKey::Lora { name, path } => {
                    pickle_str("lora", &mut body);
                    pickle_str(name, &mut body);
                    pickle_str(path, &mut body);
                    pickle_tuple_end(3, &mut body);
                }
                ExtraKey::CacheSalt(salt) => {
                    pickle_str("cache_salt", &mut body);
                    pickle_str(salt, &mut body);
                    pickle_tuple_end(2, &mut body);
                }
            }
        }
        pickle_tuple_end(extra.len(), &mut body);
    }
    body.extend_from_slice(&[TUPLE3, MEMOIZE, STOP]);
    pickle_framed(&body, out);
}

// === canonical CBOR ===

fn cbor_head(major: u8, v: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if v < 24 {
        out.push(m | v as u8);
    } else if v < 0x100 {
        out.extend_from_slice(&[m | 24, v as u8]);
    } else if v < 0x1_0000 {
        out.push(m | 25);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v < 0x1_0000_0000 {
        out.push(m | 26);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn cbor_text(s: &str, out: &mut Vec<u8>) {
    cbor_head(3, s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn cbor_block(parent: &BlockHash, tokens: &[u32], extra: &[ExtraKey], out: &mut Vec<u8>) {
    cbor_head(4, 3, out);
    cbor_head(2, 32, out);
    out.extend_from_slice(parent);
    cbor_head(4, tokens.len() as u64, out);
    for &t in tokens {
        cbor_head(0, u64::from(t), out);
    }
    if extra.is_empty() {
        out.push(0xf6);
        return;
    }
    cbor_head(4, extra.len() as u64, out);
    for key in extra {
        match key {
            ExtraKey::Lora { name, path } => {
                cbor_head(4, 3, out);
                cbor_text("lora", out);
                cbor_text(name, out);
                cbor_text(path, out);
            }
            ExtraKey::CacheSalt(salt) => {
                cbor_head(4, 2, out);
                cbor_text("cache_salt", out);
                cbor_text(salt, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex8(h: &BlockHash) -> String {
        h[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The test vectors of vllm.md §5.5: tokens 1..16 then 17..32, no extra keys.
    #[test]
    fn matches_vllm_reference_vectors() {
        let b0: Vec<u32> = (1..=16).collect();
        let b1: Vec<u32> = (17..=32).collect();

        let h = BlockHasher::new(HashAlgo::Sha256, "vllm-none-hash");
        let h0 = h.hash_block(None, &b0, &[]);
        let h1 = h.hash_block(Some(&h0), &b1, &[]);
        assert_eq!(hex8(&h0), "7b255da405e1d722");
        assert_eq!(published(&h0), 1_403_909_460_543_360_175);
        assert_eq!(published(&h1), 1_643_945_449_041_937_783);

        let c = BlockHasher::new(HashAlgo::Sha256Cbor, "vllm-none-hash");
        let c0 = c.hash_block(None, &b0, &[]);
        let c1 = c.hash_block(Some(&c0), &b1, &[]);
        assert_eq!(hex8(&c0), "cd7c51bc5a8fc864");
        assert_eq!(published(&c0), 8_866_452_693_264_111_234);
        assert_eq!(published(&c1), 807_986_237_951_177_663);
    }

    #[test]
    fn extra_keys_and_seed_change_the_chain() {
        let toks: Vec<u32> = (100..116).collect();
        let h = BlockHasher::new(HashAlgo::Sha256, "vllm-none-hash");
        let plain = h.hash_block(None, &toks, &[]);
        let salted = h.hash_block(None, &toks, &[ExtraKey::CacheSalt("tenant-a".into())]);
        let lora = h.hash_block(
            None,
            &toks,
            &[ExtraKey::Lora {
                name: "sql".into(),
                path: "/a/sql".into(),
            }],
        );
        assert_ne!(plain, salted);
        assert_ne!(plain, lora);
        assert_ne!(salted, lora);
        let other_seed = BlockHasher::new(HashAlgo::Sha256, "42").hash_block(None, &toks, &[]);
        assert_ne!(plain, other_seed);
        // Large token ids take the 4-byte pickle opcode and must still hash deterministically.
        let big = [128_000u32, 70_000, 300, 5];
        assert_eq!(h.hash_block(None, &big, &[]), h.hash_block(None, &big, &[]));
    }
}
