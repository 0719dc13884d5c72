//! The seam between a cloud room and whatever orders and keeps its changes.
//!
//! A room actor never decides on its own where a change goes: it hands every change to its
//! [`CloudReplication`] and applies the changes the replication puts in order, all through
//! one path (`Follower` says whether a change is the next one). Two implementations:
//!
//! - [`InProcess`]: a single node. The room is the authority: a change is checked against
//!   the room's own state, takes the next place in the room's order at once and goes to the
//!   local store. Nothing arrives from elsewhere.
//! - `RedisReplication` (`crate::backplane::cloud`, `--redis`): Redis orders the changes of
//!   every node; a change comes back to the room through the subscription, like those of
//!   other nodes.
//!
//! The composition root (`Server::bind`) picks one at startup; nothing chooses per call.

use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use nimbus_proto::cloud::{CloseCode, CloudValue};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::events::RoomEvent;
use crate::outbox::Outbox;
use crate::store::{StoreError, StoredVar};

mod follow;
mod in_process;
pub mod metrics;

pub use follow::{Follower, Step};
pub use in_process::InProcess;
pub use metrics::ReplicationMetrics;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

/// A change a room asks for (names and values already validated by the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set (or create) a variable.
    Set {
        /// Name.
        name: Arc<str>,
        /// Value.
        value: CloudValue,
    },
    /// Rename a variable.
    Rename {
        /// Current name.
        name: String,
        /// New name.
        new_name: String,
    },
    /// Delete a variable.
    Delete {
        /// Name.
        name: String,
    },
}

/// Who hears how a change ended.
#[derive(Debug)]
pub enum Reply {
    /// A client's set (or a set of the API, `None`): its outbox is closed with 1011 when
    /// the change cannot be made durable.
    Sender(Option<Arc<Outbox>>),
    /// A rename/delete: `true` once ordered, `false` when refused by the room's rules. The
    /// sender is dropped when the replication is unavailable (the asker answers that).
    Accepted(oneshot::Sender<bool>),
}

impl Reply {
    /// The change took its place in the order.
    pub fn accepted(self) {
        if let Reply::Accepted(tx) = self {
            let _ = tx.send(true);
        }
    }

    /// The change breaks the room's rules (limit, unknown or taken name).
    pub fn refused(self) {
        if let Reply::Accepted(tx) = self {
            let _ = tx.send(false);
        }
    }

    /// The change cannot be made durable now: close a client sender with 1011; an API
    /// asker sees its reply dropped.
    pub fn unavailable(self) {
        if let Reply::Sender(Some(outbox)) = self {
            outbox.close(CloseCode::Unavailable);
        }
    }
}

/// A change a room asks its replication to order.
#[derive(Debug)]
pub struct Proposal {
    /// Room key.
    pub room: Arc<str>,
    /// The change.
    pub change: Change,
    /// Sender's connection id ([`crate::hub::SERVER_SENDER`] for the API/IPC).
    pub from: u64,
    /// Sender's username.
    pub user: Option<Arc<str>>,
    /// The room's variable limit.
    pub max_vars: usize,
    /// Who hears the outcome.
    pub reply: Reply,
}

/// An applied change, with its place in its room's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderedOp {
    /// A variable was set.
    Set {
        /// Name.
        name: Arc<str>,
        /// Value.
        value: CloudValue,
        /// Its insertion position.
        pos: i64,
    },
    /// A variable was renamed.
    Rename {
        /// Old name.
        name: Arc<str>,
        /// New name.
        new_name: Arc<str>,
        /// Its value (`None` in a message of a node of the previous version).
        value: Option<CloudValue>,
    },
    /// A variable was deleted.
    Delete {
        /// Name.
        name: Arc<str>,
        /// The value it had (`None` in a message of a node of the previous version).
        value: Option<CloudValue>,
    },
}

/// One change of a room's totally ordered sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderedChange {
    /// Room key.
    pub room: Arc<str>,
    /// The sequence's epoch: changes when the order restarted (Redis lost the room).
    /// Always "" in process.
    pub epoch: Arc<str>,
    /// Place in the room's order (1, 2, ...): the room's offset once applied.
    pub seq: u64,
    /// The change.
    pub op: OrderedOp,
    /// The origin connection, when it is on this node (so it is not echoed).
    pub local_conn: Option<u64>,
    /// A set that created its variable.
    pub created: bool,
    /// Origin username.
    pub user: Option<Arc<str>>,
    /// Origin wall clock, ms since the Unix epoch.
    pub ts: u64,
}

/// A room's state as its replication keeps it.
#[derive(Debug, Clone, Default)]
pub struct RoomState {
    /// Epoch ("" in process, or for a room never written).
    pub epoch: Arc<str>,
    /// Place in the order of the last change the state covers.
    pub seq: u64,
    /// Variables, in insertion order.
    pub vars: Vec<StoredVar>,
}

