//! Document-change debounce, IO-free: the caller supplies the time.
//!
//! A document room can change many times a second; a webhook receiver usually wants to
//! know *that* it changed, not every update. The server records each change with
//! [`Debouncer::touch`] and, on a timer ([`Debouncer::next_due`] says when), emits one
//! `DOC_CHANGED` event per room returned by [`Debouncer::due`].
//!
//! - **Max-wait:** a room is due `interval` after its first change not yet emitted; changes
//!   in between do not push it back. A room edited without pause is therefore emitted once
//!   per interval, and a single change is emitted one interval after it happened.
//! - After a room is returned by `due`, its next change starts a new interval.
//! - **Bound:** at most `max_rooms` rooms are tracked. A change to a new room when the bound
//!   is reached evicts the room with the oldest pending change, which `touch` returns: the
//!   caller emits it at once (early, never lost). Memory stays bounded; under an
//!   overload of distinct rooms, rooms are emitted sooner than their interval.
//! - Times are expected not to go backwards (a monotonic clock); rooms are kept in the
//!   order of their first pending change.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default [`Debouncer::new`] interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default bound on tracked rooms.
pub const DEFAULT_MAX_ROOMS: usize = 10_000;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Debouncer {
    interval: Duration,
    max_rooms: usize,
    /// Pending rooms, in the order of their first pending change.
    order: VecDeque<(Instant, Arc<str>)>,
    pending: HashSet<Arc<str>>,
}

impl Default for Debouncer {
    /// [`DEFAULT_INTERVAL`], [`DEFAULT_MAX_ROOMS`].
    fn default() -> Self {
        Debouncer::new(DEFAULT_INTERVAL, DEFAULT_MAX_ROOMS)
    }
}

impl Debouncer {
    /// A debouncer emitting each room at most once per `interval`, tracking at most
    /// `max_rooms` rooms (at least 1).
    pub fn new(interval: Duration, max_rooms: usize) -> Debouncer {
        Debouncer {
            interval,
            max_rooms: max_rooms.max(1),
            order: VecDeque::new(),
            pending: HashSet::new(),
        }
    }

    /// Record that `room` changed at `now`. Returns a room to emit at once when the bound
    /// forced its eviction (see the module docs), else `None`.
    pub fn touch(&mut self, room: &str, now: Instant) -> Option<String> {
        if self.pending.contains(room) {
            return None;
        }
        let mut evicted = None;
        if self.pending.len() >= self.max_rooms {
            if let Some((_, old)) = self.order.pop_front() {
                self.pending.remove(&old);
                evicted = Some(old.to_string());
            }
        }
        let room: Arc<str> = Arc::from(room);
        self.pending.insert(room.clone());
        self.order.push_back((now, room));
        evicted
    }

    /// The rooms whose interval has elapsed at `now`, oldest change first; they are no
    /// longer pending.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((first, _)) = self.order.front() {
            if now.saturating_duration_since(*first) < self.interval {
                break;
            }
            if let Some((_, room)) = self.order.pop_front() {
                self.pending.remove(&room);
                out.push(room.to_string());
            }
        }
        out
    }

    /// When the next room falls due (`None`: nothing pending).
    pub fn next_due(&self) -> Option<Instant> {
        self.order.front().map(|(first, _)| *first + self.interval)
    }

    /// Rooms pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no room is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_single_change_is_due_one_interval_later_and_only_once() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(1000), 10);
        assert_eq!(d.touch("a", t0), None);
        assert!(d.due(t0 + ms(999)).is_empty());
        assert_eq!(d.next_due(), Some(t0 + ms(1000)));
        assert_eq!(d.due(t0 + ms(1000)), ["a"]);
        assert!(d.due(t0 + ms(5000)).is_empty());
        assert!(d.is_empty());
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn a_constantly_edited_room_is_due_once_per_interval() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(1000), 10);
        let mut emitted = Vec::new();
        // An edit every 100 ms for 3.5 s, checking every 100 ms.
        for step in 0..=35u64 {
            let now = t0 + ms(step * 100);
            d.touch("doc", now);
            for _ in d.due(now) {
                emitted.push(step * 100);
            }
        }
        assert_eq!(emitted, [1000, 2100, 3200]);
    }

    #[test]
    fn rooms_fall_due_independently_in_order_of_their_first_change() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(1000), 10);
        d.touch("b", t0);
        d.touch("a", t0 + ms(300));
        d.touch("b", t0 + ms(600));
        d.touch("c", t0 + ms(900));
        assert_eq!(d.len(), 3);
        assert_eq!(d.due(t0 + ms(1300)), ["b", "a"]);
        assert_eq!(d.due(t0 + ms(1900)), ["c"]);
    }

    #[test]
    fn at_the_bound_the_oldest_pending_room_is_handed_back_for_immediate_emission() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(1000), 2);
        assert_eq!(d.touch("a", t0), None);
        assert_eq!(d.touch("b", t0 + ms(1)), None);
        assert_eq!(
            d.touch("b", t0 + ms(2)),
            None,
            "already pending: no eviction"
        );
        assert_eq!(d.touch("c", t0 + ms(3)), Some("a".to_owned()));
        assert_eq!(d.len(), 2);
        assert_eq!(d.due(t0 + ms(2000)), ["b", "c"]);
    }
}
