//! [`DocRooms`]: the document rooms of a server, each a `nimbus_doc::Room` whose hooks
//! persist to the [`Store`] and enforce the size limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use nimbus_doc::yrs::{ReadTxn, Transact};
use nimbus_doc::{HookError, Refusal, Room, RoomHooks, RoomManager};

use crate::backplane::doc::{DocMessage, DocWrite};
use crate::backplane::{BackplaneError, RedisBackplane};
use crate::doc::replica::{Step, SyncState};
use crate::doc::settings::DocLimits;
use crate::doc::socket::SocketChannel;
use crate::doc::{Access, AccessRules};
use crate::events::{EventBody, EventBus, RoomEvent};
use crate::metrics::Metrics;
use crate::store::{apply_records, Store, StoreError, StoreOp, STORE_UNAVAILABLE};

/// The close reason of document clients when Redis could not be written or lost the room.
const UNAVAILABLE: &str = "backplane unavailable";

/// The `DOC_UPDATE` event of an update.
pub(crate) fn update_event(room: &Arc<str>, update: &Bytes) -> RoomEvent {
    RoomEvent {
        room: room.clone(),
        user: None,
        body: EventBody::DocUpdate {
            update: update.clone(),
        },
        gid: None,
    }
}

/// The rooms loaded on this node that follow Redis, by id.
type Replicas = Arc<Mutex<HashMap<String, Arc<Persisted>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The hooks of one persisted document room.
struct Persisted {
    store: Store,
    /// With `--redis`: the room is stored in Redis and shared with the other nodes.
    backplane: Option<Arc<RedisBackplane>>,
    replicas: Replicas,
    /// How far this copy follows the room's sequence in Redis.
    sync: Mutex<SyncState>,
    /// A reload from Redis is under way.
    resyncing: AtomicBool,
    /// These hooks (the registry of followed rooms holds them).
    me: std::sync::Weak<Persisted>,
    events: Arc<EventBus>,
    limits: Arc<DocLimits>,
    metrics: Arc<Metrics>,
    /// The document's size for `max_doc_bytes`: the stored bytes (snapshot + appended
    /// updates). Without a backplane the store's writer sets it at load and moves it to the
    /// merged size at each compaction ([`Store::doc_size`]); the room adds what it appends,
    /// so it is the encoded size of the last compaction plus the bytes appended since.
    size: Arc<AtomicUsize>,
    /// The load hook's own transaction (the stored state) reaches `updated` like any other,
    /// first in order: it is already stored and must not be appended again.
    skip_loaded: AtomicBool,
}

impl RoomHooks for Persisted {
    fn load<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            // The close reason is public and stable; the cause is logged only.
            let failed = |e: &dyn std::fmt::Display| {
                tracing::error!(room = room.id(), error = %e, "cannot load document");
                HookError::new(if self.backplane.is_some() {
                    UNAVAILABLE
                } else {
                    STORE_UNAVAILABLE
                })
            };
            let mut redis_seq = None;
            let log = match &self.backplane {
                None => self
                    .store
                    .load_doc(room.id())
                    .await
                    .map_err(|e| failed(&e))?,
                Some(bp) => {
                    // Registered first: updates arriving while it loads are applied too.
                    self.register(room);
                    let state = match bp.load_doc(room.id()).await {
                        Ok(state) => state,
                        Err(e) => {
                            self.unregister(room);
                            return Err(failed(&e));
                        }
                    };
                    redis_seq = Some((state.epoch, state.seq));
                    state.log
                }
            };
            let before = room.doc().transact().state_vector();
            let applied = apply_records(room.id(), room.doc(), log.records());
            // A transaction that changed the document fires exactly one update event.
            let changed = room.doc().transact().state_vector() != before;
            self.skip_loaded.store(changed, Ordering::Relaxed);
            if applied.skipped > 0 {
                self.metrics
                    .doc
                    .corrupt_records
                    .inc_by(applied.skipped as u64);
            }
            if self.backplane.is_some() {
                // Without a backplane the store's writer has set it (see `size`).
                self.size.store(log.bytes(), Ordering::Relaxed);
            }
            if let Some((epoch, seq)) = redis_seq {
                let step = lock(&self.sync).loaded(&epoch, seq);
                self.follow(room, step);
            }
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
        if self.backplane.is_none() && !self.store.can_write() {
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
        if self.skip_loaded.swap(false, Ordering::Relaxed) {
            return;
        }
        self.size.fetch_add(update.len(), Ordering::Relaxed);
        self.metrics.doc.updates.inc();
        self.metrics.doc.update_bytes.inc_by(update.len() as u64);
        let key: Arc<str> = Arc::from(room.id());
        if let Some(bp) = &self.backplane {
            // Every node's gateway gets it from the subscription, in the global order.
            let (closing, me) = (room.clone(), self.me.clone());
            bp.write_doc(DocWrite {
                room: key,
                update: update.clone(),
                on_failure: Arc::new(move || {
                    // Its clients re-send the update when they reconnect (to any node).
                    if let Some(me) = me.upgrade() {
                        me.unregister(&closing);
                    }
                    closing.close_with(1011, UNAVAILABLE);
                }),
            });
            return;
        }
        if self.events.is_active() {
            self.events.publish(&update_event(&key, update));
        }
        self.store.apply(StoreOp::DocAppend {
            room: key,
            update: update.clone(),
        });
    }

