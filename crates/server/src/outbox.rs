//! A connection's bounded send queue, shared between the room actors that fill
//! it and the connection task that drains it.
//!
//! - Below `coalesce_after` queued messages every message is kept, in order.
//! - From there on, a newer value of a variable replaces its queued older value
//!   in place (cloud data is last-writer-wins), so a briefly slow reader catches
//!   up with the latest state instead of a backlog.
//! - A push that finds the queue at capacity (and nothing to replace) closes the
//!   outbox with [`CloseCode::SlowConsumer`]: memory stays bounded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::ws::Utf8Bytes;
use nimbus_proto::cloud::CloseCode;
use tokio::sync::Notify;

/// One queued message: its text, and the variable it carries (for replacement).
#[derive(Debug, Clone)]
pub struct Item {
    /// Variable name, `None` for messages that must never be replaced (the join frame).
    pub key: Option<Arc<str>>,
    /// Newline-terminated protocol text, shared with every other receiver.
    pub text: Utf8Bytes,
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
}

/// A bounded, replace-under-backlog message queue with a wake-up signal.
#[derive(Debug, Default)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue `text` (for variable `key`) under the given limits.
    pub fn push(
        &self,
        key: Option<&Arc<str>>,
        text: &Utf8Bytes,
        capacity: usize,
        coalesce_after: usize,
    ) -> Pushed {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Pushed::Closed;
        }
        if let Some(key) = key {
            if st.queue.len() >= coalesce_after {
                if let Some(item) = st.queue.iter_mut().rev().find(|i| {
                    i.key
                        .as_ref()
                        .is_some_and(|k| Arc::ptr_eq(k, key) || **k == **key)
                }) {
                    item.text = text.clone();
                    return Pushed::Replaced;
                }
            }
        }
        if st.queue.len() >= capacity {
            st.closed = Some(CloseCode::SlowConsumer);
            st.queue.clear();
            drop(st);
            self.notify.notify_one();
            return Pushed::Overflow;
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Item {
            key: key.cloned(),
            text: text.clone(),
        });
        drop(st);
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
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
        st.closed
    }

    /// Wait until something was pushed or the outbox was closed.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
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
    fn unkeyed_items_are_never_replaced() {
        let o = Outbox::default();
        o.push(None, &t("join"), 10, 0);
        let a: Arc<str> = Arc::from("a");
        o.push(Some(&a), &t("a1"), 10, 0);
        o.push(Some(&a), &t("a2"), 10, 0);
        assert_eq!(texts(&o).0, vec!["join", "a2"]);
    }
}
