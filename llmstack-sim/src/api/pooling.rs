//! Routes answered by one pooling pass instead of generation: embeddings, scores and
//! reranking. A pass costs one prefill step of its whole input on the latency profile;
//! nothing goes through the scheduler, but each request counts in flight and honours the
//! request faults like every inference route.
//!
//! Scores are deterministic and within [0, 1]: mostly the share of the query's words found
//! in the document, plus a little hash-derived spread so ties are rare.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{EngineApp, Res, ok_json, random_hex, request_id};
use crate::api::base64;
use crate::api::error::ApiError;
use crate::api::request::{EmbeddingRequest, parse, resolve_model, tokenizer_error};
use crate::engine::unix_now;
use crate::scheduler::splitmix;

/// Embedding width (Llama-3-8B's hidden size is 4096; 1024 keeps test bodies small).
const EMBEDDING_DIM: usize = 1024;

/// `POST /score`, `/v1/score`.
#[derive(Debug, Deserialize)]
struct ScoreRequest {
    model: Option<String>,
    text_1: TextInput,
    text_2: TextInput,
    // Typed but without effect.
    #[allow(dead_code)]
    truncate_prompt_tokens: Option<i64>,
}

/// A text or a list of texts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TextInput {
    One(String),
    Many(Vec<String>),
}

impl TextInput {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `POST /rerank`, `/v1/rerank`, `/v2/rerank`.
#[derive(Debug, Deserialize)]
struct RerankRequest {
    model: Option<String>,
    query: String,
    documents: Vec<Document>,
    top_n: Option<i64>,
    // Typed but without effect.
    #[allow(dead_code)]
    truncate_prompt_tokens: Option<i64>,
    #[allow(dead_code)]
    return_documents: Option<bool>,
}

/// A document: a string or `{"text": …}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Document {
    Text(String),
    Object { text: String },
}

impl Document {
    fn text(&self) -> &str {
        match self {
            Self::Text(t) | Self::Object { text: t } => t,
        }
    }
}

impl EngineApp {
    /// Waits for one pooling pass over inputs of these token counts.
    async fn pooling_pass(&self, lens: &[usize]) {
        let cfg = &self.shared.config;
        let tokens: usize = lens.iter().sum();
        let attention = lens.iter().map(|&l| (l * l) as f64 / 2.0).sum();
        let ms = cfg.profile.step_ms(0, 0, tokens, attention);
        if ms > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(ms / cfg.speedup / 1000.0)).await;
        }
    }

    /// Rejects an input longer than the context.
    fn check_input_len(&self, len: usize) -> Result<(), ApiError> {
        let max_len = self.shared.config.max_model_len();
        if len > max_len {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {max_len} tokens. However, your request has {len} input tokens. Please reduce the length of the input."
                ),
                Some("input_tokens"),
            ));
        }
        Ok(())
    }

    /// `POST /v1/embeddings`.
    pub(super) async fn embeddings(&self, body: &[u8]) -> Result<Res, ApiError> {
        let r: EmbeddingRequest = parse(body)?;
        let model = resolve_model(
            r.model.as_deref(),
            &self.shared.config,
            &self.shared.loras(),
        )?;
        let inputs = r
            .input
            .tokenize(&self.shared.config.tokenizer, true, "input")?;
        for p in &inputs {
            self.check_input_len(p.len())?;
        }
        let dim = match r.dimensions {
            None => EMBEDDING_DIM,
            Some(d) if d >= 1 && d as usize <= EMBEDDING_DIM => d as usize,
            Some(d) => {
                return Err(ApiError::bad_request(
                    format!("dimensions must be within 1..={EMBEDDING_DIM}, got {d}"),
                    Some("dimensions"),
                ));
            }
        };
        let base64 = match r.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::validation(
                    "enum",
                    "encoding_format",
                    &format!("Input should be 'float' or 'base64', got '{other}'"),
                ));
            }
        };
        let _load = self.admit_immediate().await?;
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        self.pooling_pass(&lens).await;
        let tokens: usize = lens.iter().sum();
        let data: Vec<serde_json::Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, toks)| {
                let v = embedding(toks, dim);
                let emb = if base64 {
                    json!(base64_f32(&v))
                } else {
                    json!(v)
                };
                json!({"index": i, "object": "embedding", "embedding": emb})
            })
            .collect();
        Ok(ok_json(&json!({
            "id": format!("embd-{}", random_hex()), "object": "list", "created": unix_now() as u64,
            "model": model.name, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": null}
        })))
    }

    /// `POST /score`, `/v1/score`: one score per `text_1`/`text_2` pair (1:1, 1:N, N:N).
    pub(super) async fn score(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Res, ApiError> {
        let r: ScoreRequest = parse(body)?;
        let model = resolve_model(
            r.model.as_deref(),
            &self.shared.config,
            &self.shared.loras(),
        )?;
        let (left, right) = (r.text_1.into_vec(), r.text_2.into_vec());
        let pairs = pairs(&left, &right)?;
        let lens = self.pair_lens(&pairs)?;
        let _load = self.admit_immediate().await?;
        self.pooling_pass(&lens).await;
        let tokens: usize = lens.iter().sum();
        let data: Vec<serde_json::Value> = pairs
            .iter()
            .enumerate()
            .map(|(i, (q, d))| json!({"index": i, "object": "score", "score": relevance(q, d)}))
            .collect();
        Ok(ok_json(&json!({
            "id": format!("score-{}", request_id(headers, None)), "object": "list",
            "created": unix_now() as u64, "model": model.name, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": null}
        })))
    }

    /// `POST /rerank`, `/v1/rerank`, `/v2/rerank`: documents by relevance to the query,
    /// best first, the first `top_n` (all when absent or 0).
    pub(super) async fn rerank(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Res, ApiError> {
        let r: RerankRequest = parse(body)?;
        let model = resolve_model(
            r.model.as_deref(),
            &self.shared.config,
            &self.shared.loras(),
        )?;
        let query = [r.query];
        let docs: Vec<String> = r.documents.iter().map(|d| d.text().to_owned()).collect();
        let pairs = pairs(&query, &docs)?;
        let lens = self.pair_lens(&pairs)?;
        let _load = self.admit_immediate().await?;
        self.pooling_pass(&lens).await;
        let mut ranked: Vec<(usize, f64)> = pairs
            .iter()
            .enumerate()
            .map(|(i, (q, d))| (i, relevance(q, d)))
            .collect();
        // Stable: equal scores keep document order.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top = match r.top_n {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => ranked.len(),
        };
        let results: Vec<serde_json::Value> = ranked
            .iter()
            .take(top)
            .map(|&(i, s)| json!({"index": i, "document": {"text": docs[i]}, "relevance_score": s}))
            .collect();
        Ok(ok_json(&json!({
            "id": format!("rerank-{}", request_id(headers, None)), "model": model.name,
            "usage": {"total_tokens": lens.iter().sum::<usize>()}, "results": results
        })))
    }

    /// Token counts of each (query, document) pair as a cross-encoder reads it.
    fn pair_lens(&self, pairs: &[(&str, &str)]) -> Result<Vec<usize>, ApiError> {
        let tok = &self.shared.config.tokenizer;
        pairs
            .iter()
            .map(|(q, d)| {
                let q = tok.encode(q, true).map_err(tokenizer_error)?;
                let d = tok.encode(d, false).map_err(tokenizer_error)?;
                let len = q.len() + d.len();
                self.check_input_len(len).map(|()| len)
            })
            .collect()
    }
}

