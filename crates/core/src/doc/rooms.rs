//! [`DocRooms`]: the document rooms of a server, each a `nimbus_doc::Room` whose hooks
//! keep their updates through the node's `DocReplication` (the local [`Store`], or
//! Redis) and enforce the size limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use nimbus_doc::yrs::{ReadTxn, Transact};
use nimbus_doc::{HookError, Refusal, Room, RoomHooks, RoomManager};

use crate::doc::metrics::DocMetrics;
use crate::doc::replica::{Step, SyncState};
use crate::doc::replication::{DocFeed, DocMessage, DocReplication, LocalDocs, OnFailure};
use crate::doc::settings::DocLimits;
use crate::doc::{Access, AccessRules};
use crate::events::EventBus;
use crate::replication::ReplicationError;
use crate::replication::ReplicationMetrics;
use crate::store::metrics::StoreMetrics;
use crate::store::{apply_records, Store, StoreError, STORE_UNAVAILABLE};

/// The rooms loaded on this node (they follow their replication's order), by id.
type Replicas = Arc<Mutex<HashMap<String, Arc<Persisted>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The hooks of one persisted document room.
struct Persisted {
    /// Where the room's updates are kept (the store, or Redis shared with other nodes).
    repl: Arc<dyn DocReplication>,
    replicas: Replicas,
    /// How far this copy follows the room's sequence (in Redis; in process it stays at 0).
    sync: Mutex<SyncState>,
    /// A reload from the replication is under way.
    resyncing: AtomicBool,
    /// These hooks (the registry of followed rooms holds them).
    me: std::sync::Weak<Persisted>,
    limits: Arc<DocLimits>,
    metrics: DocRoomsMetrics,
    /// The document's size for `max_doc_bytes`: the stored bytes (snapshot + appended
    /// updates), from [`DocReplication::size`]: in process the store's writer sets it at
    /// load and moves it to the merged size at each compaction ([`Store::doc_size`]); the
    /// room adds what it appends, so it is the encoded size of the last compaction plus the
    /// bytes appended since.
    size: Arc<AtomicUsize>,
    /// Updates from the replication's subscription that arrived while the room loads: held
    /// (bounded by [`MAX_HELD_BYTES`]) and applied once the stored state is in, so the
    /// subscription never waits for a load. `None` once loaded.
    held: Mutex<Option<Held>>,
    /// The room was deleted through another node: nothing more of it is appended.
    deleted: AtomicBool,
}

/// The bytes of updates a loading room holds for later ([`Persisted::held`]); beyond it
/// they are dropped and the room catches up from the replication once loaded.
const MAX_HELD_BYTES: usize = 8 << 20;

/// What a held message costs beyond its bytes (the message, its `Arc` and `Bytes` headers).
const HELD_OVERHEAD: usize = 128;

/// Updates held while a room loads.
#[derive(Default)]
struct Held {
    messages: Vec<DocMessage>,
    bytes: usize,
    /// Some were dropped (over [`MAX_HELD_BYTES`]): catch up once loaded.
    dropped: bool,
}

