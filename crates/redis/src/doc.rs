//! Document (Yjs) rooms through the Redis backplane.
//!
//! Yjs updates commute and applying one twice changes nothing, so, unlike cloud rooms,
//! a node applies its clients' updates at once and Redis only has to hold the complete
//! set: every update is appended to the room's stream under the room's next sequence
//! number ([`DOC_SCRIPT`]) and published; every other node applies it as it arrives.
//! The sequence numbers let a node notice that it missed some (a gap) and catch up by
//! reloading the room from Redis (the compacted snapshot plus the stream after it),
//! which is idempotent.
//!
//! Keys of room `R` (the room in a hash tag, one Redis Cluster slot):
//! `nimbus:doc:{R}:seq`, `:epoch`, `:log` (stream, entry `SEQ-0`, field `u` = the
//! update), `:snap` (the merged state up to `:snapseq`), `:deleted` (the epoch last deleted,
//! for [`DELETED_TTL`]: a node that missed the deletion's message learns it from there,
//! [`DOC_DELETE_SCRIPT`]). A node that sees a room's log
//! grow past [`COMPACT_AFTER`] entries folds it into the snapshot ([`COMPACT_SCRIPT`]:
//! accepted only if it covers more than the current one, then `XTRIM MINID`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_util::future::BoxFuture;
pub use nimbus_proto::backplane::DocMessage;

use super::{BackplaneError, Lua, RedisBackplane, EVENTS_CHANNEL, EVENTS_MAX_LEN, EVENTS_STREAM};
pub use nimbus_core::doc::replication::DocState;
use nimbus_core::doc::replication::{DeleteRefused, DocFeed, DocReplication, OnFailure};
use nimbus_core::replication::ReplicationError;
use nimbus_core::store::{compact, DocLog};

/// Stream entries after which a node compacts a room's log into its snapshot.
pub const COMPACT_AFTER: u64 = 1000;

/// The script that records one document update.
///
/// KEYS: seq, epoch, log, snap, snapseq, events, deleted. ARGV: epoch candidate, node,
/// connection, room, update, events length, channel, the epoch the writer's copy follows
/// ("" or absent: none). Returns `{seq, log length}`, or, with nothing written, when the
/// writer follows an epoch and the room's is another or none (its copy belongs to a
/// deleted, lost or restarted room, where its update would be a fragment of a state the
/// room lacks): `{0, 1}` when that epoch was deleted (the `deleted` tombstone names it),
/// else `{0, 0}`.
pub const DOC_SCRIPT: &str = include_str!("lua/doc.lua");

/// The script that replaces a room's snapshot by a newer one and trims the log it covers.
///
/// KEYS: epoch, snap, snapseq, log. ARGV: epoch, covered sequence, snapshot. Returns 1
/// when accepted, 0 when the epoch changed or a snapshot covering as much exists.
pub const COMPACT_SCRIPT: &str = include_str!("lua/doc_compact.lua");

/// The script that deletes a document room: its keys go (the next update starts a new
/// epoch), and every node hears `0-0 x NODE ROOM` on the events channel and closes the
/// room's clients with 4410.
///
/// KEYS: seq, epoch, log, snap, snapseq, deleted. ARGV: node, room, channel, tombstone ttl
/// (ms). The deleted epoch is kept in `deleted` for [`DELETED_TTL`], so that a node that
/// missed the message (its subscription was down) still learns, at its next write or
/// resync, that the room it follows was deleted (4410), not lost (1011). Returns the number
/// of keys deleted.
pub const DOC_DELETE_SCRIPT: &str = include_str!("lua/doc_delete.lua");

/// How long a deleted room's tombstone (its last epoch) is kept.
pub const DELETED_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

pub(crate) static DOC_LUA: Lua = Lua::new(DOC_SCRIPT);
pub(crate) static DOC_DELETE_LUA: Lua = Lua::new(DOC_DELETE_SCRIPT);
static COMPACT_LUA: Lua = Lua::new(COMPACT_SCRIPT);

/// Redis key names of one document room.
struct Keys {
    seq: String,
    epoch: String,
    log: String,
    snap: String,
    snapseq: String,
    /// The tombstone: the epoch last deleted, kept [`DELETED_TTL`].
    deleted: String,
}

impl Keys {
    /// The room's own keys, in the order the document scripts take them first.
    fn room(&self) -> [&str; 5] {
        [&self.seq, &self.epoch, &self.log, &self.snap, &self.snapseq]
    }

    fn new(room: &str) -> Keys {
        let k = |what: &str| format!("nimbus:doc:{{{room}}}:{what}");
        Keys {
            seq: k("seq"),
            epoch: k("epoch"),
            log: k("log"),
            snap: k("snap"),
            snapseq: k("snapseq"),
            deleted: k("deleted"),
        }
    }
}

/// A document update queued for Redis.
pub struct DocWrite {
    /// Room.
    pub room: Arc<str>,
    /// The room's epoch the writing node's copy follows ("" before it saw one): under any
    /// other (the room was deleted or lost meanwhile), the script refuses the update.
    pub follows: Arc<str>,
    /// The Yjs v1 update.
    pub update: Bytes,
    /// Called when Redis could not be written (the room then closes its clients).
    pub on_failure: OnFailure,
}

