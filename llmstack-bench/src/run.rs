//! Running a workload: a closed loop at a concurrency, or multi-round QA users.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
    pub qps: f64,
}

/// Runs the workload with `client` and summarises it.
pub async fn run(client: &Client, config: &RunConfig) -> Report {
    let start = Instant::now();
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
                let client = client.clone();
                // Users join staggered over one gap, so the load starts near steady state.
                let join = gap.mul_f64(i as f64 / users.max(1) as f64);
                tasks.spawn(async move {
                    let mut rec = Recorder::default();
                    tokio::time::sleep(join).await;
                    let mut next = Instant::now();
                    while let Some(prompt) = user.next_prompt() {
                        tokio::time::sleep_until(next).await;
                        next = Instant::now() + gap;
                        let outcome = client.send(&prompt).await;
                        rec.record(&outcome);
                        user.record_answer(&outcome.text);
                    }
                    rec
                });
            }
        }
        _ => {
            let counter = Arc::new(AtomicUsize::new(0));
            for _ in 0..config.concurrency.max(1) {
                let (client, counter, workload, seed, total) = (
                    client.clone(),
                    Arc::clone(&counter),
                    config.workload.clone(),
                    config.seed,
                    config.requests,
                );
                tasks.spawn(async move {
                    let mut rec = Recorder::default();
                    loop {
                        let i = counter.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        let Some(prompt) = workload.prompt(seed, i) else {
                            break;
                        };
                        rec.record(&client.send(&prompt).await);
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
    total.report(start.elapsed())
}