impl RoomHooks for Persisted {
    fn load<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            // The close reason is public and stable; the cause is logged only.
            let failed = |e: &dyn std::fmt::Display| {
                tracing::error!(room = room.id(), error = %e, "cannot load document");
                HookError::new(self.repl.unavailable_reason())
            };
            // Registered first: updates arriving (from elsewhere) while it loads are
            // applied too.
            self.register(room);
            let state = match self.repl.load(room.id()).await {
                Ok(state) => state,
                Err(e) => {
                    self.unregister(room);
                    return Err(failed(&e));
                }
            };
            // Applied off the async workers: a large document takes seconds, and the other
            // connections of a worker must not wait for it. The transaction's origin keeps
            // it out of `updated` (it is stored already), whatever reaches the room first.
            let log = Arc::new(state.log);
            let (r, l) = (room.clone(), log.clone());
            let applied = tokio::task::spawn_blocking(move || {
                let applied = apply_records(r.id(), &mut r.transact_loaded(), l.records());
                // The validator replica too, so the first client update does not build it.
                r.warm_validator();
                applied
            })
            .await;
            let applied = match applied {
                Ok(applied) => applied,
                Err(e) => {
                    self.unregister(room);
                    return Err(failed(&e));
                }
            };
            if applied.skipped > 0 {
                self.metrics
                    .doc
                    .corrupt_records
                    .inc_by(applied.skipped as u64);
            }
            self.repl.loaded(&self.size, &log);
            let step = lock(&self.sync).loaded(&state.epoch, state.seq, &state.deleted);
            self.follow(room, step);
            self.drain_held(room);
            tracing::debug!(
                room = room.id(),
                records = applied.applied,
                bytes = log.bytes(),
                "document loaded"
            );
            Ok(())
        })
    }

    fn check_update(&self, room: &Room, update: &[u8]) -> Result<(), Refusal> {
        if !self.repl.can_write() {
            // Not applied, not fanned out: the client keeps the update and sends it again
            // when it reconnects (y-websocket resyncs), once the store writes again.
            self.metrics.store.refused("doc");
            tracing::info!(
                room = room.id(),
                "document update refused: the store cannot write; closing the client (1011)"
            );
            return Err(Refusal::closing(1011, STORE_UNAVAILABLE));
        }
        let size = self.size.load(Ordering::Relaxed);
        let max = self.limits.max_doc_bytes;
        if size.saturating_add(update.len()) > max {
            self.metrics.doc.refused("doc_too_large");
            // The client applied the update locally; its next update would depend on it
            // and fail with 1007, so the connection is closed now with a clear code.
            return Err(Refusal::closing(
                1009,
                format!(
                    "document too large: {size} bytes + {} would exceed the limit of {max}",
                    update.len()
                ),
            ));
        }
        Ok(())
    }

    fn updated(&self, room: &Room, update: &Bytes) {
        if self.deleted.load(Ordering::Relaxed) {
            return;
        }
        self.size.fetch_add(update.len(), Ordering::Relaxed);
        self.metrics.doc.updates.inc();
        self.metrics.doc.update_bytes.inc_by(update.len() as u64);
        let key: Arc<str> = Arc::from(room.id());
        let on_failure = || -> OnFailure {
            let (closing, me) = (room.clone(), self.me.clone());
            let reason = self.repl.unavailable_reason();
            Arc::new(move || {
                // Its clients re-send the update when they reconnect (to any node).
                if let Some(me) = me.upgrade() {
                    me.unregister(&closing);
                }
                closing.close_with(1011, reason);
            })
        };
        let epoch = lock(&self.sync).epoch();
        self.repl.append(key, epoch, update, &on_failure);
    }

    fn replicated(&self, _room: &Room, update: &Bytes) {
        self.size.fetch_add(update.len(), Ordering::Relaxed);
    }

    fn emptied<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, ()> {
        self.unregister(room);
        self.repl.emptied(room.id());
        Box::pin(async {})
    }
}

impl Persisted {
    fn register(&self, room: &Room) {
        if let Some(me) = self.me.upgrade() {
            lock(&self.replicas).insert(room.id().to_owned(), me);
        }
    }

    fn unregister(&self, room: &Room) {
        let mut replicas = lock(&self.replicas);
        if replicas
            .get(room.id())
            .is_some_and(|me| std::ptr::eq(Arc::as_ptr(me), self))
        {
            replicas.remove(room.id());
        }
    }

    /// An update from the replication's subscription: held while the room loads, applied
    /// otherwise.
    fn receive(&self, room: &Room, m: DocMessage) {
        if let Some(held) = lock(&self.held).as_mut() {
            // What holding it costs: the update, the names, the message itself.
            let cost = m.update.len() + m.room.len() + m.epoch.len() + HELD_OVERHEAD;
            if held.bytes + cost <= MAX_HELD_BYTES {
                held.bytes += cost;
                held.messages.push(m);
            } else {
                held.dropped = true;
            }
            return;
        }
        self.apply(room, m);
    }

