//! The `llmstack-server` binary: production-stack flags, bad flags, SIGTERM draining,
//! the demo.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use llmstack_sim::SimEngine;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_llmstack-server");

/// Starts the binary and returns it with the address from its "listening" log line.
fn start(args: &[&str]) -> (Running, String) {
    start_with_env(args, &[])
}

/// A router process that is killed if the test ends (or panics) while it runs, so a
/// failing test never leaves one behind.
pub(crate) struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("the router exited").unwrap();
        if let Some(rest) = line.split("router listening addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        if let Some(rest) = line.split("router on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
            && json["fields"]["message"] == "router listening"
        {
            break json["fields"]["addr"].as_str().unwrap().to_owned();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (Running(child), format!("http://{addr}"))
}

async fn engines(n: usize) -> Vec<SimEngine> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            SimEngine::start(h100("m"), "127.0.0.1:0".parse().unwrap(), 0)
                .await
                .unwrap(),
        );
    }
    v
}

#[tokio::test]
async fn sigterm_drains_50_open_streams() {
    let engines = engines(2).await;
    let backends = engines
        .iter()
        .map(SimEngine::base_url)
        .collect::<Vec<_>>()
        .join(",");
    let (mut child, url) = start(&[
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--service-discovery",
        "static",
        "--static-backends",
        &backends,
        "--static-models",
        "m,m",
        "--routing-logic",
        "roundrobin",
        "--engine-stats-interval",
        "1",
        "--log-level",
        "info",
        "--k8s-namespace",
        "ignored",
    ]);
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&c, &format!("{url}/ready")).await.status == 200
        })
        .await
    );
    let streams: Vec<_> = (0..50)
        .map(|_| spawn_stream(&c, format!("{url}/v1/completions"), streamed("m", 40)))
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&c, &format!("{url}/health")).await.json()["in_flight"] == 50
        })
        .await
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for st in streams {
        let st = st.await.unwrap();
        assert!(!st.broken, "{}", st.raw);
        assert_eq!(st.events.len(), 41);
        assert_eq!(st.events.last().unwrap().data, "[DONE]");
    }
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn invalid_flags_exit_with_a_clear_message() {
    for (args, needle) in [
        (
            &["--static-backends", "ftp://x"][..],
            "must start with http://",
        ),
        (
            &[
                "--static-backends",
                "http://a:1",
                "--routing-logic",
                "disaggregated_prefill",
            ],
            "disaggregated_prefill is not available yet",
        ),
        (&["--port", "x"], "invalid value 'x'"),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn demo_serves_two_models() {
    let (mut child, url) = start(&["demo", "--port", "0", "--speedup", "20"]);
    let c = client();
    let models = eventually(Duration::from_secs(5), || async {
        get(&c, &format!("{url}/v1/models")).await.json()["data"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    assert!(models);
    let a = post(
        &c,
        &format!("{url}/v1/chat/completions"),
        &chat("Qwen/Qwen2.5-7B-Instruct", 8),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        get(&c, &format!("{url}/engines"))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn settings_from_environment_variables() {
    let engines = engines(1).await;
    let url0 = engines[0].base_url();
    let (mut child, url) = start_with_env(
        &["--port", "0"],
        &[
            ("LLMSTACK_HOST", "127.0.0.1"),
            ("LLMSTACK_STATIC_BACKENDS", url0.as_str()),
            ("LLMSTACK_STATIC_ALIASES", "alias:m"),
            ("LLMSTACK_ROUTING_LOGIC", "roundrobin"),
        ],
    );
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&c, &format!("{url}/ready")).await.status == 200
        })
        .await
    );
    let a = post(&c, &format!("{url}/v1/chat/completions"), &chat("alias", 1)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["model"], "m");
    child.kill().unwrap();
    child.wait().unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A client that stops reading holds the engine back: the router buffers no more than
/// its socket buffers and one batch, whatever the engine has to send.
#[tokio::test]
async fn a_stalled_client_does_not_make_the_router_buffer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let engine = SimEngine::start(instant("m"), "127.0.0.1:0".parse().unwrap(), 0)
        .await
        .unwrap();
    let (mut child, url) = start(&[
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--static-backends",
        &engine.base_url(),
        "--static-models",
        "m",
    ]);
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&c, &format!("{url}/ready")).await.status == 200
        })
        .await
    );
    let before = rss_kib(child.id());
    // ~25 MB of SSE events, produced by the engine as fast as it can.
    let body = serde_json::json!({"model": "m", "prompt": "x", "max_tokens": 100000,
        "ignore_eos": true, "stream": true})
    .to_string();
    let mut sock = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 512];
    let n = sock.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // Stall while the engine finishes generating everything.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled = rss_kib(child.id());
    assert!(
        stalled < before + 8 * 1024,
        "router RSS grew from {before} KiB to {stalled} KiB while the client stalled"
    );
    // Then the whole stream still arrives, in order, to the end.
    let mut rest = Vec::new();
    sock.read_to_end(&mut rest).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("data: [DONE]"),
        "stream incomplete: {} bytes",
        rest.len()
    );
    assert!(rest.len() > 10_000_000, "{} bytes", rest.len());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `--log-format json`: one JSON object per line; at debug, one line per request with
/// its request id (and no prompt text).
#[tokio::test]
async fn json_logs_with_a_line_per_request_at_debug() {
    let engines = engines(1).await;
    let child = Command::new(BIN)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--static-backends",
            &engines[0].base_url(),
            "--static-models",
            "m",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next_json = |pred: &dyn Fn(&serde_json::Value) -> bool| loop {
        let line = rx.recv_timeout(Duration::from_secs(5)).expect("a log line");
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if pred(&json) {
            return json;
        }
    };
    let listening = next_json(&|j| j["fields"]["message"] == "router listening");
    let url = format!("http://{}", listening["fields"]["addr"].as_str().unwrap());
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&c, &format!("{url}/ready")).await.status == 200
        })
        .await
    );
    let a = send(
        &c,
        http::Method::POST,
        &format!("{url}/v1/chat/completions"),
        &[("content-type", "application/json"), ("x-request-id", "log-me-42")],
        &serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "secret prompt text"}], "max_tokens": 1}).to_string(),
    )
    .await;
    assert_eq!(a.status, 200);
    let line =
        next_json(&|j| j["fields"]["message"] == "answered" && j.to_string().contains("log-me-42"));
    assert_eq!(line["level"], "DEBUG");
    assert_eq!(line["fields"]["status"], 200);
    assert!(line.to_string().contains("log-me-42"), "{line}");
    assert!(!line.to_string().contains("secret prompt text"));
    child.kill().unwrap();
    child.wait().unwrap();
}
