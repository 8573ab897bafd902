//! The HTTP surface of one simulated engine: vLLM's routes, bodies and errors.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::engine::{Command, EngineShared, SleepMode, unix_now};
use crate::scheduler::{NewSeq, splitmix};
use crate::tokenizer;

pub(crate) mod body;
pub(crate) mod error;
mod output;
mod request;

use body::{Flight, SimBody, SseStream};
use error::{ApiError, json_response, method_not_allowed, not_found_route};
use output::{Assembly, Kind, OutputCtx};
use request::{
    ChatRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, TokenizeRequest,
    check_sampling, parse, render_messages, resolve_model,
};

/// Largest request body accepted (vLLM has no limit; a simulator must not be OOM-able).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Embedding width (Llama-3-8B's hidden size is 4096; 1024 keeps test bodies small).
const EMBEDDING_DIM: usize = 1024;
/// vLLM version the simulator impersonates.
pub(crate) const VLLM_VERSION: &str = "0.33.0";

/// What the listener asks of the engine's server (stop/start listening).
#[derive(Debug)]
pub(crate) enum ListenerCmd {
    /// Close the port for this long, then listen again.
    Down(Duration),
}

/// Routes and handlers of one engine.
#[derive(Debug)]
pub(crate) struct EngineApp {
    pub(crate) shared: Arc<EngineShared>,
    pub(crate) tx: mpsc::UnboundedSender<Command>,
    pub(crate) listener: mpsc::UnboundedSender<ListenerCmd>,
    fingerprint: Arc<str>,
}

type Res = Response<SimBody>;

impl EngineApp {
    pub(crate) fn new(
        shared: Arc<EngineShared>,
        tx: mpsc::UnboundedSender<Command>,
        listener: mpsc::UnboundedSender<ListenerCmd>,
    ) -> Self {
        let h = shared
            .config
            .primary_name()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        let fingerprint = format!("vllm-{VLLM_VERSION}-{:08x}", h as u32).into();
        Self {
            shared,
            tx,
            listener,
            fingerprint,
        }
    }

