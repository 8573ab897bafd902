//! The audio routes: transcriptions and translations (`multipart/form-data` in, text or
//! SSE out) and speech synthesis (JSON in, a WAV of silence out). They answer at once,
//! without the scheduler, but count in flight and honour the request faults.
//!
//! A transcript is deterministic: about 2.5 of the simulated model's words per second of
//! audio, drawn from a hash of the file. The duration comes from a WAV header when the
//! file has one, else from its size at 16 kHz, 16-bit mono.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use super::{EngineApp, Res, ok_json, random_hex, text_response};
use crate::api::body::{EventStream, SimBody};
use crate::api::error::ApiError;
use crate::api::multipart::{self, Part};
use crate::api::request::{parse, resolve_model};
use crate::engine::unix_now;
use crate::scheduler::splitmix;
use crate::tokenizer::OUTPUT_WORDS;

/// Words per second of audio in a transcript.
const WORDS_PER_SECOND: f64 = 2.5;
/// Largest transcript, in words (Whisper's 448-token decoder window, roughly).
const MAX_WORDS: usize = 400;
/// Sample rate of synthesized speech (OpenAI's PCM rate).
const SPEECH_RATE: u32 = 24_000;
/// Characters of input per second of synthesized speech at speed 1.
const CHARS_PER_SECOND: f64 = 15.0;
/// Longest synthesized answer.
const MAX_SPEECH_SECONDS: f64 = 120.0;

/// Which speech-to-text route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AudioTask {
    /// `/v1/audio/transcriptions`.
    Transcribe,
    /// `/v1/audio/translations` (to English).
    Translate,
}

impl AudioTask {
    fn id_prefix(self) -> &'static str {
        match self {
            Self::Transcribe => "trsc-",
            Self::Translate => "trsl-",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Self::Transcribe => "transcription.chunk",
            Self::Translate => "translation.chunk",
        }
    }
}

/// `POST /v1/audio/speech`.
#[derive(Debug, Deserialize)]
struct SpeechRequest {
    model: Option<String>,
    input: String,
    response_format: Option<String>,
    speed: Option<f64>,
    // Typed but without effect.
    #[allow(dead_code)]
    voice: Option<String>,
    #[allow(dead_code)]
    instructions: Option<String>,
}

/// The form of a speech-to-text request.
#[derive(Debug)]
struct AudioForm {
    file: Bytes,
    model: Option<String>,
    response_format: String,
    stream: bool,
    include_usage: bool,
}

/// A form boolean as pydantic reads one.
fn form_bool(part: &Part) -> Result<bool, ApiError> {
    let text = part
        .text()
        .map_err(|e| ApiError::bad_request(e.0, Some(&part.name)))?;
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        other => Err(ApiError::validation(
            "bool_parsing",
            &part.name,
            &format!("Input should be a valid boolean, unable to interpret input '{other}'"),
        )),
    }
}

/// Reads the form: the `file` part and the text fields the simulator uses.
fn read_form(headers: &HeaderMap, body: &Bytes) -> Result<AudioForm, ApiError> {
    let missing_file = || ApiError::validation("missing", "file", "Field required");
    // Anything but a form parses as an empty form, which lacks the file.
    let Some(boundary) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart::boundary)
    else {
        return Err(missing_file());
    };
    let parts = multipart::parse(body, &boundary).map_err(|e| {
        tracing::debug!(error = %e, "bad multipart body");
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "Bad Request",
            message: "There was an error parsing the body".into(),
            param: None,
        }
    })?;
    let mut form = AudioForm {
        file: Bytes::new(),
        model: None,
        response_format: "json".into(),
        stream: false,
        include_usage: false,
    };
    let mut has_file = false;
    for p in &parts {
        let text = || {
            p.text()
                .map(str::to_owned)
                .map_err(|e| ApiError::bad_request(e.0, Some(&p.name)))
        };
        match p.name.as_str() {
            "file" => {
                has_file = true;
                form.file = p.data.clone();
            }
            "model" => form.model = Some(text()?),
            "response_format" => form.response_format = text()?,
            "stream" => form.stream = form_bool(p)?,
            "stream_include_usage" => form.include_usage = form_bool(p)?,
            _ => {}
        }
    }
    if !has_file {
        return Err(missing_file());
    }
    Ok(form)
}

/// Seconds of audio in `file`: from a WAV header's byte rate, else 16 kHz 16-bit mono.
fn audio_seconds(file: &[u8]) -> f64 {
    let byte_rate = (file.len() >= 44 && &file[..4] == b"RIFF" && &file[8..12] == b"WAVE")
        .then(|| u32::from_le_bytes([file[28], file[29], file[30], file[31]]))
        .filter(|&r| r > 0)
        .unwrap_or(32_000);
    file.len().saturating_sub(44) as f64 / f64::from(byte_rate)
}

/// The transcript's words (each with its leading space).
fn transcript(file: &[u8], seconds: f64) -> Vec<&'static str> {
    let seed = file
        .iter()
        .fold(0x243f_6a88_85a3_08d3u64, |h, &b| splitmix(h ^ u64::from(b)));
    let count = ((seconds * WORDS_PER_SECOND).ceil() as usize).clamp(1, MAX_WORDS);
    (0..count as u64)
        .map(|k| OUTPUT_WORDS[(splitmix(seed ^ k) % OUTPUT_WORDS.len() as u64) as usize])
        .collect()
}

