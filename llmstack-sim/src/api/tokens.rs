//! `/tokenize` and `/detokenize` with the simulator's tokenizer and chat template.

use serde_json::json;

use super::{EngineApp, Res, ok_json};
use crate::api::error::ApiError;
use crate::api::request::{
    DetokenizeRequest, TokenizeRequest, parse, render_messages, resolve_model,
};
use crate::tokenizer;

impl EngineApp {
    /// `POST /tokenize`.
    pub(super) fn tokenize(&self, body: &[u8]) -> Result<Res, ApiError> {
        let r: TokenizeRequest = parse(body)?;
        resolve_model(
            r.model.as_deref(),
            &self.shared.config,
            &self.shared.loras(),
        )?;
        let tokens = match (&r.prompt, &r.messages) {
            (Some(p), None) => tokenizer::encode(p, r.add_special_tokens.unwrap_or(true)),
            (None, Some(m)) => render_messages(m, r.add_generation_prompt.unwrap_or(true)),
            _ => {
                return Err(ApiError::validation(
                    "value_error",
                    "",
                    "Value error, exactly one of `prompt` and `messages` must be given",
                ));
            }
        };
        let strs = r.return_token_strs.unwrap_or(false).then(|| {
            tokens
                .iter()
                .map(|&t| tokenizer::decode(&[t], false))
                .collect::<Vec<_>>()
        });
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
        if let Some(bad) = r.tokens.iter().find(|&&t| !tokenizer::is_valid(t)) {
            return Err(ApiError::bad_request(
                format!("Token id {bad} is out of vocabulary"),
                Some("tokens"),
            ));
        }
        Ok(ok_json(
            &json!({"prompt": tokenizer::decode(&r.tokens, false)}),
        ))
    }
}