    /// Answers one request; never panics on any input.
    pub(crate) async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Res
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        let query = parts.uri.query().unwrap_or("");
        let get = parts.method == Method::GET;
        let post = parts.method == Method::POST;
        // JSON routes read their body here, after the content-type check (as vLLM does).
        let json_route = post
            && matches!(
                path,
                "/v1/completions"
                    | "/v1/chat/completions"
                    | "/v1/embeddings"
                    | "/tokenize"
                    | "/detokenize"
                    | "/v1/load_lora_adapter"
                    | "/v1/unload_lora_adapter"
                    | "/sim/faults"
            );
        let body = if json_route {
            match read_json(&parts.headers, body).await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            }
        } else {
            Bytes::new()
        };
        let result = match path {
            "/health" if get => Ok(self.health()),
            "/ping" if get || post => Ok(self.health()),
            "/version" if get => Ok(ok_json(&json!({"version": VLLM_VERSION}))),
            "/load" if get => Ok(self.load()),
            "/metrics" if get => Ok(self.metrics()),
            "/v1/models" if get => Ok(self.models()),
            "/v1/completions" if post => {
                self.generate(Kind::Completion, &parts.headers, &body).await
            }
            "/v1/chat/completions" if post => {
                self.generate(Kind::Chat, &parts.headers, &body).await
            }
            "/v1/embeddings" if post => self.embeddings(&body).await,
            "/tokenize" if post => self.tokenize(&body),
            "/detokenize" if post => self.detokenize(&body),
            "/reset_prefix_cache" if post => self.reset_prefix_cache(query).await,
            "/sleep" if post => self.sleep(query).await,
            "/wake_up" if post => self.wake_up(query).await,
            "/is_sleeping" if get => Ok(ok_json(
                &json!({"is_sleeping": self.shared.sleeping.load(Ordering::Acquire)}),
            )),
            "/kv_event_sources" if get => Ok(self.kv_event_sources()),
            "/v1/load_lora_adapter" if post => self.load_lora(&body),
            "/v1/unload_lora_adapter" if post => self.unload_lora(&body),
            "/sim/faults" if get => Ok(ok_json(&self.shared.faults())),
            "/sim/faults" if post => self.set_faults(&body),
            "/sim/state" if get => self.state(query).await,
            "/sim/down" if post => self.down(query),
            "/health"
            | "/ping"
            | "/version"
            | "/load"
            | "/metrics"
            | "/v1/models"
            | "/v1/completions"
            | "/v1/chat/completions"
            | "/v1/embeddings"
            | "/tokenize"
            | "/detokenize"
            | "/reset_prefix_cache"
            | "/sleep"
            | "/wake_up"
            | "/is_sleeping"
            | "/kv_event_sources"
            | "/v1/load_lora_adapter"
            | "/v1/unload_lora_adapter"
            | "/sim/faults"
            | "/sim/state"
            | "/sim/down" => Ok(method_not_allowed()),
            _ => Ok(not_found_route()),
        };
        result.unwrap_or_else(ApiError::into_response)
    }

    fn health(&self) -> Res {
        let status = if self.shared.faults().unhealthy {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut r = Response::new(SimBody::empty());
        *r.status_mut() = status;
        r
    }

    fn load(&self) -> Res {
        let load = if self.shared.config.enable_server_load_tracking {
            self.shared.in_flight.load(Ordering::Acquire)
        } else {
            0
        };
        ok_json(&json!({"server_load": load}))
    }

    fn metrics(&self) -> Res {
        let text = {
            let m = self.shared.metrics();
            crate::metrics::render(&m, &self.shared.exposition)
        };
        let mut r = Response::new(SimBody::full(Bytes::from(text)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    fn models(&self) -> Res {
        let created = unix_now() as u64;
        let cfg = &self.shared.config;
        let card = |id: &str, root: &str, parent: Option<&str>, max_len: Option<usize>| {
            json!({
                "id": id, "object": "model", "created": created, "owned_by": "vllm",
                "root": root, "parent": parent, "max_model_len": max_len,
                "permission": [{
                    "id": format!("modelperm-{}", random_hex()), "object": "model_permission",
                    "created": created, "allow_create_engine": false, "allow_sampling": true,
                    "allow_logprobs": true, "allow_search_indices": false, "allow_view": true,
                    "allow_fine_tuning": false, "organization": "*", "group": null, "is_blocking": false
                }]
            })
        };
        let mut data: Vec<serde_json::Value> = cfg
            .served_names()
            .iter()
            .map(|name| card(name, &cfg.model, None, Some(cfg.max_model_len())))
            .collect();
        let base = cfg.primary_name();
        data.extend(
            self.shared
                .loras()
                .iter()
                .map(|l| card(&l.name, &l.path, Some(&base), None)),
        );
        ok_json(&json!({"object": "list", "data": data}))
    }

    async fn generate(
        &self,
        kind: Kind,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Res, ApiError> {
        let header_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let cfg = &self.shared.config;
        let loras = self.shared.loras();
        let (fields, prompts, max_field, default_max, echo) = match kind {
            Kind::Completion => {
                let mut r: CompletionRequest = parse(body)?;
                let fields = r.take_fields();
                let model = resolve_model(fields.model.as_deref(), cfg, &loras)?;
                let prompts = r.prompt.tokenize(true, "prompt")?;
                let max = fields.max_tokens;
                (
                    fields,
                    (model, prompts),
                    ("max_tokens", max),
                    Some(16),
                    r.echo.unwrap_or(false),
                )
            }
            Kind::Chat => {
                let mut r: ChatRequest = parse(body)?;
                let fields = r.take_fields();
                let model = resolve_model(fields.model.as_deref(), cfg, &loras)?;
                let prompt = render_messages(&r.messages, r.add_generation_prompt.unwrap_or(true));
                let max = match r.max_completion_tokens {
                    Some(m) => ("max_completion_tokens", Some(m)),
                    None => ("max_tokens", fields.max_tokens),
                };
                (fields, (model, vec![prompt]), max, None, false)
            }
        };
        let (model, prompts) = prompts;
        let sampling = check_sampling(&fields, max_field, default_max, &prompts, cfg)?;
        let faults = self.shared.faults();
        if faults.hang_rate > 0.0 && self.shared.draw() < faults.hang_rate {
            // Accept and never answer; the client's disconnect drops this future.
            std::future::pending::<()>().await;
        }
        if faults.error_rate > 0.0 && self.shared.draw() < faults.error_rate {
            let status = StatusCode::from_u16(faults.error_status.unwrap_or(503))
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Err(ApiError::status(status, "Injected fault (llmstack-sim)"));
        }
        let count = prompts.len() * sampling.n;
        let first_id = self
            .shared
            .next_seq
            .fetch_add(count as u64, Ordering::Relaxed);
        // Reserves `count` sequences at once, so concurrent requests cannot all slip
        // under --max-num-queued-reqs; the flight gives them back when the request ends.
        let mut flight = Flight::new(self.tx.clone(), self.shared.clone(), first_id, count);
        if let Some(max) = cfg.max_num_queued_reqs
            && flight.queued_after > max
        {
            self.shared.metrics().admission_rejections += 1;
            flight.live.fill(false);
            return Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "Service Unavailable",
                message: "The engine is currently busy and cannot accept new requests. Please try again later or on a different instance.".into(),
                param: None,
            });
        }
        let id = header_id
            .or_else(|| fields.request_id.clone())
            .unwrap_or_else(random_hex);
        let id = match kind {
            Kind::Completion => format!("cmpl-{id}"),
            Kind::Chat => format!("chatcmpl-{id}"),
        };
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
        let ctx = OutputCtx {
            kind,
            id,
            created: unix_now() as u64,
            model: model.name,
            fingerprint: self.fingerprint.clone(),
            sampling,
            prompts,
            details: cfg.enable_prompt_tokens_details,
            echo,
            chunk_prefix: Vec::new(),
        };
        let submit = Command::Add(seqs, n);
        let delay = Duration::from_millis(faults.first_token_delay_ms);
        let mut out = Assembly::new(ctx);
        if stream {
            let delay = (!delay.is_zero()).then(|| Box::pin(tokio::time::sleep(delay)));
            let submit = if delay.is_some() {
                Some(submit)
            } else {
                self.tx.send(submit).map_err(|_| {
                    ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
                })?;
                None
            };
            let stream = SseStream {
                rx,
                out,
                flight,
                close_after: faults.close_after_chunks,
                events_sent: 0,
                ended: false,
                delay,
                submit,
                cut: None,
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
        if self.tx.send(submit).is_err() {
            return Err(ApiError::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error",
            ));
        }
        let mut rx = rx;
        while !out.done() {
            let Some(ev) = rx.recv().await else {
                return Err(ApiError::status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error",
                ));
            };
            flight.apply(&mut out, ev);
        }
        drop(flight);
        Ok(json_response(StatusCode::OK, out.full_response()))
    }

    async fn embeddings(&self, body: &[u8]) -> Result<Res, ApiError> {
        let r: EmbeddingRequest = parse(body)?;
        let cfg = &self.shared.config;
        let model = resolve_model(r.model.as_deref(), cfg, &self.shared.loras())?;
        let inputs = r.input.tokenize(true, "input")?;
        let max_len = cfg.max_model_len();
        if let Some(p) = inputs.iter().find(|p| p.len() > max_len) {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {max_len} tokens. However, your request has {} input tokens. Please reduce the length of the input.",
                    p.len()
                ),
                Some("input_tokens"),
            ));
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
        // A pooling pass costs one prefill step of the whole input.
        let tokens: usize = inputs.iter().map(Vec::len).sum();
        let p = &cfg.profile;
        let ms = p.step_ms(
            0,
            0,
            tokens,
            inputs
                .iter()
                .map(|v| (v.len() * v.len()) as f64 / 2.0)
                .sum(),
        );
        if ms > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(ms / cfg.speedup / 1000.0)).await;
        }
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

    fn tokenize(&self, body: &[u8]) -> Result<Res, ApiError> {
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

    fn detokenize(&self, body: &[u8]) -> Result<Res, ApiError> {
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

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "engine stopped"))?;
        rx.await
            .map_err(|_| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "engine stopped"))
    }

    async fn reset_prefix_cache(&self, query: &str) -> Result<Res, ApiError> {
        let reset_running = query_bool(query, "reset_running_requests")?;
        let ok = self
            .ask(|reply| Command::ResetPrefixCache {
                reset_running,
                reply,
            })
            .await?;
        Ok(ok_json(&json!({"success": ok})))
    }

    async fn sleep(&self, query: &str) -> Result<Res, ApiError> {
        let level =
            match query_param(query, "level") {
                None => 1,
                Some(l) => l.parse::<u8>().ok().filter(|l| *l <= 2).ok_or_else(|| {
                    ApiError::bad_request("level must be 0, 1 or 2", Some("level"))
                })?,
            };
        let mode = match query_param(query, "mode") {
            None => SleepMode::Abort,
            Some(m) => m
                .parse::<SleepMode>()
                .map_err(|e| ApiError::bad_request(e, Some("mode")))?,
        };
        self.ask(|reply| Command::Sleep { level, mode, reply })
            .await?;
        Ok(ok_json(&json!({"status": "sleeping", "level": level})))
    }

    async fn wake_up(&self, query: &str) -> Result<Res, ApiError> {
        let tags: Vec<String> = query_params(query, "tags");
        let echo = (!tags.is_empty()).then(|| tags.clone());
        let awake = self.ask(|reply| Command::WakeUp { tags, reply }).await?;
        let status = if awake { "awake" } else { "sleeping" };
        Ok(ok_json(&json!({"status": status, "tags": echo})))
    }

    fn kv_event_sources(&self) -> Res {
        let Some(ep) = &self.shared.kv_endpoints else {
            return ok_json(&json!({}));
        };
        let c = self.shared.config.kv_events.clone().unwrap_or_default();
        ok_json(&json!({ "0": {
            "enable_kv_cache_events": true, "publisher": "zmq", "endpoint": ep.endpoint,
            "replay_endpoint": ep.replay_endpoint, "buffer_steps": c.buffer_steps, "hwm": 100_000,
            "max_queue_size": c.max_queue_size, "topic": c.topic
        }}))
    }

    fn load_lora(&self, body: &[u8]) -> Result<Res, ApiError> {
        #[derive(Deserialize)]
        struct Load {
            lora_name: String,
            lora_path: String,
            #[serde(default)]
            load_inplace: bool,
        }
        let r: Load = parse(body)?;
        let invalid = |m: String| ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "InvalidUserInput",
            message: m,
            param: None,
        };
        if !self.shared.config.enable_lora {
            return Err(invalid(
                "LoRA is not enabled (start the engine with --enable-lora).".into(),
            ));
        }
        if self.shared.config.served_names().contains(&r.lora_name) {
            return Err(invalid(format!(
                "The lora adapter '{}' clashes with a base model name.",
                r.lora_name
            )));
        }
        let mut loras = self
            .shared
            .loras
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match loras.iter_mut().find(|l| l.name == r.lora_name) {
            Some(existing) if r.load_inplace => existing.path = r.lora_path,
            Some(_) => {
                return Err(invalid(format!(
                    "The lora adapter '{}' has already been loaded.",
                    r.lora_name
                )));
            }
            None => loras.push(crate::config::LoraModule {
                name: r.lora_name.clone(),
                path: r.lora_path,
            }),
        }
        Ok(text_response(format!(
            "Success: LoRA adapter '{}' added successfully.",
            r.lora_name
        )))
    }

    fn unload_lora(&self, body: &[u8]) -> Result<Res, ApiError> {
        #[derive(Deserialize)]
        struct Unload {
            lora_name: String,
        }
        let r: Unload = parse(body)?;
        let mut loras = self
            .shared
            .loras
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = loras.len();
        loras.retain(|l| l.name != r.lora_name);
        if loras.len() == before {
            return Err(ApiError::status(
                StatusCode::NOT_FOUND,
                format!("The lora adapter '{}' cannot be found.", r.lora_name),
            ));
        }
        Ok(text_response(format!(
            "Success: LoRA adapter '{}' removed successfully.",
            r.lora_name
        )))
    }

    fn set_faults(&self, body: &[u8]) -> Result<Res, ApiError> {
        let f: crate::config::FaultConfig = parse(body)?;
        f.validate().map_err(|e| ApiError::bad_request(e, None))?;
        *self
            .shared
            .faults
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = f.clone();
        Ok(ok_json(&f))
    }

    async fn state(&self, query: &str) -> Result<Res, ApiError> {
        let blocks = query_bool(query, "blocks")?;
        let state = self.ask(|reply| Command::State { blocks, reply }).await?;
        Ok(ok_json(&state))
    }

    fn down(&self, query: &str) -> Result<Res, ApiError> {
        let ms: u64 = query_param(query, "ms")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                ApiError::bad_request("`ms` (milliseconds to stay down) is required", Some("ms"))
            })?;
        self.listener
            .send(ListenerCmd::Down(Duration::from_millis(ms)))
            .map_err(|_| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "listener stopped"))?;
        Ok(ok_json(&json!({"down_ms": ms})))
    }
}

