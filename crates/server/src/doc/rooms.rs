//! [`DocRooms`]: the document rooms of a server, each a `nimbus_doc::Room` whose hooks
//! persist to the [`Store`] and enforce the size limit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use nimbus_doc::yrs::{ReadTxn, Transact};
use nimbus_doc::{HookError, Refusal, Room, RoomHooks, RoomManager, ServeOptions};

use crate::config::DocLimits;
use crate::doc::socket::SocketChannel;
use crate::doc::{Access, AccessRules};
use crate::events::{EventBus, EventKind, RoomEvent};
use crate::metrics::Metrics;
use crate::store::{apply_records, Store, StoreError, StoreOp};

/// The hooks of one persisted document room.
struct Persisted {
    store: Store,
    events: Arc<EventBus>,
    limits: Arc<DocLimits>,
    metrics: Arc<Metrics>,
    /// Stored bytes (snapshot + appended updates): an upper bound of the encoded
    /// document, exact again after each reload.
    size: AtomicUsize,
    /// The load hook's own transaction (the stored state) reaches `updated` like any other,
    /// first in order: it is already stored and must not be appended again.
    skip_loaded: AtomicBool,
}

impl RoomHooks for Persisted {
    fn load<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let log = self.store.load_doc(room.id()).await.map_err(|e| {
                tracing::error!(room = room.id(), error = %e, "cannot load document");
                HookError::new(format!("the document could not be loaded: {e}"))
            })?;
            let before = room.doc().transact().state_vector();
            let applied = apply_records(room.id(), room.doc(), log.records());
            // A transaction that changed the document fires exactly one update event.
            let changed = room.doc().transact().state_vector() != before;
            self.skip_loaded.store(changed, Ordering::Relaxed);
            if applied.skipped > 0 {
                self.metrics
                    .doc_corrupt_records
                    .inc_by(applied.skipped as u64);
            }
            self.size.store(log.bytes(), Ordering::Relaxed);
            tracing::debug!(
                room = room.id(),
                records = applied.applied,
                bytes = log.bytes(),
                "document loaded"
            );
            Ok(())
        })
    }

    fn check_update(&self, _room: &Room, update: &[u8]) -> Result<(), Refusal> {
        let size = self.size.load(Ordering::Relaxed);
        let max = self.limits.max_doc_bytes;
        if size.saturating_add(update.len()) > max {
            self.metrics.doc_refused("doc_too_large");
            return Err(Refusal::new(format!(
                "document too large: {size} stored bytes + {} would exceed the limit of {max}",
                update.len()
            )));
        }
        Ok(())
    }

    fn updated(&self, room: &Room, update: &Bytes) {
        if self.skip_loaded.swap(false, Ordering::Relaxed) {
            return;
        }
        self.size.fetch_add(update.len(), Ordering::Relaxed);
        self.metrics.doc_updates.inc();
        self.metrics.doc_update_bytes.inc_by(update.len() as u64);
        let key: Arc<str> = Arc::from(room.id());
        if self.events.is_active() {
            use base64::Engine;
            self.events.publish(&RoomEvent {
                room: key.clone(),
                kind: EventKind::DocUpdate,
                data: serde_json::json!({
                    "room": room.id(),
                    "update": base64::engine::general_purpose::STANDARD.encode(update),
                    "bytes": update.len(),
                }),
                user: None,
            });
        }
        self.store.apply(StoreOp::DocAppend {
            room: key,
            update: update.clone(),
        });
    }

    fn emptied<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, ()> {
        // Every append is already queued; an idle room gets its log folded into a snapshot.
        self.store.apply(StoreOp::DocCompact {
            room: Arc::from(room.id()),
        });
        Box::pin(async {})
    }
}

/// Why a client could not join a document room.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server holds `doc_max_rooms` rooms and this one is not loaded.
    #[error("the server has too many document rooms loaded")]
    TooManyRooms,
    /// Loading the room failed.
    #[error(transparent)]
    Load(#[from] HookError),
}

