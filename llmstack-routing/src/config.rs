//! Routing settings.

use std::collections::BTreeMap;

use llmstack_core::SettingError;

use crate::{
    KvAware, LeastLoaded, PolicyExt, PowerOfTwo, PrefixAware, PrefixConfig, Random, RoundRobin,
    Router, SessionAffinity,
};

/// The routing policy, spelled as production-stack's `--routing-logic`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum RoutingLogic {
    /// [`RoundRobin`].
    #[default]
    Roundrobin,
    /// [`Random`].
    Random,
    /// [`LeastLoaded`] (production-stack's `loadaware` is accepted for it).
    Leastloaded,
    /// [`PowerOfTwo`].
    PowerOfTwo,
    /// [`SessionAffinity`] on the session key, [`LeastLoaded`] without one.
    Session,
    /// [`PrefixAware`] over the router's prefix index.
    Prefixaware,
    /// [`KvAware`]: the same cost over the engines' KV events (the server attaches the
    /// KV index and the tokenizers; without them it routes as `prefixaware`).
    Kvaware,
}

/// Settings of the routing crate, validated with [`RoutingConfig::validate`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// The policy.
    pub routing_logic: RoutingLogic,
    /// Header (or top-level body field) carrying the session id.
    pub session_key: Option<String>,
    /// Model aliases: requests naming the key are sent, rewritten, for the value.
    pub static_aliases: BTreeMap<String, String>,
    /// `prefixaware`: matches shorter than this many prompt characters count as none
    /// (production-stack's `--prefix-min-match-length`).
    pub prefix_min_match_length: usize,
    /// `prefixaware`: bytes of canonical prompt per indexed chunk.
    pub prefix_chunk_size: usize,
    /// `prefixaware`: tokens of prefix cache assumed per engine until its scrape
    /// reports its KV capacity.
    pub prefix_capacity_tokens: u64,
    /// Peer router replicas to share in-flight load with (`host:port`, a DNS name may
    /// stand for several); empty: no sharing. See [`InFlight::share`](crate::InFlight::share).
    pub peers: Vec<String>,
    /// The UDP port load sharing listens on.
    pub peer_port: u16,
}

/// The default UDP port of load sharing between replicas (`--peer-port`).
pub const DEFAULT_PEER_PORT: u16 = 7072;

// === impl RoutingLogic ===

/// production-stack policies this build does not have yet.
const NOT_YET: &[&str] = &[
    "disaggregated_prefill",
    "disaggregated_prefill_orchestrated",
];

impl RoutingLogic {
    /// Parses a `--routing-logic` value.
    pub fn parse(s: &str) -> Result<Self, SettingError> {
        let invalid = |message| SettingError {
            setting: "routing-logic",
            message,
        };
        match s {
            "roundrobin" => Ok(Self::Roundrobin),
            "random" => Ok(Self::Random),
            "leastloaded" | "loadaware" => Ok(Self::Leastloaded),
            "power_of_two" => Ok(Self::PowerOfTwo),
            "session" => Ok(Self::Session),
            "prefixaware" => Ok(Self::Prefixaware),
            "kvaware" => Ok(Self::Kvaware),
            other if NOT_YET.contains(&other) => Err(invalid(format!(
                "--routing-logic {other} is not available yet in this build; use prefixaware"
            ))),
            other => Err(invalid(format!(
                "unknown --routing-logic `{other}` (expected one of {})",
                Self::ALL.map(Self::as_str).join(", ")
            ))),
        }
    }

    /// Every policy.
    pub const ALL: [Self; 7] = [
        Self::Roundrobin,
        Self::Random,
        Self::Leastloaded,
        Self::PowerOfTwo,
        Self::Session,
        Self::Prefixaware,
        Self::Kvaware,
    ];

    /// The name, as `--routing-logic` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Roundrobin => "roundrobin",
            Self::Random => "random",
            Self::Leastloaded => "leastloaded",
            Self::PowerOfTwo => "power_of_two",
            Self::Session => "session",
            Self::Prefixaware => "prefixaware",
            Self::Kvaware => "kvaware",
        }
    }
}

impl TryFrom<String> for RoutingLogic {
    type Error = SettingError;

    fn try_from(s: String) -> Result<Self, SettingError> {
        Self::parse(&s)
    }
}

