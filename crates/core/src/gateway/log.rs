//! The seam between the gateway and whatever keeps its sessions' dispatches.
//!
//! A session appends each dispatch to its replay buffer and hands it to the node's
//! [`SessionLog`]; it sends a dispatch only once the log says it is durable. Two
//! implementations, chosen once by the composition root (`Server::bind`):
//!
//! - [`InMemory`]: a single node. Sessions live in this node's memory only: a dispatch is
//!   durable at once, a Resume finds its session in the gateway's registry.
//! - `RedisSessionLog` (`crate::backplane::gateway`, `--redis`): a dispatch is written to
//!   Redis before it is sent, and a Resume on any node takes the session over from Redis.
//!
//! The gateway owns this trait; the backplane implements it (never the other way round).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nimbus_proto::backplane::StreamId;
use thiserror::Error;

use crate::events::RoomEvent;

/// What [`SessionLog::append`] did with a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Appended {
    /// Durable now: it may be sent at once.
    Durable,
    /// Queued: the session hears [`Durable::persisted`] (or [`Durable::lost`]) later.
    Queued,
    /// Not kept: the log's write queue is full (its store is unreachable or behind). The
    /// session cannot go on without a gap in its log, so it ends here: its connection is
    /// closed with 1011, and a Resume is served from what the log kept (as on another
    /// node), or answered with op 9 when that is gone.
    Refused,
}

/// Told what became of a session's dispatches (implemented by the session).
pub trait Durable: Send + Sync {
    /// Dispatches up to `seq` are durable: they may be sent.
    fn persisted(&self, seq: u64);
    /// Another node owns the session now.
    fn lost(&self);
}

/// One dispatch of a session, handed to the log before it is sent.
pub struct Dispatch<'a> {
    /// Session id.
    pub sid: &'a str,
    /// Its sequence number in the session.
    pub seq: u64,
    /// The global id of the last event the session dispatched (this one's, if any).
    pub gid: StreamId,
    /// The encoded payload.
    pub text: &'a Arc<str>,
    /// The session, told when the dispatch is durable (if not at once).
    pub session: &'a Weak<dyn Durable>,
}

/// A session as taken over from a log shared with other nodes.
#[derive(Debug)]
pub struct TakenOver {
    /// Intents.
    pub intents: u64,
    /// `[shard_id, shard_n]`.
    pub shard: [u64; 2],
    /// Logged dispatches after the client's seq: `(seq, payload, gid)`.
    pub replay: Vec<(u64, Arc<str>, StreamId)>,
    /// The last logged sequence and its event's global id.
    pub last: (u64, StreamId),
}

/// Where a resumed session is.
#[derive(Debug)]
pub enum Found {
    /// Sessions live in this node's memory only: look in the gateway's registry.
    Here,
    /// Taken over from the shared log: the gateway rebuilds the session from it.
    TakenOver(TakenOver),
}

/// Why a session could not be taken over.
#[derive(Debug, Error)]
pub enum TakeoverError {
    /// Unknown or expired session, other token, or the events after `seq` are gone.
    #[error("the session cannot be resumed")]
    Invalid,
    /// `seq` beyond what was ever sent.
    #[error("seq beyond the last dispatch")]
    FutureSeq,
    /// The log cannot be read now.
    #[error("session log unavailable: {0}")]
    Unavailable(String),
}

/// What the gateway needs from the thing that keeps its sessions' dispatches.
pub trait SessionLog: Send + Sync + std::fmt::Debug + 'static {
    /// Start keeping dispatches (once, when the gateway starts), with the gateway's
    /// replay buffer and resume window.
    fn start(&self, replay_buffer: usize, resume_window: Duration);

    /// `true` when sessions are shared with other nodes: the gateway then follows every
    /// event's global position, even without sessions of its own.
    fn shared(&self) -> bool;

    /// A new session (before its READY).
    fn opened(&self, sid: &str, token: &str, intents: u64, shard: [u64; 2]);

    /// Keep `dispatch` (see [`Appended`] for the three outcomes). A log that refuses a
    /// dispatch must not keep any later one of the same session: the session ends there.
    fn append(&self, dispatch: Dispatch<'_>) -> Appended;

    /// The session is alive (a heartbeat): keep it another resume window.
    fn touch(&self, sid: &str);

    /// Find session `sid` for a Resume from `seq` with `token` (without `Bot `).
    fn take_over<'a>(
        &'a self,
        sid: &'a str,
        token: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<Found, TakeoverError>>;

    /// The room events after `after` in the global order, for a session taken over;
    /// `None` when some of them are gone.
    fn events_after(
        &self,
        after: StreamId,
    ) -> BoxFuture<'_, Result<Option<Vec<RoomEvent>>, TakeoverError>>;
}

/// A single node: sessions live in memory (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct InMemory;

impl SessionLog for InMemory {
    fn start(&self, _replay_buffer: usize, _resume_window: Duration) {}

    fn shared(&self) -> bool {
        false
    }

    fn opened(&self, _sid: &str, _token: &str, _intents: u64, _shard: [u64; 2]) {}

    fn append(&self, _dispatch: Dispatch<'_>) -> Appended {
        Appended::Durable
    }

    fn touch(&self, _sid: &str) {}

    fn take_over<'a>(
        &'a self,
        _sid: &'a str,
        _token: &'a str,
        _seq: u64,
    ) -> BoxFuture<'a, Result<Found, TakeoverError>> {
        Box::pin(async { Ok(Found::Here) })
    }

    fn events_after(
        &self,
        _after: StreamId,
    ) -> BoxFuture<'_, Result<Option<Vec<RoomEvent>>, TakeoverError>> {
        Box::pin(async { Ok(Some(Vec::new())) })
    }
}

/// The log of a single node.
pub fn in_memory() -> Arc<dyn SessionLog> {
    Arc::new(InMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Never;
    impl Durable for Never {
        fn persisted(&self, _seq: u64) {
            panic!("an in-memory dispatch is durable at once");
        }
        fn lost(&self) {
            panic!("nothing takes an in-memory session over");
        }
    }

    #[tokio::test]
    async fn in_memory_dispatches_are_durable_at_once_and_resumes_stay_here() {
        let log = in_memory();
        assert!(!log.shared());
        log.start(4, Duration::from_secs(1));
        log.opened("s", "t", 1, [0, 1]);
        let never: Arc<dyn Durable> = Arc::new(Never);
        let text: Arc<str> = Arc::from("{}");
        let d = Dispatch {
            sid: "s",
            seq: 1,
            gid: StreamId::default(),
            text: &text,
            session: &Arc::downgrade(&never),
        };
        assert_eq!(log.append(d), Appended::Durable);
        log.touch("s");
        assert!(matches!(log.take_over("s", "t", 0).await, Ok(Found::Here)));
        assert!(matches!(
            log.events_after(StreamId::default()).await,
            Ok(Some(v)) if v.is_empty()
        ));
    }
}
