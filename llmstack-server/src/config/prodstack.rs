//! production-stack's forms of a settings file (its `--dynamic-config-yaml/json`),
//! turned into this router's: `null` values are unset, `static_models` given as a
//! mapping (`{model: {static_backends: [...], static_model_type: chat}}`) becomes the
//! parallel `static_backends`/`static_models` lists, `static_aliases` given as a mapping
//! becomes `alias:model` pairs, and the production-stack flags without a setting here
//! are accepted or refused as on the command line (`crate::compat`).

use serde_yaml_ng::{Mapping, Value};

/// Rewrites `map` in place; the notes to log, or why the file cannot be used.
pub(super) fn normalize(map: &mut Mapping) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    map.retain(|_, v| !v.is_null());
    // production-stack's second name of the probe timeout.
    if let Some(v) = map.remove("static_backend_health_check_timeout_seconds") {
        map.entry("backend_health_check_timeout_seconds".into())
            .or_insert(v);
    }
    let keys: Vec<String> = map
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    for key in keys {
        let value = &map[key.as_str()];
        if let Some(note) = crate::compat::file_key(&key, value)? {
            notes.push(note);
            map.remove(key.as_str());
        }
    }
    if let Some(Value::Mapping(models)) = map.get("static_models").cloned() {
        if map.contains_key("static_backends") {
            return Err(
                "static_models as a mapping lists each model's backends: drop static_backends"
                    .into(),
            );
        }
        let (mut backends, mut names) = (Vec::new(), Vec::new());
        for (model, spec) in &models {
            let model = model
                .as_str()
                .ok_or("static_models: model names must be strings")?;
            let Some(list) = spec.get("static_backends") else {
                return Err(format!("static_models.{model}: no static_backends"));
            };
            for url in
                strings(list).map_err(|e| format!("static_models.{model}.static_backends: {e}"))?
            {
                backends.push(Value::from(url));
                names.push(Value::from(model));
            }
            for key in spec.as_mapping().into_iter().flat_map(Mapping::keys) {
                match key.as_str() {
                    Some("static_backends") => {}
                    // Used by production-stack's health checks only (see compat).
                    Some("static_model_type") => {}
                    other => {
                        return Err(format!(
                            "static_models.{model}: unknown key {}",
                            other.unwrap_or("(not a string)")
                        ));
                    }
                }
            }
        }
        map.insert("static_backends".into(), Value::Sequence(backends));
        map.insert("static_models".into(), Value::Sequence(names));
    }
    if let Some(Value::Mapping(aliases)) = map.get("static_aliases").cloned() {
        let mut pairs = Vec::new();
        for (alias, model) in &aliases {
            match (alias.as_str(), model.as_str()) {
                (Some(a), Some(m)) => pairs.push(Value::from(format!("{a}:{m}"))),
                _ => return Err("static_aliases: aliases and models must be strings".into()),
            }
        }
        map.insert("static_aliases".into(), Value::Sequence(pairs));
    }
    Ok(notes)
}

/// A list of strings given as a sequence or one comma-separated string.
fn strings(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
        Value::Sequence(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "expected strings".to_owned())
            })
            .collect(),
        _ => Err("expected a list or a comma-separated string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(yaml: &str) -> Result<(Mapping, Vec<String>), String> {
        let mut map: Mapping = serde_yaml_ng::from_str(yaml).unwrap();
        normalize(&mut map).map(|notes| (map, notes))
    }

    #[test]
    fn production_stack_forms_become_flat_lists() {
        let (map, notes) = normalized(
            "routing_logic: roundrobin\nsession_key: null\nstatic_models:\n  llama:\n    static_backends: [http://a:8000, http://b:8000]\n    static_model_type: chat\n  qwen:\n    static_backends: http://c:8000\nstatic_aliases:\n  gpt-4: llama\nstatic_model_types: chat,chat,chat\nstatic_backend_health_checks: true\n",
        )
        .unwrap();
        let expected: Mapping = serde_yaml_ng::from_str(
            "routing_logic: roundrobin\nstatic_models: [llama, llama, qwen]\nstatic_aliases: ['gpt-4:llama']\nstatic_backends: [http://a:8000, http://b:8000, http://c:8000]\n",
        )
        .unwrap();
        assert_eq!(map, expected);
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn refused_flags_and_bad_forms_are_errors() {
        assert!(
            normalized("callbacks: my.module.cb\n")
                .unwrap_err()
                .contains("callbacks")
        );
        assert!(normalized("enable_batch_api: true\n").is_err());
        assert!(normalized("enable_batch_api: false\n").is_ok());
        assert!(
            normalized("static_models: {m: {}}\n")
                .unwrap_err()
                .contains("static_backends")
        );
        assert!(
            normalized(
                "static_backends: [http://a]\nstatic_models: {m: {static_backends: [http://b]}}\n"
            )
            .is_err()
        );
        assert!(normalized("static_models: {m: {static_backends: [http://b], x: 1}}\n").is_err());
        assert!(normalized("request_rewriter: fancy\n").is_err());
    }
}
