//! [`WriteLimit`]: the per-connection token bucket for client writes.
//!
//! A write over the rate is dropped and counted (the client is not told: a Scratch client
//! has no way to hear it). A client that keeps writing far over the rate is an abuser, not
//! a bursty game: once its dropped writes exceed a second budget (as many as the burst,
//! refilled at the rate) it is closed with 1008.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// What [`WriteLimit::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate.
    Allow,
    /// Over the rate: drop this write.
    Drop,
    /// Persistently over the rate: close the connection (1008).
    Close,
}

/// A token bucket for one connection's writes, and one for its over-rate writes.
pub(crate) struct WriteLimit {
    writes: DefaultDirectRateLimiter,
    drops: DefaultDirectRateLimiter,
}

impl std::fmt::Debug for WriteLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteLimit").finish_non_exhaustive()
    }
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

impl WriteLimit {
    /// `per_sec` writes per second sustained, `burst` at once.
    pub(crate) fn new(per_sec: u32, burst: u32) -> WriteLimit {
        WriteLimit {
            writes: RateLimiter::direct(quota(per_sec, burst)),
            drops: RateLimiter::direct(quota(per_sec, burst)),
        }
    }

    /// Account one write.
    pub(crate) fn check(&self) -> Verdict {
        if self.writes.check().is_ok() {
            Verdict::Allow
        } else if self.drops.check().is_ok() {
            Verdict::Drop
        } else {
            Verdict::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_within_the_burst_pass_then_are_dropped_then_close() {
        let l = WriteLimit::new(1, 3);
        let verdicts: Vec<Verdict> = (0..7).map(|_| l.check()).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Allow,
                Verdict::Allow,
                Verdict::Allow,
                Verdict::Drop,
                Verdict::Drop,
                Verdict::Drop,
                Verdict::Close
            ]
        );
    }
}
