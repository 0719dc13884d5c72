//! Identify concurrency (`max_concurrency` buckets per window) and the 24 h session
//! start limit.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// `session_start_limit` as reported by `GET /gateway/bot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStartLimit {
    /// Identifies allowed per 24 h.
    pub total: u32,
    /// Identifies left.
    pub remaining: u32,
    /// Milliseconds until the oldest start of the last 24 h ages out (0 when there is none).
    pub reset_after_ms: u64,
    /// Identify buckets.
    pub max_concurrency: u64,
}

#[derive(Debug)]
struct State {
    /// Last Identify per bucket.
    buckets: Vec<Option<Instant>>,
    /// Identifies of the last 24 h, oldest first.
    starts: VecDeque<Instant>,
}

/// See the module docs.
#[derive(Debug)]
pub struct IdentifyLimiter {
    window: Duration,
    total: u32,
    max_concurrency: u64,
    state: Mutex<State>,
}

impl IdentifyLimiter {
    /// `max_concurrency` buckets of one Identify per `window`, `total` per 24 h.
    pub fn new(max_concurrency: u64, window: Duration, total: u32) -> IdentifyLimiter {
        let max_concurrency = max_concurrency.max(1);
        IdentifyLimiter {
            window,
            total,
            max_concurrency,
            state: Mutex::new(State {
                buckets: vec![None; usize::try_from(max_concurrency).unwrap_or(1)],
                starts: VecDeque::new(),
            }),
        }
    }

    /// Take a start for `shard_id` now; `false` when its bucket was used within the
    /// window or the 24 h limit is exhausted.
    pub fn try_identify(&self, shard_id: u64, now: Instant) -> bool {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while st
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= DAY)
        {
            st.starts.pop_front();
        }
        if st.starts.len() >= self.total as usize {
            return false;
        }
        let b = usize::try_from(shard_id % self.max_concurrency).unwrap_or(0);
        if let Some(Some(last)) = st.buckets.get(b) {
            if now.duration_since(*last) < self.window {
                return false;
            }
        }
        if let Some(slot) = st.buckets.get_mut(b) {
            *slot = Some(now);
        }
        st.starts.push_back(now);
        true
    }

    /// The session start limit as `/gateway/bot` reports it.
    pub fn snapshot(&self, now: Instant) -> SessionStartLimit {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let used = st
            .starts
            .iter()
            .filter(|t| now.duration_since(**t) < DAY)
            .count();
        let reset_after = st
            .starts
            .iter()
            .find(|t| now.duration_since(**t) < DAY)
            .map_or(Duration::ZERO, |t| DAY - now.duration_since(*t));
        SessionStartLimit {
            total: self.total,
            remaining: self
                .total
                .saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)),
            reset_after_ms: u64::try_from(reset_after.as_millis()).unwrap_or(u64::MAX),
            max_concurrency: self.max_concurrency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_total() {
        let l = IdentifyLimiter::new(2, Duration::from_secs(5), 3);
        let t0 = Instant::now();
        assert!(l.try_identify(0, t0));
        assert!(!l.try_identify(2, t0), "same bucket as shard 0");
        assert!(l.try_identify(1, t0), "other bucket");
        assert!(l.try_identify(0, t0 + Duration::from_secs(5)));
        assert!(
            !l.try_identify(1, t0 + Duration::from_secs(10)),
            "total used up"
        );
        let s = l.snapshot(t0 + Duration::from_secs(10));
        assert_eq!((s.total, s.remaining, s.max_concurrency), (3, 0, 2));
        assert!(s.reset_after_ms > 0);
    }
}