impl std::fmt::Debug for DocWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocWrite")
            .field("room", &self.room)
            .field("bytes", &self.update.len())
            .finish_non_exhaustive()
    }
}

impl DocWrite {
    pub(crate) fn failed(&self) {
        (self.on_failure)();
    }
}

/// A document room's deletion queued for Redis (behind this node's queued updates of it).
#[derive(Debug)]
pub struct DocDelete {
    /// Room.
    pub room: Arc<str>,
    /// Told whether Redis ran the deletion.
    pub done: tokio::sync::oneshot::Sender<bool>,
}

/// Longest wait for the writer to run a deletion.
const DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The document rooms' [`DocReplication`] with `--redis`: updates are appended to the
/// room's stream in Redis and shared with every node (see the module docs); they come
/// back, with their `DOC_UPDATE` event, through the subscription.
#[derive(Debug, Clone)]
pub struct RedisDocs {
    bp: Arc<RedisBackplane>,
}

impl RedisDocs {
    /// The document rooms of `bp`.
    pub fn new(bp: Arc<RedisBackplane>) -> RedisDocs {
        RedisDocs { bp }
    }
}

impl DocReplication for RedisDocs {
    fn unavailable_reason(&self) -> &'static str {
        "backplane unavailable"
    }

    /// Set at load ([`DocReplication::loaded`]); the room adds what it appends.
    fn size(&self, _room: &str) -> Arc<AtomicUsize> {
        Arc::new(AtomicUsize::new(0))
    }

    fn load<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<DocState, ReplicationError>> {
        Box::pin(async move {
            self.bp
                .load_doc(room)
                .await
                .map_err(|e| ReplicationError::Backplane(e.to_string()))
        })
    }

    fn loaded(&self, size: &AtomicUsize, log: &DocLog) {
        size.store(log.bytes(), Ordering::Relaxed);
    }

    fn can_write(&self) -> bool {
        true
    }

    /// Every node's gateway gets it from the subscription, in the global order.
    fn append(
        &self,
        room: Arc<str>,
        epoch: Arc<str>,
        update: &Bytes,
        on_failure: &dyn Fn() -> OnFailure,
    ) {
        self.bp.write_doc(DocWrite {
            room,
            follows: epoch,
            update: update.clone(),
            on_failure: on_failure(),
        });
    }

    /// Redis holds every update already; the node that sees the log grow compacts it.
    fn emptied(&self, _room: &str) {}

    /// Ready when Redis is: the deletion itself reports a failure.
    fn check_delete(&self) -> Result<(), DeleteRefused> {
        Ok(())
    }

    /// Queued behind this node's updates of the room, so none of them writes it back;
    /// every node then closes the room's clients ([`DOC_DELETE_SCRIPT`]).
    fn delete<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), DeleteRefused>> {
        Box::pin(async move {
            let (done, ran) = tokio::sync::oneshot::channel();
            self.bp.delete_doc(DocDelete {
                room: Arc::from(room),
                done,
            });
            match tokio::time::timeout(DELETE_TIMEOUT, ran).await {
                Ok(Ok(true)) => Ok(()),
                _ => Err(DeleteRefused::Unavailable),
            }
        })
    }

    fn subscribe(&self, feed: Weak<dyn DocFeed>) {
        self.bp.attach_docs(feed);
    }
}

/// Append the script call for one update to `pipe`.
pub(crate) fn invocation(node: &str, w: &DocWrite, pipe: &mut redis::Pipeline) {
    let keys = Keys::new(&w.room);
    let epoch = format!("{node}-{:x}", super::now_ms());
    pipe.cmd("EVALSHA")
        .arg(DOC_LUA.sha())
        .arg(7)
        .arg(&keys.room()[..])
        .arg(EVENTS_STREAM)
        .arg(&keys.deleted)
        .arg(epoch)
        .arg(node)
        .arg(0)
        .arg(&*w.room)
        .arg(&w.update[..])
        .arg(EVENTS_MAX_LEN)
        .arg(EVENTS_CHANNEL)
        .arg(&*w.follows);
}

/// Append the deletion of a room to `pipe`.
pub(crate) fn delete_invocation(node: &str, d: &DocDelete, pipe: &mut redis::Pipeline) {
    let keys = Keys::new(&d.room);
    pipe.cmd("EVALSHA")
        .arg(DOC_DELETE_LUA.sha())
        .arg(6)
        .arg(&keys.room()[..])
        .arg(&keys.deleted)
        .arg(node)
        .arg(&*d.room)
        .arg(EVENTS_CHANNEL)
        .arg(u64::try_from(DELETED_TTL.as_millis()).unwrap_or(u64::MAX));
}

