//! [`RedisReplication`]: cloud rooms replicated through Redis (`--redis`), a thin adapter
//! of [`CloudReplication`] over [`RedisBackplane`] (its writer task, [`CLOUD_SCRIPT`], the
//! room's stream and state hash, the subscription).
//!
//! [`CLOUD_SCRIPT`]: super::CLOUD_SCRIPT

use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use nimbus_proto::cloud::validate_name;

use super::{RedisBackplane, Write};
use nimbus_core::events::{EventBus, RoomEvent};
use nimbus_core::replication::{
    Change, CloudReplication, Committed, Feed, OrderedChange, Proposal, Refusal, ReplicationError,
    RoomState, RoomView,
};

/// Redis orders the changes of every node: a change is handed to this node's writer
/// task and comes back through the subscription in its place, to every node alike.
#[derive(Debug, Clone)]
pub struct RedisReplication {
    bp: Arc<RedisBackplane>,
    events: Arc<EventBus>,
    max_name_len: usize,
}

impl RedisReplication {
    /// Cloud rooms replicated through `bp`; the subscription publishes every room event
    /// on `events`; `max_name_len` checks the new name of a rename.
    pub fn new(bp: Arc<RedisBackplane>, events: Arc<EventBus>, max_name_len: usize) -> Self {
        RedisReplication {
            bp,
            events,
            max_name_len,
        }
    }
}

fn backplane(e: super::BackplaneError) -> ReplicationError {
    ReplicationError::Backplane(e.to_string())
}

impl CloudReplication for RedisReplication {
    fn load<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<RoomState, ReplicationError>> {
        Box::pin(async move { self.bp.load(room).await.map_err(backplane) })
    }

    /// The room's Redis stream from `from` on (trimmed to about [`super::LOG_MAX_LEN`]).
    /// The lag gauge follows the newest change read, as it follows those delivered by the
    /// subscription.
    fn changes_since<'a>(
        &'a self,
        room: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<Vec<OrderedChange>, ReplicationError>> {
        Box::pin(async move {
            let changes = self.bp.read_log(room, from).await.map_err(backplane)?;
            if let Some(last) = changes.last() {
                let lag = super::now_ms().saturating_sub(last.ts);
                self.bp
                    .metrics
                    .backplane
                    .lag_ms
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
            Ok(changes)
        })
    }

    /// Queued for the writer (waits while its queue is full); `CLOUD_SCRIPT` checks the
    /// change against the state in Redis. A refused change is dropped, a change that could
    /// not be written closes its sender with 1011 (the writer answers the reply).
    fn commit<'a>(&'a self, _view: &'a dyn RoomView, p: Proposal) -> BoxFuture<'a, Committed> {
        Box::pin(async move {
            if let Change::Rename { new_name, .. } = &p.change {
                if validate_name(new_name, self.max_name_len).is_err() {
                    p.reply.refused();
                    return Committed::Refused(Refusal::Rules);
                }
            }
            let room = p.room.clone();
            let write = Write {
                room: p.room,
                op: p.change,
                from: p.from,
                user: p.user,
                max_vars: p.max_vars,
                reply: p.reply,
            };
            if let Err(error) = self.bp.write(write).await {
                tracing::warn!(%room, %error, "change not written");
            }
            Committed::Later
        })
    }

    fn can_commit(&self) -> bool {
        true
    }

    fn presence(&self, event: &dyn Fn() -> RoomEvent) {
        self.bp.presence(&event());
    }

    fn unavailable_reason(&self) -> &'static str {
        "backplane unavailable"
    }

    fn subscribe(&self, feed: Weak<dyn Feed>) {
        self.bp.start(feed, self.events.clone());
    }
}
