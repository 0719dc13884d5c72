//! Reconnect backoff schedules, shared by every nimbus client (cloud, doc, gateway).
//!
//! Pure arithmetic: the caller supplies the randomness (a uniform `f64` in `[0, 1)`), so a
//! schedule is deterministic under test.
//!
//! ```
//! use std::time::Duration;
//! use nimbus_proto::backoff::Backoff;
//!
//! let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
//! assert_eq!(b.ceiling(3), Duration::from_secs(8));
//! assert_eq!(b.full_jitter(3, 0.5), Duration::from_secs(4));
//! assert_eq!(b.equal_jitter(3, 0.0), Duration::from_secs(4));
//! ```

use std::time::Duration;

/// Exponential backoff: attempt `n` (0-based) has the ceiling `min(cap, base * 2^n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First ceiling.
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
}

impl Default for Backoff {
    /// 1 s doubling up to 30 s.
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

impl Backoff {
    /// A schedule from `base` doubling up to `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap }
    }

    /// The ceiling for attempt `n` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// "Full jitter": uniform in `[0, ceiling)`; `unit` is a uniform random number in `[0, 1)`.
    pub fn full_jitter(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// "Equal jitter": uniform in `[ceiling / 2, ceiling)`, so a retry never comes sooner than
    /// half the ceiling.
    pub fn equal_jitter(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt)
            .mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_never_overflow() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(8));
        assert_eq!(b.ceiling(10), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for n in 0..40 {
            for unit in [0.0, 0.25, 0.999, 1.0, -1.0, 7.0] {
                assert!(b.full_jitter(n, unit) <= b.ceiling(n));
                assert!(b.equal_jitter(n, unit) >= b.ceiling(n) / 2);
                assert!(b.equal_jitter(n, unit) <= b.ceiling(n));
            }
        }
    }
}
