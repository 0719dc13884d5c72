//! A gateway session: its filter, sequence counter and bounded replay buffer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use nimbus_proto::gateway::{shard_of, Intents};
use tokio::sync::watch;
use tokio::time::Instant;

use nimbus_proto::backplane::StreamId;

use super::log::{Appended, Dispatch, Durable, SessionLog, TakenOver};
use crate::events::RoomEvent;

/// One buffered dispatch: its sequence and its encoded payload.
#[derive(Debug, Clone)]
pub struct Buffered {
    /// Its sequence number.
    pub seq: u64,
    /// The encoded op 0 payload.
    pub text: Arc<str>,
}

/// A session's mutable state (behind [`Session::lock`]).
#[derive(Debug)]
pub struct State {
    /// Last assigned sequence (READY is 1).
    pub last: u64,
    /// The newest `capacity` dispatches (and at most [`MAX_REPLAY_BYTES`] of them), oldest
    /// first, consecutive sequences.
    pub buf: VecDeque<Buffered>,
    /// The bytes of the texts in `buf`.
    buf_bytes: usize,
    /// The connection currently attached.
    pub owner: Option<u64>,
    /// When the last connection detached (`None` while attached).
    pub detached_at: Option<Instant>,
    /// Dispatches up to here may be sent: those the session log holds (in memory: all of
    /// them).
    pub durable: u64,
    /// The global id of the last event dispatched (with a shared log).
    pub gid: StreamId,
    /// While a session taken over from another node catches up: live events wait here.
    pending: Option<Vec<(StreamId, &'static str, Arc<str>)>>,
    /// Another node took the session over, or its log refused a dispatch: it is over.
    lost: bool,
    /// Its log refused a dispatch ([`Appended::Refused`]).
    refused: bool,
}

/// The most bytes of dispatches one session keeps for a resume, whatever the count
/// (`replay_buffer`) allows: dispatches carry values of up to 100 KB and document updates of
/// megabytes, so 16,384 of them could hold gigabytes. A resume from further back than what
/// is kept gets op 9 (`false`), as for a gap beyond the count.
pub const MAX_REPLAY_BYTES: usize = 32 << 20;

/// See the module docs.
#[derive(Debug)]
pub struct Session {
    /// Its id (sent in READY, used to resume).
    pub id: String,
    /// The token it identified with (without `Bot `).
    pub token: String,
    /// The intents it asked for.
    pub intents: Intents,
    /// `[shard_id, num_shards]`.
    pub shard: [u64; 2],
    state: Mutex<State>,
    /// Bumped (to `last`) on every push; connections wait on it.
    changed: watch::Sender<u64>,
    /// Where dispatches are kept before they are sent.
    log: Arc<dyn SessionLog>,
    /// Itself, as the log tells it what became of its dispatches.
    me: Weak<dyn Durable>,
    /// The rooms whose events it may receive (a signed token's grant); unset: every room.
    rooms: OnceLock<Rooms>,
}

/// A session's room grant (see [`Session::restrict_rooms`]).
struct Rooms(RoomFilter);

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rooms(<filter>)")
    }
}

/// Which rooms a session may receive events of (`true`: this room).
pub type RoomFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Why a resume is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// `seq` beyond the last sent (4007).
    FutureSeq,
    /// The events after `seq` are no longer buffered (op 9 false).
    TooOld,
}

/// An op 0 dispatch payload with sequence `seq`, type `t` and data `d` (JSON).
pub fn encode_dispatch(seq: u64, t: &str, d: &str) -> Arc<str> {
    Arc::from(format!("{{\"op\":0,\"d\":{d},\"s\":{seq},\"t\":\"{t}\"}}"))
}

impl Session {
    /// A new session (sequence 0, nothing buffered) keeping its dispatches in `log`.
    pub fn new(
        id: String,
        token: String,
        intents: Intents,
        shard: [u64; 2],
        log: Arc<dyn SessionLog>,
    ) -> Arc<Session> {
        Self::with_state(id, token, intents, shard, log, |_| {})
    }

    fn with_state(
        id: String,
        token: String,
        intents: Intents,
        shard: [u64; 2],
        log: Arc<dyn SessionLog>,
        init: impl FnOnce(&mut State),
    ) -> Arc<Session> {
        let mut state = State {
            last: 0,
            buf: VecDeque::new(),
            buf_bytes: 0,
            owner: None,
            detached_at: None,
            durable: 0,
            gid: StreamId::default(),
            pending: None,
            lost: false,
            refused: false,
        };
        init(&mut state);
        state.buf_bytes = state.buf.iter().map(|b| b.text.len()).sum();
        Arc::new_cyclic(|me: &Weak<Session>| Session {
            id,
            token,
            intents,
            shard,
            changed: watch::Sender::new(state.last),
            state: Mutex::new(state),
            log,
            me: me.clone() as Weak<dyn Durable>,
            rooms: OnceLock::new(),
        })
    }