    fn replicated(&self, _room: &Room, update: &Bytes) {
        self.size.fetch_add(update.len(), Ordering::Relaxed);
    }

    fn emptied<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, ()> {
        if self.backplane.is_some() {
            // Redis holds every update already; the node that sees the log grow compacts it.
            self.unregister(room);
            return Box::pin(async {});
        }
        // Every append is already queued; an idle room gets its log folded into a snapshot.
        self.store.apply(StoreOp::DocCompact {
            room: Arc::from(room.id()),
        });
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
                room.close_with(1011, UNAVAILABLE);
            }
        }
    }

    /// Reload the room from Redis and apply what this copy misses (idempotent).
    fn resync(&self, room: &Room) {
        let Some(bp) = self.backplane.clone() else {
            return;
        };
        if self.resyncing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics.backplane.resyncs.inc();
        let Some(me) = lock(&self.replicas).get(room.id()).cloned() else {
            self.resyncing.store(false, Ordering::Release);
            return;
        };
        let room = room.clone();
        tokio::spawn(async move {
            let result: Result<(), BackplaneError> = async {
                let state = bp.load_doc(room.id()).await?;
                let id = room.id().to_owned();
                let bytes = state.log.bytes();
                let log = state.log;
                let merged = tokio::task::spawn_blocking(move || crate::store::compact(&id, &log))
                    .await
                    .map_err(|e| BackplaneError::Malformed(format!("merge task: {e}")))?;
                if let Err(error) = room.apply_replicated(&merged) {
                    tracing::error!(room = room.id(), %error, "cannot apply the document from Redis");
                }
                me.size.fetch_max(bytes, Ordering::Relaxed);
                let step = lock(&me.sync).loaded(&state.epoch, state.seq);
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

/// Every document room of a server.
pub struct DocRooms {
    manager: RoomManager,
    store: Store,
    /// Limits and policies.
    pub limits: Arc<DocLimits>,
    access: AccessRules,
    metrics: Arc<Metrics>,
    backplane: Option<Arc<RedisBackplane>>,
    replicas: Replicas,
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
        DocRooms::with_backplane(store, limits, metrics, events, None)
    }

    /// Like [`DocRooms::new`]; with a `backplane` the rooms are stored in Redis and shared
    /// with every node connected to it (see `crate::backplane::doc`), and `DOC_UPDATE`
    /// events come from its subscription. Call [`DocRooms::attach`] on the `Arc` then.
    pub fn with_backplane(
        store: Store,
        limits: Arc<DocLimits>,
        metrics: Arc<Metrics>,
        events: Arc<EventBus>,
        backplane: Option<Arc<RedisBackplane>>,
    ) -> DocRooms {
        let (s, l, m) = (store.clone(), limits.clone(), metrics.clone());
        let replicas = Replicas::default();
        let (bp, reg) = (backplane.clone(), replicas.clone());
        let manager = RoomManager::new(move |id: &str| {
            let size = match &bp {
                None => s.doc_size(id),
                Some(_) => Arc::new(AtomicUsize::new(0)),
            };
            let hooks = Arc::new_cyclic(|me| Persisted {
                store: s.clone(),
                backplane: bp.clone(),
                replicas: reg.clone(),
                sync: Mutex::new(SyncState::loading()),
                resyncing: AtomicBool::new(false),
                me: me.clone(),
                events: events.clone(),
                limits: l.clone(),
                metrics: m.clone(),
                size,
                skip_loaded: AtomicBool::new(false),
            });
            Room::with_options(id, hooks, l.room_options())
        });
        DocRooms {
            manager,
            store,
            access: AccessRules::new(limits.tokens.clone()),
            limits,
            metrics,
            backplane,
            replicas,
        }
    }

    /// Let the backplane's subscription reach these rooms (with a backplane).
    pub fn attach(self: &Arc<Self>) {
        if let Some(bp) = &self.backplane {
            bp.attach_docs(self);
        }
    }

    /// An update of a room arrived from Redis (any node's, this one's included).
    pub(crate) fn on_replicated(&self, m: DocMessage) {
        let Some(hooks) = lock(&self.replicas).get(&*m.room).cloned() else {
            return;
        };
        let Some(room) = self.manager.get(&m.room) else {
            return;
        };
        if !m.local {
            if let Err(error) = room.apply_replicated(&m.update) {
                tracing::error!(room = %m.room, %error, "cannot apply a document update from Redis");
            }
        }
        let step = lock(&hooks.sync).on_update(&m.epoch, m.seq);
        hooks.follow(&room, step);
    }

    /// Catch every followed room up with Redis (after the subscription was re-established).
    pub(crate) fn resync_all(&self) {
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
    pub(crate) async fn serve(&self, room: &str, channel: SocketChannel, access: Access) {
        let opts = self.limits.serve_options(access == Access::ReadOnly);
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
        let log = match &self.backplane {
            None => self.store.load_doc(room).await?,
            Some(bp) => {
                bp.load_doc(room)
                    .await
                    .map_err(|e| StoreError::Backplane(e.to_string()))?
                    .log
            }
        };
        if log.is_empty() {
            return Ok(None);
        }
        let doc = nimbus_doc::yrs::Doc::new();
        apply_records(room, &doc, log.records());
        Ok(Some(nimbus_doc::doc_to_json(&doc)))
    }
}
