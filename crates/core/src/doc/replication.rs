//! The seam between the document rooms and whatever keeps and shares their updates.
//!
//! A document room applies its clients' updates at once (Yjs updates commute); its hooks
//! hand every update to the node's [`DocReplication`] and load the room from it. Two
//! implementations, chosen once by the composition root (`Server::bind`):
//!
//! - [`LocalDocs`]: a single node. Updates go to the local [`Store`] and are published on
//!   the event bus as `DOC_UPDATE`; nothing arrives from elsewhere.
//! - `RedisDocs` (`crate::backplane::doc`, `--redis`): updates are appended to the room's
//!   stream in Redis and shared with every node; they (and `DOC_UPDATE`) come back
//!   through the subscription ([`DocFeed`]).
//!
//! The document rooms own this trait; the backplane implements it.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_util::future::BoxFuture;
pub use nimbus_proto::backplane::DocMessage;

use crate::events::{EventBody, EventBus, RoomEvent};
use crate::replication::ReplicationError;
use crate::store::{DocLog, Store, StoreOp, STORE_UNAVAILABLE};

/// A room's document as its replication keeps it, read atomically.
#[derive(Debug, Clone, Default)]
pub struct DocState {
    /// Epoch ("" in process, or for a room never written).
    pub epoch: Arc<str>,
    /// Sequence number of the last update the state covers (0 in process).
    pub seq: u64,
    /// Snapshot and the updates after it.
    pub log: DocLog,
    /// The epoch under which the room was last deleted, if the replication still knows
    /// ("" in process, or when none): a copy following that epoch belongs to a deleted
    /// room, not a lost one.
    pub deleted: Arc<str>,
}

/// The `DOC_UPDATE` event of an update.
pub fn update_event(room: &Arc<str>, update: &Bytes) -> RoomEvent {
    RoomEvent {
        room: room.clone(),
        user: None,
        body: EventBody::DocUpdate {
            update: update.clone(),
        },
        gid: None,
    }
}

/// Called when an update could not be kept (the room then closes its clients).
pub type OnFailure = Arc<dyn Fn() + Send + Sync>;

/// Why [`DocReplication::delete`] did not remove a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteRefused {
    /// The store (or backplane) cannot write now.
    #[error("store unavailable: changes cannot be stored right now")]
    Unavailable,
}

/// Where a replication delivers document updates made elsewhere (implemented by the
/// document rooms: they know which rooms are loaded here).
pub trait DocFeed: Send + Sync + 'static {
    /// An update of a room (any node's, this one's included) in the room's order.
    fn replicated(&self, m: DocMessage);
    /// Updates may have been missed (the subscription was re-established): every loaded
    /// room catches up.
    fn resync_all(&self);
    /// A room was deleted (by any node, this one included): its clients here are closed
    /// with 4410 and its copy dropped.
    fn deleted(&self, room: &str);
}

/// What the document rooms need from the thing that keeps and shares their updates.
pub trait DocReplication: Send + Sync + std::fmt::Debug + 'static {
    /// The close reason of clients closed with 1011 because their room could not be
    /// loaded or kept.
    fn unavailable_reason(&self) -> &'static str;

    /// The size counter of room `room` (`max_doc_bytes`): the stored bytes.
    fn size(&self, room: &str) -> Arc<AtomicUsize>;

    /// The room's document and its place in the order, read atomically.
    fn load<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<DocState, ReplicationError>>;

    /// The room was loaded with `log`: set `size` unless something else keeps it.
    fn loaded(&self, size: &AtomicUsize, log: &DocLog);

    /// `false` when an update cannot be kept now: the client is refused (1011).
    fn can_write(&self) -> bool;

    /// Keep (and share) an update applied to room `room`, whose copy here follows `epoch`
    /// ("" before it saw one); `on_failure` is called (for the closure it builds) when the
    /// update cannot be kept after all, which includes the room being gone from a shared
    /// replication under that epoch (deleted, or lost): the update is not kept then.
    fn append(
        &self,
        room: Arc<str>,
        epoch: Arc<str>,
        update: &Bytes,
        on_failure: &dyn Fn() -> OnFailure,
    );

    /// The room's last client left.
    fn emptied(&self, room: &str);

    /// Remove what is kept of room `room` (its clients have been closed and its updates
    /// handed to [`DocReplication::append`] already); a load after this finds nothing.
    /// With other nodes, each of them hears it ([`DocFeed::deleted`]).
    fn delete<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), DeleteRefused>>;

    /// Whether [`DocReplication::delete`] would refuse now (asked before the room's
    /// clients are closed).
    fn check_delete(&self) -> Result<(), DeleteRefused>;

    /// Start delivering updates made elsewhere to `feed`. An implementation where nothing
    /// happens elsewhere does nothing.
    fn subscribe(&self, feed: Weak<dyn DocFeed>);
}

