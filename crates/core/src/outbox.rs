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
//!
//! **Direct writes.** An outbox made [`with_wire`](Outbox::with_wire) may skip the queue:
//! [`Outbox::offer`] writes a line straight to the connection's socket from the room's task
//! when the connection is *idle*, which saves the connection task's wake-up and poll per
//! delivery (the document rooms do the same, `nimbus_doc::DirectWrite`). Idle means, all
//! checked under the queue's lock:
//! - nothing is queued and the connection task is not writing what it drained (so a line
//!   never overtakes an earlier one);
//! - the wire holds no rest of an earlier direct write;
//! - the write-batching policy ([`Batch`]) would write now: a connection that wrote less
//!   than its budget ago gathers its updates in the queue as before, and the connection
//!   task writes them in one frame when the budget is over.
//!
//! A direct write the socket takes in part leaves the rest with the wire and raises a
//! flush request, which [`Outbox::drain`] reports: the connection task writes the rest
//! within its write timeout, and until then every line is queued.
//!
//! **Held lines.** When the budget is not over (the connection wrote less than a budget
//! ago), the first line queued is *held* for the room ([`Pushed::Held`]): the connection task
//! is not woken, and the room calls [`Outbox::release`] when the hold ends, which writes
//! everything queued in one frame directly (uWebSockets' "cork": the writer that has the
//! data writes it, at most once per budget). Whatever the room cannot write that way (the
//! connection is writing, the wire is full or refuses, more than one frame's worth) it hands
//! to the connection task by waking it. Whoever comes first under the lock writes the
//! lines: a connection task that drains the queue for its own reasons takes held lines too.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
pub use nimbus_doc::Written;
use nimbus_proto::batch::Batch;
use nimbus_proto::cloud::CloseCode;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A connection's socket as its room sees it: written directly when the connection is idle
/// (see the module doc). The contract the outbox relies on for order and integrity:
/// - [`write_line`](DirectLine::write_line) never waits: it writes what the socket takes at
///   once, as one whole text frame;
/// - after [`Written::Part`] it answers [`Written::Nothing`] until the connection task has
///   flushed the rest;
/// - its bytes and the connection task's own writes never interleave inside a frame.
pub trait DirectLine: Send + Sync {
    /// Write `line` (UTF-8) as one text frame, without waiting.
    fn write_line(&self, line: &[u8]) -> Written;
}

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
    /// Written to the socket directly (see the module doc).
    Written,
    /// Queued and held for the room until this instant: the room must
    /// [`release`](Outbox::release) it then (the connection task was not woken).
    Held(Instant),
}

/// What [`Outbox::release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Nothing was held (the connection task took the lines, or none were queued).
    Nothing,
    /// The held lines went out in one direct write.
    Written,
    /// Handed to the connection task (woken to write them).
    Handed,
    /// Still held: release again at this instant.
    Later(Instant),
}

/// The most bytes of queued lines sent in one frame (a single longer line goes alone). Joining
/// a large room sends its variables as a run of frames of this size, so the connection never
/// builds a copy of the room.
pub const FRAME_CHUNK: usize = 64 << 10;

/// Join the lines at the front of `items` into `into` (cleared first): as many as fit in
/// [`FRAME_CHUNK`] bytes, or one longer line alone. Returns how many it took. The one rule for
/// which queued lines share a frame, whether the room or the connection task writes them.
pub fn join_frame<'a>(items: impl IntoIterator<Item = &'a Item>, into: &mut Vec<u8>) -> usize {
    into.clear();
    let mut taken = 0;
    for item in items {
        if taken > 0 && into.len() + item.text.len() > FRAME_CHUNK {
            break;
        }
        into.extend_from_slice(item.text.as_bytes());
        taken += 1;
    }
    taken
}

