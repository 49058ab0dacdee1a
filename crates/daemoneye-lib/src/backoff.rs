//! The one exponential backoff: every retry loop in the workspace (the IPC
//! client's connects, the agent's collector restarts, analysis-chain stage
//! retries, sink deliveries) waits with a [`Backoff`].
//!
//! ```
//! use std::time::Duration;
//!
//! use daemoneye_lib::Backoff;
//!
//! let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
//! assert_eq!(b.next(), Duration::from_millis(100));
//! assert_eq!(b.next(), Duration::from_millis(200));
//! assert_eq!(b.delay(10), Duration::from_secs(1), "capped");
//! b.reset();
//! assert_eq!(b.next(), Duration::from_millis(100));
//!
//! // Half of each wait random: from 50 ms to 100 ms for the first one.
//! let mut j = b.with_jitter(0.5);
//! j.reset();
//! let wait = j.next();
//! assert!(wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100));
//! ```

use std::time::Duration;

/// A number in `0..1` that differs between calls and processes, for
/// jittering retry waits so that peers restarted together do not retry in
/// step. From std's per-instance random hash keys: not for cryptography,
/// and no generator crate for one number.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // The top 53 bits, exactly representable in an f64.
    #[allow(clippy::cast_precision_loss)]
    let x = (bits >> 11) as f64 / (1u64 << 53) as f64;
    x
}

/// Capped exponential backoff with optional jitter.
///
/// The wait before retry `attempt` (0-based: the first retry is attempt 0)
/// is at most `initial × multiplier^attempt`, capped at `max`
/// ([`delay`](Self::delay)). With a jitter fraction `j`, the upper `j` of
/// each wait is scaled by a random number, so that a wait is never shorter
/// than `(1 − j)` of its step ([`jittered`](Self::jittered)).
///
/// [`next`](Self::next) returns the wait for the current attempt and moves
/// to the following one; [`reset`](Self::reset) starts over (after a
/// success, or a stretch of good service).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: u32,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    /// `initial` doubling up to `max`, no jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            multiplier: 2,
            jitter: 0.0,
            attempt: 0,
        }
    }

    /// The same with each step multiplied by `multiplier` (at least 1).
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: u32) -> Self {
        self.multiplier = multiplier.max(1);
        self
    }

    /// The same with the upper `fraction` (clamped to `0..=1`) of each wait
    /// made random.
    #[must_use]
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The first wait.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest wait.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The step before retry `attempt` (0-based), without jitter:
    /// `initial × multiplier^attempt`, capped at `max`; never overflows.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.multiplier
            .checked_pow(attempt)
            .and_then(|factor| self.initial.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The wait before retry `attempt` given a random `r` in `0..=1`
    /// (clamped): the step less its jittered part, plus that part scaled by
    /// `r`. Pure, for tests and for callers with their own randomness.
    pub fn jittered(&self, attempt: u32, r: f64) -> Duration {
        let step = self.delay(attempt);
        if self.jitter == 0.0 {
            return step;
        }
        let r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        let spread = step.mul_f64(self.jitter);
        step.saturating_sub(spread) + spread.mul_f64(r)
    }

    /// The wait for the current attempt (jittered with [`jitter`]), then
    /// moves to the next attempt.
    #[allow(clippy::should_implement_trait)] // an endless sequence, not an `Iterator` to collect
    pub fn next(&mut self) -> Duration {
        let wait = self.jittered(self.attempt, jitter());
        self.attempt = self.attempt.saturating_add(1);
        wait
    }

    /// Starts over from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Waits taken since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_and_is_capped_without_overflow() {
        let b = Backoff::new(10 * MS, 100 * MS);
        let waits: Vec<Duration> = (0..6).map(|a| b.delay(a)).collect();
        assert_eq!(
            waits,
            [10 * MS, 20 * MS, 40 * MS, 80 * MS, 100 * MS, 100 * MS]
        );
        assert_eq!(b.delay(u32::MAX), 100 * MS);
        let huge = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(huge.delay(3), Duration::MAX, "overflow is the cap");
        let triple = b.with_multiplier(3);
        assert_eq!((triple.delay(1), triple.delay(2)), (30 * MS, 90 * MS));
        assert_eq!(b.with_multiplier(0).delay(5), 10 * MS, "at least 1");
    }

    #[test]
    fn next_walks_the_steps_and_reset_starts_over() {
        let mut b = Backoff::new(10 * MS, 40 * MS);
        let walked: Vec<Duration> = (0..4).map(|_| b.next()).collect();
        assert_eq!(walked, [10 * MS, 20 * MS, 40 * MS, 40 * MS]);
        assert_eq!(b.attempt(), 4);
        b.reset();
        assert_eq!((b.attempt(), b.next()), (0, 10 * MS));
    }

    #[test]
    fn jitter_is_bounded_by_its_fraction() {
        let b = Backoff::new(10 * MS, 100 * MS).with_jitter(0.5);
        assert_eq!(b.jittered(1, 0.0), 10 * MS);
        assert_eq!(b.jittered(1, 1.0), 20 * MS);
        assert_eq!(b.jittered(5, 0.5), 75 * MS);
        assert_eq!(b.jittered(5, 7.0), 100 * MS, "r is clamped");
        assert_eq!(b.jittered(5, f64::NAN), 50 * MS);
        assert_eq!(b.with_jitter(4.0).jittered(0, 0.0), Duration::ZERO);
        assert_eq!(b.with_jitter(0.0).jittered(2, 0.3), 40 * MS, "no jitter");
        let mut walk = b;
        for attempt in 0..50 {
            let step = b.delay(attempt);
            let wait = walk.next();
            assert!(
                wait >= step / 2 && wait <= step,
                "{attempt}: {wait:?} of {step:?}"
            );
        }
        let waits: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| b.jittered(9, jitter())).collect();
        assert!(waits.len() > 1, "it varies");
    }

    #[test]
    fn jitter_is_in_range_and_varies() {
        let samples: Vec<f64> = (0..200).map(|_| jitter()).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let distinct: std::collections::BTreeSet<u64> =
            samples.iter().map(|x| x.to_bits()).collect();
        assert!(distinct.len() > 190, "{}", distinct.len());
        let mean = samples.iter().sum::<f64>() / 200.0;
        assert!((0.35..0.65).contains(&mean), "{mean}");
    }
}
