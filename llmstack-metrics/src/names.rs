//! The router's own metrics: names, units and help texts.
//!
//! Every name starts with `llmstack_` and none reuses a `vllm:` name, so one Prometheus
//! can scrape engines and routers without collisions. Labels are bounded: `engine`
//! (an endpoint id), `model` (a model some engine served, or `unknown`), `route` (a fixed
//! path), `status` (`2xx`, `3xx`, `4xx`, `5xx`, `broken` when a response broke off,
//! or `cancelled` when the client left before an answer), `policy`, `reason`, `kind`, `state`, `limit`, `result`, `type` (a KV-event type),
//! `outcome` (of a KV-event replay), and `tenant` (a name from the operator's keys file).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Requests answered, by `route`, `model`, `engine` (empty when none was chosen) and
/// `status` class (`broken`: the response started, then broke off or carried an SSE
/// error event).
pub const REQUESTS: &str = "llmstack_requests_total";
/// Time from the request's arrival to the end of its response body, by `route`, `model`.
pub const REQUEST_DURATION: &str = "llmstack_request_duration_seconds";
/// Time from arrival to the first content-bearing chunk of a stream, by `model`.
pub const TTFT: &str = "llmstack_time_to_first_token_seconds";
/// Time between two content-bearing chunks of a stream, by `model`.
pub const ITL: &str = "llmstack_inter_token_latency_seconds";
/// Prompt tokens reported in responses' `usage`, by `model`, `engine`.
pub const PROMPT_TOKENS: &str = "llmstack_prompt_tokens_total";
/// Completion tokens reported in responses' `usage`, by `model`, `engine`.
pub const COMPLETION_TOKENS: &str = "llmstack_completion_tokens_total";
/// Requests sent to an engine whose response has not ended, by `engine`.
pub const IN_FLIGHT: &str = "llmstack_in_flight_requests";
/// Attempts sent to another engine after a failure, by `engine` (the one that failed)
/// and `reason`.
pub const RETRIES: &str = "llmstack_retries_total";
/// Engine failures seen by the proxy, by `engine` and `kind` (`connect`, `upstream`,
/// `timeout`, `broken` and `idle_timeout` mid-body).
pub const UPSTREAM_ERRORS: &str = "llmstack_upstream_errors_total";
/// Routing decisions, by `policy` and `reason` (`picked`, `pinned`, `no_endpoint`, …).
pub const ROUTING_DECISIONS: &str = "llmstack_routing_decisions_total";
/// Endpoints known, by `state` (`pending`, `ready`, `unready`).
pub const ENDPOINTS: &str = "llmstack_endpoints";
/// Ready engines serving each model (base model or LoRA adapter), by `model`: 0 while
/// the model's engines are all unready, pending or gone (requests get 503). Every
/// model the router has ever seen served, or was configured with, is listed.
pub const MODEL_READY_ENDPOINTS: &str = "llmstack_model_ready_endpoints";
/// Discovery updates applied to the endpoint set (changes only).
pub const DISCOVERY_UPDATES: &str = "llmstack_discovery_updates_total";
/// Discovery failures, by `source` (`dns`, `k8s`, `static`): a resolution, watch or
/// file reload that failed (the last good endpoints stay).
pub const DISCOVERY_ERRORS: &str = "llmstack_discovery_errors_total";
/// Duration of the last `/metrics` scrape of each engine, by `engine` (a gauge: one
/// sample per engine keeps `/metrics` small with hundreds of engines).
pub const SCRAPE_DURATION: &str = "llmstack_engine_scrape_duration_seconds";
/// Failed engine scrapes, by `engine`.
pub const SCRAPE_ERRORS: &str = "llmstack_engine_scrape_errors_total";
/// Re-exported engine gauge: requests running, by `engine`.
pub const ENGINE_RUNNING: &str = "llmstack_engine_running_requests";
/// Re-exported engine gauge: requests waiting, by `engine`.
pub const ENGINE_WAITING: &str = "llmstack_engine_waiting_requests";
/// Re-exported engine gauge: KV-cache usage 0..1, by `engine`.
pub const ENGINE_KV_CACHE_USAGE: &str = "llmstack_engine_kv_cache_usage_ratio";
/// Re-exported engine gauge: prefix-cache hit ratio over the last scrape interval, by
/// `engine`.
pub const ENGINE_PREFIX_CACHE_HIT: &str = "llmstack_engine_prefix_cache_hit_ratio";
/// Requests refused for want of a valid API key, by `reason` (`missing`, `invalid`).
pub const AUTH_FAILURES: &str = "llmstack_auth_failures_total";
/// Requests refused for being over a tenant's rate limit, by `tenant` and `limit`
/// (`requests`, `tokens`).
pub const RATE_LIMITED: &str = "llmstack_rate_limited_total";
/// API keys loaded (after the last successful load or reload of the keys file).
pub const API_KEYS: &str = "llmstack_api_keys";
/// Reloads of the API keys file, by `result` (`ok`, `error`: the previous keys stay).
pub const API_KEY_RELOADS: &str = "llmstack_api_key_reloads_total";
/// Client connections open on the main port (at `--max-connections`, new ones wait).
pub const CLIENT_CONNECTIONS: &str = "llmstack_client_connections";
/// Requests waiting for capacity, by `model` and `priority` (admission).
pub const QUEUE_DEPTH: &str = "llmstack_queue_depth";
/// Time requests waited in the admission queue, admitted or refused, by `priority`.
pub const QUEUE_WAIT: &str = "llmstack_queue_wait_seconds";
/// Requests refused by admission, by `reason` (`full`, `timeout`, `saturated` when
/// there is no queue).
pub const QUEUE_REJECTED: &str = "llmstack_queue_rejected_total";
/// Engines ejected for failing requests in a row, by `engine`.
pub const ENGINE_EJECTIONS: &str = "llmstack_engine_ejections_total";
/// Whether each engine is ejected now (1) or not (0), by `engine`.
pub const ENGINE_EJECTED: &str = "llmstack_engine_ejected";