    fn apply(&self, room: &Room, m: DocMessage) {
        if !m.local {
            if let Err(error) = room.apply_replicated(&m.update) {
                tracing::error!(room = %m.room, %error, "cannot apply a document update from Redis");
            }
        }
        let step = lock(&self.sync).on_update(&m.epoch, m.seq);
        self.follow(room, step);
    }

    /// The stored state is in: apply what arrived meanwhile (updates the load already
    /// had are applied again, which changes nothing), and catch up if some were dropped.
    fn drain_held(&self, room: &Room) {
        let Some(held) = lock(&self.held).take() else {
            return;
        };
        for m in held.messages {
            self.apply(room, m);
        }
        if held.dropped {
            self.resync(room);
        }
    }

    /// Act on a step of the room's sync state.
    fn follow(&self, room: &Room, step: Step) {
        match step {
            Step::Done => {}
            Step::CatchUp => self.resync(room),
            Step::Reset => {
                // Clients hold the state Redis lost: they re-send it when they reconnect.
                tracing::warn!(
                    room = room.id(),
                    "Redis lost the document room: closing its clients"
                );
                self.unregister(room);
                room.close_with(1011, self.repl.unavailable_reason());
            }
            // Deleted while the subscription that would have said so was down: as on the
            // deletion's message.
            Step::Deleted => self.deleted_meanwhile(room),
        }
    }

    /// The room this copy follows was deleted (found at a resync, the deletion's message
    /// missed): not kept any more, its clients closed with 4410, as
    /// `DocFeed::deleted` does on the message.
    fn deleted_meanwhile(&self, room: &Room) {
        tracing::info!(
            room = room.id(),
            "document room deleted while this node missed the message: closing its clients (4410)"
        );
        self.deleted.store(true, Ordering::Relaxed);
        self.unregister(room);
        room.close_with(ROOM_DELETED, ROOM_DELETED_REASON);
    }

