//! Running a workload: a closed loop at a concurrency, or multi-round QA users.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{Client, Recorder, Report, Workload};

/// How to run a workload.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The workload.
    pub workload: Workload,
    /// Seed of every random choice.
    pub seed: u64,
    /// Requests in flight at once (closed loop; synthetic and shared-prefix).
    pub concurrency: usize,
    /// Stop after this many requests (closed loop).
    pub requests: usize,
    /// Multi-round QA: total request rate over all users (each user waits
    /// `users / qps` between its requests, and never sends before its previous answer).
    /// Open loop: the arrival rate.
    pub qps: f64,
    /// Closed loop, or open-loop arrivals at `qps` (synthetic and shared-prefix).
    pub arrivals: Arrivals,
    /// Show a progress bar on standard error (only drawn when it is a terminal).
    pub progress: bool,
    /// Closed loop: also stop starting requests after this long.
    pub duration: Option<Duration>,
}

/// How requests are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arrivals {
    /// A fixed number in flight: a new request as soon as one ends.
    #[default]
    Closed,
    /// Open loop, one every `1/qps` seconds.
    Constant,
    /// Open loop, exponential gaps of mean `1/qps` (a Poisson process).
    Poisson,
}

/// When each of `n` open-loop requests is sent, from the start of the run; the same for
/// the same seed.
pub fn arrival_times(arrivals: Arrivals, qps: f64, n: usize, seed: u64) -> Vec<Duration> {
    let mean = 1.0 / qps.max(1e-6);
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xa5a5_a5a5);
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            let at = Duration::from_secs_f64(t);
            t += match arrivals {
                Arrivals::Poisson => -(1.0 - rng.f64()).ln() * mean,
                Arrivals::Constant | Arrivals::Closed => mean,
            };
            at
        })
        .collect()
}

/// Runs the workload with `client` and summarises it.
pub async fn run(client: &Client, config: &RunConfig) -> Report {
    let start = Instant::now();
    let total = match &config.workload {
        Workload::MultiRoundQa { users, rounds, .. } => users * rounds,
        Workload::Replay(trace) => trace.len(),
        _ => config.requests,
    };
    let bar = if config.progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    let mut tasks: JoinSet<Recorder> = JoinSet::new();
    match config.workload {
        Workload::MultiRoundQa { users, .. } => {
            let gap = Duration::from_secs_f64(users as f64 / config.qps.max(1e-3));
            for (i, mut user) in config
                .workload
                .conversations(config.seed)
                .into_iter()
                .enumerate()
            {
                let (client, bar) = (client.clone(), bar.clone());
                // Users join staggered over one gap, so the load starts near steady state.
                let join = gap.mul_f64(i as f64 / users.max(1) as f64);
                tasks.spawn(async move {
                    let mut rec = Recorder::default();
                    tokio::time::sleep(join).await;
                    let mut next = Instant::now();
                    // What the previous round computed: its prompt and its answer.
                    let mut computed = user.system_chars() as u64 / 4;
                    while let Some(prompt) = user.next_prompt() {
                        tokio::time::sleep_until(next).await;
                        next = Instant::now() + gap;
                        let outcome = client.send(&prompt).await;
                        bar.inc(1);
                        rec.record(&outcome);
                        if let (Some(p), Some(c)) =
                            (outcome.prompt_tokens, outcome.completion_tokens)
                        {
                            rec.record_reusable(computed.min(p));
                            computed = p + c;
                        }
                        user.record_answer(&outcome.text);
                    }
                    rec
                });
            }
        }
        ref w if config.arrivals != Arrivals::Closed || matches!(w, Workload::Replay(_)) => {
            // Open loop: each request at its time, however many are still in flight.
            let times = match w {
                Workload::Replay(trace) => trace
                    .iter()
                    .map(|e| Duration::from_secs_f64(e.timestamp.max(0.0)))
                    .collect(),
                _ => arrival_times(config.arrivals, config.qps, config.requests, config.seed),
            };
            let mut rec = Recorder::default();
            let mut inflight: JoinSet<crate::Outcome> = JoinSet::new();
            for (i, at) in times.into_iter().enumerate() {
                let Some(prompt) = config.workload.prompt(config.seed, i) else {
                    break;
                };
                tokio::time::sleep_until(start + at).await;
                let (client, bar) = (client.clone(), bar.clone());
                inflight.spawn(async move {
                    let outcome = client.send(&prompt).await;
                    bar.inc(1);
                    outcome
                });
                while let Some(done) = inflight.try_join_next() {
                    if let Ok(outcome) = done {
                        rec.record(&outcome);
                    }
                }
            }
            while let Some(done) = inflight.join_next().await {
                if let Ok(outcome) = done {
                    rec.record(&outcome);
                }
            }
            tasks.spawn(async move { rec });
        }
        _ => {
            let counter = Arc::new(AtomicUsize::new(0));
            let deadline = config.duration.map(|d| start + d);
            for _ in 0..config.concurrency.max(1) {
                let (client, counter, workload, seed, total, bar) = (
                    client.clone(),
                    Arc::clone(&counter),
                    config.workload.clone(),
                    config.seed,
                    config.requests,
                    bar.clone(),
                );
                tasks.spawn(async move {
                    let mut rec = Recorder::default();
                    loop {
                        let i = counter.fetch_add(1, Ordering::Relaxed);
                        if i >= total || deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let Some(prompt) = workload.prompt(seed, i) else {
                            break;
                        };
                        rec.record(&client.send(&prompt).await);
                        bar.inc(1);
                    }
                    rec
                });
            }
        }
    }
    let mut total = Recorder::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok(rec) = done {
            total.merge(&rec);
        }
    }
    bar.finish_and_clear();
    total.report(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_seeded_and_have_the_asked_rate() {
        let a = arrival_times(Arrivals::Poisson, 100.0, 10_000, 4);
        assert_eq!(a, arrival_times(Arrivals::Poisson, 100.0, 10_000, 4));
        assert_ne!(a, arrival_times(Arrivals::Poisson, 100.0, 10_000, 5));
        // 10,000 arrivals at 100/s take about 100 s (Poisson: within a few percent).
        let span = a.last().unwrap().as_secs_f64();
        assert!((95.0..105.0).contains(&span), "{span}");
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        let c = arrival_times(Arrivals::Constant, 4.0, 5, 1);
        assert_eq!(c[4], Duration::from_secs(1));
    }
}
