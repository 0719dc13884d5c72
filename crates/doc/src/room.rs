//! [`Room`]: one shared document and the clients connected to it (the seed's `Room`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use nimbus_proto::doc::{decode_frame, AuthMessage, AwarenessUpdate, DecodeError, Message};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, OnceCell};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use yrs::{Doc, Origin, ReadTxn, Transact};

use crate::awareness::{AwarenessState, AwarenessTable};
use crate::channel::{Channel, ChannelError};
use crate::hooks::{HookError, NoHooks, RoomHooks};
use crate::update::{self, ApplyError, Backlog, Validator};

/// The prefix of the transaction origin of updates applied from a client connection
/// (followed by the connection number, 8 bytes big-endian).
const CONN_ORIGIN_PREFIX: &[u8] = b"nimbus-doc/conn/";

/// The transaction origin of updates applied with [`Room::apply_update`].
const API_ORIGIN: &[u8] = b"nimbus-doc/api";

/// The transaction origin of updates applied with [`Room::apply_replicated`].
const REPLICA_ORIGIN: &[u8] = b"nimbus-doc/replica";

/// Whether a transaction applied an update the validator replica already has.
fn validated_origin(origin: Option<&Origin>) -> bool {
    origin.is_some_and(|o| o.as_ref() == API_ORIGIN || o.as_ref().starts_with(CONN_ORIGIN_PREFIX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-client options of [`Room::serve`].
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Refuse this client's SyncStep2/Update (answered with `Auth PermissionDenied`); its
    /// SyncStep1 is still answered and its awareness still relayed.
    pub read_only: bool,
    /// The largest frame accepted from the client (a larger one closes with 1009).
    /// Default 16 MiB: the first SyncStep2 of a large document can be megabytes.
    pub max_message_bytes: usize,
    /// How long an awareness state this client set lives without renewal (clients renew
    /// every 15 s). Default 30 s.
    pub awareness_timeout: Duration,
    /// Frames queued for this client before it counts as too slow and is closed with 1008.
    /// Default 1024.
    pub queue_frames: usize,
    /// The reason sent with `Auth PermissionDenied` to a read-only client.
    pub read_only_reason: String,
    /// The longest a single frame may take to go out before the client counts as too slow
    /// (1008). Default 60 s (a first SyncStep2 can be megabytes on a slow link).
    pub send_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            read_only: false,
            max_message_bytes: 16 << 20,
            awareness_timeout: Duration::from_secs(30),
            queue_frames: 1024,
            read_only_reason: "read-only connection: updates are not accepted".into(),
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// Options of a room itself.
#[derive(Clone, Debug)]
pub struct RoomOptions {
    /// Validate every client update in a replica document before applying it to the room's
    /// document (see the [`update`] module docs). Default true.
    pub validate_updates: bool,
    /// The longest wait between two awareness expiry checks (the reference checks every
    /// 3 s; the room also wakes exactly at the next deadline). Default 3 s.
    pub awareness_check_interval: Duration,
}

impl Default for RoomOptions {
    fn default() -> Self {
        RoomOptions {
            validate_updates: true,
            awareness_check_interval: Duration::from_secs(3),
        }
    }
}

/// Why [`Room::serve`] ended a client's connection. The close code the client got is
/// [`ServeError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The client sent a text frame (close 1003).
    #[error("text frame received: the y-sync protocol is binary only")]
    TextFrame,
    /// A frame that does not decode as y-sync messages (close 1007).
    #[error("undecodable y-sync frame: {0}")]
    Malformed(#[from] DecodeError),
    /// A SyncStep1 whose state vector does not decode (close 1007).
    #[error("invalid state vector: {0}")]
    InvalidStateVector(String),
    /// An update that does not decode or apply (close 1007). The room is unchanged.
    #[error("invalid update: {0}")]
    InvalidUpdate(#[from] ApplyError),
    /// A frame larger than [`ServeOptions::max_message_bytes`] (close 1009).
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooBig {
        /// The frame's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The client's queue stayed full (close 1008).
    #[error("client too slow: its send queue stayed full")]
    TooSlow,
    /// The keepalive ping was not answered (close 1001).
    #[error("keepalive ping not answered")]
    PingTimeout,
    /// The room's load hook failed (close 1011).
    #[error("room failed to load: {0}")]
    Load(HookError),
    /// The room was closed (or is unloading) before the client joined (close 1013, try
    /// again; a [`RoomManager`](crate::RoomManager) retries on a fresh room itself).
    #[error("room closed")]
    RoomClosed,
    /// The room's document cannot be encoded any more (yrs panicked; only possible with
    /// [`RoomOptions::validate_updates`] off, or if server code applied a broken update to
    /// [`Room::doc`] directly). The room is closed (close 1011).
    #[error("room state broken: the room was closed")]
    RoomBroken,
    /// The room's hook refused an update and asked to close the connection
    /// ([`Refusal::closing`](crate::Refusal::closing)) with this code.
    #[error("update refused: {reason}")]
    Refused {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The connection failed (no close frame is sent).
    #[error("connection failed: {0}")]
    Channel(ChannelError),
}

impl ServeError {
    /// The WebSocket close code sent to the client, if any.
    pub fn close_code(&self) -> Option<u16> {
        Some(match self {
            ServeError::TextFrame => 1003,
            ServeError::Malformed(_)
            | ServeError::InvalidStateVector(_)
            | ServeError::InvalidUpdate(_) => 1007,
            ServeError::TooBig { .. } => 1009,
            ServeError::TooSlow => 1008,
            ServeError::PingTimeout => 1001,
            ServeError::Load(_) | ServeError::RoomBroken => 1011,
            ServeError::RoomClosed => 1013,
            ServeError::Refused { code, .. } => *code,
            ServeError::Channel(_) => return None,
        })
    }

    /// The close reason sent to the client (at most 123 bytes, as WebSocket allows).
    pub fn close_reason(&self) -> String {
        let reason = match self {
            ServeError::TooSlow => "too slow".to_owned(),
            ServeError::Refused { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        truncate_reason(reason)
    }
}

fn truncate_reason(mut s: String) -> String {
    if s.len() > 123 {
        let mut cut = 123;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

enum Event {
    Update {
        conn: Option<u64>,
        update: Bytes,
        replicated: bool,
    },
    Flush(oneshot::Sender<()>),
}

struct ClientSlot {
    tx: mpsc::Sender<Bytes>,
    kick: CancellationToken,
}

#[derive(Default)]
struct Clients {
    map: HashMap<u64, ClientSlot>,
    /// No client may join any more (unloading or closed).
    closing: bool,
}

struct Inner {
    id: String,
    doc: Doc,
    hooks: Arc<dyn RoomHooks>,
    options: RoomOptions,
    clients: Mutex<Clients>,
    awareness: Mutex<AwarenessTable>,
    awareness_changed: tokio::sync::Notify,
    validator: Mutex<Validator>,
    backlog: Arc<Mutex<Backlog>>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    loaded: OnceCell<Result<(), HookError>>,
    /// The close frame connected clients get when the room closes.
    close_frame: std::sync::OnceLock<(u16, String)>,
    cancel: CancellationToken,
    unloaded: CancellationToken,
    tasks: TaskTracker,
    next_conn: AtomicU64,
}

/// A room in which clients with the same id are connected: one shared [`yrs::Doc`], the
/// awareness states of its clients, and its background tasks. Cheap to clone (all clones
/// are the same room).
///
/// Like the seed's `Room`: spawn [`Room::run`] (a [`RoomManager`](crate::RoomManager) does),
/// then [`Room::serve`] each client. [`Room::close`] ends everything. A room used without
/// a manager must be closed: until then `run` keeps it alive, and without `run` its
/// document's updates queue up (they are delivered by `run` or [`Room::flush`]).
///
/// Transactions on [`Room::doc`] may come from any thread; client updates are applied
/// through a validator replica first (see [`update`]). Do not hold a
/// transaction on the room's document across an `.await`: client updates would wait.
#[derive(Clone)]
pub struct Room {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("id", &self.inner.id)
            .field("clients", &self.client_count())
            .finish()
    }
}

impl Room {
    /// A plain in-memory room.
    pub fn new(id: impl Into<String>) -> Room {
        Room::with_options(id, Arc::new(NoHooks), RoomOptions::default())
    }

    /// A room with hooks (the seed's custom room factory: loading, filtering, persisting).
    pub fn with_hooks(id: impl Into<String>, hooks: Arc<dyn RoomHooks>) -> Room {
        Room::with_options(id, hooks, RoomOptions::default())
    }

    /// A room with hooks and options.
    pub fn with_options(
        id: impl Into<String>,
        hooks: Arc<dyn RoomHooks>,
        options: RoomOptions,
    ) -> Room {
        Room::with_doc(id, crate::new_doc(), hooks, options)
    }

    /// A room around an existing document (for instance one built with particular
    /// [`yrs::Options`]; see [`new_doc`](crate::new_doc) about client ids).
    pub fn with_doc(
        id: impl Into<String>,
        doc: Doc,
        hooks: Arc<dyn RoomHooks>,
        options: RoomOptions,
    ) -> Room {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Mutex::new(Backlog::default()));
        let tx = events_tx.clone();
        let bl = backlog.clone();
        let validate = options.validate_updates;
        let observed = doc.observe_update_v1("nimbus-doc/room", move |txn, event| {
            let update = Bytes::from(event.update.clone());
            // The replica already has what went through the validator; everything else
            // (server code editing the document) is queued for it.
            if validate && !validated_origin(txn.origin()) {
                lock(&bl).push(update.clone());
            }
            let conn = txn.origin().and_then(conn_of_origin);
            let replicated = txn.origin().is_some_and(|o| o.as_ref() == REPLICA_ORIGIN);
            let _ = tx.send(Event::Update {
                conn,
                update,
                replicated,
            });
        });
        if let Err(e) = observed {
            tracing::error!(error = %e, "room document busy: its updates will not be forwarded");
        }
        Room {
            inner: Arc::new(Inner {
                id: id.into(),
                doc,
                hooks,
                options,
                clients: Mutex::new(Clients::default()),
                awareness: Mutex::new(AwarenessTable::default()),
                awareness_changed: tokio::sync::Notify::new(),
                validator: Mutex::new(Validator::default()),
                backlog,
                events_tx,
                events_rx: tokio::sync::Mutex::new(events_rx),
                loaded: OnceCell::new(),
                close_frame: std::sync::OnceLock::new(),
                cancel: CancellationToken::new(),
                unloaded: CancellationToken::new(),
                tasks: TaskTracker::new(),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// The room id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The room's shared document. Transactions made on it by server code are forwarded to
    /// the clients like any client's update (by [`Room::run`]).
    pub fn doc(&self) -> &Doc {
        &self.inner.doc
    }

    /// The room's hooks.
    pub fn hooks(&self) -> &Arc<dyn RoomHooks> {
        &self.inner.hooks
    }

    /// Whether two handles are the same room.
    pub fn ptr_eq(&self, other: &Room) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Run a background task for this room (the seed's `task_group`): it is cancelled when
    /// the room closes. Needs a Tokio runtime.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = f => {}
            }
        });
    }

    /// Run the load hook once (concurrent callers wait for the same run; a failure stays).
    pub async fn load(&self) -> Result<(), HookError> {
        self.inner
            .loaded
            .get_or_init(|| async {
                let r = self.inner.hooks.load(self).await;
                if let Err(e) = &r {
                    tracing::warn!(room = %self.id(), error = %e, "room load failed");
                }
                r
            })
            .await
            .clone()
    }

    /// The main task: forwards every update of the document to the clients (each update
    /// once, as a `[0,2,…]` frame, to every client but the one it came from), calls
    /// [`RoomHooks::updated`], and times out awareness states, broadcasting their removal.
    /// Returns when the room closes. Only one `run` per room does anything.
    pub async fn run(&self) {
        let Ok(mut rx) = self.inner.events_rx.try_lock() else {
            tracing::warn!(room = %self.id(), "Room::run is already running");
            self.inner.cancel.cancelled().await;
            return;
        };
        loop {
            let deadline = {
                let next = lock(&self.inner.awareness).next_deadline();
                let cap = Instant::now() + self.inner.options.awareness_check_interval;
                next.map_or(cap, |n| n.min(cap))
            };
            tokio::select! {
                biased;
                _ = self.inner.cancel.cancelled() => break,
                ev = rx.recv() => match ev {
                    Some(ev) => self.handle_event(ev),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => self.expire_awareness(),
                _ = self.inner.awareness_changed.notified() => {}
            }
        }
        // Deliver what is left to the hooks (persistence) before returning.
        while let Ok(ev) = rx.try_recv() {
            self.handle_event(ev);
        }
    }

    fn handle_event(&self, ev: Event) {
        match ev {
            Event::Update {
                conn,
                update,
                replicated,
            } => {
                let frame = Message::Update(update.clone()).encode();
                self.broadcast(&frame, conn);
                if replicated {
                    self.inner.hooks.replicated(self, &update);
                } else {
                    self.inner.hooks.updated(self, &update);
                }
            }
            Event::Flush(ack) => {
                let _ = ack.send(());
            }
        }
    }

    /// Wait until every change committed so far has been forwarded and passed to
    /// [`RoomHooks::updated`].
    pub async fn flush(&self) {
        let (ack_tx, mut ack_rx) = oneshot::channel();
        if let Ok(mut rx) = self.inner.events_rx.try_lock() {
            // `run` is not running: deliver inline.
            while let Ok(ev) = rx.try_recv() {
                self.handle_event(ev);
            }
            return;
        }
        if self.inner.events_tx.send(Event::Flush(ack_tx)).is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = &mut ack_rx => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if let Ok(mut rx) = self.inner.events_rx.try_lock() {
                        while let Ok(ev) = rx.try_recv() {
                            self.handle_event(ev);
                        }
                        return;
                    }
                }
            }
        }
    }

    fn expire_awareness(&self) {
        let gone = lock(&self.inner.awareness).expire(Instant::now());
        if !gone.is_empty() {
            tracing::debug!(room = %self.id(), count = gone.len(), "awareness states timed out");
            let frame = Message::Awareness(AwarenessUpdate { entries: gone }.encode()).encode();
            self.broadcast(&frame, None);
        }
    }

    /// Queue a frame for every client except `except`; a client whose queue is full is
    /// closed as too slow.
    fn broadcast(&self, frame: &Bytes, except: Option<u64>) {
        let clients = lock(&self.inner.clients);
        for (id, slot) in &clients.map {
            if Some(*id) == except {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = slot.tx.try_send(frame.clone()) {
                if !slot.kick.is_cancelled() {
                    tracing::info!(room = %self.id(), conn = id, "client too slow: closing");
                    slot.kick.cancel();
                }
            }
        }
    }

    /// The number of connected clients.
    pub fn client_count(&self) -> usize {
        lock(&self.inner.clients).map.len()
    }

    /// The current awareness states by client id.
    pub fn awareness(&self) -> BTreeMap<u64, AwarenessState> {
        lock(&self.inner.awareness).states()
    }

    /// The current awareness states as JSON values (text that is not JSON is kept as a
    /// JSON string).
    pub fn awareness_json(&self) -> BTreeMap<u64, serde_json::Value> {
        self.awareness()
            .into_iter()
            .map(|(id, s)| {
                let v = serde_json::from_str(&s.json).unwrap_or(serde_json::Value::String(s.json));
                (id, v)
            })
            .collect()
    }

    /// How many client updates the validator replica caught panicking.
    pub fn contained_panics(&self) -> u64 {
        lock(&self.inner.validator).panics
    }

    /// Close the room: no client can join, connected clients are closed (1001), background
    /// tasks and [`Room::run`] end.
    pub fn close(&self) {
        self.close_with(1001, "room closed");
    }

    /// Like [`Room::close`], closing the connected clients with `code` and `reason` (cut to
    /// 123 bytes); e.g. 1011 when the room's storage failed. The first close decides.
    pub fn close_with(&self, code: u16, reason: &str) {
        let _ = self
            .inner
            .close_frame
            .set((code, truncate_reason(reason.to_owned())));
        lock(&self.inner.clients).closing = true;
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.unloaded.cancel();
    }

    /// Whether the room is closed or closing (no client can join).
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.clients).closing
    }

    /// Wait until the room is closed.
    pub async fn closed(&self) {
        self.inner.unloaded.cancelled().await;
    }

    /// Wait for the room's background tasks to end (after [`Room::close`]).
    pub async fn wait_tasks(&self) {
        self.inner.tasks.wait().await;
    }

    /// Mark the room as closing if it has no client (so no one can join any more); the
    /// caller then unloads it. Returns whether it was marked.
    pub(crate) fn mark_closing_if_empty(&self) -> bool {
        let mut clients = lock(&self.inner.clients);
        if clients.map.is_empty() && !clients.closing {
            clients.closing = true;
            true
        } else {
            false
        }
    }

    /// Mark the room as closing (no one can join any more) without closing it yet.
    pub(crate) fn mark_closing(&self) {
        lock(&self.inner.clients).closing = true;
    }

    #[allow(clippy::type_complexity)]
    fn register(&self, queue: usize) -> Option<(u64, mpsc::Receiver<Bytes>, CancellationToken)> {
        let mut clients = lock(&self.inner.clients);
        if clients.closing {
            return None;
        }
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(queue.max(1));
        let kick = CancellationToken::new();
        clients.map.insert(
            conn,
            ClientSlot {
                tx,
                kick: kick.clone(),
            },
        );
        Some((conn, rx, kick))
    }

    /// Apply a v1 update from outside (server code, an API), validated like a client's (see
    /// the [`update`] module); it is forwarded to every client and passed
    /// to [`RoomHooks::updated`]. [`RoomHooks::check_update`] is not consulted.
    pub fn apply_update(&self, update: &[u8]) -> Result<(), ApplyError> {
        self.apply_checked(None, update)
    }

    /// Apply a v1 update another replica of this room already validated and persisted (a
    /// node sharing the room through a backplane): it is forwarded to every client and
    /// passed to [`RoomHooks::replicated`] instead of [`RoomHooks::updated`]. It skips the
    /// validator (the validator replica takes it later, like server code's edits); a panic
    /// of yrs applying it still closes the room.
    pub fn apply_replicated(&self, update: &[u8]) -> Result<(), ApplyError> {
        let parsed = update::decode_update(update)?;
        self.integrate(None, Origin::from(REPLICA_ORIGIN), parsed)
    }

    fn apply_client_update(&self, conn: u64, bytes: &[u8]) -> Result<(), ApplyError> {
        self.apply_checked(Some(conn), bytes)
    }

    /// Apply an update (validated first, see the [`update`] module).
    fn apply_checked(&self, conn: Option<u64>, bytes: &[u8]) -> Result<(), ApplyError> {
        let mut validator = lock(&self.inner.validator);
        if self.inner.options.validate_updates {
            let backlog = std::mem::take(&mut *lock(&self.inner.backlog));
            validator.check(&self.inner.doc, backlog, bytes)?;
        }
        let parsed = update::decode_update(bytes)?;
        let origin = match conn {
            Some(conn) => {
                let mut origin = CONN_ORIGIN_PREFIX.to_vec();
                origin.extend_from_slice(&conn.to_be_bytes());
                Origin::from(origin.as_slice())
            }
            None => Origin::from(API_ORIGIN),
        };
        self.integrate(Some(validator), origin, parsed)
    }

    /// Apply a decoded update to the room's document in a transaction of `origin`.
    fn integrate(
        &self,
        validator: Option<MutexGuard<'_, Validator>>,
        origin: Origin,
        parsed: yrs::Update,
    ) -> Result<(), ApplyError> {
        let doc = &self.inner.doc;
        // Validated updates should not panic here; if one does anyway (or validation is
        // off), the transaction is dropped while unwinding and the room, whose state is
        // now unknown, is closed.
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut_with(origin);
            txn.apply_update(parsed)
        }));
        match applied {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // The replica took it, the room did not: they differ now.
                if let Some(mut v) = validator {
                    v.reset();
                }
                Err(ApplyError::Integrate(e.to_string()))
            }
            Err(_) => {
                tracing::error!(room = %self.id(), "yrs panicked applying an update to the room: closing the room");
                drop(validator);
                self.close();
                Err(ApplyError::Panicked)
            }
        }
    }

    /// Serve one client until it leaves: load the room (once), send SyncStep1 and the known
    /// awareness states, then answer and apply what the client sends. Returns `Ok` when the
    /// client or the room closed the connection normally, and the reason otherwise (the
    /// client has been sent a close frame with [`ServeError::close_code`]).
    pub async fn serve<C: Channel>(
        &self,
        channel: C,
        opts: ServeOptions,
    ) -> Result<(), ServeError> {
        match self.serve_or_return(channel, opts).await {
            Ok(r) => r,
            Err(mut channel) => {
                let e = ServeError::RoomClosed;
                if let Some(code) = e.close_code() {
                    channel.close(code, &e.close_reason()).await;
                }
                Err(e)
            }
        }
    }

    /// [`Room::serve`], except that a closed room gives the untouched channel back.
    pub(crate) async fn serve_or_return<C: Channel>(
        &self,
        mut channel: C,
        opts: ServeOptions,
    ) -> Result<Result<(), ServeError>, C> {
        let result = match self.load().await {
            Err(e) => Err(ServeError::Load(e)),
            Ok(()) => match self.register(opts.queue_frames) {
                None => return Err(channel),
                Some((conn, rx, kick)) => {
                    let mut guard = ConnGuard {
                        room: self,
                        conn,
                        seen: HashSet::new(),
                    };
                    let r = self
                        .session(&mut channel, rx, &kick, &opts, &mut guard)
                        .await;
                    drop(guard);
                    r
                }
            },
        };
        match &result {
            Ok(Leave::Peer) => {}
            Ok(Leave::RoomClosed) => {
                let (code, reason) = self
                    .inner
                    .close_frame
                    .get()
                    .map_or((1001, "room closed"), |(c, r)| (*c, r.as_str()));
                close_bounded(&mut channel, code, reason).await;
            }
            Err(e) => {
                match e {
                    ServeError::Channel(_) | ServeError::RoomClosed => {
                        tracing::debug!(room = %self.id(), error = %e, "client connection ended")
                    }
                    _ => tracing::info!(room = %self.id(), error = %e, "client connection closed"),
                }
                if let Some(code) = e.close_code() {
                    close_bounded(&mut channel, code, &e.close_reason()).await;
                }
            }
        }
        Ok(result.map(|_| ()))
    }

    async fn session<C: Channel>(
        &self,
        channel: &mut C,
        mut rx: mpsc::Receiver<Bytes>,
        kick: &CancellationToken,
        opts: &ServeOptions,
        guard: &mut ConnGuard<'_>,
    ) -> Result<Leave, ServeError> {
        let step1 = {
            let txn = self.inner.doc.transact();
            Message::SyncStep1(yrs::updates::encoder::Encode::encode_v1(&txn.state_vector()).into())
        };
        send_frame(channel, step1.encode(), kick, opts.send_timeout).await?;
        let known = {
            let table = lock(&self.inner.awareness);
            (!table.is_empty()).then(|| table.full_update())
        };
        if let Some(update) = known {
            let frame = Message::Awareness(update.encode()).encode();
            send_frame(channel, frame, kick, opts.send_timeout).await?;
        }
        loop {
            tokio::select! {
                // Not biased: a client that both sends and receives a lot gets both served.
                _ = kick.cancelled() => return Err(ServeError::TooSlow),
                _ = self.inner.cancel.cancelled() => return Ok(Leave::RoomClosed),
                out = rx.recv() => match out {
                    Some(frame) => send_frame(channel, frame, kick, opts.send_timeout).await?,
                    None => return Ok(Leave::RoomClosed),
                },
                incoming = channel.recv() => match incoming {
                    None | Some(Err(ChannelError::Closed { .. })) => return Ok(Leave::Peer),
                    Some(Err(ChannelError::TextFrame)) => return Err(ServeError::TextFrame),
                    Some(Err(ChannelError::TooBig { size, max })) => return Err(ServeError::TooBig { size, max }),
                    Some(Err(ChannelError::PingTimeout)) => return Err(ServeError::PingTimeout),
                    Some(Err(e)) => return Err(ServeError::Channel(e)),
                    Some(Ok(frame)) => self.handle_frame(channel, frame, opts, kick, guard).await?,
                },
            }
        }
    }

    async fn handle_frame<C: Channel>(
        &self,
        channel: &mut C,
        frame: Bytes,
        opts: &ServeOptions,
        kick: &CancellationToken,
        guard: &mut ConnGuard<'_>,
    ) -> Result<(), ServeError> {
        if frame.len() > opts.max_message_bytes {
            return Err(ServeError::TooBig {
                size: frame.len(),
                max: opts.max_message_bytes,
            });
        }
        for msg in decode_frame(&frame)? {
            match msg {
                Message::SyncStep1(sv) => {
                    let sv =
                        update::decode_state_vector(&sv).map_err(ServeError::InvalidStateVector)?;
                    let Some(diff) = update::encode_diff(&self.inner.doc, &sv) else {
                        tracing::error!(room = %self.id(), "the room's state does not encode: closing the room");
                        self.close();
                        return Err(ServeError::RoomBroken);
                    };
                    send_frame(
                        channel,
                        Message::SyncStep2(diff.into()).encode(),
                        kick,
                        opts.send_timeout,
                    )
                    .await?;
                }
                Message::SyncStep2(u) | Message::Update(u) => {
                    if opts.read_only {
                        if !update::is_empty_update(&u) {
                            tracing::debug!(room = %self.id(), "update from a read-only client refused");
                            send_frame(
                                channel,
                                denied(&opts.read_only_reason).encode(),
                                kick,
                                opts.send_timeout,
                            )
                            .await?;
                        }
                        continue;
                    }
                    if update::is_empty_update(&u) {
                        // The SyncStep2 of a client with nothing new: nothing to do.
                        continue;
                    }
                    if let Err(refusal) = self.inner.hooks.check_update(self, &u) {
                        tracing::info!(room = %self.id(), reason = %refusal, "update refused by the room's hook");
                        send_frame(
                            channel,
                            denied(&refusal.reason).encode(),
                            kick,
                            opts.send_timeout,
                        )
                        .await?;
                        if let Some(code) = refusal.close {
                            return Err(ServeError::Refused {
                                code,
                                reason: refusal.reason,
                            });
                        }
                        continue;
                    }
                    if let Err(e) = self.apply_client_update(guard.conn, &u) {
                        tracing::warn!(room = %self.id(), error = %e, bytes = u.len(), "client update refused; the room is unchanged");
                        return Err(ServeError::InvalidUpdate(e));
                    }
                }
                Message::Awareness(payload) => {
                    let parsed = AwarenessUpdate::decode(&payload)?;
                    let applied = lock(&self.inner.awareness).apply(
                        &parsed,
                        Instant::now(),
                        opts.awareness_timeout,
                    );
                    for id in applied.set {
                        guard.seen.insert(id);
                    }
                    for id in applied.removed {
                        guard.seen.remove(&id);
                    }
                    self.inner.awareness_changed.notify_one();
                    self.broadcast(&Message::Awareness(payload).encode(), None);
                }
                Message::QueryAwareness => {
                    let full = lock(&self.inner.awareness).full_update();
                    send_frame(
                        channel,
                        Message::Awareness(full.encode()).encode(),
                        kick,
                        opts.send_timeout,
                    )
                    .await?;
                }
                Message::Auth(_) | Message::Custom { .. } => {
                    tracing::debug!(room = %self.id(), kind = msg.kind_name(), "message ignored");
                }
            }
        }
        Ok(())
    }
}

/// Close a channel, giving up after a few seconds (a peer that does not read cannot take
/// a close frame either).
async fn close_bounded<C: Channel>(channel: &mut C, code: u16, reason: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(5), channel.close(code, reason)).await;
}

/// Send one frame unless the client is kicked as too slow meanwhile or the send takes
/// longer than `timeout` (a peer that stops reading blocks a send).
async fn send_frame<C: Channel>(
    channel: &mut C,
    frame: Bytes,
    kick: &CancellationToken,
    timeout: Duration,
) -> Result<(), ServeError> {
    tokio::select! {
        _ = kick.cancelled() => Err(ServeError::TooSlow),
        r = tokio::time::timeout(timeout, channel.send(frame)) => match r {
            Ok(r) => r.map_err(ServeError::Channel),
            Err(_) => Err(ServeError::TooSlow),
        },
    }
}

fn denied(reason: &str) -> Message {
    Message::Auth(AuthMessage::PermissionDenied(reason.to_owned()))
}

fn conn_of_origin(origin: &Origin) -> Option<u64> {
    let rest = origin.as_ref().strip_prefix(CONN_ORIGIN_PREFIX)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

enum Leave {
    Peer,
    RoomClosed,
}

/// Unregisters a connection and removes its awareness states, also when `serve` is
/// cancelled.
struct ConnGuard<'a> {
    room: &'a Room,
    conn: u64,
    seen: HashSet<u64>,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        lock(&self.room.inner.clients).map.remove(&self.conn);
        let gone = lock(&self.room.inner.awareness).remove(self.seen.drain());
        if !gone.is_empty() {
            let frame = Message::Awareness(AwarenessUpdate { entries: gone }.encode()).encode();
            self.room.broadcast(&frame, None);
            self.room.inner.awareness_changed.notify_one();
        }
    }
}
