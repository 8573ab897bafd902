use proptest::prelude::*;

use super::*;

/// What a follower did with a stream.
#[derive(Debug, Default, PartialEq)]
struct Log {
    applied: Vec<u64>,
    /// (the live batch being handled, why)
    resets: Vec<(u64, ResetReason)>,
    /// `applied.len()` at each reset.
    reset_at: Vec<usize>,
    /// Replays asked for, by start.
    replays: Vec<u64>,
    duplicates: usize,
}

/// The publisher's replay socket: the batches it still buffers, and how far past the
/// live batch that asked its answer goes (batches published meanwhile).
#[derive(Debug, Clone, Copy)]
struct Replay {
    first: u64,
    last: u64,
    overshoot: u64,
}

/// Drives `Track` exactly as the follower does.
fn deliver(track: &mut Track, log: &mut Log, seq: u64, replay: Option<Replay>) {
    let apply = |track: &mut Track, log: &mut Log, seq: u64, reset: Option<ResetReason>| {
        if let Some(r) = reset {
            log.resets.push((seq, r));
            log.reset_at.push(log.applied.len());
        }
        log.applied.push(seq);
        track.applied(seq);
    };
    match track.live(seq) {
        Live::Apply { reset } => apply(track, log, seq, reset),
        Live::Duplicate => log.duplicates += 1,
        Live::Fill { from, reset } => {
            if let Some(r) = reset {
                log.resets.push((seq, r));
                log.reset_at.push(log.applied.len());
            }
            if let Some(rp) = replay {
                log.replays.push(from);
                let end = seq.saturating_add(rp.overshoot).min(rp.last);
                for r in from.max(rp.first)..=end {
                    if let CatchUp::Apply { reset } = track.catch_up(r) {
                        apply(track, log, r, reset);
                    }
                }
            }
            if let CatchUp::Apply { reset } = track.catch_up(seq) {
                apply(track, log, seq, reset);
            }
        }
    }
}

fn run(live: &[u64], replay: Option<Replay>) -> Log {
    let mut track = Track::default();
    let mut log = Log::default();
    for &seq in live {
        deliver(&mut track, &mut log, seq, replay);
    }
    log
}

fn buffer(first: u64, last: u64, overshoot: u64) -> Option<Replay> {
    Some(Replay {
        first,
        last,
        overshoot,
    })
}

#[test]
fn in_order_from_zero_applies_everything_once() {
    let log = run(&[0, 1, 2, 3], buffer(0, 100, 0));
    assert_eq!(log.applied, [0, 1, 2, 3]);
    assert!(log.resets.is_empty() && log.replays.is_empty());
}

#[test]
fn a_late_subscriber_catches_up_from_zero() {
    let log = run(&[5, 6], buffer(0, 100, 0));
    assert_eq!(log.replays, [0]);
    assert_eq!(log.applied, [0, 1, 2, 3, 4, 5, 6]);
    assert!(log.resets.is_empty());
}

#[test]
fn without_replay_a_late_subscriber_starts_where_it_joined() {
    let log = run(&[5, 6], None);
    assert_eq!(log.applied, [5, 6]);
    assert!(log.resets.is_empty(), "nothing known, nothing to forget");
}

#[test]
fn batches_a_replay_already_applied_are_duplicates() {
    // The replay answered up to 8 while 6, 7, 8 were on their way live.
    let log = run(&[5, 6, 7, 8, 9], buffer(0, 100, 3));
    assert_eq!(log.applied, (0..=9).collect::<Vec<_>>());
    assert_eq!(log.duplicates, 3);
    assert!(log.resets.is_empty());
}

#[test]
fn a_gap_is_replayed() {
    let log = run(&[0, 1, 4, 5], buffer(0, 100, 0));
    assert_eq!(log.replays, [2]);
    assert_eq!(log.applied, [0, 1, 2, 3, 4, 5]);
    assert!(log.resets.is_empty());
}

#[test]
fn a_gap_older_than_the_replay_buffer_resets() {
    let log = run(&[0, 1, 9, 10], buffer(5, 100, 0));
    assert_eq!(log.replays, [2]);
    assert_eq!(log.resets, [(5, ResetReason::Gap)]);
    assert_eq!(log.applied, [0, 1, 5, 6, 7, 8, 9, 10]);
}

#[test]
fn a_gap_without_replay_resets() {
    let log = run(&[0, 1, 4, 5], None);
    assert_eq!(log.resets, [(4, ResetReason::Gap)]);
    assert_eq!(log.applied, [0, 1, 4, 5]);
}

#[test]
fn a_sequence_going_back_is_a_restart() {
    let log = run(&[0, 1, 2, 0, 1], None);
    assert_eq!(log.resets, [(0, ResetReason::Restart)]);
    assert_eq!(log.applied, [0, 1, 2, 0, 1]);
    // Seen after the restart had already published: catch up from 0.
    let log = run(&[0, 1, 2, 3, 4, 2, 3], buffer(0, 100, 0));
    assert_eq!(log.resets, [(2, ResetReason::Restart)]);
    assert_eq!(log.replays, [0]);
    assert_eq!(log.applied, [0, 1, 2, 3, 4, 0, 1, 2, 3]);
}

#[test]
fn a_reconnection_continues_or_fills_the_gap() {
    let mut track = Track::default();
    let mut log = Log::default();
    for seq in [0, 1] {
        deliver(&mut track, &mut log, seq, None);
    }
    track.reconnected();
    deliver(&mut track, &mut log, 2, None);
    assert_eq!(log.applied, [0, 1, 2]);
    track.reconnected();
    deliver(&mut track, &mut log, 6, buffer(0, 100, 0));
    assert_eq!(log.replays, [3]);
    assert_eq!(log.applied, [0, 1, 2, 3, 4, 5, 6]);
    // After a reconnection, an old number is a new publisher, not a duplicate.
    track.reconnected();
    deliver(&mut track, &mut log, 6, None);
    assert_eq!(log.resets, [(6, ResetReason::Restart)]);
}

#[test]
fn the_largest_sequence_numbers_do_not_overflow() {
    let log = run(&[u64::MAX - 1, u64::MAX, 0], None);
    assert_eq!(log.applied, [u64::MAX - 1, u64::MAX, 0]);
    assert_eq!(log.resets, [(0, ResetReason::Restart)]);
}

proptest! {
    /// Whatever the stream, every batch applied follows the one before it, or comes
    /// right after a reset, or is the first; and no batch is applied twice in a row
    /// of batches without a reset.
    #[test]
    fn applied_batches_are_contiguous_between_resets(
        live in prop::collection::vec(0u64..40, 0..60),
        replay in prop::option::of((0u64..20, 0u64..60, 0u64..4)),
    ) {
        let replay = replay.map(|(first, len, overshoot)| Replay { first, last: first + len, overshoot });
        let log = run(&live, replay);
        let mut prev: Option<u64> = None;
        for (i, &seq) in log.applied.iter().enumerate() {
            let reset_here = log.reset_at.contains(&i);
            if let Some(p) = prev {
                prop_assert!(reset_here || seq == p + 1, "{seq} after {p}: {log:?}");
            }
            prev = Some(seq);
        }
    }
}