/// What [`Outbox::drain`] hands the connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// The outbox was closed with this code: send it and end.
    pub closed: Option<CloseCode>,
    /// A direct write left a rest with the wire: flush it (within the write timeout).
    pub flush_wire: bool,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Item>,
    closed: Option<CloseCode>,
    /// Bytes of every queued text.
    bytes: usize,
    /// Bytes of queued join-snapshot texts.
    join_bytes: usize,
    /// The connection task is writing what it drained (no direct write meanwhile).
    writing: bool,
    /// A direct write was taken in part: the wire holds a rest to flush.
    flush_wire: bool,
    /// When the connection writes (its write-batching policy).
    batch: Batch,
    /// The queued lines are held for the room until then (see the module doc).
    due: Option<Instant>,
}

impl Default for State {
    fn default() -> Self {
        State {
            queue: VecDeque::new(),
            closed: None,
            bytes: 0,
            join_bytes: 0,
            writing: false,
            flush_wire: false,
            batch: Batch::new(std::time::Duration::ZERO, std::time::Duration::ZERO),
            due: None,
        }
    }
}

impl State {
    fn live_bytes(&self) -> usize {
        self.bytes - self.join_bytes
    }

    /// Note a direct write that the socket took, whole or in part, at `now`; whether the
    /// connection task must be woken (to flush the rest a partial write left with the wire).
    fn wrote_directly(&mut self, now: Instant, written: Written) -> bool {
        self.batch.wrote(now);
        self.flush_wire = written == Written::Part;
        self.flush_wire
    }
}

