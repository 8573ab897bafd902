//! The decoder against the simulator's encoder (the peer of every integration test),
//! the ZMQ frame split, and decoding throughput.

use llmstack_sim::{KvEvent as SimEvent, KvEventsLayout, encode_batch};

use super::*;

const H0: u64 = 1_403_909_460_543_360_175;

fn core_event(e: &SimEvent, layout: KvEventsLayout) -> KvEvent {
    match e {
        SimEvent::BlockStored {
            block_hashes,
            parent_block_hash,
            token_ids,
            block_size,
            lora_name,
            extra_keys,
        } => KvEvent::BlockStored(BlockStored {
            block_hashes: block_hashes.clone(),
            parent_block_hash: *parent_block_hash,
            token_ids: token_ids.clone(),
            block_size: *block_size,
            medium: Medium::Gpu,
            lora_name: lora_name.clone(),
            // The simulator's array layout stops at lora_name, as vLLM 0.23's did
            // before extra_keys.
            extra_keys: match layout {
                KvEventsLayout::Map => extra_keys
                    .iter()
                    .map(|k| {
                        k.as_ref()
                            .map(|k| k.iter().cloned().map(ExtraKey::Text).collect())
                    })
                    .collect(),
                KvEventsLayout::Array => Vec::new(),
            },
            group_idx: 0,
            full_attention: true,
        }),
        SimEvent::BlockRemoved { block_hashes } => KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: block_hashes.clone(),
            medium: Medium::Gpu,
            group_idx: 0,
        }),
        SimEvent::AllBlocksCleared => KvEvent::AllBlocksCleared,
    }
}

/// The simulator's encoder (the peer in every test) in both layouts.
#[test]
fn round_trips_through_the_simulators_encoder() {
    let events = vec![
        SimEvent::BlockStored {
            block_hashes: vec![H0, u64::MAX, 0, 1 << 63],
            parent_block_hash: Some(u64::MAX - 7),
            token_ids: (0..64).map(|t| t * 40_000).collect(),
            block_size: 16,
            lora_name: Some("sql-lora".into()),
            extra_keys: vec![
                Some(vec!["sql-lora".into(), "salt".into()]),
                None,
                None,
                None,
            ],
        },
        SimEvent::BlockRemoved {
            block_hashes: vec![H0, u64::MAX],
        },
        SimEvent::AllBlocksCleared,
    ];
    for layout in [KvEventsLayout::Map, KvEventsLayout::Array] {
        for dp_rank in [0, 3] {
            let bytes = encode_batch(1.75e9, &events, layout, dp_rank).unwrap();
            let d = decode(&bytes).unwrap();
            assert_eq!(d.skipped, 0);
            assert_eq!(d.batch.ts, 1.75e9);
            assert_eq!(d.batch.dp_rank, dp_rank);
            let expected: Vec<KvEvent> = events.iter().map(|e| core_event(e, layout)).collect();
            assert_eq!(d.batch.events, expected, "{layout:?}");
        }
    }
}

#[test]
fn messages_are_three_frames() {
    let seq = 42u64.to_be_bytes();
    let frames: [&[u8]; 3] = [b"kv", &seq, b"\x90"];
    assert_eq!(
        decode_message(&frames).unwrap(),
        (&b"kv"[..], 42, &b"\x90"[..])
    );
    let end = [vec![], vec![0xff; 8], vec![]];
    assert_eq!(decode_message(&end).unwrap().1, u64::MAX);
    let two: [&[u8]; 2] = [b"", &seq];
    assert_eq!(
        decode_message(&two).unwrap_err().kind(),
        DecodeErrorKind::Frames
    );
    let short: [&[u8]; 3] = [b"", &seq[1..], b""];
    assert_eq!(
        decode_message(&short).unwrap_err().kind(),
        DecodeErrorKind::Frames
    );
}

/// Throughput on one core, in vLLM's shapes: run with
/// `cargo test --release -p llmstack-metrics --features kv-events --lib -- --ignored decode_throughput --nocapture`.
/// The bar (a million blocks a second) holds with a wide margin in release builds.
#[test]
#[ignore = "timing: run in release"]
fn decode_throughput() {
    use std::time::{Duration, SystemTime};

    // A step storing 4 blocks of 16 tokens for each of 8 requests, then evicting 8.
    let mut events: Vec<SimEvent> = (0..8u64)
        .map(|r| SimEvent::BlockStored {
            block_hashes: (0..4).map(|b| (r * 4 + b) | 1 << 63).collect(),
            parent_block_hash: Some(r),
            token_ids: (0..64).map(|t| 1000 + t).collect(),
            block_size: 16,
            lora_name: None,
            extra_keys: vec![None; 4],
        })
        .collect();
    events.push(SimEvent::BlockRemoved {
        block_hashes: (0..8).collect(),
    });
    for layout in [KvEventsLayout::Map, KvEventsLayout::Array] {
        let bytes = encode_batch(1.7e9, &events, layout, 0).unwrap();
        let blocks_per_batch = 8 * 4 + 8;
        let start = SystemTime::now();
        let mut batches = 0u64;
        while start.elapsed().unwrap_or_default() < Duration::from_millis(500) {
            for _ in 0..1000 {
                let d = decode(std::hint::black_box(&bytes)).unwrap();
                assert_eq!(d.batch.events.len(), 9);
            }
            batches += 1000;
        }
        let secs = start.elapsed().unwrap().as_secs_f64();
        let rate = (batches * blocks_per_batch) as f64 / secs;
        println!(
            "{layout:?}: {:.1} M blocks/s ({:.0} k batches/s, {} bytes each)",
            rate / 1e6,
            batches as f64 / secs / 1e3,
            bytes.len()
        );
        if !cfg!(debug_assertions) {
            assert!(rate > 1e6, "{rate} blocks/s");
        }
    }
}
