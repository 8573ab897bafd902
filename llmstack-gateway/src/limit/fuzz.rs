//! Fuzz target (property test) for the token [`Bucket`]: random sequences of clock
//! moves (forward, and backward as racing callers see it), takes and give-backs, waits
//! and limit changes.
//!
//! Invariants: nothing panics; the level stays within one minute's debt and the
//! capacity (seen through `until_full`, at most two minutes); `remaining` never exceeds
//! the limit; `wait_for` says `None` exactly when the tokens are there (seen through
//! `remaining`), and after waiting the duration it gave, the tokens are there (within a nanosecond, and
//! from the latest `now` the bucket saw).
//!
//! `LLMSTACK_FUZZ_CASES` sets the number of cases (default 2000, the CI short mode);
//! `scripts/fuzz` runs the long mode in release.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// Cases per target: `LLMSTACK_FUZZ_CASES`, else 2000.
fn cases() -> u32 {
    std::env::var("LLMSTACK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Limits up to this are exact in `f64` with room for fractions: the checks that
/// compare whole tokens hold exactly below it.
const EXACT: u64 = 1 << 40;

#[derive(Debug, Clone)]
enum Op {
    /// The clock moves on.
    Advance(Duration),
    /// A caller with an older `now`.
    Back(Duration),
    /// `take` (negative: a give-back), as a multiple of the limit.
    Take(f64),
    /// `take` of whole tokens, as the limiter does.
    TakeTokens(i64),
    WaitFor(u64),
    /// The limit follows the tenant (a reloaded keys file).
    Follow(Option<u64>),
}

fn per_minute() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1..=120u64,
        2 => 1..=1_000_000u64,
        1 => 1..=EXACT,
        1 => any::<u64>().prop_map(|n| n.max(1)),
        1 => Just(u64::MAX),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        (0u64..1_000).prop_map(Duration::from_nanos),
        (0u64..5_000).prop_map(Duration::from_millis),
        (0u64..600).prop_map(Duration::from_secs),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => duration().prop_map(Op::Advance),
        1 => duration().prop_map(Op::Back),
        2 => (-2.0..2.0f64).prop_map(Op::Take),
        3 => prop_oneof![-3..=3i64, -100_000..=100_000i64, any::<i64>()].prop_map(Op::TakeTokens),
        3 => prop_oneof![0..=3u64, 0..=200u64, any::<u64>()].prop_map(Op::WaitFor),
        1 => prop::option::weighted(0.9, per_minute()).prop_map(Op::Follow),
    ]
}

/// How far the limit is below the highest it had since the bucket was made. A lower
/// limit once kept the old debt (found here: `a_lower_limit_keeps_the_debt_within_a_minute`);
/// now the level is brought within the new limit, so every bound holds whatever it is.
#[derive(Debug, Clone, Copy)]
struct Lowered(f64);

impl Lowered {
    /// Whether the bounds that assume a level of at least -capacity are skipped: never.
    fn any(self) -> bool {
        let _ = self.0;
        false
    }

    /// Whether `until_full` and `wait_for` are skipped (they once panicked after a
    /// much lower limit: `a_much_lower_limit_does_not_panic`): never.
    fn panics(self) -> bool {
        let _ = self.0;
        false
    }
}

/// The checks that hold at any moment.
fn check(b: &Bucket, now: Instant, lowered: Lowered) -> Result<(), TestCaseError> {
    let pm = b.per_minute();
    // (Above 2^53 the capacity as `f64` may round up, and `remaining` with it.)
    if pm <= EXACT {
        prop_assert!(b.remaining(now) <= pm);
    }
    if lowered.panics() {
        return Ok(());
    }
    let until_full = b.until_full(now);
    // A level of -capacity is two minutes from full.
    if !lowered.any() {
        prop_assert!(
            until_full <= Duration::from_secs(120) + Duration::from_micros(1),
            "{until_full:?} to full: a level below -capacity"
        );
    }
    if b.full_at(now) {
        prop_assert_eq!(until_full, Duration::ZERO);
        if pm <= EXACT {
            prop_assert_eq!(b.remaining(now), pm);
        }
    }
    Ok(())
}

