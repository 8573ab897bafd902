//! Routing settings.

use std::collections::BTreeMap;

use crate::{Policy, RoundRobin, SessionAffinity};

/// The routing policy, spelled as production-stack's `--routing-logic`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum RoutingLogic {
    /// [`RoundRobin`].
    #[default]
    Roundrobin,
    /// [`SessionAffinity`] on `--session-key`, round-robin without a key.
    Session,
}

/// Settings of the routing crate, validated with [`RoutingConfig::validate`].
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// The policy.
    pub routing_logic: RoutingLogic,
    /// Header (or top-level body field) carrying the session id.
    pub session_key: Option<String>,
    /// Model aliases: requests naming the key are sent, rewritten, for the value.
    pub static_aliases: BTreeMap<String, String>,
}

// === impl RoutingLogic ===

/// production-stack policies this build does not have yet.
const NOT_YET: &[&str] = &[
    "prefixaware",
    "kvaware",
    "loadaware",
    "disaggregated_prefill",
    "disaggregated_prefill_orchestrated",
];

impl RoutingLogic {
    /// Parses a `--routing-logic` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "roundrobin" => Ok(Self::Roundrobin),
            "session" => Ok(Self::Session),
            other if NOT_YET.contains(&other) => Err(format!(
                "--routing-logic {other} is not available yet in this build; use roundrobin"
            )),
            other => Err(format!(
                "unknown --routing-logic `{other}` (expected roundrobin)"
            )),
        }
    }

    /// The name, as `--routing-logic` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Roundrobin => "roundrobin",
            Self::Session => "session",
        }
    }
}

impl TryFrom<String> for RoutingLogic {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<RoutingLogic> for &'static str {
    fn from(logic: RoutingLogic) -> Self {
        logic.as_str()
    }
}

// === impl RoutingConfig ===

impl RoutingConfig {
    /// Checks the settings: `session` needs a session key; session keys
    /// must be valid header names, and an alias may not point to itself or to another
    /// alias.
    pub fn validate(&self) -> Result<(), String> {
        if self.routing_logic == RoutingLogic::Session && self.session_key.is_none() {
            return Err("--routing-logic session needs --session-key (e.g. x-user-id)".into());
        }
        if let Some(key) = &self.session_key {
            let valid = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                return Err(format!("--session-key `{key}` is not a valid header name"));
            }
        }
        for (alias, model) in &self.static_aliases {
            if alias.is_empty() || model.is_empty() {
                return Err(format!(
                    "--static-aliases entry `{alias}:{model}` is empty on one side"
                ));
            }
            if alias == model || self.static_aliases.contains_key(model) {
                return Err(format!(
                    "--static-aliases `{alias}:{model}`: an alias must name a real model, not an alias"
                ));
            }
        }
        Ok(())
    }

    /// The configured policy.
    pub fn policy(&self) -> Box<dyn Policy> {
        match self.routing_logic {
            RoutingLogic::Roundrobin => Box::new(RoundRobin::default()),
            RoutingLogic::Session => Box::new(SessionAffinity::<RoundRobin>::default()),
        }
    }
}
