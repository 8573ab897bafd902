//! The one path every text-generating route takes to the engine: completions, chat,
//! Responses and Messages each turn their body into a [`GenSpec`], and [`EngineApp::run`]
//! applies the request faults, admission control and the sequences' seeds, hands them to
//! the scheduler, and answers with an SSE stream or the complete body.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Response, StatusCode, header};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{EngineApp, Res, request_id};
use crate::api::body::{Cutter, Flight, LoadGuard, SimBody, SseStream};
use crate::api::error::ApiError;
use crate::api::output::{Assembly, Kind, OutputCtx, ResponsesEcho};
use crate::api::reply::json_response;
use crate::api::request::{
    ChatRequest, CompletionRequest, ResolvedModel, Sampling, check_sampling, encode_messages,
    parse, raw_messages, resolve_model,
};
use crate::engine::{Command, unix_now};
use crate::scheduler::{NewSeq, splitmix};

/// A checked text-generation request, ready for the engine.
#[derive(Debug)]
pub(crate) struct GenSpec {
    /// The API answered.
    pub(crate) kind: Kind,
    /// The model (or LoRA adapter) addressed.
    pub(crate) model: ResolvedModel,
    /// Tokenized prompts (one except for multi-prompt completions).
    pub(crate) prompts: Vec<Vec<u32>>,
    /// Checked sampling parameters.
    pub(crate) sampling: Sampling,
    /// Completions `echo`.
    pub(crate) echo: bool,
    /// The response id after its prefix: `X-Request-Id`, else the body's `request_id`,
    /// else random.
    pub(crate) request_id: String,
    /// Request fields a Responses API object repeats.
    pub(crate) responses: Option<ResponsesEcho>,
}

/// vLLM's admission-control answer (`--max-num-queued-reqs`).
fn engine_busy() -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "Service Unavailable",
        message: "The engine is currently busy and cannot accept new requests. Please try again later or on a different instance.".into(),
        param: None,
    }
}

fn internal_error() -> ApiError {
    ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
}