    /// Reload the room from its replication and apply what this copy misses (idempotent).
    fn resync(&self, room: &Room) {
        let repl = self.repl.clone();
        if self.resyncing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics.replication.resyncs.inc();
        let Some(me) = lock(&self.replicas).get(room.id()).cloned() else {
            self.resyncing.store(false, Ordering::Release);
            return;
        };
        let room = room.clone();
        tokio::spawn(async move {
            let result: Result<(), ReplicationError> = async {
                let state = repl.load(room.id()).await?;
                let id = room.id().to_owned();
                let bytes = state.log.bytes();
                let log = state.log;
                // Merged, applied and the validator brought up to date off the async
                // workers: for a large document each takes seconds.
                let r = room.clone();
                let applied = tokio::task::spawn_blocking(move || {
                    let merged = crate::store::compact(&id, &log);
                    let applied = r.apply_replicated(&merged);
                    r.warm_validator();
                    applied
                })
                .await
                .map_err(|e| ReplicationError::Backplane(format!("merge task: {e}")))?;
                if let Err(error) = applied {
                    tracing::error!(room = room.id(), %error, "cannot apply the document from Redis");
                }
                me.size.fetch_max(bytes, Ordering::Relaxed);
                let step = lock(&me.sync).loaded(&state.epoch, state.seq, &state.deleted);
                me.resyncing.store(false, Ordering::Release);
                me.follow(&room, step);
                Ok(())
            }
            .await;
            if let Err(error) = result {
                me.resyncing.store(false, Ordering::Release);
                tracing::warn!(room = room.id(), %error, "cannot catch up with Redis; retried on the next update or resubscription");
            }
        });
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

/// Why the API could not apply an update to a document room ([`DocRooms::apply_update`]).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Not a valid v1 update, or one the room refuses (validated in a replica first): the
    /// room is unchanged.
    #[error(transparent)]
    Invalid(#[from] nimbus_doc::ApplyError),
    /// It would take the document over `max_doc_bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// The store (or backplane) cannot keep it now, or the room could not be loaded.
    #[error("{0}")]
    Unavailable(String),
    /// The server holds `doc_max_rooms` rooms and this one is not loaded.
    #[error("the server has too many document rooms loaded")]
    TooManyRooms,
}

/// Why [`DocRooms::delete`] did not delete a room.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// Refused by the replication (store unavailable, or not supported with Redis).
    #[error(transparent)]
    Refused(#[from] crate::doc::replication::DeleteRefused),
    /// Reading the room (does it exist?) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Close code of the clients of a document room deleted through the API.
pub const ROOM_DELETED: u16 = 4410;

/// The close reason sent with [`ROOM_DELETED`].
pub const ROOM_DELETED_REASON: &str = "room deleted";

/// The metrics document rooms count into: their own, refusals while the store cannot
/// write, catch-ups of an order kept elsewhere.
#[derive(Debug, Clone)]
pub struct DocRoomsMetrics {
    /// `nimbus_doc_*`.
    pub doc: Arc<DocMetrics>,
    /// `nimbus_store_refused` (label `doc`).
    pub store: Arc<StoreMetrics>,
    /// `nimbus_redis_resyncs`.
    pub replication: ReplicationMetrics,
}

/// Every document room of a server.
pub struct DocRooms {
    manager: RoomManager,
    store: Store,
    /// Limits and policies.
    pub limits: Arc<DocLimits>,
    /// The static token rules (swapped whole by [`DocRooms::set_access`]).
    access: ArcSwap<AccessRules>,
    metrics: DocRoomsMetrics,
    /// Where the rooms' updates are kept (chosen by the composition root).
    repl: Arc<dyn DocReplication>,
    replicas: Replicas,
    /// Reads of rooms not loaded here (replayed from the replication) running at once.
    stored_reads: Arc<tokio::sync::Semaphore>,
    /// The options every connection is served with (read-write, read-only), shared.
    serve_options: [Arc<nimbus_doc::ServeOptions>; 2],
}

/// How many reads of stored (not loaded) documents run at once ([`DocRooms::state`],
/// `to_json`, `state_vector`): each loads up to `max_doc_bytes` through the store's one
/// thread and replays it; more wait.
pub const STORED_READS: usize = 2;

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
        metrics: DocRoomsMetrics,
        events: Arc<EventBus>,
    ) -> DocRooms {
        let local = Arc::new(LocalDocs::new(store.clone(), events));
        DocRooms::with_replication(store, limits, metrics, local)
    }

    /// Like [`DocRooms::new`], with the rooms' updates kept by `repl` (with Redis: shared
    /// with every node connected to it, see `nimbus_redis::doc`, and `DOC_UPDATE`
    /// events come from its subscription). Call [`DocRooms::attach`] on the `Arc` then.
    pub fn with_replication(
        store: Store,
        limits: Arc<DocLimits>,
        metrics: DocRoomsMetrics,
        repl: Arc<dyn DocReplication>,
    ) -> DocRooms {
        let (l, m) = (limits.clone(), metrics.clone());
        let replicas = Replicas::default();
        let (r, reg) = (repl.clone(), replicas.clone());
        let max_rooms = limits.max_rooms;
        let manager = RoomManager::bounded(
            move |id: &str| {
                let hooks = Arc::new_cyclic(|me| Persisted {
                    repl: r.clone(),
                    replicas: reg.clone(),
                    sync: Mutex::new(SyncState::loading()),
                    resyncing: AtomicBool::new(false),
                    me: me.clone(),
                    limits: l.clone(),
                    metrics: m.clone(),
                    size: r.size(id),
                    held: Mutex::new(Some(Held::default())),
                    deleted: AtomicBool::new(false),
                });
                Room::with_options(id, hooks, l.room_options())
            },
            max_rooms,
        );
        let serve_options = [
            Arc::new(limits.serve_options(false)),
            Arc::new(limits.serve_options(true)),
        ];
        DocRooms {
            manager,
            store,
            access: ArcSwap::from_pointee(AccessRules::new(limits.tokens.clone())),
            limits,
            metrics,
            repl,
            replicas,
            stored_reads: Arc::new(tokio::sync::Semaphore::new(STORED_READS)),
            serve_options,
        }
    }

    /// Let the replication's subscription reach these rooms (updates made elsewhere).
    pub fn attach(self: &Arc<Self>) {
        let feed: Arc<dyn DocFeed> = self.clone();
        self.repl.subscribe(Arc::downgrade(&feed));
    }
}

impl DocFeed for DocRooms {
    /// An update of a room arrived from Redis (any node's, this one's included).
    fn replicated(&self, m: DocMessage) {
        let Some(hooks) = lock(&self.replicas).get(&*m.room).cloned() else {
            return;
        };
        let Some(room) = self.manager.get(&m.room) else {
            return;
        };
        hooks.receive(&room, m);
    }

