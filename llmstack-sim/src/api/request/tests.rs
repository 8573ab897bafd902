//! Request parsing and vLLM's checks.

use super::*;
use crate::config::ContextOverflow;

fn fields(json: &str) -> SamplingFields {
    let mut r: CompletionRequest =
        serde_json::from_str(&json.replacen('{', r#"{"prompt":"x","#, 1)).unwrap();
    r.take_fields()
}

#[test]
fn parse_reports_paths() {
    let e = parse::<CompletionRequest>(br#"{"prompt":"x","max_tokens":"lots"}"#).unwrap_err();
    assert_eq!(e.status, 400);
    assert_eq!(e.param.as_deref(), Some("max_tokens"));
    let e = parse::<ChatRequest>(br#"{"model":"m"}"#).unwrap_err();
    assert!(e.message.contains("'missing'"), "{}", e.message);
    assert_eq!(e.param.as_deref(), Some("messages"));
    let e = parse::<ChatRequest>(br#"{"messages":[{"content":"x"}]}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages.0.role"));
    let e = parse::<ChatRequest>(b"{not json").unwrap_err();
    assert!(e.message.contains("json_invalid"), "{}", e.message);
    let e = parse::<ChatRequest>(br#"{"messages":[{"role":"user","content":7}]}"#).unwrap_err();
    assert_eq!(e.kind, "Bad Request");
    assert_eq!(e.param.as_deref(), Some("messages.0.content"));
}

#[test]
fn length_rules() {
    let mut c = EngineConfig::new("m");
    c.max_model_len = Some(100);
    let f = fields(r#"{"max_tokens": 50}"#);
    let ok = check_sampling(
        &f,
        ("max_tokens", f.max_tokens),
        Some(16),
        &[vec![1; 80]],
        &c,
    )
    .unwrap();
    assert_eq!(ok.max_tokens, vec![20], "clamped to the room left");
    let e = check_sampling(&f, ("max_tokens", Some(101)), None, &[vec![1; 10]], &c).unwrap_err();
    assert!(
        e.message
            .starts_with("max_tokens=101 cannot be greater than max_model_len=100")
    );
    let e = check_sampling(&f, ("max_tokens", None), None, &[vec![1; 101]], &c).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("input_tokens"));
    let e = check_sampling(&f, ("max_tokens", None), None, &[vec![1; 100]], &c).unwrap_err();
    assert!(e.message.contains("at least 1"));
    let e = check_sampling(&f, ("max_tokens", None), None, &[vec![]], &c).unwrap_err();
    assert_eq!(e.message, "The decoder prompt cannot be empty");
    c.context_overflow = ContextOverflow::Reject;
    assert!(check_sampling(&f, ("max_tokens", Some(50)), None, &[vec![1; 80]], &c).is_err());
    let f = fields(r#"{"stream_options": {"include_usage": true}}"#);
    assert_eq!(
        check_sampling(&f, ("max_tokens", None), None, &[vec![1]], &c)
            .unwrap_err()
            .param
            .as_deref(),
        Some("stream_options")
    );
    let f = fields(r#"{"max_tokens": 0}"#);
    assert!(check_sampling(&f, ("max_tokens", f.max_tokens), None, &[vec![1]], &c).is_err());
}

#[test]
fn chat_content_parts_render_like_strings() {
    let a: ChatRequest =
        serde_json::from_str(r#"{"messages":[{"role":"user","content":"hi there"}]}"#).unwrap();
    let b: ChatRequest = serde_json::from_str(
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi there"}]}]}"#,
    )
    .unwrap();
    assert_eq!(
        render_messages(&a.messages, true),
        render_messages(&b.messages, true)
    );
}

#[test]
fn models_resolve_to_base_or_adapter() {
    let mut c = EngineConfig::new("base");
    c.served_model_names = vec!["alias".into(), "other".into()];
    let loras = vec![LoraModule {
        name: "sql".into(),
        path: "/a/sql".into(),
    }];
    assert_eq!(
        resolve_model(Some("other"), &c, &loras).unwrap().name,
        "alias"
    );
    assert_eq!(resolve_model(None, &c, &loras).unwrap().name, "alias");
    let l = resolve_model(Some("sql"), &c, &loras).unwrap();
    assert_eq!(
        (l.name.as_str(), l.lora.unwrap().path.as_ref()),
        ("sql", "/a/sql")
    );
    let e = resolve_model(Some("nope"), &c, &loras).unwrap_err();
    assert_eq!(e.status, 404);
    assert!(e.message.contains("alias, other, sql"));
}