/// Pairs `left` with `right` as vLLM does: 1:1, 1:N (the one text against each) or N:N.
fn pairs<'a>(left: &'a [String], right: &'a [String]) -> Result<Vec<(&'a str, &'a str)>, ApiError> {
    if left.is_empty() || right.is_empty() {
        return Err(ApiError::bad_request(
            "At least one text element must be given",
            None,
        ));
    }
    if left.len() == 1 {
        return Ok(right
            .iter()
            .map(|r| (left[0].as_str(), r.as_str()))
            .collect());
    }
    if left.len() != right.len() {
        return Err(ApiError::bad_request(
            "Input lengths must be either 1:1, 1:N or N:N",
            None,
        ));
    }
    Ok(left
        .iter()
        .zip(right)
        .map(|(l, r)| (l.as_str(), r.as_str()))
        .collect())
}

/// Lowercase words of `text` (letters and digits).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// How relevant `doc` is to `query`, in [0, 1): 0.85 × the share of the query's distinct
/// words the document contains + 0.15 × a hash of both texts.
pub(crate) fn relevance(query: &str, doc: &str) -> f64 {
    let mut q = words(query);
    q.sort_unstable();
    q.dedup();
    let d = words(doc);
    let overlap = if q.is_empty() {
        0.0
    } else {
        q.iter().filter(|w| d.contains(w)).count() as f64 / q.len() as f64
    };
    let spread = (splitmix(hash(query) ^ splitmix(hash(doc))) >> 11) as f64 / (1u64 << 53) as f64;
    0.85 * overlap + 0.15 * spread
}

/// A deterministic unit vector for the tokens.
fn embedding(tokens: &[u32], dim: usize) -> Vec<f32> {
    let seed = tokens
        .iter()
        .fold(0x9e37_79b9_7f4a_7c15u64, |h, &t| splitmix(h ^ u64::from(t)));
    let mut v: Vec<f32> = (0..dim as u64)
        .map(|i| {
            let r = splitmix(seed ^ i.wrapping_mul(0xa076_1d64_78bd_642f));
            (r >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Little-endian f32 bytes in standard base64 (the OpenAI client's default format).
fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::encode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_encoding() {
        // 1.0f32 = 00 00 80 3f
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, 1.0]), "AACAPwAAgD8=");
    }

    #[test]
    fn embeddings_are_unit_and_deterministic() {
        let a = embedding(&[1, 2, 3], 64);
        assert_eq!(a, embedding(&[1, 2, 3], 64));
        assert_ne!(a, embedding(&[1, 2, 4], 64));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    #[test]
    fn relevance_prefers_overlap_and_stays_in_range() {
        let q = "capital of France";
        let good = relevance(q, "Paris is the capital of France.");
        let bad = relevance(q, "Bananas are yellow.");
        assert!(good > bad, "{good} vs {bad}");
        assert_eq!(good, relevance(q, "Paris is the capital of France."));
        for s in [good, bad, relevance("", ""), relevance("a", "a")] {
            assert!((0.0..1.0).contains(&s), "{s}");
        }
    }

    #[test]
    fn pairing_rules() {
        let one = vec!["q".to_owned()];
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(pairs(&one, &three).unwrap().len(), 3);
        assert_eq!(pairs(&three, &three).unwrap()[1], ("b", "b"));
        assert!(pairs(&three, &one[..]).is_err());
        assert!(pairs(&one, &[]).is_err());
    }
}
