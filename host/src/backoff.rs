//! The one retry schedule of the host: exponential backoff, capped, optionally
//! limited to a number of retries and optionally jittered.
//!
//! Sinks retry a failing batch with it (`[redis]`/`[postgres]` `retries`,
//! `backoff_ms`, `backoff_max_ms`), the MongoDB source reconnects with it
//! (`reconnect`, jittered so many hosts do not reconnect in step), and held
//! durable work (`Health::retry_durably`) waits with it between attempts.

use std::time::Duration;

/// Retry number n (1-based) waits `first * 2^(n-1)`, at most `max`; with a limit,
/// there is no retry past it. Keeps its own count of failed attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// Retries allowed after the first attempt; `None`: no limit.
    retries: Option<u32>,
    /// Wait a random point in the upper half of the planned delay.
    jitter: bool,
    /// Failed attempts since the last success.
    attempt: u32,
}

impl Backoff {
    /// Unlimited, without jitter. A `max` below `first` is raised to it.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max: max.max(first), retries: None, jitter: false, attempt: 0 }
    }

    /// `new` from the milliseconds a config holds.
    pub fn from_ms(first_ms: u64, max_ms: u64) -> Backoff {
        Backoff::new(Duration::from_millis(first_ms), Duration::from_millis(max_ms))
    }

    /// At most `retries` retries after the first attempt (see `next_retry`).
    pub fn limited(mut self, retries: u32) -> Backoff {
        self.retries = Some(retries);
        self
    }

    /// Each wait is a random point in the upper half of the planned one ("equal
    /// jitter": never much sooner than planned, never in step with other hosts).
    pub fn jittered(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// The planned (unjittered) wait before retry `attempt` (1-based), ignoring
    /// the limit.
    pub fn planned(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// Counts a failed attempt and gives the wait before the next one, or `None`
    /// once the retries are used up (the caller gives up).
    pub fn next_retry(&mut self) -> Option<Duration> {
        if self.retries.is_some_and(|limit| self.attempt >= limit) {
            return None;
        }
        Some(self.next_delay())
    }

    /// Counts a failed attempt and gives the wait before the next one, whatever
    /// the limit (for work that is never given up, such as a reconnection).
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let planned = self.planned(self.attempt);
        if !self.jitter {
            return planned;
        }
        let half = planned / 2;
        half + half.mul_f64(jitter())
    }

    /// Failed attempts since the last success (or `reset`).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The retry limit, if any.
    pub fn retries(&self) -> Option<u32> {
        self.retries
    }

    /// A success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A number in [0, 1) that differs between calls and between processes.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_backoff_doubles_up_to_its_ceiling_and_stops_after_the_limit() {
        let mut b = Backoff::from_ms(100, 250).limited(4);
        let delays: Vec<_> = (0..5).map(|_| b.next_retry().map(|d| d.as_millis())).collect();
        assert_eq!(delays, vec![Some(100), Some(200), Some(250), Some(250), None]);
        assert_eq!(b.attempts(), 4);
        b.reset();
        assert_eq!(b.next_retry(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn a_jittered_backoff_stays_in_the_upper_half_of_its_plan() {
        let mut b = Backoff::from_ms(100, 1000).jittered();
        for i in 0..8u32 {
            let d = b.next_delay();
            let planned = Duration::from_millis((100u64 << i).min(1000));
            assert!(d >= planned / 2 && d <= planned, "attempt {i}: {d:?} not in [{:?}, {planned:?}]", planned / 2);
        }
        assert_eq!(b.attempts(), 8);
    }

    #[test]
    fn huge_counts_and_values_saturate_instead_of_overflowing() {
        let mut b = Backoff::new(Duration::from_millis(u64::MAX), Duration::from_millis(1));
        assert_eq!(b.next_delay(), Duration::from_millis(u64::MAX), "max is raised to first");
        let b = Backoff::from_ms(1, 86_400_000);
        assert_eq!(b.planned(u32::MAX), Duration::from_millis(1 << 20));
        let mut none = Backoff::from_ms(1, 2).limited(0);
        assert_eq!(none.next_retry(), None, "no retries: give up after the first attempt");
    }
}