impl EngineApp {
    /// `POST /v1/completions`.
    pub(super) async fn completions(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Res, ApiError> {
        let mut r: CompletionRequest = parse(body)?;
        let fields = r.take_fields();
        let cfg = &self.shared.config;
        let model = resolve_model(fields.model.as_deref(), cfg, &self.shared.loras())?;
        let prompts = r.prompt.tokenize(&cfg.tokenizer, true, "prompt")?;
        let max = ("max_tokens", fields.max_tokens);
        let sampling = check_sampling(&fields, max, Some(16), &prompts, cfg)?;
        self.run(GenSpec {
            kind: Kind::Completion,
            model,
            prompts,
            sampling,
            echo: r.echo.unwrap_or(false),
            request_id: request_id(headers, fields.request_id),
            responses: None,
        })
        .await
    }

    /// `POST /v1/chat/completions`.
    pub(super) async fn chat(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Res, ApiError> {
        let mut r: ChatRequest = parse(body)?;
        let fields = r.take_fields();
        let cfg = &self.shared.config;
        let model = resolve_model(fields.model.as_deref(), cfg, &self.shared.loras())?;
        let raw = cfg.tokenizer.model().and_then(|_| raw_messages(body));
        let prompts = vec![encode_messages(
            &cfg.tokenizer,
            &r.messages,
            raw,
            r.add_generation_prompt.unwrap_or(true),
            false,
        )?];
        let max = match r.max_completion_tokens {
            Some(m) => ("max_completion_tokens", Some(m)),
            None => ("max_tokens", fields.max_tokens),
        };
        let sampling = check_sampling(&fields, max, None, &prompts, cfg)?;
        self.run(GenSpec {
            kind: Kind::Chat,
            model,
            prompts,
            sampling,
            echo: false,
            request_id: request_id(headers, fields.request_id),
            responses: None,
        })
        .await
    }

    /// Runs a checked request through the engine: the request faults, admission control,
    /// then an SSE stream (headers at once, events as the engine steps) or, once every
    /// choice finished, the complete body.
    pub(super) async fn run(&self, spec: GenSpec) -> Result<Res, ApiError> {
        let cfg = &self.shared.config;
        let load = LoadGuard::new(self.shared.clone());
        let faults = self.request_faults().await?;
        let GenSpec {
            kind,
            model,
            prompts,
            sampling,
            echo,
            request_id,
            responses,
        } = spec;
        let count = prompts.len() * sampling.n;
        let first_id = self
            .shared
            .next_seq
            .fetch_add(count as u64, Ordering::Relaxed);
        // Reserves `count` sequences at once, so concurrent requests cannot all slip
        // under --max-num-queued-reqs; the flight gives them back when the request ends.
        let mut flight = Flight::new(self.tx.clone(), self.shared.clone(), first_id, count, load);
        if let Some(max) = cfg.max_num_queued_reqs
            && flight.queued_after > max
        {
            self.shared.metrics().admission_rejections += 1;
            flight.live.fill(false);
            return Err(engine_busy());
        }
        let prompts: Vec<Arc<[u32]>> = prompts.into_iter().map(Arc::from).collect();
        let (sink, rx) = mpsc::unbounded_channel();
        let engine_stream = sampling.stream || !sampling.stop.is_empty();
        let mean = cfg.mean_output_tokens;
        let mut seqs = Vec::with_capacity(count);
        for (p, prompt) in prompts.iter().enumerate() {
            let prompt_seed = prompt
                .iter()
                .fold(cfg.seed, |h, &t| splitmix(h ^ u64::from(t)));
            for j in 0..sampling.n {
                let index = p * sampling.n + j;
                let seed = splitmix(
                    sampling
                        .seed
                        .map_or(prompt_seed, |s| splitmix(s ^ cfg.seed))
                        ^ splitmix(index as u64),
                );
                seqs.push(NewSeq {
                    id: first_id + index as u64,
                    index: index as u32,
                    prompt: prompt.clone(),
                    max_tokens: sampling.max_tokens[p],
                    min_tokens: sampling.min_tokens,
                    ignore_eos: sampling.ignore_eos,
                    natural_len: (mean / 2 + (splitmix(seed) % (mean as u64 + 1)) as usize).max(1),
                    stop_token_ids: sampling.stop_token_ids.clone(),
                    lora: model.lora.clone(),
                    cache_salt: sampling.cache_salt.clone(),
                    stream: engine_stream,
                    seed,
                    arrival: Instant::now(),
                    sink: sink.clone(),
                });
            }
        }
        drop(sink);
        let n = sampling.n;
        let stream = sampling.stream;
        let mut out = Assembly::new(OutputCtx {
            kind,
            id: format!("{}{request_id}", kind.id_prefix()),
            created: unix_now() as u64,
            model: model.name,
            fingerprint: self.fingerprint.clone(),
            sampling,
            prompts,
            tokenizer: cfg.tokenizer.clone(),
            details: cfg.enable_prompt_tokens_details,
            echo,
            chunk_prefix: Vec::new(),
            responses,
        });
        let submit = Command::Add(seqs, n);
        let delay = Duration::from_millis(faults.first_token_delay_ms);
        if stream {
            let delay = (!delay.is_zero()).then(|| Box::pin(tokio::time::sleep(delay)));
            let submit = if delay.is_some() {
                Some(submit)
            } else {
                self.tx.send(submit).map_err(|_| internal_error())?;
                None
            };
            let stream = SseStream {
                rx,
                out,
                flight,
                cutter: Cutter::new(faults.close_after_chunks),
                started: false,
                ended: false,
                delay,
                submit,
            };
            let mut r = Response::new(SimBody::Stream(Box::new(stream)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            return Ok(r);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.tx.send(submit).map_err(|_| internal_error())?;
        let mut rx = rx;
        while !out.done() {
            let ev = rx.recv().await.ok_or_else(internal_error)?;
            flight.apply(&mut out, ev);
        }
        drop(flight);
        Ok(json_response(StatusCode::OK, out.full_response()))
    }
}