/// Peer router replicas heard from in the last second (`--peers`; absent without it).
pub const PEER_REPLICAS: &str = "llmstack_peer_replicas";

/// KV-event batches applied (live and replayed), by `engine`.
pub const KV_EVENT_BATCHES: &str = "llmstack_kv_event_batches_total";
/// KV events applied, by `engine` and `type` (`block_stored`, `block_removed`,
/// `all_blocks_cleared`, `unknown`: a type this build skips).
pub const KV_EVENTS: &str = "llmstack_kv_events_total";
/// KV-event sequence gaps (batches lost between two received ones), by `engine`.
pub const KV_EVENT_GAPS: &str = "llmstack_kv_event_gaps_total";
/// KV-event replays asked for, by `engine` and `outcome` (`ok`, `partial`: the
/// publisher no longer held the first batches asked for, `failed`).
pub const KV_EVENT_REPLAYS: &str = "llmstack_kv_event_replays_total";
/// Times an engine's KV-event state was thrown away, by `engine` and `reason` (`gap`,
/// `restart`, `decode_error`, `moved`: its publisher changed or went away).
pub const KV_EVENT_RESETS: &str = "llmstack_kv_event_resets_total";
/// KV-event messages that could not be decoded, by `engine`.
pub const KV_EVENT_DECODE_ERRORS: &str = "llmstack_kv_event_decode_errors_total";
/// Time from a KV-event batch's publication to its application, by `engine`.
pub const KV_EVENT_LAG: &str = "llmstack_kv_event_lag_seconds";
/// KV-event publishers subscribed to (one per data-parallel rank), by `engine`.
pub const KV_EVENT_CONNECTED: &str = "llmstack_kv_event_connected";
/// Prompt tokens the router predicted engines would find in their prefix cache
/// (cache-aware policies: `prefixaware`, `kvaware`), for requests answered 2xx, by
/// `engine`.
pub const KV_PREDICTED_CACHED_TOKENS: &str = "llmstack_kv_predicted_cached_tokens_total";
/// Prompt tokens engines reported served from their prefix cache
/// (`usage.prompt_tokens_details.cached_tokens`; vLLM reports it with
/// `--enable-prompt-tokens-details`), by `engine`.
pub const KV_REPORTED_CACHED_TOKENS: &str = "llmstack_kv_reported_cached_tokens_total";
/// Blocks the router's KV index holds for each engine, by `engine` and `medium`
/// (`gpu`, or `cpu` for any lower tier such as CPU offload).
pub const KV_INDEX_BLOCKS: &str = "llmstack_kv_index_blocks";
/// Re-exported engine counter: prompt tokens found in the engine's prefix cache
/// (`vllm:prefix_cache_hits`), by `engine`; what predictions are checked against when
/// engines do not report `cached_tokens`.
pub const ENGINE_PREFIX_CACHE_HITS: &str = "llmstack_engine_prefix_cache_hits_total";

