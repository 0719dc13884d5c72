//! The per-connection send limiter: 120 payloads per 60 s, with permits reserved
//! for heartbeats (which are never delayed).

use std::collections::VecDeque;
use std::time::Duration;

use nimbus_proto::gateway::{SEND_LIMIT, SEND_WINDOW_SECS};
use tokio::time::Instant;

/// A sliding window of send times (see the module docs).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    window: Duration,
    max: u32,
    reserved: u32,
    sent: VecDeque<Instant>,
}

impl RateLimiter {
    /// Discord's limit, reserving `ceil(60 s / heartbeat_interval) + 1` permits for
    /// heartbeats (at least 110 are left for commands).
    pub fn new(heartbeat_interval: Duration) -> RateLimiter {
        let window = Duration::from_secs(SEND_WINDOW_SECS);
        let per_window = if heartbeat_interval.is_zero() {
            u128::from(SEND_LIMIT)
        } else {
            window
                .as_millis()
                .div_ceil(heartbeat_interval.as_millis().max(1))
        };
        let reserved = u32::try_from(per_window + 1)
            .unwrap_or(SEND_LIMIT)
            .min(SEND_LIMIT / 12);
        RateLimiter {
            window,
            max: SEND_LIMIT,
            reserved,
            sent: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.sent.pop_front();
        }
    }

    /// Permits per window for commands (`max - reserved`).
    pub fn max_commands(&self) -> u32 {
        self.max - self.reserved
    }

    /// Command permits available now.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.prune(now);
        self.max_commands()
            .saturating_sub(u32::try_from(self.sent.len()).unwrap_or(u32::MAX))
    }

    /// Take a command permit now, or say how long to wait for one.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        if self.available(now) > 0 {
            self.sent.push_back(now);
            return Ok(());
        }
        // The permit frees up when the oldest send that keeps us at the limit ages out.
        let excess = self.sent.len() + 1 - self.max_commands() as usize;
        let at = self.sent.get(excess - 1).copied().unwrap_or(now) + self.window;
        Err(at.saturating_duration_since(now))
    }

    /// Record a heartbeat (never refused: the reserve covers it).
    pub fn heartbeat(&mut self, now: Instant) {
        self.prune(now);
        self.sent.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_heartbeats_and_frees_permits_after_the_window() {
        let mut l = RateLimiter::new(Duration::from_millis(41_250));
        assert_eq!(l.max_commands(), 117);
        let t0 = Instant::now();
        for _ in 0..117 {
            assert!(l.try_acquire(t0).is_ok());
        }
        let wait = l.try_acquire(t0).expect_err("limit reached");
        assert_eq!(wait, Duration::from_secs(60));
        // Heartbeats still go out, and stay within 120.
        l.heartbeat(t0);
        l.heartbeat(t0);
        assert!(l.try_acquire(t0 + Duration::from_secs(60)).is_ok());
        let mut fast = RateLimiter::new(Duration::from_millis(100));
        assert_eq!(
            fast.max_commands(),
            110,
            "reserve capped so commands keep 110"
        );
        assert_eq!(fast.available(t0), 110);
    }
}
