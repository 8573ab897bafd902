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

fn start(args: &[&str]) -> (Guard, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmstack-sim"))
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
        start(&[
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
        ])
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
