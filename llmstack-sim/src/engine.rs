//! The engine task: runs [`EngineCore`] steps in (simulated) time.
//!
//! Each step is planned, then lasts the profile's step time, then its tokens are emitted.
//! Steps follow a virtual clock (each deadline is the previous deadline plus the step
//! time) so timer granularity never accumulates into the latencies clients see. Commands
//! from the HTTP side (new sequences, aborts, admin) arriving during a step are applied
//! after it, as vLLM applies them between steps. Shared read-mostly state (metrics,
//! sleep flag, faults) lives in [`EngineShared`] so `/metrics` never waits for a step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::block_pool::BlockPool;
use crate::config::{EngineConfig, FaultConfig, LoraModule};
use crate::finish::FinishReason;
use crate::hash::BlockHasher;
use crate::kv_events::{KvEventsEndpoints, KvPublisher};
use crate::metrics::{EngineMetrics, ExpositionInfo, SleepState};
use crate::profile::LatencyProfile;
use crate::scheduler::{CoreLimits, EngineCore, NewSeq, SeqState, StepPlan};

/// How long the virtual clock may lag real time before it is reset to now.
const CLOCK_SLACK: Duration = Duration::from_millis(2);
/// Memory tags `/wake_up?tags=` wakes in stages; the engine serves once all are resident.
const WAKE_TAGS: [&str; 2] = ["weights", "kv_cache"];
/// Zero-time steps run between yields to the runtime.
const INSTANT_STEPS_PER_YIELD: u64 = 4;

/// What `/sleep?mode=` does with requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepMode {
    /// End them with `finish_reason: abort` (default).
    Abort,
    /// Let running requests finish first.
    Wait,
    /// Freeze them and continue after wake-up.
    Keep,
}

impl std::str::FromStr for SleepMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "abort" => Ok(Self::Abort),
            "wait" => Ok(Self::Wait),
            "keep" => Ok(Self::Keep),
            other => Err(format!("unknown sleep mode {other:?} (abort, wait, keep)")),
        }
    }
}

/// A snapshot of an engine for `GET /sim/state`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineState {
    /// Requests in the running batch.
    pub running: usize,
    /// Requests waiting (including preempted ones).
    pub waiting: usize,
    /// Whether the engine sleeps.
    pub sleeping: bool,
    /// Usable KV blocks.
    pub num_gpu_blocks: usize,
    /// Free blocks (cached-but-unreferenced included).
    pub free_blocks: usize,
    /// Blocks holding a registered prefix hash.
    pub cached_blocks: usize,
    /// `vllm:kv_cache_usage_perc`.
    pub kv_cache_usage: f64,
    /// Prefix-cache counters so far.
    pub prefix_cache_queries: u64,
    /// Prefix-cache hits so far (tokens).
    pub prefix_cache_hits: u64,
    /// Preemptions so far.
    pub preemptions: u64,
    /// Requests aborted so far, counted per sequence like vLLM (client gone,
    /// close-after-chunks cut, sleep in abort mode):
    /// `vllm:request_success_total{finished_reason="abort"}`.
    pub aborted: u64,
    /// Published hashes of cached blocks (only with `?blocks=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_block_hashes: Option<Vec<u64>>,
    /// Every request.
    pub requests: Vec<SeqState>,
}

/// Messages from the HTTP side to the engine task.
#[derive(Debug)]
pub(crate) enum Command {
    /// New sequences of one HTTP request (`n` = choices per prompt).
    Add(Vec<NewSeq>, usize),
    Abort(Vec<u64>, FinishReason),
    ResetPrefixCache {
        reset_running: bool,
        reply: oneshot::Sender<bool>,
    },
    Sleep {
        level: u8,
        mode: SleepMode,
        reply: oneshot::Sender<()>,
    },
    /// Wake (all of it when `tags` is empty); the reply says whether the engine is awake.
    WakeUp {
        tags: Vec<String>,
        reply: oneshot::Sender<bool>,
    },
    State {
        blocks: bool,
        reply: oneshot::Sender<EngineState>,
    },
}

