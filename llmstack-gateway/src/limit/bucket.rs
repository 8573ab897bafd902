//! A token bucket refilled continuously at a rate per minute.

use std::time::Duration;

use tokio::time::Instant;

/// Holds up to `per_minute` tokens and gains `per_minute` a minute. Its level may go
/// below zero (a charge corrected upwards after the fact), down to minus one minute's
/// tokens.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    per_minute: u64,
    level: f64,
    at: Instant,
}

/// `secs` as a duration; a minute for what is not a finite, non-negative number (a
/// limit of zero).
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::from_secs(60))
}

impl Bucket {
    /// A full bucket.
    fn new(per_minute: u64, now: Instant) -> Self {
        Self {
            per_minute,
            level: per_minute as f64,
            at: now,
        }
    }

    /// Makes `slot` a bucket of `per_minute` (a new full one, or the one there with its
    /// level capped), or none.
    pub(super) fn follow(slot: &mut Option<Self>, per_minute: Option<u64>, now: Instant) {
        match (slot.as_mut(), per_minute) {
            (_, None) => *slot = None,
            (Some(b), Some(n)) if b.per_minute == n => {}
            (Some(b), Some(n)) => {
                b.refill(now);
                b.per_minute = n;
                // Within the new limit both ways: at most a minute of debt.
                b.level = b.level.clamp(-(n as f64), n as f64);
            }
            (None, Some(n)) => *slot = Some(Self::new(n, now)),
        }
    }

    /// The limit.
    pub(super) fn per_minute(&self) -> u64 {
        self.per_minute
    }

    fn capacity(&self) -> f64 {
        self.per_minute as f64
    }

    /// Tokens gained per second.
    fn rate(&self) -> f64 {
        self.capacity() / 60.0
    }

    /// The level at `now`, without changing the bucket.
    fn level_at(&self, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * self.rate();
        (self.level + gained).min(self.capacity())
    }

    /// Adds what was gained since the last refill.
    pub(super) fn refill(&mut self, now: Instant) {
        self.level = self.level_at(now);
        self.at = self.at.max(now);
    }

    /// `None` when `n` tokens can be taken now (a request larger than the bucket needs
    /// it full), else how long until they can.
    pub(super) fn wait_for(&mut self, n: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        let need = (n as f64).min(self.capacity());
        (self.level < need).then(|| seconds((need - self.level) / self.rate()))
    }

    /// Takes `n` tokens (a negative `n` gives them back), within one minute's debt and
    /// the capacity.
    pub(super) fn take(&mut self, n: f64) {
        self.level = (self.level - n).clamp(-self.capacity(), self.capacity());
    }

    /// Whole tokens left at `now`.
    pub(super) fn remaining(&self, now: Instant) -> u64 {
        self.level_at(now).max(0.0) as u64
    }

    /// Time until the bucket is full again.
    pub(super) fn until_full(&self, now: Instant) -> Duration {
        seconds((self.capacity() - self.level_at(now)) / self.rate())
    }

    /// Whether the bucket is full at `now`.
    pub(super) fn full_at(&self, now: Instant) -> bool {
        self.level_at(now) >= self.capacity()
    }
}
