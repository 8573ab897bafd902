//! The KV index's costs (issue 15): applying events (blocks per second on one core),
//! memory per indexed block, and matching an 8k-token prompt.
//!
//! `cargo bench -p llmstack-benches --bench kv_index` prints a Markdown table;
//! `-- --quick` runs a smaller version (CI).
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;
use tokio::time::Instant;

use llmstack_benches::endpoints;
use llmstack_core::kv::{BlockRemoved, BlockStored, KvBatch, KvEvent, Medium};
use llmstack_core::{KvSink, KvSource};
use llmstack_routing::{KeySpace, KvIndex};

const BLOCK: u32 = 16;

/// One engine step's events: `per_event` blocks of a new sequence `seq`, continuing
/// from its block `from` (whose parent the index already knows).
fn stored(seq: u64, from: u64, per_event: u64, rng: &mut fastrand::Rng) -> KvEvent {
    KvEvent::BlockStored(BlockStored {
        block_hashes: (from..from + per_event).map(|b| seq << 20 | b).collect(),
        parent_block_hash: from.checked_sub(1).map(|b| seq << 20 | b),
        token_ids: (0..per_event * u64::from(BLOCK))
            .map(|_| rng.u32(..128_000))
            .collect(),
        block_size: BLOCK,
        medium: Medium::Gpu,
        full_attention: true,
        ..BlockStored::default()
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sequences: u64 = if quick { 2_000 } else { 32_768 };
    let eps = endpoints(4);
    let sources: Vec<KvSource> = eps
        .iter()
        .map(|e| KvSource {
            endpoint: e.id.clone(),
            dp_rank: 0,
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(15);

    // Batches as a subscriber decodes them: a prefill of 32 blocks in one event, then
    // the sequence's next blocks in a later step.
    let batches: Vec<(usize, KvBatch)> = (0..sequences)
        .flat_map(|seq| {
            let src = (seq % 4) as usize;
            let first = stored(seq, 0, 24, &mut rng);
            let next = stored(seq, 24, 8, &mut rng);
            [(src, first), (src, next)]
        })
        .map(|(src, event)| {
            let batch = KvBatch {
                ts: 0.0,
                events: vec![event],
                dp_rank: 0,
            };
            (src, batch)
        })
        .collect();
    let blocks = sequences * 32;
    let index = KvIndex::new();
    let start = Instant::now();
    for (src, batch) in &batches {
        index.apply(&sources[*src], batch);
    }
    let store_rate = blocks as f64 / start.elapsed().as_secs_f64();
    let per_block = index.memory_bytes() as f64 / index.len() as f64;
    // Swiss tables grow by doubling: the bytes per block depend on where the count
    // falls between two powers of two. Fills of 55 % and 80 % of the full run:
    let fills: Vec<String> = [0.55, 0.8]
        .iter()
        .map(|f| {
            let part = KvIndex::new();
            let n = (batches.len() as f64 * f) as usize & !1;
            for (src, batch) in &batches[..n] {
                part.apply(&sources[*src], batch);
            }
            format!(
                "{:.1} B at {} blocks",
                part.memory_bytes() as f64 / part.len() as f64,
                part.len()
            )
        })
        .collect();
    // The worst case over a whole fill, measured after every batch from 4,096 blocks
    // on: a table that just doubled is at its emptiest.
    let worst = {
        let part = KvIndex::new();
        let mut worst = (0.0f64, 0usize);
        for (src, batch) in &batches {
            part.apply(&sources[*src], batch);
            let len = part.len();
            let bytes = part.memory_bytes() as f64 / len as f64;
            if len >= 4096 && bytes > worst.0 {
                worst = (bytes, len);
            }
        }
        worst
    };

    // Match: an 8k-token prompt (512 blocks) whose first 480 blocks engine 1 holds.
    let prompt: Vec<u32> = (0..8192).map(|_| rng.u32(..128_000)).collect();
    index.apply(
        &sources[1],
        &KvBatch {
            ts: 0.0,
            events: vec![KvEvent::BlockStored(BlockStored {
                block_hashes: (0..480).map(|b| 1 << 62 | b).collect(),
                parent_block_hash: None,
                token_ids: prompt[..480 * BLOCK as usize].to_vec(),
                block_size: BLOCK,
                medium: Medium::Gpu,
                full_attention: true,
                ..BlockStored::default()
            })],
            dp_rank: 0,
        },
    );
    let mut sorted = eps.clone();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let calls = if quick { 2_000 } else { 50_000 };
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        let m = index.matches(&KeySpace::default(), black_box(&prompt), &sorted);
        times.push(start.elapsed());
        assert_eq!(m.len(), 1);
    }
    times.sort();

    // Removal: every block of every sequence, one event per step.
    let removals: Vec<(usize, KvBatch)> = (0..sequences)
        .map(|seq| {
            let batch = KvBatch {
                ts: 0.0,
                events: vec![KvEvent::BlockRemoved(BlockRemoved {
                    block_hashes: (0..32).map(|b| seq << 20 | b).collect(),
                    medium: Medium::Gpu,
                    group_idx: 0,
                })],
                dp_rank: 0,
            };
            ((seq % 4) as usize, batch)
        })
        .collect();
    let start = Instant::now();
    for (src, batch) in &removals {
        index.apply(&sources[*src], batch);
    }
    let remove_rate = blocks as f64 / start.elapsed().as_secs_f64();
    let left = index.len();

    println!("KV index, {blocks} blocks over 4 engines (one core):\n");
    println!("| measure | result |");
    println!("|---|---:|");
    println!(
        "| BlockStored applied | {:.2} M blocks/s |",
        store_rate / 1e6
    );
    println!(
        "| BlockRemoved applied | {:.2} M blocks/s |",
        remove_rate / 1e6
    );
    println!(
        "| memory per indexed block | {per_block:.1} B at {blocks} blocks; {} |",
        fills.join("; ")
    );
    println!(
        "| memory per indexed block, worst over the fill (target ≤ 64 B) | {:.1} B at {} blocks |",
        worst.0, worst.1
    );
    println!(
        "| match an 8k-token prompt (480 blocks held) | p50 {:.1} µs, p99 {:.1} µs |",
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );
    assert_eq!(left, 480, "the removals left only the matched prompt");
}