    /// A session taken over from a shared [`SessionLog`]: the
    /// logged dispatches after the client's seq are its buffer; live events wait until
    /// [`Session::catch_up`] ran.
    pub fn taken_over(
        id: String,
        token: String,
        log: Arc<dyn SessionLog>,
        t: TakenOver,
    ) -> Arc<Session> {
        let intents = Intents(t.intents);
        Self::with_state(id, token, intents, t.shard, log, |st| {
            st.last = t.last.0;
            st.durable = t.last.0;
            st.gid = t.last.1;
            st.buf = t
                .replay
                .into_iter()
                .map(|(seq, text, _)| Buffered { seq, text })
                .collect();
            st.pending = Some(Vec::new());
            st.detached_at = Some(Instant::now());
        })
    }

    /// Limit the session to the rooms `filter` admits (set once, before the session is
    /// registered, so no event of another room is ever buffered).
    pub fn restrict_rooms(&self, filter: RoomFilter) {
        let _ = self.rooms.set(Rooms(filter));
    }

    /// Whether the session selects `ev` (intents, shard and its rooms).
    pub fn wants(&self, ev: &RoomEvent) -> bool {
        let [id, n] = self.shard;
        self.intents.contains(ev.kind().intent())
            && shard_of(&ev.room, n) == id
            && self.rooms.get().is_none_or(|admits| (admits.0)(&ev.room))
    }

    /// Dispatch the events the previous owner never got to (`events`, in the global
    /// order), then the live events that waited meanwhile.
    pub fn catch_up(&self, events: &[RoomEvent], capacity: usize) {
        let mut st = self.lock();
        for ev in events {
            if ev.gid.is_some_and(|g| g > st.gid) && self.wants(ev) {
                let d = ev.to_json();
                self.push_locked(&mut st, ev.kind().name(), &d, capacity, ev.gid);
            }
        }
        for (gid, t, d) in st.pending.take().unwrap_or_default() {
            if gid > st.gid {
                self.push_locked(&mut st, t, &d, capacity, Some(gid));
            }
        }
        let last = st.last;
        drop(st);
        self.changed.send_replace(last);
    }

    /// The global id of the last event dispatched.
    pub fn gid(&self) -> StreamId {
        self.lock().gid
    }

    /// Its state.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver woken at every push (its value is the last sequence).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Its log refused a dispatch: the session ended there ([`Appended::Refused`]).
    pub fn refused(&self) -> bool {
        self.lock().refused
    }

    /// Detached for longer than `window`, taken over by another node, or refused by its
    /// log.
    pub fn expired(&self, now: Instant, window: Duration) -> bool {
        let st = self.lock();
        st.lost
            || st
                .detached_at
                .is_some_and(|t| now.duration_since(t) > window)
    }

    /// Append a dispatch of the event `gid` under the next sequence.
    pub fn push(&self, t: &'static str, d: &str, capacity: usize, gid: Option<StreamId>) {
        let mut st = self.lock();
        if let Some(g) = gid {
            if let Some(pending) = st.pending.as_mut() {
                pending.push((g, t, Arc::from(d)));
                return;
            }
            if g <= st.gid {
                // Already dispatched: a session taken over read the global stream ahead of
                // this node's subscription.
                return;
            }
        }
        self.push_locked(&mut st, t, d, capacity, gid);
        let last = st.last;
        drop(st);
        self.changed.send_replace(last);
    }

    fn push_locked(
        &self,
        st: &mut State,
        t: &str,
        d: &str,
        capacity: usize,
        gid: Option<StreamId>,
    ) {
        st.last += 1;
        let seq = st.last;
        let text = encode_dispatch(seq, t, d);
        if let Some(g) = gid {
            st.gid = st.gid.max(g);
        }
        // A session that was taken over or refused logs nothing more: its log must not
        // get a later dispatch after a missing one.
        if !st.lost {
            match self.log.append(Dispatch {
                sid: &self.id,
                seq,
                gid: st.gid,
                text: &text,
                session: &self.me,
            }) {
                Appended::Durable => st.durable = seq,
                Appended::Queued => {}
                Appended::Refused => {
                    tracing::warn!(session = %self.id, "session log refused a dispatch (its queue is full); ending the session");
                    st.lost = true;
                    st.refused = true;
                    st.owner = None;
                }
            }
        }
        st.buf_bytes += text.len();
        st.buf.push_back(Buffered { seq, text });
        while st.buf.len() > capacity.max(1)
            || (st.buf_bytes > MAX_REPLAY_BYTES && st.buf.len() > 1)
        {
            if let Some(old) = st.buf.pop_front() {
                st.buf_bytes = st.buf_bytes.saturating_sub(old.text.len());
            }
        }
    }

