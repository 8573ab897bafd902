//! `/tokenize` and `/detokenize` with the simulator's tokenizer and chat template.

use serde_json::json;

use super::{EngineApp, Res, ok_json};
use crate::api::error::ApiError;
use crate::api::request::{
    DetokenizeRequest, TokenizeRequest, encode_messages, parse, raw_messages, resolve_model,
    tokenizer_error,
};

impl EngineApp {
    /// `POST /tokenize`.
    pub(super) fn tokenize(&self, body: &[u8]) -> Result<Res, ApiError> {
        let r: TokenizeRequest = parse(body)?;
        resolve_model(
            r.model.as_deref(),
            &self.shared.config,
            &self.shared.loras(),
        )?;
        let tok = &self.shared.config.tokenizer;
        let tokens = match (&r.prompt, &r.messages) {
            (Some(p), None) => tok
                .encode(p, r.add_special_tokens.unwrap_or(true))
                .map_err(tokenizer_error)?,
            // vLLM's chat /tokenize adds no special tokens unless asked (the template wrote
            // them); the pseudo-tokenizer's template has no such switch.
            (None, Some(m)) => encode_messages(
                tok,
                m,
                tok.model().and_then(|_| raw_messages(body)),
                r.add_generation_prompt.unwrap_or(true),
                r.add_special_tokens.unwrap_or(false),
            )?,
            _ => {
                return Err(ApiError::validation(
                    "value_error",
                    "",
                    "Value error, exactly one of `prompt` and `messages` must be given",
                ));
            }
        };
        let strs = r
            .return_token_strs
            .unwrap_or(false)
            .then(|| tokens.iter().map(|&t| tok.token_str(t)).collect::<Vec<_>>());
        Ok(ok_json(&json!({
            "count": tokens.len(), "max_model_len": self.shared.config.max_model_len(),
            "tokens": tokens, "token_strs": strs
        })))
    }

    /// `POST /detokenize`.
    pub(super) fn detokenize(&self, body: &[u8]) -> Result<Res, ApiError> {
        let r: DetokenizeRequest = parse(body)?;
        resolve_model(
            r.model.as_deref(),
            &self.shared.config,
            &self.shared.loras(),
        )?;
        let tok = &self.shared.config.tokenizer;
        if let Some(bad) = r.tokens.iter().find(|&&t| !tok.is_valid(t)) {
            return Err(ApiError::bad_request(
                format!("Token id {bad} is out of vocabulary"),
                Some("tokens"),
            ));
        }
        Ok(ok_json(&json!({"prompt": tok.decode(&r.tokens, false)})))
    }
}