/// Every document room of a server.
pub struct DocRooms {
    manager: RoomManager,
    store: Store,
    /// Limits and policies.
    pub limits: Arc<DocLimits>,
    access: AccessRules,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for DocRooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocRooms")
            .field("rooms", &self.manager.room_ids().len())
            .finish_non_exhaustive()
    }
}

impl DocRooms {
    /// Document rooms persisted in `store`; every applied update is published on `events`
    /// as `DOC_UPDATE`.
    pub fn new(
        store: Store,
        limits: Arc<DocLimits>,
        metrics: Arc<Metrics>,
        events: Arc<EventBus>,
    ) -> DocRooms {
        let (s, l, m) = (store.clone(), limits.clone(), metrics.clone());
        let manager = RoomManager::new(move |id: &str| {
            Room::with_hooks(
                id,
                Arc::new(Persisted {
                    store: s.clone(),
                    events: events.clone(),
                    limits: l.clone(),
                    metrics: m.clone(),
                    size: AtomicUsize::new(0),
                    skip_loaded: AtomicBool::new(false),
                }),
            )
        });
        DocRooms {
            manager,
            store,
            access: AccessRules::new(limits.tokens.clone()),
            limits,
            metrics,
        }
    }

    /// The token rules.
    pub fn access(&self) -> &AccessRules {
        &self.access
    }

    /// The metrics documents count into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Bring the gauges and the store's counters up to date (before `/metrics` is encoded).
    pub fn refresh_metrics(&self) {
        self.metrics
            .doc_rooms
            .set(self.manager.room_ids().len() as i64);
        let done = self.store.doc_stats().compactions.load(Ordering::Relaxed);
        let counted = self.metrics.doc_compactions.get();
        if done > counted {
            self.metrics.doc_compactions.inc_by(done - counted);
        }
    }

    /// Loaded room names, sorted.
    pub fn room_ids(&self) -> Vec<String> {
        let mut ids = self.manager.room_ids();
        ids.sort();
        ids
    }

    /// Serve one client in `room` until it leaves.
    pub(crate) async fn serve(&self, room: &str, channel: SocketChannel, access: Access) {
        let opts = ServeOptions {
            read_only: access == Access::ReadOnly,
            max_message_bytes: self.limits.max_message_bytes,
            awareness_timeout: self.limits.awareness_timeout,
            ..ServeOptions::default()
        };
        self.metrics.doc_clients.inc();
        let result = self.manager.serve(room, channel, opts).await;
        self.metrics.doc_clients.dec();
        match result {
            Ok(()) => tracing::debug!(%room, "document client left"),
            Err(e) => {
                if let Some(code) = e.close_code() {
                    self.metrics.doc_close(code);
                }
                tracing::info!(%room, error = %e, "document client closed");
            }
        }
    }

    /// May a client open `room` now? (Refuses a new room beyond `doc_max_rooms`.)
    pub(crate) fn admit(&self, room: &str) -> Result<(), JoinError> {
        if self.manager.get(room).is_none()
            && self.manager.room_ids().len() >= self.limits.max_rooms
        {
            return Err(JoinError::TooManyRooms);
        }
        Ok(())
    }

    /// The document of `room` as JSON (its live state when loaded, else the stored one);
    /// `None` when nothing is stored for it.
    pub async fn to_json(&self, room: &str) -> Result<Option<serde_json::Value>, StoreError> {
        if let Some(live) = self.manager.get(room) {
            return Ok(Some(nimbus_doc::doc_to_json(live.doc())));
        }
        let log = self.store.load_doc(room).await?;
        if log.is_empty() {
            return Ok(None);
        }
        let doc = nimbus_doc::yrs::Doc::new();
        apply_records(room, &doc, log.records());
        Ok(Some(nimbus_doc::doc_to_json(&doc)))
    }
}