/// State shared between the engine task and its HTTP handlers.
#[derive(Debug)]
pub(crate) struct EngineShared {
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Mutex<EngineMetrics>,
    pub(crate) exposition: ExpositionInfo,
    pub(crate) sleeping: AtomicBool,
    /// Requests in flight on generation routes (`/load`).
    pub(crate) in_flight: AtomicUsize,
    /// Sequences of requests in flight, reserved before they reach the engine
    /// (admission control: vLLM's waiting + running, `n` counted n times).
    pub(crate) queued: AtomicUsize,
    pub(crate) faults: RwLock<FaultConfig>,
    /// LoRA adapters currently loaded (start flags plus runtime loads).
    pub(crate) loras: RwLock<Vec<LoraModule>>,
    pub(crate) next_seq: AtomicU64,
    pub(crate) fault_rng: Mutex<fastrand::Rng>,
    /// Resolved KV-event endpoints, when publishing.
    pub(crate) kv_endpoints: Option<KvEventsEndpoints>,
    /// Responses this engine created (`/v1/responses`): id → model, oldest first.
    pub(crate) responses: Mutex<std::collections::VecDeque<(String, String)>>,
}

impl EngineShared {
    /// Locks the metrics (poisoning is ignored: metrics stay readable after a panic).
    pub(crate) fn metrics(&self) -> MutexGuard<'_, EngineMetrics> {
        self.metrics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn faults(&self) -> FaultConfig {
        self.faults
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn loras(&self) -> Vec<LoraModule> {
        self.loras
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A uniform draw in [0, 1) for fault decisions.
    pub(crate) fn draw(&self) -> f64 {
        self.fault_rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .f64()
    }
}

/// Unix time in seconds.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Builds the engine's shared state and its task (not yet spawned).
pub(crate) fn build(
    config: EngineConfig,
    publisher: Option<(KvPublisher, KvEventsEndpoints)>,
) -> (
    Arc<EngineShared>,
    mpsc::UnboundedSender<Command>,
    EngineTask,
) {
    let limits = CoreLimits {
        block_size: config.block_size(),
        max_num_seqs: config.max_num_seqs(),
        max_num_batched_tokens: config.max_num_batched_tokens(),
        max_model_len: config.max_model_len(),
        max_loras: config.max_loras,
    };
    let (publisher, kv_endpoints) = match publisher {
        Some((p, e)) => (Some(p), Some(e)),
        None => (None, None),
    };
    let pool = BlockPool::new(
        config.num_gpu_blocks(),
        config.enable_prefix_caching,
        publisher.is_some(),
    );
    let hasher = BlockHasher::new(config.hash_algo, &config.hash_seed);
    let exposition = ExpositionInfo {
        model_name: config.primary_name(),
        engine: "0".into(),
        compat: config.metrics_compat,
        block_size: config.block_size(),
        num_gpu_blocks: config.num_gpu_blocks(),
        enable_prefix_caching: config.enable_prefix_caching,
        hash_algo: config.hash_algo.as_str(),
        gpu_memory_utilization: config.profile.gpu_memory_utilization,
        max_loras: config.enable_lora.then_some(config.max_loras),
        admission_control: config.max_num_queued_reqs.is_some(),
        created: unix_now(),
    };
    let shared = Arc::new(EngineShared {
        metrics: Mutex::new(EngineMetrics::new(config.max_model_len())),
        exposition,
        sleeping: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        queued: AtomicUsize::new(0),
        faults: RwLock::new(config.faults.clone()),
        loras: RwLock::new(config.lora_modules.clone()),
        next_seq: AtomicU64::new(1),
        fault_rng: Mutex::new(fastrand::Rng::with_seed(config.seed ^ 0x5eed)),
        responses: Mutex::new(std::collections::VecDeque::new()),
        kv_endpoints,
        config,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let task = EngineTask {
        core: EngineCore::new(limits, pool, hasher).with_output(
            shared.config.tokenizer.output_token_ids(),
            shared.config.tokenizer.eos_token_id(),
        ),
        profile: shared.config.profile.clone(),
        speedup: shared.config.speedup,
        shared: shared.clone(),
        rx,
        publisher,
        clock: Instant::now(),
        sleep: SleepState::Awake,
        pending_sleep: None,
        sleep_waiters: Vec::new(),
        woken: Vec::new(),
        busy: false,
        pending: VecDeque::new(),
        instant_steps: 0,
    };
    (shared, tx, task)
}

/// The engine's step loop; [`EngineTask::run`] ends when every command sender is gone.
#[derive(Debug)]
pub(crate) struct EngineTask {
    core: EngineCore,
    profile: LatencyProfile,
    speedup: f64,
    shared: Arc<EngineShared>,
    rx: mpsc::UnboundedReceiver<Command>,
    publisher: Option<KvPublisher>,
    /// End of the last step on the virtual clock.
    clock: Instant,
    sleep: SleepState,
    /// A `wait`-mode sleep waiting for running requests to drain.
    pending_sleep: Option<(u8, oneshot::Sender<()>)>,
    /// Callers of earlier wait-mode sleeps superseded by `pending_sleep`.
    sleep_waiters: Vec<oneshot::Sender<()>>,
    /// Tags woken so far by partial `/wake_up?tags=` calls.
    woken: Vec<String>,
    /// Whether the previous loop ran a step without waiting for a command (the virtual
    /// clock only carries over while the engine is continuously busy).
    busy: bool,
    /// Commands received during a step, applied after it.
    pending: VecDeque<Command>,
    /// Zero-time steps run so far.
    instant_steps: u64,
}

impl EngineTask {
    pub(crate) async fn run(mut self) {
        loop {
            while let Some(cmd) = self.pending.pop_front() {
                self.handle(cmd);
            }
            loop {
                match self.rx.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            self.try_enter_pending_sleep();
            self.publish_events();
            let now = Instant::now();
            let plan = if self.sleep == SleepState::Awake && self.core.has_work() {
                let admit = self.pending_sleep.is_none();
                let mut m = self.shared.metrics();
                self.core.schedule(now, &mut m, admit)
            } else {
                StepPlan::default()
            };
            if plan.is_empty() {
                self.update_gauges();
                self.busy = false;
                match self.rx.recv().await {
                    Some(cmd) => self.handle(cmd),
                    None => return,
                }
                continue;
            }
            self.wait_step(&plan, now).await;
            let done = Instant::now();
            {
                let mut m = self.shared.metrics();
                self.core.finish_step(&plan, done, &mut m);
            }
            self.update_gauges();
            self.publish_events();
        }
    }

    /// Lets the step's simulated time pass, buffering commands that arrive meanwhile.
    async fn wait_step(&mut self, plan: &StepPlan, now: Instant) {
        let dt = self.profile.step_duration(plan, self.speedup);
        if dt.is_zero() {
            // Zero-time steps: yield every few steps so HTTP tasks run, without waking
            // every stream once per token (the bytes sent are the same).
            self.instant_steps += 1;
            if self.instant_steps.is_multiple_of(INSTANT_STEPS_PER_YIELD) {
                tokio::task::yield_now().await;
            }
            return;
        }
        // Back-to-back steps chain on the virtual clock; the first step after the engine
        // idled starts now.
        let start = if self.busy && now <= self.clock + CLOCK_SLACK {
            self.clock
        } else {
            now
        };
        self.busy = true;
        let deadline = start + dt;
        self.clock = deadline;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            tokio::task::yield_now().await;
            return;
        }
        // Tokio's timer wheel has 1 ms ticks and the reactor's epoll timeout rounds up
        // again, so a tokio sleep lands 0.5–1.5 ms late: 15% of a 7 ms step. A thread
        // sleep in the blocking pool is accurate to tens of microseconds.
        let sleep = tokio::task::spawn_blocking(move || std::thread::sleep(remaining));
        tokio::pin!(sleep);
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                _ = &mut sleep => return,
                cmd = self.rx.recv(), if open => match cmd {
                    Some(cmd) => self.pending.push_back(cmd),
                    None => open = false,
                },
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Add(seqs, n) => {
                {
                    let mut m = self.shared.metrics();
                    for _prompt in 0..seqs.len() / n.max(1) {
                        m.n_hist.observe(n as f64);
                    }
                }
                for mut s in seqs {
                    // vLLM stamps arrival when the engine client receives the request.
                    s.arrival = now;
                    self.core.add(s);
                }
            }
            Command::Abort(ids, reason) => {
                let mut m = self.shared.metrics();
                self.core.abort(&ids, reason, now, &mut m);
            }
            Command::ResetPrefixCache {
                reset_running,
                reply,
            } => {
                if reset_running {
                    let mut m = self.shared.metrics();
                    self.core.preempt_all(&mut m);
                }
                let _gone = reply.send(self.core.pool_mut().reset());
            }
            Command::Sleep { level, mode, reply } => match mode {
                SleepMode::Abort => {
                    let ids = self.core.all_ids();
                    let mut m = self.shared.metrics();
                    self.core.abort(&ids, FinishReason::Abort, now, &mut m);
                    drop(m);
                    self.enter_sleep(level);
                    let _gone = reply.send(());
                }
                SleepMode::Keep => {
                    if level >= 1 {
                        let mut m = self.shared.metrics();
                        self.core.preempt_all(&mut m);
                    }
                    self.enter_sleep(level);
                    let _gone = reply.send(());
                }
                SleepMode::Wait => {
                    // A newer wait-mode request replaces an older one; both callers are
                    // answered when the engine falls asleep.
                    if let Some((_, older)) = self.pending_sleep.take() {
                        self.sleep_waiters.push(older);
                    }
                    self.pending_sleep = Some((level, reply));
                    self.try_enter_pending_sleep();
                }
            },
            Command::WakeUp { tags, reply } => {
                // A wait-mode sleep still draining is cancelled: its caller is answered
                // and the engine stays awake.
                if let Some((_, sleep_reply)) = self.pending_sleep.take() {
                    let _gone = sleep_reply.send(());
                }
                self.woken.extend(tags.iter().cloned());
                let all =
                    tags.is_empty() || WAKE_TAGS.iter().all(|t| self.woken.iter().any(|w| w == t));
                if all {
                    self.sleep = SleepState::Awake;
                    self.woken.clear();
                    self.shared.sleeping.store(false, Ordering::Release);
                }
                let _gone = reply.send(all);
            }
            Command::State { blocks, reply } => {
                let pool = self.core.pool();
                let m = self.shared.metrics();
                let state = EngineState {
                    running: self.core.num_running(),
                    waiting: self.core.num_waiting(),
                    sleeping: self.sleep != SleepState::Awake,
                    num_gpu_blocks: pool.capacity(),
                    free_blocks: pool.num_free(),
                    cached_blocks: pool.num_cached(),
                    kv_cache_usage: pool.usage(),
                    prefix_cache_queries: m.prefix_cache_queries,
                    prefix_cache_hits: m.prefix_cache_hits,
                    preemptions: m.num_preemptions,
                    aborted: m.finished(FinishReason::Abort),
                    cached_block_hashes: blocks.then(|| pool.cached_hashes()),
                    requests: self.core.seq_states(),
                };
                drop(m);
                let _gone = reply.send(state);
            }
        }
        // Gauges are refreshed by the run loop after the commands and before it waits.
    }

    fn try_enter_pending_sleep(&mut self) {
        if self.core.num_running() == 0
            && let Some((level, reply)) = self.pending_sleep.take()
        {
            self.enter_sleep(level);
            let _gone = reply.send(());
            for waiter in self.sleep_waiters.drain(..) {
                let _gone = waiter.send(());
            }
        }
    }

    fn enter_sleep(&mut self, level: u8) {
        self.sleep = match level {
            0 => SleepState::Paused,
            1 => SleepState::Level1,
            _ => SleepState::Level2,
        };
        self.woken.clear();
        if level >= 1 && !self.core.pool_mut().reset() {
            tracing::warn!("sleep: prefix cache still held by requests; not cleared");
        }
        self.shared.sleeping.store(true, Ordering::Release);
        self.publish_events();
    }

    fn update_gauges(&mut self) {
        let (running, waiting) = (self.core.num_running(), self.core.num_waiting());
        let usage = self.core.pool().usage();
        let lora = self
            .shared
            .exposition
            .max_loras
            .is_some()
            .then(|| self.core.lora_names());
        let mut m = self.shared.metrics();
        m.running = running;
        m.waiting = waiting;
        m.kv_usage = usage;
        m.sleep = self.sleep;
        if let Some((r, w)) = lora {
            let join = |v: Vec<Arc<str>>| v.iter().map(|s| &**s).collect::<Vec<_>>().join(",");
            m.set_lora_info(join(r), join(w), unix_now());
        }
    }

    fn publish_events(&mut self) {
        if let Some(p) = &mut self.publisher {
            let events = self.core.pool_mut().take_events();
            p.publish(events);
        }
    }
}