    /// A room was deleted (through any node's API): its clients here are closed with
    /// [`ROOM_DELETED`] and this copy is dropped, so none of it is written back.
    fn deleted(&self, room: &str) {
        if let Some(hooks) = lock(&self.replicas).remove(room) {
            // What its clients sent before the close and the room still drains would start
            // the room again in Redis: it was deleted, so it is not kept.
            hooks.deleted.store(true, Ordering::Relaxed);
        }
        if let Some(live) = self.manager.get(room) {
            tracing::info!(%room, "document room deleted: closing its clients (4410)");
            live.close_with(ROOM_DELETED, ROOM_DELETED_REASON);
        }
    }

    /// Catch every followed room up with Redis (after the subscription was re-established).
    fn resync_all(&self) {
        let followed: Vec<_> = lock(&self.replicas)
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        for (id, hooks) in followed {
            if let Some(room) = self.manager.get(&id) {
                hooks.resync(&room);
            }
        }
    }
}

impl DocRooms {
    /// The token rules.
    pub fn access(&self) -> Arc<AccessRules> {
        self.access.load_full()
    }

    /// Replace the static token rules (a config reload); connections already admitted
    /// keep their access.
    pub fn set_access(&self, rules: AccessRules) {
        self.access.store(Arc::new(rules));
    }

    /// The document rooms' metrics.
    pub fn metrics(&self) -> &DocMetrics {
        &self.metrics.doc
    }

    /// Bring the gauges and the store's counters up to date (before `/metrics` is encoded).
    pub fn refresh_metrics(&self) {
        self.metrics
            .doc
            .rooms
            .set(self.manager.room_ids().len() as i64);
        let stats = self.store.doc_stats();
        let done = stats.compactions.load(Ordering::Relaxed);
        let counted = self.metrics.doc.compactions.get();
        if done > counted {
            self.metrics.doc.compactions.inc_by(done - counted);
        }
    }

    /// Loaded room names, sorted.
    pub fn room_ids(&self) -> Vec<String> {
        let mut ids = self.manager.room_ids();
        ids.sort();
        ids
    }

    /// Serve one client in `room` until it leaves.
    pub async fn serve(&self, room: &str, channel: impl nimbus_doc::Channel, access: Access) {
        let opts = self.serve_options[usize::from(access == Access::ReadOnly)].clone();
        self.metrics.doc.clients.inc();
        let result = self.manager.serve(room, channel, opts).await;
        self.metrics.doc.clients.dec();
        match result {
            Ok(()) => tracing::debug!(%room, "document client left"),
            Err(e) => {
                if let Some(code) = e.close_code() {
                    self.metrics.doc.close(code);
                }
                tracing::info!(%room, error = %e, "document client closed");
            }
        }
    }

    /// May a client open `room` now? (Refuses a new room beyond `doc_max_rooms`.)
    pub fn admit(&self, room: &str) -> Result<(), JoinError> {
        if self.manager.get(room).is_none()
            && self.manager.room_ids().len() >= self.limits.max_rooms
        {
            return Err(JoinError::TooManyRooms);
        }
        Ok(())
    }

