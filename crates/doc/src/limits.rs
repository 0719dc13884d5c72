//! Per-connection bounds of a room: the token bucket that paces a client's updates and
//! awareness changes, and [`ServeStats`], the counters a server reads for its metrics.
//!
//! Over-rate clients are paced, not refused: a frame is always processed whole and its
//! messages are debited from the bucket, which may go into debt; while it is in debt the
//! connection is not read from (TCP pushes back on the client). A client that stays in debt
//! for longer than [`ServeOptions::rate_abuse_after`](crate::ServeOptions::rate_abuse_after)
//! (or whose debt alone would take that long to repay) is closed with 1008.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};

/// A rate: `per_second` tokens refill continuously, up to `burst`. `per_second == 0`
/// means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second (0: no limit).
    pub per_second: u32,
    /// The bucket's size: how many messages may arrive at once after a quiet period.
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const UNLIMITED: RateLimit = RateLimit {
        per_second: 0,
        burst: 0,
    };
}

/// A token bucket that may go into debt (see the module docs).
#[derive(Debug)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(limit: RateLimit, now: Instant) -> TokenBucket {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.limit.per_second))
            .min(f64::from(self.limit.burst));
    }

    /// Take `n` tokens (the balance may go negative).
    pub(crate) fn debit(&mut self, n: u64, now: Instant) {
        if self.limit.per_second == 0 || n == 0 {
            return;
        }
        self.refill(now);
        self.tokens -= n as f64;
    }

    /// How long until the balance is back to zero.
    pub(crate) fn debt_wait(&self, now: Instant) -> Duration {
        if self.limit.per_second == 0 {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = self.tokens + elapsed * f64::from(self.limit.per_second);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / f64::from(self.limit.per_second))
        }
    }
}

/// Counters of what the bounds of [`Room::serve`](crate::Room::serve) did, shared by every
/// connection given the same `Arc` in [`ServeOptions::stats`](crate::ServeOptions::stats)
/// (a server passes one to all its clients and exports the counters as metrics).
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Clients closed with 1008 because their send queue went over its byte budget.
    pub slow_queue_bytes: AtomicU64,
    /// Clients closed with 1008 because their queue went over its frame cap.
    pub slow_queue_frames: AtomicU64,
    /// Clients closed with 1008 because one frame did not go out within its send timeout.
    pub slow_send_timeout: AtomicU64,
    /// Times a client's reading was paused because it sent updates over its rate.
    pub updates_throttled: AtomicU64,
    /// Times a client's reading was paused because it changed awareness over its rate.
    pub awareness_throttled: AtomicU64,
    /// Clients closed with 1008 for staying over a rate.
    pub rate_closes: AtomicU64,
    /// Awareness entries dropped: state larger than the per-state cap.
    pub awareness_state_too_big: AtomicU64,
    /// Awareness entries dropped: the connection already owns its cap of client ids.
    pub awareness_too_many_ids: AtomicU64,
    /// Awareness entries dropped: the room holds its cap of states or bytes.
    pub awareness_room_full: AtomicU64,
    /// Clients closed with 1008 after too many dropped awareness entries.
    pub awareness_abuse_closes: AtomicU64,
    /// Clients closed with 1007 for an awareness state that is not JSON.
    pub awareness_invalid_json: AtomicU64,
}

impl ServeStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_goes_into_debt_and_repays_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            RateLimit {
                per_second: 10,
                burst: 20,
            },
            t0,
        );
        b.debit(20, t0);
        assert_eq!(b.debt_wait(t0), Duration::ZERO);
        b.debit(5, t0);
        assert_eq!(b.debt_wait(t0), Duration::from_millis(500));
        assert_eq!(
            b.debt_wait(t0 + Duration::from_millis(200)),
            Duration::from_millis(300)
        );
        assert_eq!(b.debt_wait(t0 + Duration::from_secs(1)), Duration::ZERO);
        // Refill stops at the burst.
        b.debit(1, t0 + Duration::from_secs(100));
        b.debit(19, t0 + Duration::from_secs(100));
        assert_eq!(b.debt_wait(t0 + Duration::from_secs(100)), Duration::ZERO);
        b.debit(1, t0 + Duration::from_secs(100));
        assert!(b.debt_wait(t0 + Duration::from_secs(100)) > Duration::ZERO);
    }

    #[test]
    fn an_unlimited_bucket_never_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(RateLimit::UNLIMITED, t0);
        b.debit(1_000_000, t0);
        assert_eq!(b.debt_wait(t0), Duration::ZERO);
    }
}
