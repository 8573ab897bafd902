use super::*;

fn parse(body: &str) -> Result<RouteRequest<'_>, Error> {
    RouteRequest::from_json(body.as_bytes(), Some("x-user-id"))
}

#[test]
fn reads_model_stream_and_session_without_copying() {
    let body = r#"{"stream": true, "x-user-id": "u1", "n": {"deep": [1, 2]}, "model": "llama"}"#;
    let req = parse(body).unwrap();
    assert_eq!(req.model(), Some("llama"));
    assert!(matches!(req.model, Some(Cow::Borrowed(_))));
    assert!(req.stream());
    assert_eq!(req.session_key(), Some("u1"));
    assert_eq!(req.kind(), None);
    assert!(req.prompt_view().is_none());
}

#[test]
fn numeric_session_key_and_null_stream() {
    let req = parse(r#"{"model":"m","x-user-id":42,"stream":null}"#).unwrap();
    assert_eq!(req.session_key(), Some("42"));
    assert!(!req.stream());
}

#[test]
fn escaped_model_is_unescaped() {
    let req = parse(r#"{"model":"a\"b\u00e9"}"#).unwrap();
    assert_eq!(req.model(), Some("a\"bé"));
}

#[test]
fn bad_bodies_are_400_with_a_reason() {
    for (body, needle, param) in [
        ("", "empty", None),
        ("[1,2]", "must be a JSON object", None),
        ("{nope", "not valid", None),
        ("not json", "not valid JSON", None),
        (r#"{"model": 3}"#, "`model`", Some("model")),
        (
            r#"{"model": "m", "stream": "yes"}"#,
            "`stream`",
            Some("stream"),
        ),
        (r#"{"model": "m"} trailing"#, "not valid", None),
    ] {
        let err = parse(body).unwrap_err();
        assert_eq!(err.status(), 400, "{body}");
        assert!(err.to_string().contains(needle), "{body}: {err}");
        assert_eq!(err.body().error.param, param, "{body}");
    }
}

#[test]
fn missing_model_is_not_an_error_here() {
    let req = parse(r#"{"prompt":"x"}"#).unwrap();
    assert_eq!(req.model(), None);
}

#[test]
fn completion_prompt_shapes() {
    let cases = [
        (r#""hello""#, Prompt::Text("hello".into())),
        (r#"["a","b"]"#, Prompt::Texts(vec!["a".into(), "b".into()])),
        ("[1,2,3]", Prompt::Tokens(vec![1, 2, 3])),
        ("[[1],[2,3]]", Prompt::TokenLists(vec![vec![1], vec![2, 3]])),
        ("[]", Prompt::Texts(vec![])),
    ];
    for (prompt, want) in cases {
        let body = format!(r#"{{"model":"m","prompt":{prompt}}}"#);
        let req = parse(&body).unwrap();
        assert_eq!(req.kind(), Some(RequestKind::Completion));
        assert_eq!(
            req.prompt_view(),
            Some(PromptView::Completion(want)),
            "{prompt}"
        );
    }
}

#[test]
fn chat_messages_with_string_and_part_contents() {
    let body = r#"{"model":"m","messages":[
        {"role":"system","content":"be brief"},
        {"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"x"}}]},
        {"role":"assistant","content":null,"tool_calls":[]}
    ]}"#;
    let req = parse(body).unwrap();
    let Some(PromptView::Chat(msgs)) = req.prompt_view() else {
        panic!("chat view")
    };
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0].content, Content::Text("be brief".into()));
    assert!(matches!(&msgs[0].content, Content::Text(Cow::Borrowed(_))));
    let Content::Parts(parts) = &msgs[1].content else {
        panic!("parts")
    };
    assert_eq!(parts[0].text.as_deref(), Some("look"));
    assert_eq!(parts[1].kind, "image_url");
    assert_eq!(parts[1].text, None);
    assert_eq!(msgs[2].content, Content::None);
}

#[test]
fn embeddings_input() {
    let req = parse(r#"{"model":"m","input":["a","b"]}"#).unwrap();
    assert_eq!(
        req.prompt_view(),
        Some(PromptView::Input(Prompt::Texts(vec![
            "a".into(),
            "b".into()
        ])))
    );
    // Responses API items are objects: no view, no error.
    let req = parse(r#"{"model":"m","input":[{"role":"user","content":"x"}]}"#).unwrap();
    assert_eq!(req.prompt_view(), None);
}

#[test]
fn alias_rewrite_splices_only_the_model_value() {
    let body = r#"{ "temperature": 0.5, "model" : "alias", "prompt": "model: alias"}"#;
    let req = parse(body).unwrap();
    let out = req
        .body_with_model(body.as_bytes(), "real/\"model\"")
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{ "temperature": 0.5, "model" : "real/\"model\"", "prompt": "model: alias"}"#
    );
    let req = parse(r#"{"prompt":"x"}"#).unwrap();
    assert!(req.body_with_model(b"{}", "m").is_none());
}