    /// The loaded room `room`, if it is open. A room that is closing (unloading, or
    /// deleted) is waited for: once it is closed its updates have reached the replication,
    /// so a load from there sees them.
    ///
    /// A room still loading is waited for too (it is in the manager before its stored state
    /// is in): read before, it would look empty. A room whose load failed is not live.
    async fn live(&self, room: &str) -> Option<Room> {
        let live = self.manager.get(room)?;
        if live.is_closed() {
            live.closed().await;
            return None;
        }
        live.load().await.ok()?;
        Some(live)
    }

    /// Apply a v1 update to `room` as a client's update is applied (the HTTP API's
    /// `POST`): the room is loaded if needed; the size limit and the store's state are
    /// checked as for a client (`check_update`); the update is validated in the room's
    /// replica before the room applies it (a refused update leaves the room unchanged);
    /// then it reaches the room's clients and its hooks keep and share it (store, event
    /// bus, Redis) exactly like a client's. A room loaded only for this is unloaded again.
    pub async fn apply_update(&self, room: &str, update: &[u8]) -> Result<(), UpdateError> {
        self.admit(room).map_err(|_| UpdateError::TooManyRooms)?;
        let live = loop {
            let live = self.manager.get_room(room).await.map_err(|e| match e {
                nimbus_doc::GetRoomError::TooManyRooms(_) => UpdateError::TooManyRooms,
                other => UpdateError::Unavailable(other.to_string()),
            })?;
            if live.is_closed() {
                // Unloading: wait for it, then load a fresh one.
                live.closed().await;
                continue;
            }
            break live;
        };
        let result = self.apply_to(&live, update);
        // The update has reached the hooks (persisted, shared) when this returns, even if
        // the room was unloaded meanwhile.
        live.flush().await;
        self.manager.unload_if_empty(room).await;
        result
    }

    fn apply_to(&self, live: &Room, update: &[u8]) -> Result<(), UpdateError> {
        // Decoded and screened first, as a client's update is before `check_update`.
        nimbus_doc::update::decode_update(update)?;
        if let Err(refusal) = live.hooks().check_update(live, update) {
            return Err(match refusal.close {
                Some(1009) => UpdateError::TooLarge(refusal.reason),
                _ => UpdateError::Unavailable(refusal.reason),
            });
        }
        live.apply_update(update)?;
        Ok(())
    }

    /// `read` of the document of `room`: its live state when loaded, else the stored one
    /// (replayed into a fresh document); `None` when nothing is stored for it.
    /// The replay runs off the async workers (a large document takes seconds).
    async fn read_doc<T: Send + 'static>(
        &self,
        room: &str,
        read: impl FnOnce(&nimbus_doc::yrs::Doc) -> T + Send + 'static,
    ) -> Result<Option<T>, StoreError> {
        let replay_error = |e: tokio::task::JoinError| StoreError::Backend {
            backend: "yrs",
            source: format!("reading the document: {e}").into(),
        };
        if let Some(live) = self.live(room).await {
            // Off the workers: encoding a large document takes as long as loading it.
            return tokio::task::spawn_blocking(move || Some(read(live.doc())))
                .await
                .map_err(replay_error);
        }
        // At most STORED_READS at once, each in its own task holding its permit to the end:
        // a reader that hangs up does not leave its store job and replay running unbounded.
        let permit = self.stored_reads.clone().acquire_owned().await;
        let (repl, id) = (self.repl.clone(), room.to_owned());
        let reading = tokio::spawn(async move {
            let _permit = permit;
            let log = repl.load(&id).await?.log;
            if log.is_empty() {
                return Ok(None);
            }
            tokio::task::spawn_blocking(move || {
                let doc = nimbus_doc::yrs::Doc::new();
                apply_records(&id, &mut doc.transact_mut(), log.records());
                Some(read(&doc))
            })
            .await
            .map_err(replay_error)
        });
        reading.await.map_err(replay_error)?
    }

    /// The whole document of `room` as one v1 update (its live state when loaded, else the
    /// stored one); `None` when nothing is stored for it.
    pub async fn state(&self, room: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let encoded = self
            .read_doc(room, nimbus_doc::update::encode_state)
            .await?;
        encoded
            .map(|update| {
                update.ok_or_else(|| StoreError::Backend {
                    backend: "yrs",
                    source: "the document could not be encoded".into(),
                })
            })
            .transpose()
    }