/// A single node: the local store keeps the updates (see the module docs).
#[derive(Debug, Clone)]
pub struct LocalDocs {
    store: Store,
    events: Arc<EventBus>,
}

impl LocalDocs {
    /// Updates kept in `store`, published on `events`.
    pub fn new(store: Store, events: Arc<EventBus>) -> LocalDocs {
        LocalDocs { store, events }
    }
}

impl DocReplication for LocalDocs {
    fn unavailable_reason(&self) -> &'static str {
        STORE_UNAVAILABLE
    }

    /// The store's writer sets it at load and moves it to the merged size at each
    /// compaction ([`Store::doc_size`]); the room adds what it appends.
    fn size(&self, room: &str) -> Arc<AtomicUsize> {
        self.store.doc_size(room)
    }

    fn load<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<DocState, ReplicationError>> {
        Box::pin(async move {
            let log = self.store.load_doc(room).await?;
            Ok(DocState {
                log,
                ..DocState::default()
            })
        })
    }

    fn loaded(&self, _size: &AtomicUsize, _log: &DocLog) {}

    fn can_write(&self) -> bool {
        self.store.can_write()
    }

    fn append(
        &self,
        room: Arc<str>,
        _epoch: Arc<str>,
        update: &Bytes,
        _on_failure: &dyn Fn() -> OnFailure,
    ) {
        if self.events.is_active() {
            self.events.publish(&update_event(&room, update));
        }
        self.store.apply(StoreOp::DocAppend {
            room,
            update: update.clone(),
        });
    }

    /// Every append is already queued; an idle room gets its log folded into a snapshot.
    fn emptied(&self, room: &str) {
        self.store.apply(StoreOp::DocCompact {
            room: Arc::from(room),
        });
    }

    fn check_delete(&self) -> Result<(), DeleteRefused> {
        if self.store.can_write() {
            Ok(())
        } else {
            Err(DeleteRefused::Unavailable)
        }
    }

    /// Queued behind every append: the log is gone for the next load.
    fn delete<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), DeleteRefused>> {
        let queued = self.check_delete().map(|()| {
            self.store.apply(StoreOp::DocDelete {
                room: Arc::from(room),
            });
        });
        Box::pin(std::future::ready(queued))
    }

    fn subscribe(&self, _feed: Weak<dyn DocFeed>) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn local_docs_store_publish_and_reload_what_was_appended() {
        let store = Store::spawn(
            crate::store::MemoryBackend::default(),
            std::time::Duration::from_millis(1),
        );
        let events = Arc::new(EventBus::default());
        let seen: Arc<Mutex<Vec<RoomEvent>>> = Arc::default();
        let s = seen.clone();
        let _sub = events.subscribe(Arc::new(move |ev: &RoomEvent| {
            s.lock().expect("not poisoned").push(ev.clone());
        }));
        let docs = LocalDocs::new(store.clone(), events);
        assert_eq!(docs.unavailable_reason(), STORE_UNAVAILABLE);
        assert!(docs.can_write());
        let empty = docs.load("r").await.expect("loaded");
        assert!(empty.log.is_empty());
        assert_eq!((&*empty.epoch, empty.seq), ("", 0));
        let never = || -> OnFailure { panic!("a local append does not fail later") };
        docs.append(
            Arc::from("r"),
            Arc::from(""),
            &Bytes::from_static(b"\x00\x00"),
            &never,
        );
        let state = docs.load("r").await.expect("loaded");
        assert_eq!(state.log.updates, vec![b"\x00\x00".to_vec()]);
        assert_eq!((&*state.epoch, state.seq), ("", 0));
        let seen = seen.lock().expect("not poisoned");
        assert_eq!(seen.len(), 1);
        assert!(
            matches!(&seen[0].body, EventBody::DocUpdate { update } if &update[..] == b"\x00\x00")
        );
        let size = AtomicUsize::new(7);
        docs.loaded(&size, &state.log);
        assert_eq!(size.into_inner(), 7, "the store keeps the size");
    }
}
