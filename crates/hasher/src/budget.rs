//! The read budget: a token bucket in its "virtual scheduling" form
//! (GCRA), driven by `tokio::time` so tests can pause the clock.
//!
//! Instead of a token count refilled by a timer, the bucket keeps the
//! theoretical time `tat` at which everything reserved so far will have
//! been paid for at `rate`. Reserving `n` bytes moves `tat` by `n / rate`;
//! the caller may go ahead once `tat - burst / rate` is reached. After an
//! idle period `tat` is first brought up to now, so at most `burst` bytes
//! pass without waiting.

use std::sync::Mutex;
use std::time::Duration;

use collector_core::lock;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Budget {
    bytes_per_sec: u64,
    burst: Duration,
    tat: Mutex<Option<Instant>>,
}

impl Budget {
    /// `bytes_per_sec` must be positive (the engine does not build a
    /// budget for "unlimited").
    pub(crate) fn new(bytes_per_sec: u64, burst_bytes: u64) -> Self {
        let mut budget = Self {
            bytes_per_sec,
            burst: Duration::ZERO,
            tat: Mutex::new(None),
        };
        budget.burst = budget.cost(burst_bytes);
        budget
    }

    /// How long `bytes` take at the budget's rate.
    fn cost(&self, bytes: u64) -> Duration {
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_sec.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Reserves `bytes`, returning when the caller may read them (`None`:
    /// at once). The reservation is made now, so concurrent readers queue
    /// in the order they asked, and a dropped waiter's bytes stay spent.
    pub(crate) fn reserve(&self, bytes: u64) -> Option<Instant> {
        let now = Instant::now();
        // The guarded section cannot panic; recover from poisoning anyway.
        let mut tat = lock(&self.tat);
        let start = tat.map_or(now, |t| t.max(now));
        // Overflow needs centuries of debt; never panic over it.
        let next = start.checked_add(self.cost(bytes)).unwrap_or(start);
        *tat = Some(next);
        drop(tat);
        next.checked_sub(self.burst).filter(|&ready| ready > now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let b = Budget::new(1000, 100);
        // The first 100 bytes are the burst.
        assert_eq!(b.reserve(100), None);
        let t0 = Instant::now();
        assert_eq!(b.reserve(100), Some(t0 + Duration::from_millis(100)));
        assert_eq!(b.reserve(500), Some(t0 + Duration::from_millis(600)));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_only_the_burst() {
        let b = Budget::new(1000, 100);
        assert_eq!(
            b.reserve(1000),
            Some(Instant::now() + Duration::from_millis(900))
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(b.reserve(100), None);
        let now = Instant::now();
        assert_eq!(b.reserve(50), Some(now + Duration::from_millis(50)));
    }

    #[test]
    fn cost_does_not_overflow() {
        let b = Budget::new(1, 0);
        assert_eq!(b.cost(u64::MAX), Duration::from_nanos(u64::MAX));
        let fast = Budget::new(u64::MAX, 0);
        assert_eq!(fast.cost(1), Duration::ZERO);
    }
}