/// Checks the content type, then reads the whole body within [`MAX_BODY_BYTES`].
async fn read_json<B>(headers: &http::HeaderMap, body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "Bad Request",
            message: "Unsupported Media Type: Only 'application/json' is allowed".into(),
            param: None,
        });
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body exceeds {MAX_BODY_BYTES} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(
            format!("Failed to read request body: {e}"),
            None,
        )),
    }
}

fn ok_json<T: serde::Serialize + ?Sized>(v: &T) -> Res {
    json_response(StatusCode::OK, serde_json::to_vec(v).unwrap_or_default())
}

fn text_response(s: String) -> Res {
    let mut r = Response::new(SimBody::full(Bytes::from(s)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 16 random hex digits, like vLLM 0.33's `random_uuid()`.
fn random_hex() -> String {
    format!("{:016x}", fastrand::u64(..))
}

fn query_params(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
        .collect()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query_params(query, key).into_iter().next()
}

fn query_bool(query: &str, key: &str) -> Result<bool, ApiError> {
    match query_param(query, key).as_deref() {
        None | Some("false" | "False" | "0") => Ok(false),
        Some("true" | "True" | "1" | "") => Ok(true),
        Some(other) => Err(ApiError::validation(
            "bool_parsing",
            key,
            &format!("Input should be a valid boolean, unable to interpret input '{other}'"),
        )),
    }
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
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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
    fn query_parsing() {
        assert_eq!(
            query_param("level=2&mode=wait", "mode").as_deref(),
            Some("wait")
        );
        assert_eq!(
            query_params("tags=weights&tags=kv_cache", "tags"),
            vec!["weights", "kv_cache"]
        );
        assert!(query_bool("blocks=true", "blocks").unwrap());
        assert!(query_bool("blocks=maybe", "blocks").is_err());
    }
}
