//! A gateway session: its filter, sequence counter and bounded replay buffer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nimbus_proto::gateway::Intents;
use tokio::sync::watch;
use tokio::time::Instant;

/// One buffered dispatch: its sequence and its encoded payload.
#[derive(Debug, Clone)]
pub(crate) struct Buffered {
    pub seq: u64,
    pub text: Arc<str>,
}

#[derive(Debug)]
pub(crate) struct State {
    /// Last assigned sequence (READY is 1).
    pub last: u64,
    /// The newest `capacity` dispatches, oldest first, consecutive sequences.
    pub buf: VecDeque<Buffered>,
    /// The connection currently attached.
    pub owner: Option<u64>,
    /// When the last connection detached (`None` while attached).
    pub detached_at: Option<Instant>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: String,
    pub token: String,
    pub intents: Intents,
    pub shard: [u64; 2],
    state: Mutex<State>,
    /// Bumped (to `last`) on every push; connections wait on it.
    changed: watch::Sender<u64>,
}

/// Why a resume is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResumeError {
    /// `seq` beyond the last sent (4007).
    FutureSeq,
    /// The events after `seq` are no longer buffered (op 9 false).
    TooOld,
}

pub(crate) fn encode_dispatch(seq: u64, t: &str, d: &str) -> Arc<str> {
    Arc::from(format!("{{\"op\":0,\"d\":{d},\"s\":{seq},\"t\":\"{t}\"}}"))
}

impl Session {
    pub(crate) fn new(id: String, token: String, intents: Intents, shard: [u64; 2]) -> Session {
        Session {
            id,
            token,
            intents,
            shard,
            state: Mutex::new(State {
                last: 0,
                buf: VecDeque::new(),
                owner: None,
                detached_at: None,
            }),
            changed: watch::Sender::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Detached for longer than `window`.
    pub(crate) fn expired(&self, now: Instant, window: Duration) -> bool {
        self.lock()
            .detached_at
            .is_some_and(|t| now.duration_since(t) > window)
    }

    /// Append a dispatch under the next sequence.
    pub(crate) fn push(&self, t: &str, d: &str, capacity: usize) -> u64 {
        let mut st = self.lock();
        Self::push_locked(&mut st, t, d, capacity);
        let last = st.last;
        drop(st);
        self.changed.send_replace(last);
        last
    }

    fn push_locked(st: &mut State, t: &str, d: &str, capacity: usize) {
        st.last += 1;
        let seq = st.last;
        st.buf.push_back(Buffered {
            seq,
            text: encode_dispatch(seq, t, d),
        });
        while st.buf.len() > capacity.max(1) {
            st.buf.pop_front();
        }
    }

    /// Attach connection `conn` for a Resume from `seq`: check the gap is buffered, take
    /// ownership, append `RESUMED`. Returns the cursor to send from (`seq`).
    pub(crate) fn resume(&self, conn: u64, seq: u64, capacity: usize) -> Result<u64, ResumeError> {
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
        Self::push_locked(&mut st, "RESUMED", "{}", capacity);
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

    /// Attach the identifying connection and append READY (sequence 1).
    pub(crate) fn ready(&self, conn: u64, d: &str, capacity: usize) {
        let mut st = self.lock();
        st.owner = Some(conn);
        st.detached_at = None;
        Self::push_locked(&mut st, "READY", d, capacity);
        let last = st.last;
        drop(st);
        self.changed.send_replace(last);
    }

    /// Mark detached if `conn` still owns it.
    pub(crate) fn detach(&self, conn: u64, now: Instant) {
        let mut st = self.lock();
        if st.owner == Some(conn) {
            st.owner = None;
            st.detached_at = Some(now);
        }
    }

    /// The dispatches after `cursor` for `conn`: `Ok(None)` when `conn` no longer owns
    /// the session, `Err(())` when some were dropped from the buffer (a gap).
    #[allow(clippy::result_unit_err)]
    pub(crate) fn after(
        &self,
        conn: u64,
        cursor: u64,
        out: &mut Vec<Buffered>,
    ) -> Result<bool, ()> {
        let st = self.lock();
        if st.owner != Some(conn) {
            return Ok(false);
        }
        if cursor >= st.last {
            return Ok(true);
        }
        let first = st.buf.front().map_or(st.last + 1, |b| b.seq);
        if cursor + 1 < first {
            return Err(());
        }
        let skip = usize::try_from(cursor + 1 - first).unwrap_or(usize::MAX);
        out.extend(st.buf.iter().skip(skip).cloned());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_and_gaps() {
        let s = Session::new("s".into(), "t".into(), Intents::ALL, [0, 1]);
        s.ready(1, "{}", 4);
        for _ in 0..3 {
            s.push("CLOUD_SET", "{}", 4);
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
            s.push("CLOUD_SET", "{}", 4);
        }
        assert_eq!(s.after(2, 5, &mut out), Err(()));
        s.detach(2, Instant::now());
        assert_eq!(s.resume(3, 5, 4), Err(ResumeError::TooOld));
    }
}