/// A bounded, replace-under-backlog message queue with a wake-up signal.
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
    gauge: Gauge,
    /// The connection's socket, for direct writes.
    wire: Option<Arc<dyn DirectLine>>,
    /// Lines may be joined into one frame (not `one_message_per_frame`): only then are they
    /// held for the room.
    joins: bool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("state", &self.state)
            .field("max_bytes", &self.max_bytes)
            .field("direct", &self.wire.is_some())
            .finish_non_exhaustive()
    }
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
            wire: None,
            joins: false,
        }
    }

    /// The same outbox writing to `wire` directly when the connection is idle, under the
    /// write-batching policy `batch`; with `joins` (lines may share a frame), lines that
    /// must wait for the budget are held for the room (see the module doc).
    pub fn with_wire(mut self, wire: Arc<dyn DirectLine>, batch: Batch, joins: bool) -> Outbox {
        self.wire = Some(wire);
        self.joins = joins;
        self.with_batch(batch)
    }

    /// The same outbox under the write-batching policy `batch`, without direct writes.
    pub fn with_batch(self, batch: Batch) -> Outbox {
        self.lock().batch = batch;
        self
    }

    /// The write-batching policy's answer for updates ready at `now`: hold them until
    /// then, or (`None`) write them at once.
    pub fn hold_until(&self, now: Instant) -> Option<Instant> {
        self.lock().batch.hold_until(now)
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
        self.offer(key, text, capacity, coalesce_after, false)
    }

    /// [`push`](Outbox::push), or with `may_write`, write `text` to the socket at once if
    /// the connection is idle (see the module doc).
    pub fn offer(
        &self,
        key: Option<&Arc<str>>,
        text: &Line,
        capacity: usize,
        coalesce_after: usize,
        may_write: bool,
    ) -> Pushed {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Pushed::Closed;
        }
        // Held for the room: the first line queued while the budget runs.
        let mut held = None;
        if may_write && st.queue.is_empty() && !st.writing && !st.flush_wire {
            if let Some(wire) = &self.wire {
                let now = Instant::now();
                if let Some(until) = st.batch.hold_until(now) {
                    held = Some(until).filter(|_| self.joins);
                } else {
                    let written = wire.write_line(text.as_bytes());
                    if written != Written::Nothing {
                        let wake = st.wrote_directly(now, written);
                        drop(st);
                        if wake {
                            self.notify.notify_one();
                        }
                        return Pushed::Written;
                    }
                }
            }
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
        if let Some(until) = held {
            st.due = Some(until);
            drop(st);
            self.gauge_add(text.len());
            return Pushed::Held(until);
        }
        drop(st);
        self.gauge_add(text.len());
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// The room's side of a hold ([`Pushed::Held`]): at `now`, write the held lines in one
    /// frame directly (`may_write`), or hand them to the connection task; `scratch` is the
    /// room's buffer for joining them. Lines due later than `now + early` stay held
    /// ([`Released::Later`]).
    pub fn release(
        &self,
        (now, early): (Instant, std::time::Duration),
        scratch: &mut Vec<u8>,
        may_write: bool,
    ) -> Released {
        let mut st = self.lock();
        let Some(due) = st.due else {
            return Released::Nothing;
        };
        if due > now + early {
            return Released::Later(due);
        }
        st.due = None;
        if st.queue.is_empty() || st.closed.is_some() {
            return Released::Nothing;
        }
        let wire = self
            .wire
            .as_ref()
            .filter(|_| may_write && !st.writing && !st.flush_wire);
        let mut taken = 0;
        let written = wire.map_or(Written::Nothing, |wire| {
            if st.queue.len() == 1 {
                // One line: written from the shared bytes, without joining.
                taken = 1;
                return wire.write_line(st.queue[0].text.as_bytes());
            }
            taken = join_frame(&st.queue, scratch);
            wire.write_line(scratch)
        });
        if written == Written::Nothing {
            drop(st);
            self.notify.notify_one();
            return Released::Handed;
        }
        let mut freed = 0;
        let State {
            queue, join_bytes, ..
        } = &mut *st;
        for item in queue.drain(..taken) {
            freed += item.text.len();
            if item.join {
                *join_bytes -= item.text.len();
            }
        }
        st.bytes -= freed;
        let wake = st.wrote_directly(now, written) || !st.queue.is_empty();
        drop(st);
        self.gauge_sub(freed);
        if wake {
            self.notify.notify_one();
        }
        Released::Written
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

    /// Move everything queued into `into` (which should be empty) and report a close
    /// request and a wire to flush. Until [`wrote`](Outbox::wrote), the connection is
    /// writing: nothing is written directly.
    pub fn drain(&self, into: &mut VecDeque<Item>) -> Drained {
        let mut st = self.lock();
        std::mem::swap(&mut st.queue, into);
        let freed = std::mem::take(&mut st.bytes);
        st.join_bytes = 0;
        st.writing = true;
        st.due = None;
        let drained = Drained {
            closed: st.closed,
            flush_wire: std::mem::take(&mut st.flush_wire),
        };
        drop(st);
        self.gauge_sub(freed);
        drained
    }

    /// The connection task finished writing what it drained (`any`: it wrote something,
    /// which ended at `at`).
    pub fn wrote(&self, at: Instant, any: bool) {
        let mut st = self.lock();
        st.writing = false;
        if any {
            st.batch.wrote(at);
        }
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

/// A socket for tests: answers each direct write from a script (`All` once it runs out) and
/// logs the lines it took.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Scripted {
    answers: Mutex<VecDeque<Written>>,
    taken: Mutex<Vec<String>>,
}

#[cfg(test)]
impl Scripted {
    pub(crate) fn answering(answers: &[Written]) -> Arc<Scripted> {
        Arc::new(Scripted {
            answers: Mutex::new(answers.iter().copied().collect()),
            taken: Mutex::default(),
        })
    }

    /// The lines (or joined lines) written so far, one per frame.
    pub(crate) fn taken(&self) -> Vec<String> {
        self.taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
impl DirectLine for Scripted {
    fn write_line(&self, line: &[u8]) -> Written {
        let answer = self
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        let answer = answer.unwrap_or(Written::All);
        if answer != Written::Nothing {
            let line = String::from_utf8_lossy(line).into_owned();
            self.taken
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
        answer
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(s: &str) -> Line {
        Line::from(s.to_owned())
    }

    fn texts(o: &Outbox) -> (Vec<String>, Option<CloseCode>) {
        let mut q = VecDeque::new();
        let c = o.drain(&mut q).closed;
        o.wrote(Instant::now(), !q.is_empty());
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

    const MS: std::time::Duration = std::time::Duration::from_millis(1);
    const ZERO: std::time::Duration = std::time::Duration::ZERO;

    fn direct(wire: &Arc<Scripted>, budget: std::time::Duration) -> Outbox {
        let batch = Batch::new(budget, std::time::Duration::ZERO);
        Outbox::default().with_wire(wire.clone(), batch, true)
    }

    /// Whether the connection task was woken (consumes the wake-up).
    fn woken(o: &Outbox) -> bool {
        futures_util::FutureExt::now_or_never(o.ready()).is_some()
    }

    fn offer(o: &Outbox, key: &Arc<str>, v: &str) -> Pushed {
        o.offer(Some(key), &t(v), 100, 100, true)
    }

    /// Offer `v`, which must be held for the room; when it is due.
    fn held(o: &Outbox, key: &Arc<str>, v: &str) -> Instant {
        match offer(o, key, v) {
            Pushed::Held(due) => due,
            other => panic!("{v:?} not held: {other:?}"),
        }
    }

    #[test]
    fn a_line_is_written_directly_only_when_nothing_earlier_is_queued_or_being_written() {
        let wire = Scripted::answering(&[]);
        let o = direct(&wire, std::time::Duration::ZERO);
        let a: Arc<str> = Arc::from("a");
        assert_eq!(offer(&o, &a, "1"), Pushed::Written, "idle: written at once");
        // A queued line (the join snapshot, say) keeps every later one behind it.
        o.push(Some(&a), &t("2"), 100, 100);
        assert_eq!(offer(&o, &a, "3"), Pushed::Queued);
        // The connection task drained them and is writing them: still queued.
        let mut q = VecDeque::new();
        o.drain(&mut q);
        assert_eq!(offer(&o, &a, "4"), Pushed::Queued);
        // Written, and 4 drained and written too: idle again.
        o.wrote(Instant::now(), true);
        let mut q2 = VecDeque::new();
        o.drain(&mut q2);
        o.wrote(Instant::now(), true);
        assert_eq!(offer(&o, &a, "5"), Pushed::Written);
        let queued: Vec<_> = q.iter().chain(&q2).map(|i| i.text.as_str()).collect();
        assert_eq!(queued, ["2", "3", "4"]);
        assert_eq!(wire.taken(), ["1", "5"]);
    }

    #[test]
    fn lines_within_the_budget_are_held_for_the_room_and_released_in_one_frame() {
        let wire = Scripted::answering(&[]);
        let o = direct(&wire, 50 * MS);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        assert_eq!(offer(&o, &a, "1\n"), Pushed::Written);
        // That write started the budget: the next line is held until its end, and the
        // connection task is not woken for it.
        let due = held(&o, &b, "2\n");
        assert_eq!(o.hold_until(Instant::now()), Some(due));
        assert_eq!(offer(&o, &a, "3\n"), Pushed::Queued, "behind the held line");
        assert!(!woken(&o));
        let mut scratch = Vec::new();
        assert_eq!(
            o.release((due - MS, ZERO), &mut scratch, true),
            Released::Later(due)
        );
        // Released a little early (the room serves nearby holds in one wake-up).
        let at = due - MS;
        assert_eq!(
            o.release((at, 2 * MS), &mut scratch, true),
            Released::Written
        );
        assert_eq!(wire.taken(), ["1\n", "2\n3\n"], "one frame for both");
        assert_eq!(o.bytes(), 0);
        assert!(!woken(&o));
        // The release was a write at `at`: the budget starts again from it.
        assert_eq!(o.hold_until(at), Some(at + 50 * MS));
    }

    #[test]
    fn held_lines_the_room_cannot_write_are_handed_to_the_connection_task() {
        let wire = Scripted::answering(&[Written::All, Written::Nothing]);
        let o = direct(&wire, 50 * MS);
        let a: Arc<str> = Arc::from("a");
        assert_eq!(offer(&o, &a, "1"), Pushed::Written);
        let due = held(&o, &a, "2");
        let mut scratch = Vec::new();
        assert_eq!(o.release((due, ZERO), &mut scratch, true), Released::Handed);
        assert!(woken(&o), "the connection task writes them");
        assert_eq!(texts(&o).0, ["2"]);
        // Over the room's cap of direct writes: handed without trying the wire.
        let o = direct(&wire, 50 * MS);
        assert_eq!(offer(&o, &a, "3"), Pushed::Written);
        let due = held(&o, &a, "4");
        assert_eq!(
            o.release((due, ZERO), &mut scratch, false),
            Released::Handed
        );
        assert_eq!(texts(&o).0, ["4"]);
        assert_eq!(wire.taken(), ["1", "3"]);
    }

    #[test]
    fn a_connection_task_that_drains_first_takes_the_held_lines() {
        let wire = Scripted::answering(&[]);
        let o = direct(&wire, 50 * MS);
        let a: Arc<str> = Arc::from("a");
        assert_eq!(offer(&o, &a, "1"), Pushed::Written);
        let due = held(&o, &a, "2");
        // Woken for something else (a keepalive, a flush request), it writes them.
        assert_eq!(texts(&o).0, ["2"]);
        let mut scratch = Vec::new();
        assert_eq!(
            o.release((due, ZERO), &mut scratch, true),
            Released::Nothing
        );
        assert_eq!(wire.taken(), ["1"]);
    }

    #[test]
    fn lines_that_may_not_share_a_frame_are_not_held() {
        let wire = Scripted::answering(&[]);
        let batch = Batch::new(50 * MS, std::time::Duration::ZERO);
        let o = Outbox::default().with_wire(wire.clone(), batch, false);
        let a: Arc<str> = Arc::from("a");
        assert_eq!(offer(&o, &a, "1"), Pushed::Written);
        assert_eq!(offer(&o, &a, "2"), Pushed::Queued);
        assert!(woken(&o), "the connection task writes them, one per frame");
    }

    #[test]
    fn a_partial_direct_write_queues_everything_until_the_connection_flushed_the_wire() {
        let wire = Scripted::answering(&[Written::Part]);
        let o = direct(&wire, std::time::Duration::ZERO);
        let a: Arc<str> = Arc::from("a");
        assert_eq!(offer(&o, &a, "big"), Pushed::Written);
        assert_eq!(
            offer(&o, &a, "next"),
            Pushed::Queued,
            "the wire holds a rest"
        );
        let mut q = VecDeque::new();
        let drained = o.drain(&mut q);
        assert!(
            drained.flush_wire,
            "the connection task is asked to flush the rest"
        );
        assert_eq!(q.len(), 1);
        o.wrote(Instant::now(), true);
        let mut q = VecDeque::new();
        assert!(!o.drain(&mut q).flush_wire, "asked once");
        o.wrote(Instant::now(), false);
        assert_eq!(offer(&o, &a, "later"), Pushed::Written);
        assert_eq!(wire.taken(), ["big", "later"]);
    }

    #[test]
    fn a_refused_direct_write_is_queued_and_a_closed_outbox_writes_nothing() {
        let wire = Scripted::answering(&[Written::Nothing]);
        let o = direct(&wire, std::time::Duration::ZERO);
        let a: Arc<str> = Arc::from("a");
        assert_eq!(offer(&o, &a, "1"), Pushed::Queued);
        assert_eq!(
            o.offer(Some(&a), &t("2"), 100, 100, false),
            Pushed::Queued,
            "not offered for writing"
        );
        assert_eq!(texts(&o).0, ["1", "2"]);
        o.close(CloseCode::SlowConsumer);
        assert_eq!(offer(&o, &a, "3"), Pushed::Closed);
        assert!(wire.taken().is_empty());
    }

    #[test]
    fn a_frame_joins_lines_up_to_its_chunk_and_a_longer_line_goes_alone() {
        let item = |n: usize| Item::new(None, Line::from("x".repeat(n)));
        let half = FRAME_CHUNK / 2;
        let mut frame = Vec::new();
        let items = [item(half), item(half), item(1)];
        assert_eq!(
            join_frame(&items, &mut frame),
            2,
            "two halves fill the chunk"
        );
        assert_eq!(frame.len(), FRAME_CHUNK);
        let items = [item(FRAME_CHUNK + 1), item(1)];
        assert_eq!(join_frame(&items, &mut frame), 1, "a longer line alone");
        assert_eq!(frame.len(), FRAME_CHUNK + 1);
        assert_eq!(join_frame(&[], &mut frame), 0);
        assert!(frame.is_empty());
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
