//! Speech-to-text over `multipart/form-data`: the model read from the form, response
//! formats, streaming, and the errors of a bad form.

use bytes::Bytes;
use http::Method;
use serde_json::Value;

use crate::support::*;

const BOUNDARY: &str = "simboundary7MA4YWxk";

/// A 16 kHz 16-bit mono WAV of silence.
fn wav(seconds: u32) -> Vec<u8> {
    let data = seconds * 32_000;
    let mut w = b"RIFF".to_vec();
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&[1, 0, 1, 0]);
    w.extend_from_slice(&16_000u32.to_le_bytes());
    w.extend_from_slice(&32_000u32.to_le_bytes());
    w.extend_from_slice(&[2, 0, 16, 0]);
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    w.resize(44 + data as usize, 0);
    w
}

/// A form with text `fields` and, when given, the `file` part.
fn form(fields: &[(&str, &str)], file: Option<&[u8]>) -> Bytes {
    let mut b = Vec::new();
    for (k, v) in fields {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some(f) = file {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n")
                .as_bytes(),
        );
        b.extend_from_slice(f);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Bytes::from(b)
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

async fn upload(c: &HttpClient, url: &str, body: Bytes) -> Answer {
    send_bytes(
        c,
        Method::POST,
        url,
        &[("content-type", &content_type())],
        body,
    )
    .await
}

#[tokio::test]
async fn transcription_reads_the_form() {
    let e = engine(instant("whisper")).await;
    let c = client();
    let url = format!("{}/v1/audio/transcriptions", e.base_url());
    let audio = wav(4);
    let a = upload(
        &c,
        &url,
        form(&[("model", "whisper"), ("language", "en")], Some(&audio)),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.headers["content-type"], "application/json");
    let r = a.json();
    let text = r["text"].as_str().unwrap();
    assert_eq!(text.split(' ').count(), 10, "2.5 words per second: {text}");
    assert_eq!(
        r["usage"],
        serde_json::json!({"type": "duration", "seconds": 4})
    );
    // Same audio, same words; plain text on request.
    let t = upload(
        &c,
        &url,
        form(
            &[("model", "whisper"), ("response_format", "text")],
            Some(&audio),
        ),
    )
    .await;
    assert_eq!(t.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(t.text(), text);
    // Translations: text only.
    let tr = upload(
        &c,
        &format!("{}/v1/audio/translations", e.base_url()),
        form(&[("model", "whisper")], Some(&audio)),
    )
    .await
    .json();
    assert_eq!(tr, serde_json::json!({"text": text}));
    // No model in the form: the served model, as in vLLM.
    assert_eq!(upload(&c, &url, form(&[], Some(&audio))).await.status, 200);
}

#[tokio::test]
async fn transcription_errors() {
    let e = engine(instant("whisper")).await;
    let c = client();
    let url = format!("{}/v1/audio/transcriptions", e.base_url());
    let audio = wav(1);
    let unknown = upload(&c, &url, form(&[("model", "llama")], Some(&audio))).await;
    assert_eq!(unknown.status, 404);
    let err: Value = unknown.json();
    assert_eq!(err["error"]["type"], "NotFoundError");
    assert_eq!(err["error"]["param"], "model");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Valid aliases: whisper.")
    );
    let no_file = upload(&c, &url, form(&[("model", "whisper")], None)).await;
    assert_eq!(no_file.status, 400);
    assert_eq!(no_file.json()["error"]["param"], "file");
    let garbage = upload(
        &c,
        &url,
        Bytes::from_static(b"--simboundary7MA4YWxk\r\nbroken"),
    )
    .await;
    assert_eq!(garbage.status, 400);
    assert_eq!(garbage.json()["error"]["type"], "Bad Request");
    let json = send(
        &c,
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        r#"{"model": "whisper"}"#,
    )
    .await;
    assert_eq!(json.status, 400);
    let fmt = upload(&c, &url, form(&[("response_format", "srt")], Some(&audio))).await;
    assert_eq!(fmt.status, 400);
    let flag = upload(&c, &url, form(&[("stream", "perhaps")], Some(&audio))).await;
    assert_eq!(flag.status, 400);
    assert_eq!(flag.json()["error"]["param"], "stream");
}

#[tokio::test]
async fn transcription_streams_chunks() {
    let e = engine(instant("whisper")).await;
    let c = client();
    let s = stream_bytes(
        &c,
        &format!("{}/v1/audio/transcriptions", e.base_url()),
        &[("content-type", &content_type())],
        form(
            &[
                ("model", "whisper"),
                ("stream", "true"),
                ("stream_include_usage", "true"),
            ],
            Some(&wav(2)),
        ),
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(!s.broken);
    let ev = &s.events;
    // 5 words, usage, [DONE]
    assert_eq!(ev.len(), 7, "{}", s.raw);
    for (i, e) in ev[..5].iter().enumerate() {
        let d = e.json();
        assert_eq!(d["object"], "transcription.chunk");
        assert_eq!(d["model"], "whisper");
        assert!(d["id"].as_str().unwrap().starts_with("trsc-"));
        assert!(d["choices"][0]["delta"]["content"].is_string());
        let finish = if i == 4 {
            Value::from("stop")
        } else {
            Value::Null
        };
        assert_eq!(d["choices"][0]["finish_reason"], finish);
    }
    assert_eq!(ev[5].json()["usage"]["completion_tokens"], 5);
    assert_eq!(ev[6].data, "[DONE]");
}
