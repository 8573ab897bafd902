//! Engine administration and introspection: health, load, metrics, models, sleep and
//! wake-up, prefix-cache reset, LoRA adapters, and the simulator's own `/sim/*` routes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use super::{
    EngineApp, ListenerCmd, Res, ok_json, query_bool, query_param, query_params, random_hex,
    text_response,
};
use crate::api::body::SimBody;
use crate::api::error::ApiError;
use crate::api::request::parse;
use crate::engine::{Command, SleepMode, unix_now};

impl EngineApp {
    /// `GET /health`, `/ping`: 200, or 503 under the unhealthy fault.
    pub(super) fn health(&self) -> Res {
        let status = if self.shared.faults().unhealthy {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut r = Response::new(SimBody::empty());
        *r.status_mut() = status;
        r
    }

    /// `GET /load`: in-flight requests with `--enable-server-load-tracking`, else 0.
    pub(super) fn load(&self) -> Res {
        let load = if self.shared.config.enable_server_load_tracking {
            self.shared.in_flight.load(Ordering::Acquire)
        } else {
            0
        };
        ok_json(&json!({"server_load": load}))
    }

    /// `GET /metrics`.
    pub(super) fn metrics(&self) -> Res {
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

    /// `GET /v1/models`: one card per served name, then one per LoRA adapter.
    pub(super) fn models(&self) -> Res {
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

    /// `POST /reset_prefix_cache`.
    pub(super) async fn reset_prefix_cache(&self, query: &str) -> Result<Res, ApiError> {
        let reset_running = query_bool(query, "reset_running_requests")?;
        let ok = self
            .ask(|reply| Command::ResetPrefixCache {
                reset_running,
                reply,
            })
            .await?;
        Ok(ok_json(&json!({"success": ok})))
    }

    /// `POST /sleep?level=&mode=`.
    pub(super) async fn sleep(&self, query: &str) -> Result<Res, ApiError> {
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

    /// `POST /wake_up?tags=`.
    pub(super) async fn wake_up(&self, query: &str) -> Result<Res, ApiError> {
        let tags: Vec<String> = query_params(query, "tags");
        let echo = (!tags.is_empty()).then(|| tags.clone());
        let awake = self.ask(|reply| Command::WakeUp { tags, reply }).await?;
        let status = if awake { "awake" } else { "sleeping" };
        Ok(ok_json(&json!({"status": status, "tags": echo})))
    }

    /// `GET /kv_event_sources`.
    pub(super) fn kv_event_sources(&self) -> Res {
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

    /// `POST /v1/load_lora_adapter`.
    pub(super) fn load_lora(&self, body: &[u8]) -> Result<Res, ApiError> {
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

    /// `POST /v1/unload_lora_adapter`.
    pub(super) fn unload_lora(&self, body: &[u8]) -> Result<Res, ApiError> {
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

    /// `POST /sim/faults`.
    pub(super) fn set_faults(&self, body: &[u8]) -> Result<Res, ApiError> {
        let f: crate::config::FaultConfig = parse(body)?;
        f.validate().map_err(|e| ApiError::bad_request(e, None))?;
        *self
            .shared
            .faults
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = f.clone();
        Ok(ok_json(&f))
    }

    /// `GET /sim/state?blocks=`.
    pub(super) async fn state(&self, query: &str) -> Result<Res, ApiError> {
        let blocks = query_bool(query, "blocks")?;
        let state = self.ask(|reply| Command::State { blocks, reply }).await?;
        Ok(ok_json(&state))
    }

    /// `POST /sim/down?ms=`.
    pub(super) fn down(&self, query: &str) -> Result<Res, ApiError> {
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
