//! A request's `messages` as vLLM hands them to the chat template
//! (`vllm/entrypoints/chat_utils.py`: `parse_chat_messages`, `_postprocess_messages`,
//! and the developer-role fallback of `safe_apply_chat_template`).
//!
//! Only text is rendered: a message with an image, audio or any other non-text part is an
//! error (its prompt has placeholders this crate cannot expand).

use serde_json::{Map, Value as Json};

use crate::ContentFormat;
use crate::TokenizerError;

type Result<T> = std::result::Result<T, TokenizerError>;

/// The conversation the template sees, from the raw JSON of `messages`.
pub(crate) fn prepare(
    messages: &str,
    format: ContentFormat,
    supports_developer: bool,
) -> Result<Vec<Json>> {
    let parsed: Json = serde_json::from_str(messages)
        .map_err(|e| TokenizerError::render(format!("messages: {e}")))?;
    let Json::Array(list) = parsed else {
        return Err(TokenizerError::render("messages is not a list"));
    };
    let mut conv = list
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            message(m, format).map_err(|e| TokenizerError::render(format!("messages[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    for m in &mut conv {
        postprocess_tool_calls(m)?;
    }
    if !supports_developer && conv.iter().any(|m| role(m) == "developer") {
        for m in &mut conv {
            if role(m) == "developer"
                && let Json::Object(map) = m
            {
                map.insert("role".into(), "system".into());
                map.shift_remove("tools");
            }
        }
        conv = consolidate_system(conv);
    }
    Ok(conv)
}

fn role(m: &Json) -> &str {
    m.get("role").and_then(Json::as_str).unwrap_or_default()
}

fn message(m: Json, format: ContentFormat) -> std::result::Result<Json, String> {
    let Json::Object(mut src) = m else {
        return Err("not an object".into());
    };
    let role = match src.get("role") {
        Some(Json::String(r)) => r.clone(),
        _ => return Err("`role` must be a string".into()),
    };
    let texts = match src.shift_remove("content") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::String(s)) => vec![s],
        Some(Json::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                if let Some(text) = part_text(part)? {
                    texts.push(text);
                }
            }
            texts
        }
        Some(_) => return Err("`content` must be a string, a list of parts or null".into()),
    };
    let mut out = Map::new();
    out.insert("role".into(), Json::String(role.clone()));
    let content = match format {
        ContentFormat::String => Json::String(texts.join("\n")),
        ContentFormat::OpenAi => Json::Array(
            texts
                .into_iter()
                .map(|t| {
                    let mut part = Map::new();
                    part.insert("type".into(), "text".into());
                    part.insert("text".into(), Json::String(t));
                    Json::Object(part)
                })
                .collect(),
        ),
    };
    out.insert("content".into(), content);
    match role.as_str() {
        "assistant" => {
            if let Some(calls) = src.get("tool_calls").filter(|c| !c.is_null()) {
                out.insert("tool_calls".into(), calls.clone());
            }
            if let Some(reasoning) = src.get("reasoning").filter(|r| !r.is_null()) {
                out.insert("reasoning".into(), reasoning.clone());
                out.insert("reasoning_content".into(), reasoning.clone());
            }
        }
        "tool" => {
            if let Some(id) = src.get("tool_call_id") {
                out.insert("tool_call_id".into(), id.clone());
            }
            // Tool results given as text parts become one string, whatever the format.
            if let Some(Json::Array(parts)) = out.get("content") {
                let joined = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Json::as_str))
                    .collect::<Vec<_>>()
                    .join("\n");
                out.insert("content".into(), Json::String(joined));
            }
        }
        _ => {}
    }
    for key in ["name", "task"] {
        if let Some(Json::String(v)) = src.get(key) {
            out.insert(key.into(), Json::String(v.clone()));
        }
    }
    if role == "developer" {
        out.insert(
            "tools".into(),
            src.get("tools").cloned().unwrap_or(Json::Null),
        );
    }
    Ok(Json::Object(out))
}

/// The text of one content part; `None` for a text part without text (vLLM skips it).
fn part_text(part: Json) -> std::result::Result<Option<String>, String> {
    let Json::Object(mut part) = part else {
        return match part {
            Json::String(s) => Ok(Some(s)),
            _ => Err("a content part must be an object or a string".into()),
        };
    };
    let kind = part
        .get("type")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned();
    let field = match kind.as_str() {
        "text" | "input_text" | "output_text" => "text",
        "refusal" => "refusal",
        "thinking" => "thinking",
        "" => return Err("a content part without `type`".into()),
        other => return Err(format!("content part of type {other:?} is not text")),
    };
    match part.shift_remove(field) {
        Some(Json::String(s)) => Ok(Some(s)),
        None | Some(Json::Null) if field != "thinking" => Ok(None),
        _ => Err(format!("`{field}` of a {kind:?} part must be a string")),
    }
}

/// Tool-call arguments are parsed into objects (invalid JSON becomes `{}`); an empty
/// `tool_calls` is dropped.
fn postprocess_tool_calls(m: &mut Json) -> Result<()> {
    if role(m) != "assistant" {
        return Ok(());
    }
    let Json::Object(map) = m else { return Ok(()) };
    let Some(Json::Array(calls)) = map.get_mut("tool_calls") else {
        return Ok(());
    };
    if calls.is_empty() {
        map.shift_remove("tool_calls");
        return Ok(());
    }
    for call in calls {
        let Some(Json::Object(function)) = call.get_mut("function") else {
            return Err(TokenizerError::render("a tool call without `function`"));
        };
        let parsed = match function.get("arguments") {
            Some(Json::String(s)) => match serde_json::from_str::<Json>(s) {
                Ok(v) => v,
                Err(_) => Json::Object(Map::new()),
            },
            Some(v @ (Json::Object(_) | Json::Array(_))) => v.clone(),
            _ => Json::Object(Map::new()),
        };
        function.insert("arguments".into(), parsed);
    }
    Ok(())
}

/// All system messages merged (blank line between) into one first message, when one is
/// not first or there are several: vLLM's `_consolidate_system_messages`.
fn consolidate_system(conv: Vec<Json>) -> Vec<Json> {
    let mut contents = Vec::new();
    let mut rest = Vec::with_capacity(conv.len());
    let mut needed = false;
    for (i, m) in conv.iter().enumerate() {
        if role(m) == "system" {
            if i > 0 || !contents.is_empty() {
                needed = true;
            }
            let text = match m.get("content") {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Json::as_str).or_else(|| p.as_str()))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            };
            if !text.is_empty() {
                contents.push(text);
            }
        } else {
            rest.push(m.clone());
        }
    }
    if !needed {
        return conv;
    }
    let mut merged = Map::new();
    merged.insert("role".into(), "system".into());
    merged.insert("content".into(), Json::String(contents.join("\n\n")));
    std::iter::once(Json::Object(merged)).chain(rest).collect()
}
