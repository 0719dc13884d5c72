//! When a connection writes: the one write-batching policy of every wire.
//!
//! Writing to a socket costs a system call and a TCP segment per write, whatever the write
//! holds; on loopback the sender also pays the receiver's TCP receive path. Under load, the
//! cheapest server is the one that writes several updates per write. A latency floor (wait
//! a little before every write) would buy that at the cost of every idle connection, so the
//! default policy is adaptive:
//!
//! - **Idle** (nothing written for `budget`): the update is written at once.
//! - **Busy** (the last write was less than `budget` ago): updates gather until `budget`
//!   after that write, then leave in one write: one frame where the wire allows it (cloud
//!   lines joined), otherwise several frames and one flush (gateway dispatches).
//!
//! So a connection writes at most once per `budget` while updates keep coming, an update
//! waits at most `budget` (plus the write itself), and a connection that receives rarely
//! never waits. `budget = 0` writes every update as soon as the connection task runs.
//!
//! [`Batch::Grid`] is the opt-in alternative of TurboWarp's server (`--send-interval-ms`):
//! every write waits for the next tick of a grid shared by all connections, idle or not.
//!
//! The policy is IO-free: it only answers "hold until when?" from the clock it is given.

use std::time::Duration;

use tokio::time::Instant;

/// A connection's write-batching state.
#[derive(Debug, Clone)]
pub enum Batch {
    /// Adaptive: write at once when idle; at most once per `budget` while busy.
    Adaptive {
        /// The longest an update may wait to join a write.
        budget: Duration,
        /// When the last write ended (`None`: never wrote).
        last: Option<Instant>,
    },
    /// Every write waits for the next multiple of `interval` on a grid shared by all
    /// connections, so their writes line up.
    Grid {
        /// The grid's step.
        interval: Duration,
    },
}

impl Batch {
    /// The policy of a connection: the grid when `send_interval` is set, else adaptive
    /// with `budget`.
    pub fn new(budget: Duration, send_interval: Duration) -> Batch {
        if send_interval.is_zero() {
            Batch::Adaptive { budget, last: None }
        } else {
            Batch::Grid {
                interval: send_interval,
            }
        }
    }

    /// Until when updates that became ready at `now` should gather before the write;
    /// `None` writes at once.
    pub fn hold_until(&self, now: Instant) -> Option<Instant> {
        match *self {
            Batch::Adaptive { budget, last } => {
                let due = last? + budget;
                (due > now).then_some(due)
            }
            Batch::Grid { interval } => Some(next_tick(now, interval)),
        }
    }

    /// Record a write that ended at `at`.
    pub fn wrote(&mut self, at: Instant) {
        if let Batch::Adaptive { last, budget } = self {
            if !budget.is_zero() {
                *last = Some(at);
            }
        }
    }
}

/// The grid's origin: the first time any connection asked (process-wide, so every
/// connection's ticks line up).
fn origin(now: Instant) -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(|| now)
}

/// The next multiple of `interval` after `now`, counted from the process-wide origin.
fn next_tick(now: Instant, interval: Duration) -> Instant {
    let origin = origin(now);
    let step = interval.as_nanos().max(1);
    let elapsed = now.saturating_duration_since(origin).as_nanos();
    let ticks = elapsed / step + 1;
    origin + Duration::from_nanos(u64::try_from(ticks * step).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_idle_connection_writes_at_once() {
        let now = Instant::now();
        let b = Batch::new(2 * MS, Duration::ZERO);
        assert_eq!(b.hold_until(now), None, "never wrote: write now");
        let mut b = b;
        b.wrote(now);
        assert_eq!(b.hold_until(now + 2 * MS), None, "budget over: idle again");
        assert_eq!(b.hold_until(now + 50 * MS), None);
    }

    #[test]
    fn a_busy_connection_holds_until_one_budget_after_its_last_write() {
        let t0 = Instant::now();
        let mut b = Batch::new(2 * MS, Duration::ZERO);
        b.wrote(t0);
        assert_eq!(b.hold_until(t0), Some(t0 + 2 * MS));
        assert_eq!(b.hold_until(t0 + MS), Some(t0 + 2 * MS));
        // The hold never exceeds the budget, wherever in the window the update came.
        for us in [0u64, 1, 999, 1999] {
            let at = t0 + Duration::from_micros(us);
            let until = b.hold_until(at).expect("busy");
            assert!(until - at <= 2 * MS);
        }
    }

    #[test]
    fn a_zero_budget_never_holds() {
        let t0 = Instant::now();
        let mut b = Batch::new(Duration::ZERO, Duration::ZERO);
        b.wrote(t0);
        assert_eq!(b.hold_until(t0), None);
    }

    #[test]
    fn the_grid_holds_every_write_until_the_next_shared_tick() {
        // After any origin another test may have set.
        let now = Instant::now() + Duration::from_secs(1);
        let interval = 16 * MS;
        let mut b = Batch::new(2 * MS, interval);
        let tick = b.hold_until(now).expect("the grid always holds");
        assert!(tick > now && tick - now <= interval);
        // Two connections asking within one step wait for the same tick.
        let other = Batch::new(Duration::ZERO, interval);
        assert_eq!(other.hold_until(now), Some(tick));
        // Writing does not move the grid.
        b.wrote(now);
        assert_eq!(b.hold_until(now), Some(tick));
        assert_eq!(b.hold_until(tick), Some(tick + interval));
    }
}
