//! Identify concurrency (`max_concurrency` buckets per window) and the 24 h session
//! start limit, kept per bot.
//!
//! [`IdentifyBudget`] is the seam: where the budgets are kept. [`IdentifyLimiter`] keeps
//! them in this process (one node: [`in_memory`]); with `--redis` the composition root
//! passes nimbus-redis's `RedisIdentify`, which keeps them in Redis so that a bot has one
//! budget however many nodes it identifies on, as a Discord bot token does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

/// The session start limit's period.
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Where the gateway's identify budgets are kept.
///
/// Contract, for every implementation: a bot (named by the caller: a static token, or a
/// signed token's issuer and subject) has `max_concurrency` buckets (shard `s` uses bucket
/// `s % max_concurrency`) of one Identify per window, and `total` Identifies per [`DAY`];
/// [`try_identify`](IdentifyBudget::try_identify) takes one or refuses without taking
/// anything; [`snapshot`](IdentifyBudget::snapshot) changes nothing. Neither fails: an
/// implementation that cannot reach where it keeps budgets answers from a local one and
/// says so in its metrics and logs (a gateway must not stop identifying because a shared
/// store is away).
pub trait IdentifyBudget: Send + Sync + std::fmt::Debug + 'static {
    /// Take a start of `bot` for `shard_id` now; `false` when its bucket was used within
    /// the window or its daily limit is spent.
    fn try_identify<'a>(&'a self, bot: &'a str, shard_id: u64) -> BoxFuture<'a, bool>;

    /// The session start limit of `bot` now (for `GET /gateway/bot`).
    fn snapshot<'a>(&'a self, bot: &'a str) -> BoxFuture<'a, SessionStartLimit>;
}

/// The budgets of one node: an [`IdentifyLimiter`] with the gateway's settings.
pub fn in_memory(max_concurrency: u64, window: Duration, total: u32) -> Arc<dyn IdentifyBudget> {
    Arc::new(IdentifyLimiter::new(max_concurrency, window, total))
}

impl IdentifyBudget for IdentifyLimiter {
    fn try_identify<'a>(&'a self, bot: &'a str, shard_id: u64) -> BoxFuture<'a, bool> {
        let ok = IdentifyLimiter::try_identify(self, bot, shard_id, Instant::now());
        Box::pin(std::future::ready(ok))
    }

    fn snapshot<'a>(&'a self, bot: &'a str) -> BoxFuture<'a, SessionStartLimit> {
        let limit = IdentifyLimiter::snapshot(self, bot, Instant::now());
        Box::pin(std::future::ready(limit))
    }
}

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

impl SessionStartLimit {
    /// The limit of a bot that started `used` sessions in the last [`DAY`], the oldest of
    /// them `reset_after_ms` before it ages out.
    pub fn of(total: u32, used: u64, reset_after_ms: u64, max_concurrency: u64) -> Self {
        SessionStartLimit {
            total,
            remaining: total.saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)),
            reset_after_ms,
            max_concurrency,
        }
    }
}

#[derive(Debug)]
struct State {
    /// Last Identify per bucket.
    buckets: Vec<Option<Instant>>,
    /// Identifies of the last 24 h, oldest first.
    starts: VecDeque<Instant>,
}

impl State {
    fn new(max_concurrency: u64) -> State {
        State {
            buckets: vec![None; usize::try_from(max_concurrency).unwrap_or(1)],
            starts: VecDeque::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= DAY)
        {
            self.starts.pop_front();
        }
    }

    /// Nothing left to remember: no start in the last 24 h (so no bucket within its window).
    fn forgotten(&self) -> bool {
        self.starts.is_empty()
    }
}

/// Bots whose budgets are kept at once; a new bot beyond it (after forgetting every bot
/// with no start in the last 24 h) is refused until one ages out. Each bot keeps up to
/// `total` start times (16 KiB at the default 1,000).
pub const MAX_BOTS: usize = 10_000;

/// See the module docs. Each bot (a static token, or a signed token's issuer and subject:
/// the caller names it) has its own buckets and its own 24 h limit, as each Discord bot
/// token does: one bot identifying in a loop spends its own budget, not the others'.
#[derive(Debug)]
pub struct IdentifyLimiter {
    window: Duration,
    total: u32,
    max_concurrency: u64,
    bots: Mutex<HashMap<String, State>>,
}

impl IdentifyLimiter {
    /// `max_concurrency` buckets of one Identify per `window`, `total` per 24 h, per bot.
    pub fn new(max_concurrency: u64, window: Duration, total: u32) -> IdentifyLimiter {
        IdentifyLimiter {
            window,
            total,
            max_concurrency: max_concurrency.max(1),
            bots: Mutex::new(HashMap::new()),
        }
    }

