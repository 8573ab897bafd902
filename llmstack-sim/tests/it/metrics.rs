//! `/metrics`: vLLM's names, labels and consistency rules, parsed back from HTTP.

use llmstack_sim::{LoraModule, MetricsCompat};
use serde_json::json;

use crate::support::*;

/// Every sample line is `name{labels} value` with a parseable value, every family has
/// HELP and TYPE before its samples, and labels are sorted by name.
fn check_exposition(text: &str) {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
        let (name, labels) = series.split_once('{').unwrap();
        let family = ["_bucket", "_count", "_sum"].iter().fold(name, |n, s| {
            if typed.contains(n) {
                n
            } else {
                n.strip_suffix(s).unwrap_or(n)
            }
        });
        assert!(typed.contains(family), "sample before its TYPE: {line}");
        let keys: Vec<&str> = labels
            .trim_end_matches('}')
            .split("\",")
            .map(|kv| kv.split('=').next().unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "labels sorted: {line}");
    }
}

#[tokio::test]
async fn v1_series_are_consistent() {
    let mut cfg = instant("llama");
    cfg.lora_modules = vec![LoraModule {
        name: "sql".into(),
        path: "/a".into(),
    }];
    let e = engine(cfg).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    for i in 0..5 {
        post(&c, &url, &json!({"prompt": "shared prefix ".repeat(10) + &i.to_string(), "max_tokens": 4, "ignore_eos": true})).await;
    }
    post(
        &c,
        &url,
        &json!({"model": "sql", "prompt": "x", "max_tokens": 2}),
    )
    .await;
    let m = get(&c, &format!("{}/metrics", e.base_url())).await;
    let t = m.text();
    check_exposition(t);
    let v = |name: &str| {
        sample(t, name, &[("engine", "0"), ("model_name", "llama")])
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let success: f64 = ["stop", "length", "abort", "error", "repetition"]
        .iter()
        .map(|r| sample(t, "vllm:request_success_total", &[("finished_reason", r)]).unwrap())
        .sum();
    assert_eq!(success, 6.0);
    assert_eq!(v("vllm:e2e_request_latency_seconds_count"), success);
    assert!(v("vllm:time_to_first_token_seconds_count") >= success);
    assert_eq!(v("vllm:generation_tokens_total"), 4.0 * 5.0 + 2.0);
    assert_eq!(
        v("vllm:inter_token_latency_seconds_count"),
        v("vllm:generation_tokens_total") - 6.0
    );
    assert!(
        v("vllm:prefix_cache_hits_total") > 0.0,
        "shared prefix reused"
    );
    assert!(v("vllm:prefix_cache_hits_total") <= v("vllm:prefix_cache_queries_total"));
    assert_eq!(
        v("vllm:prompt_tokens_total"),
        v("vllm:request_prompt_tokens_sum")
    );
    assert_eq!(
        sample(
            t,
            "vllm:prompt_tokens_by_source_total",
            &[("source", "local_cache_hit")]
        )
        .unwrap(),
        v("vllm:prompt_tokens_cached_total")
    );
    assert_eq!(v("vllm:num_requests_running"), 0.0);
    assert_eq!(v("vllm:kv_cache_usage_perc"), 0.0);
    assert!(t.contains("# TYPE vllm:time_to_first_token_seconds histogram"));
    assert!(t.contains(
        r#"vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="llama"}"#
    ));
    assert!(t.contains(
        r#"vllm:time_to_first_token_seconds_bucket{engine="0",le="2560.0",model_name="llama"}"#
    ));
    assert!(t.contains(r#"le="+Inf""#));
    assert!(t.contains("# TYPE vllm:prefix_cache_queries_created gauge"));
    // cache_config_info: block_size and num_gpu_blocks by label name.
    let info = t
        .lines()
        .find(|l| l.starts_with("vllm:cache_config_info{"))
        .unwrap();
    assert!(
        info.contains(r#"block_size="16""#) && info.contains(r#"num_gpu_blocks="26000""#),
        "{info}"
    );
    assert!(info.ends_with(" 1.0"));
    // lora_requests_info: label combination with the latest timestamp.
    let lora: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("vllm:lora_requests_info{"))
        .collect();
    assert!(!lora.is_empty());
    assert!(
        lora[0].starts_with(r#"vllm:lora_requests_info{max_lora="1",running_lora_adapters=""#),
        "{}",
        lora[0]
    );
    assert!(
        t.contains(r#"engine_sleep_state{engine="0",model_name="llama",sleep_state="awake"} 1.0"#)
    );
}

#[tokio::test]
async fn v0_compat_names() {
    let mut cfg = instant("llama");
    cfg.metrics_compat = MetricsCompat::V0;
    let e = engine(cfg).await;
    let c = client();
    post(
        &c,
        &format!("{}/v1/completions", e.base_url()),
        &json!({"prompt": "x", "max_tokens": 3}),
    )
    .await;
    let t = get(&c, &format!("{}/metrics", e.base_url())).await.body;
    let t = std::str::from_utf8(&t).unwrap();
    check_exposition(t);
    for name in [
        "vllm:gpu_cache_usage_perc",
        "vllm:gpu_prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_hits_total",
        "vllm:time_per_output_token_seconds_count",
    ] {
        assert!(
            sample(t, name, &[("model_name", "llama")]).is_some(),
            "{name}"
        );
    }
    for name in [
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:inter_token_latency_seconds_count",
    ] {
        assert!(
            sample(t, name, &[]).is_none(),
            "{name} must be absent in v0 mode"
        );
    }
    assert!(!t.contains("engine=\""), "V0 has no engine label");
}

#[tokio::test]
async fn waiting_and_usage_gauges_move_under_load() {
    let mut cfg = llmstack_sim::EngineConfig::new("m");
    cfg.max_num_seqs = Some(2);
    let e = engine(cfg).await;
    let c = client();
    let url = format!("{}/v1/completions", e.base_url());
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let body = json!({"prompt": "a ".repeat(200), "max_tokens": 40, "ignore_eos": true});
        tasks.push(spawn_post(&c, url.clone(), body));
    }
    let m = format!("{}/metrics", e.base_url());
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            let t = get(&c, &m).await;
            sample(t.text(), "vllm:num_requests_running", &[]) == Some(2.0)
                && sample(t.text(), "vllm:num_requests_waiting", &[]) == Some(3.0)
                && sample(t.text(), "vllm:kv_cache_usage_perc", &[]).is_some_and(|u| u > 0.0)
        })
        .await
    );
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
}
