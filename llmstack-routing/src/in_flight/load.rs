//! What a policy sees of one engine's load: the router's own requests there and the
//! engine's last fresh scrape.

/// What the router knows of one engine's load when it picks: its own live requests
/// there (exact, current) plus the engine's last fresh scrape.
///
/// Scraped numbers are `None` when unknown (never scraped, or older than three scrape
/// intervals): unknown is not zero.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// This router's requests on the engine whose response has not ended.
    pub in_flight: u32,
    /// Estimated prompt tokens of those requests.
    pub in_flight_tokens: u64,
    /// Estimated uncached prompt tokens of those requests that have not received their
    /// first response byte: prefill work still queued or running on the engine. A
    /// non-streamed answer arrives whole at the end, so a non-streamed request counts
    /// here until it is done (an overestimate of its prefill).
    pub pending_prefill_tokens: u64,
    /// Requests the engine reported (running + waiting) beyond this router's own when
    /// the scrape was folded in ([`InFlight::observe`](crate::InFlight::observe)):
    /// other routers' traffic. Added to `in_flight`, it estimates the engine's queue
    /// between scrapes without herding (new picks count at once).
    pub foreign: f32,
    /// Requests other router replicas have in flight on the engine, as they last told
    /// this one ([`InFlight::share`](crate::InFlight::share)); 0 without load sharing.
    pub peer_in_flight: u32,
    /// The uncached prompt tokens of those requests still waiting for their first
    /// byte: the prefill other replicas queued there.
    pub peer_pending_prefill_tokens: u64,
    /// `vllm:num_requests_waiting` of the last fresh scrape.
    pub waiting: Option<f32>,
    /// `vllm:num_requests_running` of the last fresh scrape.
    pub running: Option<f32>,
    /// `vllm:kv_cache_usage_perc` (0..1) of the last fresh scrape.
    pub kv_usage: Option<f32>,
    /// KV capacity in tokens (`num_gpu_blocks × block_size`), once ever scraped.
    pub kv_capacity_tokens: Option<u64>,
    /// Prompt tokens of this request the engine probably has cached (from the router's
    /// prefix index; 0 without one).
    pub cached_tokens: u32,
    /// For a request naming a LoRA adapter: whether the engine's last fresh scrape shows
    /// the adapter running or waiting there. `None` for base models or when unknown.
    pub adapter_warm: Option<bool>,
    /// Tokens the router's prefix index has left in the engine's share before it must
    /// evict (as the engine's own cache would); `None` without an index or before the
    /// engine's first request.
    pub cache_free_tokens: Option<u64>,
}

// === impl Load ===

impl Load {
    /// The engine's estimated requests: this router's in flight plus the others'
    /// (shared by peer replicas, and beyond those as of the last scrape).
    pub fn requests(&self) -> f64 {
        f64::from(self.in_flight) + f64::from(self.peer_in_flight) + f64::from(self.foreign)
    }

    /// Prefill queued on the engine, in tokens: this router's and its peer replicas'.
    pub fn pending_prefill(&self) -> f64 {
        (self.pending_prefill_tokens + self.peer_pending_prefill_tokens) as f64
    }
}