/// What [`CloudReplication::commit`] did with a change.
#[derive(Debug)]
pub enum Committed {
    /// The change is ordered now: it is the room's next change. The room applies it
    /// before handling anything else.
    Now(OrderedChange),
    /// The change was handed on: if it is accepted it comes back through the
    /// subscription ([`Feed::changed`]) in its place, like a change made elsewhere. The
    /// implementation answers the [`Reply`].
    Later,
    /// Refused now; the [`Reply`] was answered.
    Refused(Refusal),
}

/// Why a change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It breaks the room's rules: the variable limit, an unknown or taken name.
    Rules,
    /// It cannot be made durable now (store or backplane unavailable).
    Unavailable,
}

/// A replication failure.
#[derive(Debug, Error)]
pub enum ReplicationError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backplane failed or holds something nimbus did not write.
    #[error("backplane: {0}")]
    Backplane(String),
}

impl From<ReplicationError> for StoreError {
    fn from(e: ReplicationError) -> StoreError {
        match e {
            ReplicationError::Store(e) => e,
            ReplicationError::Backplane(s) => StoreError::Backplane(s),
        }
    }
}

/// A room's variables as its actor holds them, for an implementation that checks a change
/// against them ([`InProcess`]).
pub trait RoomView: Sync {
    /// Place in the order of the last change applied (the room's offset).
    fn seq(&self) -> u64;
    /// The position a new variable takes.
    fn next_pos(&self) -> i64;
    /// How many variables the room has.
    fn count(&self) -> usize;
    /// A variable: its interned name, value and position.
    fn var(&self, name: &str) -> Option<(Arc<str>, &CloudValue, i64)>;
}

/// A room's variables in insertion order.
pub type Variables = Vec<(Arc<str>, CloudValue)>;

/// Where a replication delivers changes ordered elsewhere (implemented by the hub: it
/// knows which rooms are loaded here).
pub trait Feed: Send + Sync + 'static {
    /// A change of room `change.room`: hand it to that room if it is loaded here (in the
    /// order of the calls).
    fn changed(&self, change: OrderedChange) -> BoxFuture<'_, ()>;
    /// Changes may have been missed (the subscription was re-established): every loaded
    /// room catches up ([`CloudReplication::changes_since`], else a reload).
    fn resync_all(&self) -> BoxFuture<'_, ()>;
    /// The variables of room `room` if it is loaded here.
    fn variables<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Option<Variables>>;
}

/// What a cloud room needs from the thing that orders and keeps its changes.
///
/// Every method is called by the room's actor (one at a time per room) or by the hub;
/// implementations are shared by every room of the node.
pub trait CloudReplication: Send + Sync + std::fmt::Debug + 'static {
    /// The room's state and its place in the order, read atomically. Called once before
    /// the room answers its first join, and again to resync when catching up from
    /// [`CloudReplication::changes_since`] failed. An error means the room cannot be
    /// served: joins fail with 1011 (a resync keeps the room's copy and retries on the
    /// next change).
    fn load<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<RoomState, ReplicationError>>;

    /// The room's changes with `seq >= from`, in order, as far as the implementation
    /// still keeps them (possibly none, or not starting at `from`). The room applies
    /// those that follow its offset in the same epoch; when they do not reach back far
    /// enough it reloads with [`CloudReplication::load`]. An error: the same.
    fn changes_since<'a>(
        &'a self,
        room: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<Vec<OrderedChange>, ReplicationError>>;

    /// Order `proposal`. `view` is the room's copy of its state, which is the truth only
    /// for an implementation where this node is the authority. Changes proposed by one
    /// room are ordered in the order of the calls. The outcome is [`Committed`]; the
    /// implementation answers `proposal.reply` (at once or later), and when the change
    /// is ordered it publishes the room event (`CLOUD_*`) in the room's order.
    fn commit<'a>(&'a self, view: &'a dyn RoomView, proposal: Proposal)
        -> BoxFuture<'a, Committed>;

    /// `false` when [`CloudReplication::commit`] would refuse with
    /// [`Refusal::Unavailable`] right now (the API answers its caller before queuing).
    fn can_commit(&self) -> bool;

    /// Record a join/leave of the room (`ROOM_JOIN`/`ROOM_LEAVE`) in the event order;
    /// `event` is called only when the event is needed.
    fn presence(&self, event: &dyn Fn() -> RoomEvent);

    /// The close reason of a client closed with 1011 because its change was unavailable.
    fn unavailable_reason(&self) -> &'static str;

    /// Start delivering changes ordered elsewhere (and resync requests) to `feed`, until
    /// it is dropped. An implementation where nothing happens elsewhere does nothing.
    fn subscribe(&self, feed: Weak<dyn Feed>);
}