    /// Take a start of `bot` for `shard_id` now; `false` when its bucket was used within
    /// the window, its 24 h limit is exhausted, or [`MAX_BOTS`] other bots hold budgets.
    pub fn try_identify(&self, bot: &str, shard_id: u64, now: Instant) -> bool {
        let mut bots = self.bots.lock().unwrap_or_else(PoisonError::into_inner);
        if !bots.contains_key(bot) && bots.len() >= MAX_BOTS {
            bots.retain(|_, st| {
                st.expire(now);
                !st.forgotten()
            });
            if bots.len() >= MAX_BOTS {
                return false;
            }
        }
        let st = bots
            .entry(bot.to_owned())
            .or_insert_with(|| State::new(self.max_concurrency));
        st.expire(now);
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

    /// The session start limit of `bot` as `/gateway/bot` reports it.
    pub fn snapshot(&self, bot: &str, now: Instant) -> SessionStartLimit {
        let bots = self.bots.lock().unwrap_or_else(PoisonError::into_inner);
        let starts = bots.get(bot).map(|st| &st.starts);
        let live = || {
            starts
                .into_iter()
                .flatten()
                .filter(|t| now.duration_since(**t) < DAY)
        };
        let used = live().count();
        let reset_after = live()
            .next()
            .map_or(Duration::ZERO, |t| DAY - now.duration_since(*t));
        SessionStartLimit::of(
            self.total,
            used as u64,
            u64::try_from(reset_after.as_millis()).unwrap_or(u64::MAX),
            self.max_concurrency,
        )
    }

    /// Bots with budgets kept.
    #[cfg(test)]
    fn bots(&self) -> usize {
        self.bots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_total() {
        let l = IdentifyLimiter::new(2, Duration::from_secs(5), 3);
        let t0 = Instant::now();
        assert!(l.try_identify("a", 0, t0));
        assert!(!l.try_identify("a", 2, t0), "same bucket as shard 0");
        assert!(l.try_identify("a", 1, t0), "other bucket");
        assert!(l.try_identify("a", 0, t0 + Duration::from_secs(5)));
        assert!(
            !l.try_identify("a", 1, t0 + Duration::from_secs(10)),
            "total used up"
        );
        let s = l.snapshot("a", t0 + Duration::from_secs(10));
        assert_eq!((s.total, s.remaining, s.max_concurrency), (3, 0, 2));
        assert!(s.reset_after_ms > 0);
    }

    #[test]
    fn one_bot_spending_its_budget_leaves_every_other_bots_budget_whole() {
        let l = IdentifyLimiter::new(1, Duration::from_secs(5), 2);
        let t0 = Instant::now();
        assert!(l.try_identify("greedy", 0, t0));
        assert!(!l.try_identify("greedy", 0, t0), "its bucket is used");
        assert!(
            l.try_identify("other", 0, t0),
            "another bot's bucket is its own"
        );
        assert!(l.try_identify("greedy", 0, t0 + Duration::from_secs(5)));
        assert!(!l.try_identify("greedy", 0, t0 + Duration::from_secs(10)));
        let greedy = l.snapshot("greedy", t0 + Duration::from_secs(10));
        let other = l.snapshot("other", t0 + Duration::from_secs(10));
        let never = l.snapshot("never", t0 + Duration::from_secs(10));
        assert_eq!(
            (greedy.remaining, other.remaining, never.remaining),
            (0, 1, 2)
        );
        assert_eq!(never.reset_after_ms, 0);
        assert_eq!(l.bots(), 2, "asking for a snapshot keeps nothing");
    }

    #[test]
    fn the_bots_kept_are_bounded_and_those_without_a_start_in_a_day_make_room() {
        let l = IdentifyLimiter::new(1, Duration::from_secs(5), 10);
        let t0 = Instant::now();
        for i in 0..MAX_BOTS {
            assert!(l.try_identify(&format!("b{i}"), 0, t0));
        }
        assert!(!l.try_identify("late", 0, t0), "over the bound: refused");
        assert!(
            l.try_identify("b0", 0, t0 + Duration::from_secs(5)),
            "known bots go on"
        );
        let next_day = t0 + DAY + Duration::from_secs(1);
        assert!(
            l.try_identify("late", 0, next_day),
            "the quiet ones are forgotten"
        );
        assert_eq!(l.bots(), 2, "b0 (started again within the day) and late");
    }
}
