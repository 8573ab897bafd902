//! Sampling parameters: vLLM's checks on the shared fields (ranges, lengths of §2.4) and
//! the [`Sampling`] every generation request runs with.

use std::sync::Arc;

use super::{MAX_SEQS_PER_REQUEST, SamplingFields, StopInput};
use crate::api::error::ApiError;
use crate::config::{ContextOverflow, EngineConfig};

/// Sampling parameters after every check.
#[derive(Debug, Clone)]
pub(crate) struct Sampling {
    pub(crate) n: usize,
    /// Per prompt, clamped to the context.
    pub(crate) max_tokens: Vec<usize>,
    pub(crate) min_tokens: usize,
    pub(crate) ignore_eos: bool,
    pub(crate) stop: Arc<[String]>,
    pub(crate) include_stop: bool,
    pub(crate) stop_token_ids: Arc<[u32]>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) continuous_usage: bool,
    pub(crate) return_token_ids: bool,
    pub(crate) seed: Option<u64>,
    pub(crate) cache_salt: Option<Arc<str>>,
}

fn non_negative(v: Option<i64>, param: &str, min: i64) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x < min => Err(ApiError::validation(
            "greater_than_equal",
            param,
            &format!("Input should be greater than or equal to {min}"),
        )),
        Some(x) => Ok(Some(usize::try_from(x).unwrap_or(usize::MAX))),
    }
}

/// vLLM's `SamplingParams` range checks (values otherwise have no effect here).
fn check_ranges(f: &SamplingFields) -> Result<(), ApiError> {
    let bad = |param: &str, rule: &str, v: f64| {
        Err(ApiError::bad_request(
            format!("{param} must be {rule}, got {v}."),
            Some(param),
        ))
    };
    if let Some(t) = f.temperature
        && t < 0.0
    {
        return bad("temperature", "non-negative", t);
    }
    if let Some(p) = f.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return bad("top_p", "in (0, 1]", p);
    }
    if let Some(k) = f.top_k
        && k < -1
    {
        return bad(
            "top_k",
            "-1 (disable), 0 (disable), or at least 1",
            k as f64,
        );
    }
    if let Some(m) = f.min_p
        && !(0.0..=1.0).contains(&m)
    {
        return bad("min_p", "in [0, 1]", m);
    }
    for (param, v) in [
        ("frequency_penalty", f.frequency_penalty),
        ("presence_penalty", f.presence_penalty),
    ] {
        if let Some(v) = v
            && !(-2.0..=2.0).contains(&v)
        {
            return bad(param, "in [-2, 2]", v);
        }
    }
    if let Some(r) = f.repetition_penalty
        && r <= 0.0
    {
        return bad("repetition_penalty", "greater than zero", r);
    }
    Ok(())
}

/// Applies vLLM's length rules (vllm.md §2.4) and the other field checks.
pub(crate) fn check_sampling(
    f: &SamplingFields,
    max_tokens_field: (&str, Option<i64>),
    default_max_tokens: Option<usize>,
    prompts: &[Vec<u32>],
    config: &EngineConfig,
) -> Result<Sampling, ApiError> {
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::validation(
            "value_error",
            "stream_options",
            "Value error, Stream options can only be defined when `stream=True`.",
        ));
    }
    if f.priority.unwrap_or(0) != 0 {
        return Err(ApiError::bad_request(
            "Priority scheduling is not enabled. Please set --scheduling-policy to priority.",
            Some("priority"),
        ));
    }
    if let Some(salt) = &f.cache_salt
        && (salt.is_empty() || salt.len() > 1024)
    {
        return Err(ApiError::validation(
            "value_error",
            "cache_salt",
            "Value error, cache_salt must be 1..1024 characters",
        ));
    }
    let n = non_negative(f.n, "n", 1)?.unwrap_or(1);
    if n.saturating_mul(prompts.len()) > MAX_SEQS_PER_REQUEST {
        return Err(ApiError::bad_request(
            format!(
                "n × prompts must be at most {MAX_SEQS_PER_REQUEST} (got {})",
                n.saturating_mul(prompts.len())
            ),
            Some("n"),
        ));
    }
    let (field, value) = max_tokens_field;
    let requested = non_negative(value, field, 1)?.or(default_max_tokens);
    let max_len = config.max_model_len();
    if let Some(m) = requested
        && m > max_len
    {
        return Err(ApiError::bad_request(
            format!(
                "max_tokens={m} cannot be greater than max_model_len={max_len}. Please request fewer output tokens."
            ),
            Some(field),
        ));
    }
    let mut max_tokens = Vec::with_capacity(prompts.len());
    for p in prompts {
        let len = p.len();
        if len == 0 {
            return Err(ApiError::bad_request(
                "The decoder prompt cannot be empty",
                Some("prompt"),
            ));
        }
        if len > max_len {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {max_len} tokens. However, your prompt contains {len} input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt."
                ),
                Some("input_tokens"),
            ));
        }
        if len == max_len {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {max_len} tokens. However, your request has {len} input tokens, which plus the number of requested output tokens (at least 1) is longer than the maximum model length. Please reduce the length of the input prompt."
                ),
                Some("input_tokens"),
            ));
        }
        let room = max_len - len;
        let want = requested.unwrap_or(room);
        if want > room && config.context_overflow == ContextOverflow::Reject {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {max_len} tokens. However, you requested {want} output tokens and your prompt contains at least {len} input tokens, for a total of at least {} tokens. Please reduce the length of the input prompt or the number of requested output tokens.",
                    want + len
                ),
                Some(field),
            ));
        }
        max_tokens.push(want.min(room));
    }
    let stop: Vec<String> = match &f.stop {
        None => Vec::new(),
        Some(StopInput::One(s)) => vec![s.clone()],
        Some(StopInput::Many(v)) => v.clone(),
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let opts = f.stream_options.as_ref();
    let include_usage = opts.and_then(|o| o.include_usage).unwrap_or(false);
    check_ranges(f)?;
    let min_tokens = non_negative(f.min_tokens, "min_tokens", 0)?.unwrap_or(0);
    if let Some(max) = requested
        && min_tokens > max
    {
        return Err(ApiError::bad_request(
            format!("min_tokens must be less than or equal to max_tokens={max}, got {min_tokens}."),
            Some("min_tokens"),
        ));
    }
    Ok(Sampling {
        n,
        max_tokens,
        min_tokens,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        stop: stop.into(),
        include_stop: f.include_stop_str_in_output.unwrap_or(false),
        stop_token_ids: f.stop_token_ids.clone().unwrap_or_default().into(),
        stream,
        include_usage,
        continuous_usage: include_usage
            && opts.and_then(|o| o.continuous_usage_stats).unwrap_or(false),
        return_token_ids: f.return_token_ids.unwrap_or(false),
        seed: f.seed.map(|s| s as u64),
        cache_salt: f.cache_salt.as_deref().map(Arc::from),
    })
}