/// Registers the help text and unit of every series above with the installed recorder.
/// Call once at start, after installing it.
pub fn describe() {
    describe_counter!(REQUESTS, "Requests answered by the router.");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to the end of its response body."
    );
    describe_histogram!(
        TTFT,
        Unit::Seconds,
        "Time from a streamed request's arrival to its first content-bearing chunk."
    );
    describe_histogram!(
        ITL,
        Unit::Seconds,
        "Time between two content-bearing chunks of a streamed response."
    );
    describe_counter!(PROMPT_TOKENS, "Prompt tokens reported in responses' usage.");
    describe_counter!(
        COMPLETION_TOKENS,
        "Completion tokens reported in responses' usage."
    );
    describe_gauge!(
        IN_FLIGHT,
        "Requests sent to an engine whose response has not ended."
    );
    describe_counter!(RETRIES, "Attempts sent to another engine after a failure.");
    describe_counter!(UPSTREAM_ERRORS, "Engine failures seen by the proxy.");
    describe_counter!(
        ROUTING_DECISIONS,
        "Routing decisions by policy and outcome."
    );
    describe_gauge!(ENDPOINTS, "Engines known to the router, by state.");
    describe_gauge!(
        MODEL_READY_ENDPOINTS,
        "Ready engines serving each model (0: requests for it get 503)."
    );
    describe_counter!(
        DISCOVERY_UPDATES,
        "Discovery updates that changed the endpoint set."
    );
    describe_counter!(
        DISCOVERY_ERRORS,
        "Discovery failures (DNS resolutions, Kubernetes watches, static file reloads); the last good endpoints stay."
    );
    describe_gauge!(
        SCRAPE_DURATION,
        Unit::Seconds,
        "Duration of the last scrape of the engine's /metrics."
    );
    describe_counter!(SCRAPE_ERRORS, "Failed scrapes of an engine's /metrics.");
    describe_gauge!(ENGINE_RUNNING, "Requests running on the engine (scraped).");
    describe_gauge!(ENGINE_WAITING, "Requests waiting on the engine (scraped).");
    describe_gauge!(
        ENGINE_KV_CACHE_USAGE,
        "KV-cache usage of the engine, 0 to 1 (scraped)."
    );
    describe_gauge!(
        ENGINE_PREFIX_CACHE_HIT,
        "Prefix-cache hit ratio of the engine over the last scrape interval (scraped)."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Requests refused (401) for want of a valid API key."
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused (429) for being over a tenant's rate limit."
    );
    describe_gauge!(API_KEYS, "API keys loaded.");
    describe_gauge!(
        QUEUE_DEPTH,
        "Requests waiting for capacity, by model and priority."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time requests waited in the admission queue."
    );
    describe_counter!(QUEUE_REJECTED, "Requests refused by admission (503).");
    describe_gauge!(
        CLIENT_CONNECTIONS,
        "Client connections open on the main port."
    );
    describe_counter!(
        ENGINE_EJECTIONS,
        "Engines ejected for failing requests in a row."
    );
    describe_gauge!(
        ENGINE_EJECTED,
        "Whether the engine is ejected or half-open now (1) or serving (0)."
    );
    describe_gauge!(
        PEER_REPLICAS,
        "Peer router replicas this one heard from in the last second (load sharing, --peers)."
    );
    describe_counter!(
        API_KEY_RELOADS,
        "Reloads of the API keys file (on error the previous keys stay)."
    );
    describe_counter!(
        KV_EVENT_BATCHES,
        "KV-event batches applied (live and replayed)."
    );
    describe_counter!(KV_EVENTS, "KV events applied, by type.");
    describe_counter!(
        KV_EVENT_GAPS,
        "KV-event sequence gaps (batches lost between two received ones)."
    );
    describe_counter!(KV_EVENT_REPLAYS, "KV-event replays asked for, by outcome.");
    describe_counter!(
        KV_EVENT_RESETS,
        "Times an engine's KV-event state was thrown away, by reason."
    );
    describe_counter!(
        KV_EVENT_DECODE_ERRORS,
        "KV-event messages that could not be decoded."
    );
    describe_histogram!(
        KV_EVENT_LAG,
        Unit::Seconds,
        "Time from a KV-event batch's publication to its application."
    );
    describe_gauge!(
        KV_EVENT_CONNECTED,
        "KV-event publishers subscribed to (one per data-parallel rank)."
    );
    describe_counter!(
        KV_PREDICTED_CACHED_TOKENS,
        "Prompt tokens the router predicted engines would find in their prefix cache."
    );
    describe_counter!(
        KV_REPORTED_CACHED_TOKENS,
        "Prompt tokens engines reported served from their prefix cache (usage cached_tokens)."
    );
    describe_gauge!(
        KV_INDEX_BLOCKS,
        "Blocks the router's KV index holds for each engine, by medium."
    );
    describe_counter!(
        ENGINE_PREFIX_CACHE_HITS,
        "Prompt tokens found in the engine's prefix cache, scraped from its prefix_cache_hits counter."
    );
}
