//! A connection's bounded send queue, shared between the room actors that fill
//! it and the connection task that drains it.
//!
//! - Below `coalesce_after` queued messages (and a quarter of the byte budget) every
//!   message is kept, in order.
//! - From there on, a newer value of a variable replaces its queued older value in place
//!   (cloud data is last-writer-wins), so a briefly slow reader catches up with the latest
//!   state instead of a backlog. The byte count follows the replacement.
//! - A push that finds the queue at capacity in messages, or over its byte budget (and
//!   nothing to replace) closes the outbox with [`CloseCode::SlowConsumer`] and frees the
//!   queue: memory stays bounded in messages and in bytes.
//! - The join snapshot ([`Outbox::push_join`]) is outside the byte budget: its lines are
//!   shared with the room's own state, so they cost the connection nothing until the room
//!   replaces them. It still counts in [`Outbox::bytes`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use nimbus_proto::cloud::CloseCode;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// One text line (or several joined) to send: UTF-8 by construction, shared without
/// copying by every connection of a room. The socket turns it into a WebSocket text frame.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Line(Bytes);

impl Line {
    /// A line from a static string.
    pub const fn from_static(s: &'static str) -> Line {
        Line(Bytes::from_static(s.as_bytes()))
    }

    /// Its bytes (valid UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its text.
    pub fn as_str(&self) -> &str {
        // Built only from `str`, so the check never fails; it is not on the send path.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Its bytes, for the socket (valid UTF-8).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<String> for Line {
    fn from(s: String) -> Line {
        Line(Bytes::from(s))
    }
}

impl From<&str> for Line {
    fn from(s: &str) -> Line {
        Line(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// One queued message: its text, and the variable it carries (for replacement).
#[derive(Debug, Clone)]
pub struct Item {
    /// Variable name, `None` for messages that must never be replaced.
    pub key: Option<Arc<str>>,
    /// Newline-terminated protocol text, shared with every other receiver.
    pub text: Line,
    /// Part of the join snapshot (outside the byte budget).
    join: bool,
}

impl Item {
    /// A live item.
    pub fn new(key: Option<Arc<str>>, text: Line) -> Item {
        Item {
            key,
            text,
            join: false,
        }
    }
}

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Appended.
    Queued,
    /// Replaced a queued older value of the same variable.
    Replaced,
    /// The queue was full: the outbox is now closed (slow consumer).
    Overflow,
    /// The outbox was already closed; nothing queued.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Item>,
    closed: Option<CloseCode>,
    /// Bytes of every queued text.
    bytes: usize,
    /// Bytes of queued join-snapshot texts.
    join_bytes: usize,
}

impl State {
    fn live_bytes(&self) -> usize {
        self.bytes - self.join_bytes
    }
}

/// A bounded, replace-under-backlog message queue with a wake-up signal.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
    gauge: Gauge,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new(usize::MAX, Gauge::default())
    }
}

impl Outbox {
    /// An outbox that holds at most `max_bytes` of live messages; `gauge` follows the bytes
    /// it holds (shared by every connection).
    pub fn new(max_bytes: usize, gauge: Gauge) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            max_bytes,
            gauge,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gauge_add(&self, n: usize) {
        self.gauge.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn gauge_sub(&self, n: usize) {
        self.gauge.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Bytes queued now (join snapshot included).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Queue `text` (for variable `key`) under the given limits.
    pub fn push(
        &self,
        key: Option<&Arc<str>>,
        text: &Line,
        capacity: usize,
        coalesce_after: usize,
    ) -> Pushed {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Pushed::Closed;
        }
        if let Some(key) = key {
            let backlog = st.queue.len() >= coalesce_after || st.live_bytes() >= self.max_bytes / 4;
            if backlog {
                let found = st.queue.iter().rposition(|i| {
                    i.key
                        .as_ref()
                        .is_some_and(|k| Arc::ptr_eq(k, key) || **k == **key)
                });
                if let Some(at) = found {
                    let (old_len, was_join) = {
                        let item = &st.queue[at];
                        (item.text.len(), item.join)
                    };
                    let live_after =
                        st.live_bytes() + text.len() - if was_join { 0 } else { old_len };
                    if live_after <= self.max_bytes {
                        let item = &mut st.queue[at];
                        item.text = text.clone();
                        item.join = false;
                        st.bytes = st.bytes - old_len + text.len();
                        if was_join {
                            st.join_bytes -= old_len;
                        }
                        drop(st);
                        self.gauge_sub(old_len);
                        self.gauge_add(text.len());
                        return Pushed::Replaced;
                    }
                }
            }
        }
        if st.queue.len() >= capacity || st.live_bytes() + text.len() > self.max_bytes {
            st.closed = Some(CloseCode::SlowConsumer);
            let freed = std::mem::take(&mut st.bytes);
            st.join_bytes = 0;
            // Give the memory back now, not when the connection task gets to it.
            st.queue = VecDeque::new();
            drop(st);
            self.gauge_sub(freed);
            self.notify.notify_one();
            return Pushed::Overflow;
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Item::new(key.cloned(), text.clone()));
        st.bytes += text.len();
        drop(st);
        self.gauge_add(text.len());
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Queue the join snapshot: one item per variable, outside the byte budget.
    pub fn push_join(&self, items: impl IntoIterator<Item = (Arc<str>, Line)>) {
        let mut st = self.lock();
        if st.closed.is_some() {
            return;
        }
        let was_empty = st.queue.is_empty();
        let mut added = 0;
        for (key, text) in items {
            added += text.len();
            st.queue.push_back(Item {
                key: Some(key),
                text,
                join: true,
            });
        }
        st.bytes += added;
        st.join_bytes += added;
        let any = !st.queue.is_empty();
        drop(st);
        self.gauge_add(added);
        if was_empty && any {
            self.notify.notify_one();
        }
    }

    /// Close the outbox with a code; the connection task sends it and exits.
    pub fn close(&self, code: CloseCode) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(code);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Move everything queued into `into` (which should be empty) and report a close request.
    pub fn drain(&self, into: &mut VecDeque<Item>) -> Option<CloseCode> {
        let mut st = self.lock();
        std::mem::swap(&mut st.queue, into);
        let freed = std::mem::take(&mut st.bytes);
        st.join_bytes = 0;
        let closed = st.closed;
        drop(st);
        self.gauge_sub(freed);
        closed
    }

    /// Wait until something was pushed or the outbox was closed.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let left = st.bytes;
        self.gauge_sub(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Line {
        Line::from(s.to_owned())
    }

    fn texts(o: &Outbox) -> (Vec<String>, Option<CloseCode>) {
        let mut q = VecDeque::new();
        let c = o.drain(&mut q);
        (
            q.into_iter().map(|i| i.text.as_str().to_owned()).collect(),
            c,
        )
    }

    #[test]
    fn a_healthy_queue_keeps_every_message_in_order() {
        let o = Outbox::default();
        let a: Arc<str> = Arc::from("a");
        for v in ["1", "2", "3"] {
            assert_eq!(o.push(Some(&a), &t(v), 10, 5), Pushed::Queued);
        }
        assert_eq!(texts(&o), (vec!["1".into(), "2".into(), "3".into()], None));
    }

    #[test]
    fn a_backlog_replaces_older_values_of_the_same_variable() {
        let o = Outbox::default();
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        o.push(Some(&a), &t("a1"), 10, 2);
        o.push(Some(&b), &t("b1"), 10, 2);
        assert_eq!(o.push(Some(&a), &t("a2"), 10, 2), Pushed::Replaced);
        assert_eq!(texts(&o).0, vec!["a2", "b1"]);
    }

    #[test]
    fn a_full_queue_closes_with_slow_consumer_and_frees_memory() {
        let o = Outbox::default();
        for i in 0..3 {
            let k: Arc<str> = Arc::from(format!("v{i}"));
            o.push(Some(&k), &t("x"), 3, 3);
        }
        let k: Arc<str> = Arc::from("new");
        assert_eq!(o.push(Some(&k), &t("x"), 3, 3), Pushed::Overflow);
        assert_eq!(o.push(Some(&k), &t("x"), 3, 3), Pushed::Closed);
        assert_eq!(texts(&o), (vec![], Some(CloseCode::SlowConsumer)));
    }

    #[test]
    fn a_queue_over_its_byte_budget_closes_with_slow_consumer() {
        let o = Outbox::new(10, Gauge::default());
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        assert_eq!(o.push(Some(&a), &t("12345"), 100, 100), Pushed::Queued);
        assert_eq!(o.bytes(), 5);
        // "b" is another variable: nothing to replace, and 5 + 6 > 10.
        assert_eq!(o.push(Some(&b), &t("123456"), 100, 100), Pushed::Overflow);
        assert_eq!(o.bytes(), 0, "an overflowing queue is freed at once");
        assert_eq!(texts(&o), (vec![], Some(CloseCode::SlowConsumer)));
    }

    #[test]
    fn replacement_under_a_byte_backlog_counts_the_new_length() {
        let gauge = Gauge::default();
        let o = Outbox::new(16, gauge.clone());
        let a: Arc<str> = Arc::from("a");
        o.push(Some(&a), &t("1234"), 100, 100);
        // 4 bytes >= 16 / 4: a backlog, so the next value of "a" replaces the queued one.
        assert_eq!(o.push(Some(&a), &t("12345678"), 100, 100), Pushed::Replaced);
        assert_eq!(o.bytes(), 8);
        assert_eq!(gauge.get(), 8);
        assert_eq!(texts(&o).0, vec!["12345678"]);
        assert_eq!(gauge.get(), 0, "a drained queue holds no bytes");
    }

    #[test]
    fn the_join_snapshot_is_outside_the_byte_budget_until_replaced() {
        let o = Outbox::new(10, Gauge::default());
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        o.push_join([
            (a.clone(), t(&"x".repeat(100))),
            (b.clone(), t(&"y".repeat(100))),
        ]);
        assert_eq!(o.bytes(), 200);
        // A live value of a joined variable replaces the snapshot line and is counted.
        assert_eq!(o.push(Some(&a), &t("123"), 100, 0), Pushed::Replaced);
        assert_eq!(o.bytes(), 103);
        let c: Arc<str> = Arc::from("c");
        assert_eq!(o.push(Some(&c), &t("1234567"), 100, 100), Pushed::Queued);
        let d: Arc<str> = Arc::from("d");
        assert_eq!(o.push(Some(&d), &t("1"), 1, 100), Pushed::Overflow);
    }

    #[test]
    fn unkeyed_items_are_never_replaced() {
        let o = Outbox::default();
        o.push(None, &t("join"), 10, 0);
        let a: Arc<str> = Arc::from("a");
        o.push(Some(&a), &t("a1"), 10, 0);
        o.push(Some(&a), &t("a2"), 10, 0);
        assert_eq!(texts(&o).0, vec!["join", "a2"]);
    }
}