    /// Attach connection `conn` for a Resume from `seq`: check the gap is buffered, take
    /// ownership, append `RESUMED`. Returns the cursor to send from (`seq`).
    pub fn resume(&self, conn: u64, seq: u64, capacity: usize) -> Result<u64, ResumeError> {
        let mut st = self.lock();
        if seq > st.last {
            return Err(ResumeError::FutureSeq);
        }
        let first = st.buf.front().map_or(st.last + 1, |b| b.seq);
        if seq + 1 < first {
            return Err(ResumeError::TooOld);
        }
        st.owner = Some(conn);
        st.detached_at = None;
        self.push_locked(&mut st, "RESUMED", "{}", capacity, None);
        // The replay may need more than `capacity` slots only if RESUMED pushed out the
        // first missed event; then the gap is gone after all.
        let first = st.buf.front().map_or(st.last + 1, |b| b.seq);
        let last = st.last;
        drop(st);
        self.changed.send_replace(last);
        if seq + 1 < first {
            return Err(ResumeError::TooOld);
        }
        Ok(seq)
    }

    /// Attach the identifying connection and append READY (sequence 1); `gid`: the
    /// global id of the last event before the session started (with a shared log).
    pub fn ready(&self, conn: u64, d: &str, capacity: usize, gid: StreamId) {
        let mut st = self.lock();
        st.owner = Some(conn);
        st.detached_at = None;
        st.gid = gid;
        self.push_locked(&mut st, "READY", d, capacity, None);
        let last = st.last;
        drop(st);
        self.changed.send_replace(last);
    }

    /// Mark detached if `conn` still owns it.
    pub fn detach(&self, conn: u64, now: Instant) {
        let mut st = self.lock();
        if st.owner == Some(conn) {
            st.owner = None;
            st.detached_at = Some(now);
        }
    }

    /// The dispatches after `cursor` for `conn`: `Ok(None)` when `conn` no longer owns
    /// the session, `Err(())` when some were dropped from the buffer (a gap).
    #[allow(clippy::result_unit_err)]
    pub fn after(&self, conn: u64, cursor: u64, out: &mut Vec<Buffered>) -> Result<bool, ()> {
        let st = self.lock();
        if st.owner != Some(conn) {
            return Ok(false);
        }
        if cursor >= st.durable {
            return Ok(true);
        }
        let first = st.buf.front().map_or(st.last + 1, |b| b.seq);
        if cursor + 1 < first {
            return Err(());
        }
        let skip = usize::try_from(cursor + 1 - first).unwrap_or(usize::MAX);
        let durable = st.durable;
        out.extend(
            st.buf
                .iter()
                .skip(skip)
                .take_while(|b| b.seq <= durable)
                .cloned(),
        );
        Ok(true)
    }
}

impl Durable for Session {
    fn persisted(&self, seq: u64) {
        let mut st = self.lock();
        st.durable = st.durable.max(seq);
        let last = st.last;
        drop(st);
        self.changed.send_replace(last);
    }