impl RedisBackplane {
    /// Queue a room's deletion (`done` hears `false` when the writer's queue is full).
    pub(crate) fn delete_doc(&self, d: DocDelete) {
        if let Err(e) = self.writes.try_send(super::Job::DocDelete(d)) {
            self.metrics.backplane.write_failures.inc();
            if let tokio::sync::mpsc::error::TrySendError::Full(super::Job::DocDelete(d))
            | tokio::sync::mpsc::error::TrySendError::Closed(super::Job::DocDelete(d)) = e
            {
                let _ = d.done.send(false);
            }
        }
    }

    /// Queue a document update (dropped, and `on_failure` called, when the writer's queue
    /// is full).
    pub(crate) fn write_doc(&self, w: DocWrite) {
        if let Err(e) = self.writes.try_send(super::Job::Doc(w)) {
            self.metrics.backplane.write_failures.inc();
            if let tokio::sync::mpsc::error::TrySendError::Full(super::Job::Doc(w))
            | tokio::sync::mpsc::error::TrySendError::Closed(super::Job::Doc(w)) = e
            {
                w.failed();
            }
        }
    }

    /// Redis answered a document write: compact the room's log when it grew long.
    pub(crate) fn doc_written(self: &Arc<Self>, w: &DocWrite, reply: Option<redis::Value>) {
        let (seq, len) = match &reply {
            Some(redis::Value::Array(v)) => {
                let int = |i: usize| match v.get(i) {
                    Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                };
                (int(0), int(1))
            }
            _ => (0, 0),
        };
        if seq == 0 {
            if len == 1 {
                // Refused: the room this node's copy follows was deleted (through another
                // node, while this node's subscription missed the message). Its clients
                // are closed with 4410, as on the message.
                tracing::info!(room = %w.room, follows = %w.follows, "document update refused by Redis: the room this node follows was deleted");
                if let Some(docs) = self.docs() {
                    docs.deleted(&w.room);
                    return;
                }
            }
            // Refused: the room this node's copy follows is gone from Redis (lost, or
            // restarted). The room closes its clients (1011).
            tracing::info!(room = %w.room, follows = %w.follows, "document update refused by Redis: the room is gone under the epoch this node follows");
            w.failed();
            return;
        }
        if len > COMPACT_AFTER && self.compacting_start(&w.room) {
            let bp = self.clone();
            let room = w.room.clone();
            tokio::spawn(async move {
                match bp.compact_doc(&room).await {
                    Ok(true) => {
                        bp.metrics.doc.compactions.inc();
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%room, %error, "document compaction in Redis failed")
                    }
                }
                bp.compacting_end(&room);
            });
        }
    }

    fn compacting_start(&self, room: &Arc<str>) -> bool {
        self.compacting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(room.clone())
    }

    fn compacting_end(&self, room: &str) {
        self.compacting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(room);
    }

    /// A room's document (epoch, sequence, snapshot and the updates after it), read
    /// atomically.
    pub async fn load_doc(&self, room: &str) -> Result<DocState, BackplaneError> {
        let keys = Keys::new(room);
        let mut conn = self.conn.clone();
        type Raw = (
            Option<String>,
            Option<u64>,
            Option<Vec<u8>>,
            redis::streams::StreamRangeReply,
            Option<String>,
        );
        let (epoch, seq, snapshot, log, deleted): Raw = redis::pipe()
            .atomic()
            .get(&keys.epoch)
            .get(&keys.seq)
            .get(&keys.snap)
            .cmd("XRANGE")
            .arg(&keys.log)
            .arg("-")
            .arg("+")
            .get(&keys.deleted)
            .query_async(&mut conn)
            .await?;
        let mut updates = Vec::with_capacity(log.ids.len());
        for entry in log.ids {
            let u: Vec<u8> = entry
                .get("u")
                .ok_or_else(|| BackplaneError::Malformed(format!("document entry {}", entry.id)))?;
            updates.push(u);
        }
        Ok(DocState {
            epoch: Arc::from(epoch.unwrap_or_default()),
            seq: seq.unwrap_or(0),
            log: DocLog { snapshot, updates },
            deleted: Arc::from(deleted.unwrap_or_default()),
        })
    }

    /// Fold a room's log into its snapshot. Returns whether Redis took the new snapshot.
    async fn compact_doc(&self, room: &str) -> Result<bool, BackplaneError> {
        let state = self.load_doc(room).await?;
        if state.log.updates.is_empty() {
            return Ok(false);
        }
        let name = room.to_owned();
        let log = state.log;
        let snapshot = tokio::task::spawn_blocking(move || compact(&name, &log))
            .await
            .map_err(|e| BackplaneError::Malformed(format!("compaction task: {e}")))?;
        let keys = Keys::new(room);
        let mut conn = self.conn.clone();
        let accepted: i64 = redis::cmd("EVAL")
            .arg(COMPACT_LUA.text())
            .arg(4)
            .arg(&keys.epoch)
            .arg(&keys.snap)
            .arg(&keys.snapseq)
            .arg(&keys.log)
            .arg(&*state.epoch)
            .arg(state.seq)
            .arg(snapshot)
            .query_async(&mut conn)
            .await?;
        tracing::debug!(%room, covered = state.seq, accepted, "document log compacted in Redis");
        Ok(accepted == 1)
    }
}