/// A WAV file (16-bit mono PCM) of `samples` zero samples.
pub(crate) fn silent_wav(samples: u32, rate: u32) -> Vec<u8> {
    let data = samples.saturating_mul(2);
    let mut w = Vec::with_capacity(44 + data as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes()); // byte rate
    w.extend_from_slice(&2u16.to_le_bytes()); // block align
    w.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    w.resize(44 + data as usize, 0);
    w
}

impl EngineApp {
    /// `POST /v1/audio/transcriptions` and `/v1/audio/translations`.
    pub(super) async fn speech_to_text(
        &self,
        task: AudioTask,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Res, ApiError> {
        let form = read_form(headers, body)?;
        let model = resolve_model(
            form.model.as_deref(),
            &self.shared.config,
            &self.shared.loras(),
        )?;
        if !matches!(form.response_format.as_str(), "json" | "text") {
            return Err(ApiError::bad_request(
                "Currently only support response_format `text` or `json`",
                Some("response_format"),
            ));
        }
        let (faults, load) = self.admit_immediate().await?;
        let seconds = audio_seconds(&form.file);
        let words = transcript(&form.file, seconds);
        let text: String = words.concat().trim_start().to_owned();
        if !form.stream {
            return Ok(match (form.response_format.as_str(), task) {
                ("text", _) => text_response(text),
                (_, AudioTask::Transcribe) => ok_json(&json!({
                    "text": text, "usage": {"type": "duration", "seconds": seconds.ceil() as u64}
                })),
                (_, AudioTask::Translate) => ok_json(&json!({"text": text})),
            });
        }
        let id = format!("{}{}", task.id_prefix(), random_hex());
        let created = unix_now() as u64;
        let chunk = |choices: serde_json::Value| {
            let mut ev = String::from("data: ");
            let body = json!({"id": id, "object": task.chunk_object(), "created": created,
                              "model": model.name, "choices": choices});
            let _ = write!(ev, "{body}\n\n");
            Bytes::from(ev)
        };
        let last = words.len() - 1;
        let mut events: Vec<Bytes> = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let finish = (i == last).then_some("stop");
                chunk(json!([{"delta": {"content": w}, "finish_reason": finish, "stop_reason": null}]))
            })
            .collect();
        if form.include_usage {
            // The decoder's prompt: Whisper's 1500 encoder positions per 30 s window.
            let prompt = ((seconds / 30.0).ceil().max(1.0) as usize) * 1500;
            let mut usage = String::from("data: ");
            let body = json!({"id": id, "object": task.chunk_object(), "created": created,
                              "model": model.name, "choices": [],
                              "usage": {"prompt_tokens": prompt, "total_tokens": prompt + words.len(),
                                        "completion_tokens": words.len()}});
            let _ = write!(usage, "{body}\n\n");
            events.push(Bytes::from(usage));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let stream = EventStream::new(events, faults.close_after_chunks, load);
        let mut r = Response::new(SimBody::Events(Box::new(stream)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        Ok(r)
    }

    /// `POST /v1/audio/speech`: a WAV (or raw PCM) of silence as long as reading `input`
    /// at `speed` would take.
    pub(super) async fn speech(&self, body: &[u8]) -> Result<Res, ApiError> {
        let r: SpeechRequest = parse(body)?;
        resolve_model(
            r.model.as_deref(),
            &self.shared.config,
            &self.shared.loras(),
        )?;
        let wav = match r.response_format.as_deref() {
            None | Some("wav") => true,
            Some("pcm") => false,
            Some(other) => {
                return Err(ApiError::bad_request(
                    format!(
                        "response_format {other:?} is not supported by the simulator (wav, pcm)"
                    ),
                    Some("response_format"),
                ));
            }
        };
        let speed = r.speed.unwrap_or(1.0);
        if !(0.25..=4.0).contains(&speed) {
            return Err(ApiError::validation(
                "less_than_equal",
                "speed",
                "Input should be between 0.25 and 4.0",
            ));
        }
        let _load = self.admit_immediate().await?;
        let seconds = (r.input.chars().count() as f64 / CHARS_PER_SECOND / speed)
            .clamp(0.1, MAX_SPEECH_SECONDS);
        let samples = (seconds * f64::from(SPEECH_RATE)) as u32;
        let mut audio = silent_wav(samples, SPEECH_RATE);
        if !wav {
            audio.drain(..44);
        }
        let mut resp = Response::new(SimBody::full(Bytes::from(audio)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(if wav { "audio/wav" } else { "audio/pcm" }),
        );
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_header_is_valid_and_drives_duration() {
        let w = silent_wav(16_000, 16_000);
        assert_eq!(w.len(), 44 + 32_000);
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes([w[4], w[5], w[6], w[7]]) as usize,
            w.len() - 8
        );
        assert!((audio_seconds(&w) - 1.0).abs() < 1e-9);
        // Not a WAV: 16 kHz, 16-bit mono.
        assert!((audio_seconds(&vec![1u8; 64_044]) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn transcripts_are_deterministic_and_scale_with_duration() {
        let a = transcript(b"abc", 4.0);
        assert_eq!(a.len(), 10);
        assert_eq!(a, transcript(b"abc", 4.0));
        assert_ne!(a, transcript(b"abd", 4.0));
        assert_eq!(transcript(b"", 0.0).len(), 1);
        assert_eq!(transcript(b"x", 1e6).len(), MAX_WORDS);
    }
}