    /// Delete `room`: its connected clients are closed with [`ROOM_DELETED`] (their pending
    /// updates are kept first), then what is stored of it is removed. `Ok(false)` when
    /// nothing was loaded or stored. y-websocket clients reconnect by default and send
    /// their copy again: an application that deletes a room tells its clients to drop it
    /// (for instance on close code 4410).
    pub async fn delete(&self, room: &str) -> Result<bool, DeleteError> {
        // Refused before anything is closed when the replication cannot delete.
        self.repl.check_delete()?;
        let live = self.live(room).await;
        let existed = match &live {
            Some(_) => true,
            None => !self
                .repl
                .load(room)
                .await
                .map_err(StoreError::from)?
                .log
                .is_empty(),
        };
        if let Some(live) = live {
            {
                let mut replicas = lock(&self.replicas);
                replicas.remove(room);
            }
            live.close_with(ROOM_DELETED, ROOM_DELETED_REASON);
            live.flush().await;
        }
        if existed {
            self.repl.delete(room).await?;
        }
        Ok(existed)
    }

    /// The document of `room` as JSON (its live state when loaded, else the stored one);
    /// `None` when nothing is stored for it.
    pub async fn to_json(&self, room: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.read_doc(room, nimbus_doc::doc_to_json).await
    }

    /// A document room's Yjs v1 state vector (encoded), from the live room or the
    /// replication; `None` when the room has no document (what a `DOC_CHANGED` webhook
    /// carries, and `GET /api/docs/{room}/state-vector`).
    pub async fn state_vector(&self, room: &str) -> Result<Option<Vec<u8>>, StoreError> {
        use nimbus_doc::yrs::updates::encoder::Encode;
        self.read_doc(room, |doc| doc.transact().state_vector().encode_v1())
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use nimbus_doc::yrs::{GetString, StateVector, Text};
    use prometheus_client::registry::Registry;
    use tokio::sync::oneshot;

    use super::*;
    use crate::doc::replication::{DeleteRefused, DocState};
    use crate::store::DocLog;

    /// A replication whose load waits for the test's signal and which records appends.
    struct Gated {
        stored: Vec<u8>,
        gate: Mutex<Option<oneshot::Receiver<()>>>,
        appended: Mutex<Vec<Bytes>>,
        feed: Mutex<Option<Weak<dyn DocFeed>>>,
    }

    impl std::fmt::Debug for Gated {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Gated").finish_non_exhaustive()
        }
    }