    fn lost(&self) {
        let mut st = self.lock();
        if st.lost {
            return;
        }
        st.lost = true;
        st.owner = None;
        drop(st);
        tracing::debug!(session = %self.id, "session taken over by another node");
        // Wakes the attached connection, which then finds it no longer owns the session.
        self.changed.send_modify(|_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session with every intent on an in-memory log.
    fn session() -> Arc<Session> {
        Session::new(
            "s".into(),
            "t".into(),
            Intents::ALL,
            [0, 1],
            super::super::log::in_memory(),
        )
    }

    /// A shared log that queues `room` dispatches, then refuses every one.
    #[derive(Debug)]
    struct Filling {
        room: Mutex<usize>,
        appended: Mutex<Vec<u64>>,
    }

    impl SessionLog for Filling {
        fn start(&self, _: usize, _: Duration) {}
        fn shared(&self) -> bool {
            true
        }
        fn opened(&self, _: &str, _: &str, _: u64, _: [u64; 2]) {}
        fn append(&self, d: Dispatch<'_>) -> Appended {
            let mut room = self.room.lock().expect("lock");
            if *room == 0 {
                return Appended::Refused;
            }
            *room -= 1;
            self.appended.lock().expect("lock").push(d.seq);
            Appended::Queued
        }
        fn touch(&self, _: &str) {}
        fn take_over<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: u64,
        ) -> futures_util::future::BoxFuture<
            'a,
            Result<super::super::log::Found, super::super::log::TakeoverError>,
        > {
            unreachable!()
        }
        fn events_after(
            &self,
            _: StreamId,
        ) -> futures_util::future::BoxFuture<
            '_,
            Result<Option<Vec<RoomEvent>>, super::super::log::TakeoverError>,
        > {
            unreachable!()
        }
    }

    #[test]
    fn a_session_whose_log_refuses_a_dispatch_ends_and_logs_nothing_after_it() {
        let log = Arc::new(Filling {
            room: Mutex::new(3),
            appended: Mutex::default(),
        });
        let s = Session::new("s".into(), "t".into(), Intents::ALL, [0, 1], log.clone());
        s.ready(1, "{}", 16, StreamId::default());
        s.push("CLOUD_SET", "{}", 16, None);
        s.persisted(2);
        let mut out = Vec::new();
        assert_eq!(s.after(1, 0, &mut out), Ok(true));
        assert!(!s.refused());
        s.push("CLOUD_SET", "{}", 16, None); // seq 3: queued, the last that fits
        s.push("CLOUD_SET", "{}", 16, None); // seq 4: refused
        assert!(s.refused());
        assert!(s.expired(Instant::now(), Duration::from_secs(60)));
        assert_eq!(s.after(1, 2, &mut out), Ok(false), "its connection ends");
        *log.room.lock().expect("lock") = 10;
        s.push("CLOUD_SET", "{}", 16, None);
        assert_eq!(
            *log.appended.lock().expect("lock"),
            [1, 2, 3],
            "nothing after the refused dispatch reaches the log"
        );
        // The writer still reports what was queued before: harmless.
        s.persisted(3);
        assert!(s.refused());
    }

    #[test]
    fn replay_and_gaps() {
        let s = session();
        s.ready(1, "{}", 4, StreamId::default());
        for _ in 0..3 {
            s.push("CLOUD_SET", "{}", 4, None);
        }
        let mut out = Vec::new();
        assert_eq!(s.after(1, 1, &mut out), Ok(true));
        assert_eq!(out.iter().map(|b| b.seq).collect::<Vec<_>>(), [2, 3, 4]);
        s.detach(1, Instant::now());
        assert_eq!(s.resume(2, 9, 4), Err(ResumeError::FutureSeq));
        assert_eq!(s.resume(2, 3, 4), Ok(3));
        out.clear();
        assert_eq!(s.after(2, 3, &mut out), Ok(true));
        assert_eq!(out.iter().map(|b| b.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(out[1].text.contains("\"RESUMED\""));
        assert_eq!(s.after(1, 0, &mut out), Ok(false), "taken over");
        for _ in 0..10 {
            s.push("CLOUD_SET", "{}", 4, None);
        }
        assert_eq!(s.after(2, 5, &mut out), Err(()));
        s.detach(2, Instant::now());
        assert_eq!(s.resume(3, 5, 4), Err(ResumeError::TooOld));
    }

    #[test]
    fn the_replay_buffer_keeps_at_most_its_byte_bound_of_large_dispatches() {
        let s = session();
        s.ready(1, "{}", 1 << 20, StreamId::default());
        // 100 KB values, as a cloud client may send: far fewer fit than the count allows.
        let value = format!("\"{}\"", "9".repeat(100_000));
        for _ in 0..1000 {
            s.push("CLOUD_SET", &value, 1 << 20, None);
        }
        let st = s.lock();
        let held: usize = st.buf.iter().map(|b| b.text.len()).sum();
        assert!(held <= MAX_REPLAY_BYTES, "{held} bytes held");
        assert!(
            held > MAX_REPLAY_BYTES - 200_000,
            "{held}: the bound, not less"
        );
        assert_eq!(held, st.buf_bytes);
        assert_eq!(st.buf.back().map(|b| b.seq), Some(1001), "the newest kept");
    }

    #[test]
    fn events_at_or_before_the_last_dispatched_gid_are_not_dispatched_again() {
        let g = |ms| Some(StreamId { ms, seq: 0 });
        let s = session();
        s.ready(1, "{}", 8, StreamId { ms: 1, seq: 0 });
        s.push("CLOUD_SET", "{}", 8, g(1));
        s.push("CLOUD_SET", "{}", 8, g(2));
        s.push("CLOUD_SET", "{}", 8, g(2));
        s.push("CLOUD_SET", "{}", 8, g(3));
        let mut out = Vec::new();
        assert_eq!(s.after(1, 0, &mut out), Ok(true));
        assert_eq!(out.iter().map(|b| b.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(s.gid(), StreamId { ms: 3, seq: 0 });
    }
}
