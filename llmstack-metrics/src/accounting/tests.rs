use std::collections::HashMap;

use super::*;

#[test]
fn content_bearing_chunks() {
    assert!(!has_content(
        br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
    ));
    assert!(has_content(
        br#"data: {"choices":[{"delta":{"content":" Hi"}}]}"#
    ));
    assert!(has_content(
        br#"data: {"choices":[{"text":"x","index":0}]}"#
    ));
    assert!(!has_content(
        br#"data: {"choices":[{"text":"","finish_reason":"length"}]}"#
    ));
    assert!(!has_content(
        br#"data: {"choices":[{"delta":{"reasoning_content":""}}]}"#
    ));
    assert!(has_content(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"a\"}"));
    assert!(!has_content(b"data: [DONE]"));
}

/// The accounting of one streamed body, checked with a local debugging recorder (no
/// global state): one request, one TTFT, ITL per later content event, usage tokens.
#[test]
fn a_streamed_body_is_accounted_once_when_dropped() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let reported = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&reported);
    metrics::with_local_recorder(&recorder, || {
        let meters = Meters::default();
        let tally = Tally::new("/v1/chat/completions", Instant::now(), SeenModel::default());
        let mut body = tally.body(&meters, &EndpointId::new("e1"), Some("m"), "2xx", true);
        body.on_usage = Some(OnUsage::new(move |u| seen.lock().unwrap().push(u)));
        body.on_data(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        );
        body.on_data(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n");
        body.on_data(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
        drop(body);
        count_decision(&RouteFacts {
            model: None,
            policy: "roundrobin",
            reason: "picked",
            engine: None,
            predicted_cached_tokens: None,
        });
    });
    let values: HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
        .collect();
    assert_eq!(values[names::REQUESTS], DebugValue::Counter(1));
    assert_eq!(values[names::PROMPT_TOKENS], DebugValue::Counter(7));
    assert_eq!(values[names::COMPLETION_TOKENS], DebugValue::Counter(2));
    assert_eq!(values[names::ROUTING_DECISIONS], DebugValue::Counter(1));
    let DebugValue::Histogram(ttft) = &values[names::TTFT] else {
        panic!()
    };
    assert_eq!(ttft.len(), 1, "the role-only chunk is not the first token");
    let DebugValue::Histogram(itl) = &values[names::ITL] else {
        panic!()
    };
    assert_eq!(itl.len(), 1);
    let usage = Usage {
        prompt_tokens: Some(7),
        completion_tokens: Some(2),
        content_events: 2,
    };
    assert_eq!(
        *reported.lock().unwrap(),
        [usage],
        "reported once, when dropped"
    );
}

#[test]
fn usage_numbers() {
    let chunk = br#"{"usage":{"prompt_tokens":17,"total_tokens":33,"completion_tokens":16,"prompt_tokens_details":null}}"#;
    assert_eq!(number_after(chunk, &FINDERS.prompt), Some(17));
    assert_eq!(number_after(chunk, &FINDERS.completion), Some(16));
    assert_eq!(
        number_after(b"\"prompt_tokens\":null", &FINDERS.prompt),
        None
    );
    assert_eq!(
        number_after(
            b"\"prompt_tokens\": 99999999999999999999999",
            &FINDERS.prompt
        ),
        None
    );
}
