//! The learned format against minijinja: which templates it learns, which it refuses,
//! and random conversations rendered both ways.

use proptest::prelude::*;

use super::super::{ChatTemplate, plain_messages, plain_values};
use super::MessageFormat;
use crate::TokenizerConfig;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");

/// Llama 3 Instruct's template: BOS joined to the first message's text.
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// A default system message when the first is not one (as Qwen 2.5's template adds).
const DEFAULT_SYSTEM: &str = "{% if messages[0]['role'] != 'system' %}<system>You are helpful.</system>{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}";

/// ChatML as Qwen 2 writes it, without a default system message.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn template(source: &str) -> ChatTemplate {
    let config = TokenizerConfig {
        bos_token: Some("<|begin_of_text|>".into()),
        eos_token: Some("<|eot_id|>".into()),
        ..TokenizerConfig::default()
    };
    ChatTemplate::new(source, &config).unwrap()
}

fn fixture() -> ChatTemplate {
    let config = TokenizerConfig::from_dir(std::path::Path::new(FIXTURE)).unwrap();
    ChatTemplate::new(config.chat_template.as_deref().unwrap(), &config).unwrap()
}

/// `messages` through minijinja and through the learned format.
fn both_ways(t: &ChatTemplate, messages: &str, generation: bool) -> (String, String) {
    let list = plain_messages(messages).unwrap();
    let slow = t
        .render_plain(plain_values(&list, t.format), generation)
        .unwrap();
    let fast = t
        .by_message
        .as_ref()
        .unwrap()
        .render(&list, generation)
        .unwrap();
    (slow, fast)
}

#[test]
fn learns_llama3_and_chatml_templates() {
    let fixture = fixture();
    let format = fixture.by_message.as_ref().expect("the fixture's template");
    assert!(format.trim);
    assert_eq!(
        format.generation,
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(
        format.roles[0].first,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    );
    assert_eq!(
        format.roles[0].later,
        "<|start_header_id|>system<|end_header_id|>\n\n"
    );

    let llama3 = template(LLAMA3);
    let format = llama3
        .by_message
        .as_ref()
        .expect("Llama 3 Instruct's template");
    assert_eq!(format.roles[1].after, "<|eot_id|>");
    assert_eq!(
        format.roles[1].first,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    );

    let chatml = template(CHATML);
    let format = chatml.by_message.as_ref().expect("ChatML");
    assert!(!format.trim);
    assert_eq!(format.generation, "<|im_start|>assistant\n");

    let default_system = template(DEFAULT_SYSTEM);
    let format = default_system
        .by_message
        .as_ref()
        .expect("a default system message");
    assert_eq!(
        format.roles[1].first,
        "<system>You are helpful.</system><user>"
    );
    assert_eq!(format.roles[0].first, "<system>");

    let chat = r#"[{"role":"system","content":" Be brief. "},{"role":"user","content":"Hi\n"},
        {"role":"assistant","content":"Hello!"},{"role":"user","content":"caf\u00e9"}]"#;
    for t in [&fixture, &llama3, &chatml, &default_system] {
        for generation in [false, true] {
            let (slow, fast) = both_ways(t, chat, generation);
            assert_eq!(fast, slow);
            // And through the public entry point.
            assert_eq!(t.render(chat, generation).unwrap(), slow);
        }
    }
}

#[test]
fn refuses_templates_that_are_not_message_by_message() {
    let refused = [
        // Reads the clock.
        "{{ strftime_now('%d %b %Y') }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
        // Refuses conversations that do not alternate (Mistral-like).
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}",
        // Drops an assistant's reasoning (Qwen 3-like).
        "{% for m in messages %}{% if m['role'] == 'assistant' and '</think>' in m['content'] %}{{ m['content'].split('</think>')[-1] }}{% else %}{{ m['content'] }}{% endif %}|{% endfor %}",
        // The last message differs.
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if loop.last %}<end>{% endif %}{% endfor %}",
        // A system message folded into the first user message (Gemma-like).
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\n\n' %}{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}{% for m in msgs %}<{{ m['role'] }}>{% if loop.first %}{{ sys }}{% endif %}{{ m['content'] }}{% endfor %}",
        // Depends on the conversation's length.
        "{% for m in messages %}{{ messages|length }}{{ m['content'] }}{% endfor %}",
        // Content transformed other than by trimming.
        "{% for m in messages %}{{ m['content']|upper }}{% endfor %}",
    ];
    for source in refused {
        assert!(template(source).by_message.is_none(), "{source}");
    }
}

#[test]
fn leaves_what_it_cannot_render_to_the_template() {
    let fixture = fixture();
    let format = fixture.by_message.as_ref().unwrap();
    // Null content and empty conversations go to minijinja.
    for messages in [r#"[{"role":"assistant","content":null}]"#, "[]"] {
        let list = plain_messages(messages).unwrap();
        assert_eq!(format.render(&list, true), None, "{messages}");
        assert!(fixture.render(messages, true).is_ok());
    }
    // MessageFormat::learn takes the template's word for every probe it renders.
    assert_eq!(MessageFormat::learn("", |_, _| None), None);
}

fn content() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just(" ".to_owned()),
            Just("\n".to_owned()),
            Just("\t".to_owned()),
            Just("\u{a0}".to_owned()),
            Just("<|eot_id|>".to_owned()),
            Just("{{ x }}".to_owned()),
            Just("</think>".to_owned()),
            "[a-zA-Z0-9 .,!?'\"]{1,12}",
            any::<char>().prop_map(String::from),
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random plain conversations render the same both ways.
    #[test]
    fn random_conversations_render_as_the_template_does(
        conv in proptest::collection::vec((0..3usize, content()), 1..10),
        generation in any::<bool>(),
    ) {
        let messages: Vec<serde_json::Value> = conv
            .iter()
            .map(|(role, content)| {
                let role = ["system", "user", "assistant"][*role];
                serde_json::json!({"role": role, "content": content})
            })
            .collect();
        let messages = serde_json::to_string(&messages).unwrap();
        for t in [&*FIXTURE_TEMPLATE, &*CHATML_TEMPLATE] {
            let (slow, fast) = both_ways(t, &messages, generation);
            prop_assert_eq!(fast, slow);
        }
    }
}

static FIXTURE_TEMPLATE: std::sync::LazyLock<ChatTemplate> = std::sync::LazyLock::new(fixture);
static CHATML_TEMPLATE: std::sync::LazyLock<ChatTemplate> =
    std::sync::LazyLock::new(|| template(CHATML));