impl From<RoutingLogic> for &'static str {
    fn from(logic: RoutingLogic) -> Self {
        logic.as_str()
    }
}

// === impl RoutingConfig ===

impl Default for RoutingConfig {
    fn default() -> Self {
        let prefix = PrefixConfig::default();
        Self {
            routing_logic: RoutingLogic::default(),
            session_key: None,
            static_aliases: BTreeMap::new(),
            prefix_min_match_length: 0,
            prefix_chunk_size: prefix.chunk_bytes,
            prefix_capacity_tokens: prefix.default_capacity_tokens,
            peers: Vec::new(),
            peer_port: DEFAULT_PEER_PORT,
        }
    }
}

impl RoutingConfig {
    /// Checks the settings: session keys must be valid header names, chunk sizes
    /// positive, and an alias may not point to itself or to another alias. (`session`
    /// works without `--session-key`: it then keys on the OpenAI `user` field.)
    pub fn validate(&self) -> Result<(), SettingError> {
        let invalid = |setting, message| Err(SettingError { setting, message });
        if self.prefix_chunk_size == 0 || self.prefix_chunk_size > 65_536 {
            return invalid(
                "prefix-chunk-size",
                format!(
                    "--prefix-chunk-size {} must be between 1 and 65536 bytes",
                    self.prefix_chunk_size
                ),
            );
        }
        if !self.peers.is_empty()
            && matches!(
                self.routing_logic,
                RoutingLogic::Roundrobin | RoutingLogic::Random
            )
        {
            return invalid(
                "peers",
                format!(
                    "--peers shares in-flight load between replicas, which --routing-logic {} does not read; use leastloaded, power_of_two, session, prefixaware or kvaware, or drop --peers",
                    self.routing_logic.as_str()
                ),
            );
        }
        if let Some(bad) = self.peers.iter().find(|p| {
            p.rsplit_once(':')
                .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
        }) {
            return invalid("peers", format!("--peers entry `{bad}` is not host:port"));
        }
        if self.prefix_capacity_tokens == 0 {
            return invalid(
                "prefix-capacity-tokens",
                "--prefix-capacity-tokens must be positive".into(),
            );
        }
        if let Some(key) = &self.session_key {
            let valid = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                return invalid(
                    "session-key",
                    format!("--session-key `{key}` is not a valid header name"),
                );
            }
        }
        for (alias, model) in &self.static_aliases {
            if alias.is_empty() || model.is_empty() {
                return invalid(
                    "static-aliases",
                    format!("--static-aliases entry `{alias}:{model}` is empty on one side"),
                );
            }
            if alias == model || self.static_aliases.contains_key(model) {
                return invalid(
                    "static-aliases",
                    format!(
                        "--static-aliases `{alias}:{model}`: an alias must name a real model, not an alias"
                    ),
                );
            }
        }
        Ok(())
    }

    /// The prefix index settings.
    pub fn prefix_config(&self) -> PrefixConfig {
        PrefixConfig {
            chunk_bytes: self.prefix_chunk_size,
            default_capacity_tokens: self.prefix_capacity_tokens,
            ..PrefixConfig::default()
        }
    }

    /// The configured router: the policy, with a prefix index for `prefixaware`.
    pub fn router(&self) -> Router {
        match self.routing_logic {
            RoutingLogic::Roundrobin => Router::new(RoundRobin::default()),
            RoutingLogic::Random => Router::new(Random),
            RoutingLogic::Leastloaded => Router::new(LeastLoaded),
            RoutingLogic::PowerOfTwo => Router::new(PowerOfTwo),
            RoutingLogic::Session => Router::new(SessionAffinity::default().or(LeastLoaded)),
            RoutingLogic::Prefixaware | RoutingLogic::Kvaware => {
                let config = self.prefix_config();
                let min = (self.prefix_min_match_length as f64 / config.bytes_per_token).ceil();
                let policy = PrefixAware {
                    min_match_tokens: min as u32,
                    ..PrefixAware::default()
                };
                let router = if self.routing_logic == RoutingLogic::Kvaware {
                    Router::new(KvAware(policy))
                } else {
                    Router::new(policy)
                };
                router.with_prefix_index(config)
            }
        }
    }
}