/// `wait_for(n)` against `remaining`, and the wait it gives.
fn check_wait(
    b: &mut Bucket,
    n: u64,
    now: Instant,
    latest: Instant,
    lowered: Lowered,
) -> Result<(), TestCaseError> {
    let pm = b.per_minute();
    let need = n.min(pm);
    let wait = b.wait_for(n, now);
    let remaining = b.remaining(now);
    let Some(d) = wait else {
        if pm <= EXACT {
            prop_assert!(remaining >= need, "None, but {remaining} < {need}");
        }
        return Ok(());
    };
    if pm <= EXACT {
        prop_assert!(
            remaining < need || (need == 0 && remaining == 0),
            "{d:?} to wait, but {remaining} >= {need}"
        );
    }
    if lowered.any() {
        return Ok(());
    }
    prop_assert!(d <= Duration::from_secs(120) + Duration::from_micros(1));
    // After the wait, the tokens are there: from the latest `now` the bucket saw (a
    // caller with an older one is told the wait from its own, up to the skew short),
    // and a nanosecond more (`d` is rounded to whole nanoseconds; the limiter's
    // `Retry-After` to whole seconds, up).
    let mut later = b.clone();
    let again = later.wait_for(n, latest + d + Duration::from_nanos(1));
    prop_assert!(
        again.is_none(),
        "after waiting {d:?} for {n} of {pm}/min: {again:?} more"
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_bucket(first in per_minute(), ops in vec(op(), 1..24)) {
        let start = Instant::now();
        let mut now = start;
        let mut latest = now;
        let mut slot = None;
        Bucket::follow(&mut slot, Some(first), now);
        // The highest limit since the bucket was made.
        let mut peak = first;
        for op in ops {
            match op {
                Op::Advance(d) => now += d,
                Op::Back(d) => now = now.checked_sub(d).unwrap_or(now).max(start),
                Op::Follow(pm) => {
                    let made = slot.is_none();
                    Bucket::follow(&mut slot, pm, now);
                    prop_assert_eq!(slot.as_ref().map(Bucket::per_minute), pm);
                    if let Some(pm) = pm {
                        peak = if made { pm } else { peak.max(pm) };
                    }
                }
                Op::Take(x) => {
                    if let Some(b) = slot.as_mut() {
                        b.take(x * b.per_minute() as f64);
                    }
                }
                Op::TakeTokens(n) => {
                    if let Some(b) = slot.as_mut() {
                        b.take(n as f64);
                    }
                }
                Op::WaitFor(n) => {
                    if let Some(b) = slot.as_mut() {
                        let lowered = Lowered(peak as f64 / b.per_minute() as f64);
                        if !lowered.panics() {
                            check_wait(b, n, now, latest, lowered)?;
                        }
                    }
                }
            }
            latest = latest.max(now);
            if let Some(b) = slot.as_ref() {
                check(b, now, Lowered(peak as f64 / b.per_minute() as f64))?;
            }
        }
    }
}

// === bugs the target found, kept as regression tests ===

/// Found by `fuzz_bucket`: `Bucket::follow` to a lower limit caps the level from above
/// only, so a debt of the old limit stays: with 40/min taken to -40 and the limit
/// lowered to 1/min, the bucket is 41 minutes from full, not at most two (the level is
/// below minus one minute's tokens, which the bucket's doc rules out).
#[test]
fn a_lower_limit_keeps_the_debt_within_a_minute() {
    let now = Instant::now();
    let mut slot = None;
    Bucket::follow(&mut slot, Some(40), now);
    if let Some(b) = slot.as_mut() {
        b.take(80.0);
    }
    Bucket::follow(&mut slot, Some(1), now);
    let until_full = slot.as_ref().map(|b| b.until_full(now));
    assert!(
        until_full.is_some_and(|d| d <= Duration::from_secs(120)),
        "{until_full:?}"
    );
}

/// Found by `fuzz_bucket`, a consequence of the above: with a limit lowered by a factor
/// over about 3·10^17 while in debt (e.g. `u64::MAX`/min, a full bucket charged twice
/// its capacity, so at -capacity, then 1/min), `until_full` and `wait_for` compute a wait beyond
/// `Duration`'s range and panic in `Duration::from_secs_f64` (bucket.rs, `until_full`
/// and `wait_for`).
#[test]
fn a_much_lower_limit_does_not_panic() {
    let now = Instant::now();
    let mut slot = None;
    Bucket::follow(&mut slot, Some(u64::MAX), now);
    if let Some(b) = slot.as_mut() {
        b.take(2.0 * u64::MAX as f64);
    }
    Bucket::follow(&mut slot, Some(1), now);
    if let Some(b) = slot.as_mut() {
        let _ = b.until_full(now);
        let _ = b.wait_for(1, now);
    }
}
