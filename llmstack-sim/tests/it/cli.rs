//! The `llmstack-sim` binary: many engines per process, each independent.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::*;

/// Kills the child we started when the test ends, pass or fail.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary; `VLLM_API_KEY` comes from `api_key` only, never from the caller's
/// environment.
fn start(args: &[&str], api_key: Option<&str>) -> (Guard, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmstack-sim"));
    cmd.env_remove("VLLM_API_KEY");
    if let Some(k) = api_key {
        cmd.env("VLLM_API_KEY", k);
    }
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    (
        guard,
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}")),
    )
}

#[tokio::test]
async fn four_engines_in_one_process_are_independent() {
    let (_guard, info) = tokio::task::spawn_blocking(|| {
        start(
            &[
                "--engines",
                "4",
                "--port",
                "0",
                "--profile",
                "instant",
                "--model",
                "a",
                "--model",
                "b",
            ],
            None,
        )
    })
    .await
    .unwrap();
    let engines = info["engines"].as_array().unwrap();
    assert_eq!(engines.len(), 4);
    let urls: Vec<String> = engines
        .iter()
        .map(|e| e["url"].as_str().unwrap().to_owned())
        .collect();
    let models: Vec<&str> = engines
        .iter()
        .map(|e| e["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["a", "b", "a", "b"]);
    let c = client();
    for _ in 0..3 {
        let r = post(
            &c,
            &format!("{}/v1/completions", urls[0]),
            &json!({"prompt": "x", "max_tokens": 2}),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let count = |t: &str| sample(t, "vllm:e2e_request_latency_seconds_count", &[]).unwrap();
    assert_eq!(
        count(get(&c, &format!("{}/metrics", urls[0])).await.text()),
        3.0
    );
    for u in &urls[1..] {
        assert_eq!(
            count(get(&c, &format!("{u}/metrics")).await.text()),
            0.0,
            "engines do not share state"
        );
    }
    let m = get(&c, &format!("{}/v1/models", urls[1])).await.json();
    assert_eq!(m["data"][0]["id"], "b");
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_llmstack-sim"))
        .args(["--profile", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown profile"));
}

#[tokio::test]
async fn vllm_api_key_env_turns_auth_on() {
    let (_guard, info) = tokio::task::spawn_blocking(|| {
        start(&["--port", "0", "--profile", "instant"], Some("sk-env"))
    })
    .await
    .unwrap();
    let url = info["engines"][0]["url"].as_str().unwrap().to_owned();
    let c = client();
    assert_eq!(get(&c, &format!("{url}/v1/models")).await.status, 401);
    let r = send(
        &c,
        http::Method::GET,
        &format!("{url}/v1/models"),
        &[("authorization", "Bearer sk-env")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(get(&c, &format!("{url}/health")).await.status, 200);
}

#[test]
fn help_hides_the_api_key_env_value() {
    let out = Command::new(env!("CARGO_BIN_EXE_llmstack-sim"))
        .arg("--help")
        .env("VLLM_API_KEY", "sk-do-not-print")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--api-key") && help.contains("VLLM_API_KEY"));
    assert!(!help.contains("sk-do-not-print"));
}
