//! Routing's settings as given: flags, environment variables or file keys, with
//! production-stack's names.

use std::collections::BTreeMap;

use llmstack_core::SettingErrors;
use llmstack_core::settings::{comma_list, trimmed};

use crate::{RoutingConfig, RoutingLogic};

/// Routing settings as given, every one optional so that flags, their environment
/// variables (`LLMSTACK_<FLAG>`) and a file can be layered; turned into a
/// [`RoutingConfig`] by [`RoutingArgs::resolve`]. With the `clap` feature it is a
/// `clap::Args` to flatten into a command line; file keys are the field names.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct RoutingArgs {
    /// Comma-separated `alias:model` pairs; requests for an alias go to the model.
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_STATIC_ALIASES", value_delimiter = ',')
    )]
    #[serde(
        deserialize_with = "comma_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub static_aliases: Option<Vec<String>>,
    /// Routing policy: roundrobin, random, leastloaded (alias loadaware), power_of_two,
    /// session, prefixaware, kvaware (needs the engines' KV events and the model's tokenizer,
    /// see --tokenizer) [default: roundrobin].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_ROUTING_LOGIC", value_parser = RoutingLogic::parse))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_logic: Option<RoutingLogic>,
    /// Header (or top-level body field) carrying the session id, e.g. `x-user-id`;
    /// without one, `session` keys on the OpenAI `user` field.
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_SESSION_KEY"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    /// prefixaware: cached matches shorter than this many prompt characters count as
    /// none [default: 0].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_PREFIX_MIN_MATCH_LENGTH"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_min_match_length: Option<usize>,
    /// prefixaware: bytes of prompt per indexed chunk [default: 256].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_PREFIX_CHUNK_SIZE"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_chunk_size: Option<usize>,
    /// prefixaware: prefix-cache tokens assumed per engine until its /metrics reports
    /// num_gpu_blocks × block_size [default: 262144].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_PREFIX_CAPACITY_TOKENS"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_capacity_tokens: Option<u64>,
    /// Comma-separated peer router replicas (`host:port`) to share in-flight load with
    /// over UDP, so that each replica's policy counts every replica's queue; a DNS name
    /// (a headless Service) stands for all its addresses, this replica's included.
    /// For load-reading policies (leastloaded, power_of_two, session, prefixaware,
    /// kvaware). Keep the port inside the cluster: the protocol is not authenticated.
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "LLMSTACK_PEERS", value_delimiter = ',')
    )]
    #[serde(
        deserialize_with = "comma_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub peers: Option<Vec<String>>,
    /// UDP port load sharing listens on, with --peers [default: 7072].
    #[cfg_attr(feature = "clap", arg(long, env = "LLMSTACK_PEER_PORT"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
}

// === impl RoutingArgs ===

impl RoutingArgs {
    /// The routing config these settings give (defaults for what is not given),
    /// recording every invalid setting in `errors`: alias pairs without a colon and
    /// whatever [`RoutingConfig::validate`] refuses.
    pub fn resolve(self, errors: &mut SettingErrors) -> RoutingConfig {
        let mut static_aliases = BTreeMap::new();
        for pair in trimmed(self.static_aliases) {
            match pair.split_once(':') {
                Some((alias, model)) => {
                    static_aliases.insert(alias.trim().to_owned(), model.trim().to_owned());
                }
                None => errors.push(
                    "static-aliases",
                    format!("--static-aliases entry `{pair}` is not `alias:model`"),
                ),
            }
        }
        let defaults = RoutingConfig::default();
        let config = RoutingConfig {
            routing_logic: self.routing_logic.unwrap_or_default(),
            session_key: self.session_key.filter(|k| !k.is_empty()),
            static_aliases,
            prefix_min_match_length: self
                .prefix_min_match_length
                .unwrap_or(defaults.prefix_min_match_length),
            prefix_chunk_size: self.prefix_chunk_size.unwrap_or(defaults.prefix_chunk_size),
            prefix_capacity_tokens: self
                .prefix_capacity_tokens
                .unwrap_or(defaults.prefix_capacity_tokens),
            peers: trimmed(self.peers),
            peer_port: self.peer_port.unwrap_or(defaults.peer_port),
        };
        if let Err(e) = config.validate() {
            errors.0.push(e);
        }
        config
    }
}