    impl DocReplication for Gated {
        fn unavailable_reason(&self) -> &'static str {
            "unavailable"
        }
        fn size(&self, _room: &str) -> Arc<AtomicUsize> {
            Arc::default()
        }
        fn load<'a>(&'a self, _room: &'a str) -> BoxFuture<'a, Result<DocState, ReplicationError>> {
            let gate = lock(&self.gate).take();
            Box::pin(async move {
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                Ok(DocState {
                    epoch: Arc::from("e"),
                    seq: 1,
                    log: DocLog {
                        snapshot: Some(self.stored.clone()),
                        updates: Vec::new(),
                    },
                    deleted: Arc::from(""),
                })
            })
        }
        fn loaded(&self, _size: &AtomicUsize, _log: &DocLog) {}
        fn can_write(&self) -> bool {
            true
        }
        fn append(
            &self,
            _room: Arc<str>,
            _epoch: Arc<str>,
            update: &Bytes,
            _on_failure: &dyn Fn() -> OnFailure,
        ) {
            lock(&self.appended).push(update.clone());
        }
        fn emptied(&self, _room: &str) {}
        fn delete<'a>(&'a self, _room: &'a str) -> BoxFuture<'a, Result<(), DeleteRefused>> {
            Box::pin(async { Ok(()) })
        }
        fn check_delete(&self) -> Result<(), DeleteRefused> {
            Ok(())
        }
        fn subscribe(&self, feed: Weak<dyn DocFeed>) {
            *lock(&self.feed) = Some(feed);
        }
    }

    fn text_update(text: &str) -> Vec<u8> {
        let doc = nimbus_doc::yrs::Doc::new();
        doc.get_or_insert_text("t")
            .push(&mut doc.transact_mut(), text);
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        update
    }

    /// Document rooms over a [`Gated`] replication whose load waits for the returned sender.
    fn gated_rooms() -> (Arc<DocRooms>, Arc<Gated>, oneshot::Sender<()>) {
        let (open, gate) = oneshot::channel();
        let repl = Arc::new(Gated {
            stored: text_update("stored"),
            gate: Mutex::new(Some(gate)),
            appended: Mutex::default(),
            feed: Mutex::default(),
        });
        let mut registry = Registry::default();
        let metrics = DocRoomsMetrics {
            doc: Arc::new(DocMetrics::register(&mut registry)),
            store: Arc::new(StoreMetrics::register(&mut registry)),
            replication: ReplicationMetrics::register(&mut registry),
        };
        let store = Store::spawn(
            crate::store::MemoryBackend::default(),
            std::time::Duration::from_millis(1),
        );
        let rooms = Arc::new(DocRooms::with_replication(
            store,
            Arc::new(DocLimits::default()),
            metrics,
            repl.clone(),
        ));
        rooms.attach();
        (rooms, repl, open)
    }

    #[tokio::test]
    async fn a_read_of_a_room_still_loading_waits_for_its_stored_state() {
        let (rooms, _repl, open) = gated_rooms();
        let r = rooms.clone();
        let loading = tokio::spawn(async move { r.manager.get_room("doc").await });
        while rooms.manager.get("doc").is_none() {
            tokio::task::yield_now().await;
        }
        // The room is in the manager, its stored state not in yet: a read waits for it
        // (before, it answered an empty document).
        let r = rooms.clone();
        let reading = tokio::spawn(async move { r.to_json("doc").await });
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!reading.is_finished(), "answered before the load");
        open.send(()).expect("the load waits");
        loading.await.expect("joined").expect("loaded");
        let json = reading
            .await
            .expect("joined")
            .expect("read")
            .expect("a document");
        assert_eq!(json["t"], "stored");
    }

    #[tokio::test]
    async fn updates_replicated_during_a_load_are_held_applied_after_it_and_never_appended() {
        let (rooms, repl, open) = gated_rooms();
        let feed = lock(&repl.feed)
            .clone()
            .and_then(|f| f.upgrade())
            .expect("subscribed");
        // A client joins the room: it waits for the load, which waits for the gate.
        let r = rooms.clone();
        let loading = tokio::spawn(async move { r.manager.get_room("doc").await });
        while rooms.manager.get("doc").is_none() {
            tokio::task::yield_now().await;
        }
        // Another node's update arrives while the room loads: held, not applied now (the
        // subscription does not wait for the load's transaction).
        let other = text_update("other");
        feed.replicated(DocMessage {
            room: Arc::from("doc"),
            epoch: Arc::from("e"),
            seq: 2,
            local: false,
            update: Bytes::from(other.clone()),
        });
        let held = lock(&lock(&rooms.replicas)["doc"].held)
            .as_ref()
            .map(|h| h.messages.len());
        assert_eq!(held, Some(1));
        open.send(()).expect("the load waits");
        let room = loading.await.expect("joined").expect("loaded");
        // Then the room's own update, through the API.
        let local = text_update("local");
        rooms.apply_update("doc", &local).await.expect("applied");
        room.flush().await;
        let text = room.doc().get_or_insert_text("t");
        let text = text.get_string(&room.doc().transact());
        for part in ["stored", "other", "local"] {
            assert!(text.contains(part), "{part} missing from {text:?}");
        }
        // Only this node's own update is appended: not the stored state, not the other
        // node's update.
        assert_eq!(*lock(&repl.appended), [Bytes::from(local)]);
    }
}
