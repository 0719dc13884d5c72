//! [`Room`]: one shared document and the clients connected to it (the seed's `Room`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use bytes::Bytes;
use nimbus_proto::batch::Batch;
use nimbus_proto::doc::{decode_frame, AuthMessage, AwarenessUpdate, DecodeError, Message};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, OnceCell};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use yrs::{Doc, Origin, ReadTxn, Transact};

use crate::awareness::{check_state, AwarenessLimits, AwarenessState, AwarenessTable, ConnLimits};
use crate::channel::{Channel, ChannelError, DirectWrite, Written};
use crate::hooks::{HookError, NoHooks, RoomHooks};
use crate::limits::{RateLimit, ServeStats, TokenBucket};
use crate::update::{self, ApplyError, Backlog, Validator};

/// The prefix of the transaction origin of updates applied from a client connection
/// (followed by the connection number, 8 bytes big-endian).
const CONN_ORIGIN_PREFIX: &[u8] = b"nimbus-doc/conn/";

/// The transaction origin of updates applied with [`Room::apply_update`].
const API_ORIGIN: &[u8] = b"nimbus-doc/api";

/// The transaction origin of updates applied with [`Room::apply_replicated`].
const REPLICA_ORIGIN: &[u8] = b"nimbus-doc/replica";

/// Bytes of a SyncStep2 answer worth one token of the update rate (after the first one of a
/// connection, which is free).
const SYNC_BYTES_PER_TOKEN: usize = 64 << 10;

/// The transaction origin of [`Room::transact_loaded`] (a load hook's stored state).
const LOAD_ORIGIN: &[u8] = b"nimbus-doc/load";

/// Whether a transaction applied an update the validator replica already has.
fn validated_origin(origin: Option<&Origin>) -> bool {
    origin.is_some_and(|o| o.as_ref() == API_ORIGIN || o.as_ref().starts_with(CONN_ORIGIN_PREFIX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// The room's event queue (to [`Room::run`]) with a count of the events sent and not yet
/// delivered, so that an update may skip the queue only when nothing waits in it.
#[derive(Clone)]
struct Events {
    tx: mpsc::UnboundedSender<Event>,
    queued: Arc<AtomicUsize>,
}

impl Events {
    /// Queue `ev`; false if the queue is closed.
    fn send(&self, ev: Event) -> bool {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let sent = self.tx.send(ev).is_ok();
        if !sent {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }
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
    /// Bytes queued for this client (each queued frame counted by its length) before it
    /// counts as too slow and is closed with 1008. One frame is always accepted into an
    /// empty queue, whatever its size. Default 4 MiB.
    pub queue_bytes: usize,
    /// The reason sent with `Auth PermissionDenied` to a read-only client.
    pub read_only_reason: String,
    /// The longest a single frame may take to go out before the client counts as too slow
    /// (1008). Default 10 s.
    pub send_timeout: Duration,
    /// The send timeout of the answer to the client's first SyncStep1 (the whole document,
    /// megabytes on a slow link). Default 60 s.
    pub sync_send_timeout: Duration,
    /// The pace of this client's document updates (SyncStep2/Update messages): over it,
    /// reading pauses until the bucket is repaid. Default 200/s, burst 1,000.
    pub update_rate: RateLimit,
    /// The pace of this client's awareness changes (entries that change the room's table):
    /// over it, reading pauses. Default 100/s, burst 300.
    pub awareness_rate: RateLimit,
    /// A client paused for a rate this long in total since its last frame within its rates,
    /// or whose one frame puts it this far in debt, is closed with 1008. Default 20 s.
    pub rate_abuse_after: Duration,
    /// Awareness client ids this connection may own (y-websocket clients own one).
    /// Default 8.
    pub awareness_max_ids: usize,
    /// Bytes of one awareness state's JSON. Default 32 KiB.
    pub awareness_max_state_bytes: usize,
    /// Awareness entries of this connection dropped for its own caps (ids, state size)
    /// before it is closed with 1008. Default 100.
    pub awareness_max_dropped: u64,
    /// The largest awareness message of the table sent to a joiner (or in answer to
    /// QueryAwareness); the table goes out in as many messages as needed. Default 64 KiB.
    pub awareness_chunk_bytes: usize,
    /// Write batching (`nimbus_proto::batch`): a client that was written to less than this
    /// long ago gets the updates queued meanwhile in one write, one budget after that write;
    /// an idle client is written to at once. 0: every update is written as soon as the
    /// connection's task runs.
    pub batch_delay: Duration,
    /// Counters of what these bounds did (share one between connections to sum them).
    pub stats: Arc<ServeStats>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            read_only: false,
            max_message_bytes: 16 << 20,
            awareness_timeout: Duration::from_secs(30),
            queue_frames: 1024,
            queue_bytes: 4 << 20,
            read_only_reason: "read-only connection: updates are not accepted".into(),
            send_timeout: Duration::from_secs(10),
            sync_send_timeout: Duration::from_secs(60),
            update_rate: RateLimit {
                per_second: 200,
                burst: 1_000,
            },
            awareness_rate: RateLimit {
                per_second: 100,
                burst: 300,
            },
            rate_abuse_after: Duration::from_secs(20),
            awareness_max_ids: 8,
            awareness_max_state_bytes: 32 << 10,
            awareness_max_dropped: 100,
            awareness_chunk_bytes: 64 << 10,
            batch_delay: Duration::ZERO,
            stats: Arc::new(ServeStats::default()),
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
    /// The bounds of the room's awareness table.
    pub awareness: AwarenessLimits,
}

impl Default for RoomOptions {
    fn default() -> Self {
        RoomOptions {
            validate_updates: true,
            awareness_check_interval: Duration::from_secs(3),
            awareness: AwarenessLimits::default(),
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
    /// The client's queue went over its bytes or frames, or a frame did not go out within
    /// its send timeout (close 1008).
    #[error("client too slow: its send queue stayed full")]
    TooSlow,
    /// An awareness state that is not JSON (close 1007).
    #[error("invalid awareness state: {0}")]
    InvalidAwareness(String),
    /// Too many of the client's awareness entries were dropped for its own caps (close 1008).
    #[error("awareness limits exceeded: {dropped} entries dropped")]
    AwarenessAbuse {
        /// Entries dropped on this connection.
        dropped: u64,
    },
    /// The client stayed over its rate of updates or awareness changes (close 1008).
    #[error("{what} rate limit exceeded")]
    RateLimited {
        /// `"update"` or `"awareness"`.
        what: &'static str,
    },
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
    /// The room was not loaded and its [`RoomManager`](crate::RoomManager) holds its most
    /// rooms already (close 1013, try again later).
    #[error("too many rooms loaded")]
    TooManyRooms,
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
            // A count bound, like the frame size bound.
            ServeError::Malformed(DecodeError::TooMany { .. }) => 1009,
            ServeError::Malformed(_)
            | ServeError::InvalidStateVector(_)
            | ServeError::InvalidUpdate(_)
            | ServeError::InvalidAwareness(_) => 1007,
            ServeError::TooBig { .. } => 1009,
            ServeError::TooSlow
            | ServeError::AwarenessAbuse { .. }
            | ServeError::RateLimited { .. } => 1008,
            ServeError::PingTimeout => 1001,
            ServeError::Load(_) | ServeError::RoomBroken => 1011,
            ServeError::RoomClosed | ServeError::TooManyRooms => 1013,
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
        /// The `[0,2,…]` frame every other client gets.
        frame: Bytes,
        /// The v1 update: a slice of `frame` (one allocation per update, shared by every
        /// receiver's queue and the hooks).
        update: Bytes,
        source: Source,
    },
    Flush(oneshot::Sender<()>),
}

/// What a validated update is forwarded (and passed to the hooks) as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forward {
    /// The bytes the client sent, when they applied cleanly: a client's `Update` message
    /// holds one local transaction of its own, so the bytes are what the room integrated
    /// (a part the room had already is harmless to every receiver), and re-encoding them
    /// would only cost time.
    AsSent,
    /// Re-encoded from the transaction (only what was new to the room): a `SyncStep2`
    /// carries the client's whole delete set and everything it has that the room's state
    /// vector did not cover, which must not reach every other client and the store again
    /// at each reconnect; also the API's updates, and an update that failed part-way.
    Encoded,
}

/// A validated update `Room::integrate` forwards itself.
struct Report<'a> {
    conn: Option<u64>,
    bytes: &'a [u8],
    forward: Forward,
}

/// Where a transaction's update came from, which decides the hook it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A client, the API, or server code: [`RoomHooks::updated`].
    Local,
    /// [`Room::apply_replicated`]: [`RoomHooks::replicated`].
    Replicated,
    /// [`Room::transact_loaded`]: no hook (it is the stored state).
    Loaded,
}

impl Source {
    fn of(origin: Option<&Origin>) -> Source {
        match origin.map(|o| o.as_ref()) {
            Some(REPLICA_ORIGIN) => Source::Replicated,
            Some(LOAD_ORIGIN) => Source::Loaded,
            _ => Source::Local,
        }
    }
}

/// The frames queued for one client: bounded in frames, empty until something is queued,
/// and its buffer given back whenever it drains (an idle connection keeps no buffer; a
/// busy one reallocates a few slots per burst, which the allocator's thread cache serves).
///
/// **Direct writes.** When the client's wire has a [`DirectWrite`] and the client is idle
/// (nothing queued, its session not writing, the greeting sent), [`OutQueue::offer`] writes
/// the frame straight to the wire instead of queueing it and waking the session. The order
/// of the client's stream is kept by one rule, checked under the queue's lock: a frame is
/// written directly only if no earlier frame is still queued or being written by the
/// session. A direct write the wire takes only in part leaves the rest with the writer,
/// which refuses further direct writes until the session's [`FLUSH`] has written it.
struct OutQueue {
    state: Mutex<QueueState>,
    ready: tokio::sync::Notify,
    max_frames: usize,
    /// Bytes of the frames queued (and of the batch being sent): counted by the
    /// broadcaster before a frame is visible to the session, which subtracts them.
    queued: AtomicUsize,
    /// [`KICKED`] / [`ROOM_CLOSED`] / [`FLUSH`], raised through the same wake-up as a
    /// frame, so a waiting session has one thing to wait for (not a frame and two
    /// cancellation tokens, whose waiters it would poll on every turn of its loop).
    signals: std::sync::atomic::AtomicU8,
    direct: Option<Arc<dyn DirectWrite>>,
}

#[derive(Default)]
struct QueueState {
    frames: std::collections::VecDeque<Bytes>,
    /// The session has taken a frame (or is answering the client) and not finished writing
    /// it: direct writes wait, so that they cannot overtake it.
    session_writes: bool,
    /// Direct writes are allowed: the greeting is out and the connection writes at once
    /// (no batching budget).
    direct_on: bool,
}

/// The client was found too slow (its token [`Registered::kick`] is cancelled as well,
/// for a send in progress).
const KICKED: u8 = 1;
/// The room closed.
const ROOM_CLOSED: u8 = 2;
/// A direct write left part of a frame with the writer: the session flushes the channel.
const FLUSH: u8 = 4;

/// The most clients one broadcast writes to directly; the rest are queued and woken, so a
/// large room's fan-out is not one task's work (other workers run the sessions) and the
/// room's client lock is held for a bounded number of system calls.
const DIRECT_PER_BROADCAST: usize = 128;

/// The close code and reason of a room whose `updated` or `replicated` hook panicked, and
/// the code of a client whose update made `check_update` panic (1011: the server failed).
const HOOK_FAILED: (u16, &str) = (1011, "room hook failed");

/// What a waiting session wakes up for.
#[derive(Debug)]
enum Popped {
    Frame(Bytes),
    Flush,
    Kicked,
    RoomClosed,
}

/// What [`OutQueue::offer`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    /// Written to the wire (whole, or the rest left with the writer).
    Written,
    /// Queued for the session.
    Queued,
    /// Not taken: the queue holds `max_frames` already.
    Full,
}

impl OutQueue {
    fn new(max_frames: usize, direct: Option<Arc<dyn DirectWrite>>) -> OutQueue {
        OutQueue {
            state: Mutex::new(QueueState::default()),
            ready: tokio::sync::Notify::new(),
            max_frames: max_frames.max(1),
            queued: AtomicUsize::new(0),
            signals: std::sync::atomic::AtomicU8::new(0),
            direct,
        }
    }

    /// Queue a frame; false if the queue holds `max_frames` already.
    #[cfg(test)]
    fn push(&self, frame: Bytes) -> bool {
        self.offer(&frame, false) == Offer::Queued
    }

    /// Write `frame` directly if `may_write` and the client is idle (see the type's doc),
    /// else queue it and wake the session.
    fn offer(&self, frame: &Bytes, may_write: bool) -> Offer {
        let mut state = lock(&self.state);
        if may_write && state.direct_on && !state.session_writes && state.frames.is_empty() {
            if let Some(direct) = &self.direct {
                match direct.write_now(frame) {
                    Written::All => return Offer::Written,
                    Written::Part => {
                        drop(state);
                        self.raise(FLUSH);
                        return Offer::Written;
                    }
                    Written::Nothing => {}
                }
            }
        }
        if state.frames.len() >= self.max_frames {
            return Offer::Full;
        }
        state.frames.push_back(frame.clone());
        drop(state);
        self.ready.notify_one();
        Offer::Queued
    }

    /// Raise a signal ([`KICKED`], [`ROOM_CLOSED`], [`FLUSH`]) and wake the session.
    fn raise(&self, signal: u8) {
        self.signals.fetch_or(signal, Ordering::AcqRel);
        self.ready.notify_one();
    }

    /// Whether [`KICKED`] was raised (one atomic load: asked for every client of every
    /// broadcast).
    fn kicked(&self) -> bool {
        self.signals.load(Ordering::Acquire) & KICKED != 0
    }

    /// Allow direct writes from now on (after the greeting; never with a batching budget).
    fn allow_direct(&self) {
        lock(&self.state).direct_on = true;
    }

    /// The session starts (true) or has finished (false) writing something of its own:
    /// direct writes wait meanwhile.
    fn session_writes(&self, writing: bool) {
        lock(&self.state).session_writes = writing;
    }

    /// The next queued frame, if any; the session is writing from then on (until
    /// [`OutQueue::session_writes`]`(false)`).
    fn try_pop(&self) -> Option<Bytes> {
        let mut state = lock(&self.state);
        let frame = state.frames.pop_front();
        if frame.is_some() {
            state.session_writes = true;
        }
        if state.frames.is_empty() && state.frames.capacity() > 0 {
            state.frames = std::collections::VecDeque::new();
        }
        frame
    }

    /// The next signal, or the next frame if `frames` (a session holding a write waits for
    /// signals only), waiting for one. A signal comes before any queued frame: a kicked
    /// client's frames are dropped, a closed room's go with its clients, and the rest of a
    /// direct write goes before the frames queued after it. Cancel-safe: a frame or a
    /// [`FLUSH`] is only taken in the poll that returns it.
    async fn pop(&self, frames: bool) -> Popped {
        loop {
            let signals = self.signals.load(Ordering::Acquire);
            if signals & KICKED != 0 {
                return Popped::Kicked;
            }
            if signals & ROOM_CLOSED != 0 {
                return Popped::RoomClosed;
            }
            if signals & FLUSH != 0 {
                self.signals.fetch_and(!FLUSH, Ordering::AcqRel);
                return Popped::Flush;
            }
            if frames {
                if let Some(frame) = self.try_pop() {
                    return Popped::Frame(frame);
                }
            }
            // `notify_one` leaves a permit when nobody waits: a push or a signal between
            // the checks above and here is not missed.
            self.ready.notified().await;
        }
    }
}

struct ClientSlot {
    queue: Arc<OutQueue>,
    kick: CancellationToken,
    /// The most `queue.queued` may reach (one frame always fits in an empty queue).
    budget: usize,
    stats: Arc<ServeStats>,
}

impl ClientSlot {
    /// Close the client as too slow: its waiting session hears it through its queue, a
    /// send in progress through its token.
    fn kick(&self) {
        self.kick.cancel();
        self.queue.raise(KICKED);
    }
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
    events: Events,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    /// Held while an event is delivered (broadcast and hooks), by [`Room::run`] or by the
    /// task that applied an update and delivers it itself: one delivery at a time, in order.
    deliver: Mutex<()>,
    /// Panics of the room's hooks (contained).
    hook_panics: AtomicU64,
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
/// document's updates queue up (they are delivered by `run` or [`Room::flush`]; a
/// client's update that finds the queue empty is delivered by its session right away).
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
        let events = Events {
            tx: events_tx,
            queued: Arc::new(AtomicUsize::new(0)),
        };
        let backlog = Arc::new(Mutex::new(Backlog::default()));
        let tx = events.clone();
        let bl = backlog.clone();
        let validate = options.validate_updates;
        // Every transaction but a client's or the API's (which `Room::integrate` reports
        // itself, with the bytes it applied) is encoded here and forwarded.
        let observed = doc.observe_after_transaction("nimbus-doc/room", move |txn| {
            if validated_origin(txn.origin()) || !txn.has_changes() {
                return;
            }
            let (frame, update) = update_frame(&txn.encode_update_v1());
            // The replica already has what went through the validator; everything else
            // (server code editing the document) is queued for it.
            // A load's state is not queued either: the validator is rebuilt from the
            // document after it (`Room::transact_loaded`).
            let source = Source::of(txn.origin());
            if validate && source != Source::Loaded {
                lock(&bl).push(update.clone());
            }
            tx.send(Event::Update {
                conn: None,
                frame,
                update,
                source,
            });
        });
        if let Err(e) = observed {
            tracing::error!(error = %e, "room document busy: its updates will not be forwarded");
        }
        let awareness = AwarenessTable::new(options.awareness.clone());
        Room {
            inner: Arc::new(Inner {
                id: id.into(),
                doc,
                hooks,
                options,
                clients: Mutex::new(Clients::default()),
                awareness: Mutex::new(awareness),
                awareness_changed: tokio::sync::Notify::new(),
                validator: Mutex::new(Validator::default()),
                backlog,
                events,
                events_rx: tokio::sync::Mutex::new(events_rx),
                deliver: Mutex::new(()),
                hook_panics: AtomicU64::new(0),
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
                let load = std::panic::AssertUnwindSafe(self.inner.hooks.load(self));
                let r = futures_util::FutureExt::catch_unwind(load)
                    .await
                    .unwrap_or_else(|_| {
                        self.count_hook_panic();
                        Err(HookError::new("the room's load hook panicked"))
                    });
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
    /// A client's update that finds nothing queued is delivered by the session that applied
    /// it instead (see `Room::integrate`), in the same order.
    /// Returns when the room closes. Only one `run` per room does anything.
    pub async fn run(&self) {
        let Ok(mut rx) = self.inner.events_rx.try_lock() else {
            tracing::warn!(room = %self.id(), "Room::run is already running");
            self.inner.cancel.cancelled().await;
            return;
        };
        let interval = self.inner.options.awareness_check_interval;
        // One timer for the loop, moved only when the deadline changes (not re-registered
        // for every update forwarded); a check at most `interval` after the previous one.
        let mut checked = Instant::now();
        let timer = tokio::time::sleep_until(checked + interval);
        let closed = self.inner.cancel.cancelled();
        // Kept across turns of the loop: a `Notified` made and dropped at every turn takes
        // the `Notify`'s lock twice per update forwarded.
        let awareness_changed = self.inner.awareness_changed.notified();
        tokio::pin!(timer, closed, awareness_changed);
        loop {
            let deadline = {
                let next = lock(&self.inner.awareness).next_deadline();
                let cap = checked + interval;
                next.map_or(cap, |n| n.min(cap))
            };
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                _ = &mut closed => break,
                ev = rx.recv() => match ev {
                    Some(ev) => self.deliver_queued(ev),
                    None => break,
                },
                _ = &mut timer => {
                    checked = Instant::now();
                    self.expire_awareness();
                    // Re-armed at the top of the loop (a fired timer's deadline may equal
                    // the next one).
                    timer.as_mut().reset(checked + interval);
                }
                _ = &mut awareness_changed => {
                    awareness_changed.set(self.inner.awareness_changed.notified());
                }
            }
        }
        // Deliver what is left to the hooks (persistence) before returning.
        while let Ok(ev) = rx.try_recv() {
            self.deliver_queued(ev);
        }
    }

    /// Deliver an event taken from the queue.
    fn deliver_queued(&self, ev: Event) {
        let _delivering = lock(&self.inner.deliver);
        self.handle_event(ev);
        self.inner.events.queued.fetch_sub(1, Ordering::AcqRel);
    }

    fn handle_event(&self, ev: Event) {
        match ev {
            Event::Update {
                conn,
                frame,
                update,
                source,
            } => {
                self.broadcast(&frame, conn);
                // A hook that panics has missed this update (for a persistence hook: it
                // is not stored). The room closes, so that its clients reconnect to a
                // fresh room and their SyncStep2 brings the update back; the task that
                // was delivering (a session's, or `run`) goes on.
                let hooked =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match source {
                        Source::Local => self.inner.hooks.updated(self, &update),
                        Source::Replicated => self.inner.hooks.replicated(self, &update),
                        Source::Loaded => {}
                    }));
                if hooked.is_err() {
                    self.count_hook_panic();
                    tracing::error!(room = %self.id(), "a room hook panicked on an update: closing the room");
                    self.close_with(HOOK_FAILED.0, HOOK_FAILED.1);
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
                self.deliver_queued(ev);
            }
            return;
        }
        if !self.inner.events.send(Event::Flush(ack_tx)) {
            return;
        }
        loop {
            tokio::select! {
                _ = &mut ack_rx => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if let Ok(mut rx) = self.inner.events_rx.try_lock() {
                        while let Ok(ev) = rx.try_recv() {
                            self.deliver_queued(ev);
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

    /// Queue a frame for every client except `except`; a client whose queue would go over
    /// its bytes or frames is closed as too slow (its queue is dropped with its session).
    fn broadcast(&self, frame: &Bytes, except: Option<u64>) {
        let clients = lock(&self.inner.clients);
        let len = frame.len();
        let mut direct_left = DIRECT_PER_BROADCAST;
        for (id, slot) in &clients.map {
            if Some(*id) == except || slot.queue.kicked() {
                continue;
            }
            // Counted before the frame is visible to the session, which subtracts it.
            let before = slot.queue.queued.fetch_add(len, Ordering::AcqRel);
            let over = if before > 0 && before + len > slot.budget {
                Some((&slot.stats.slow_queue_bytes, "bytes"))
            } else {
                match slot.queue.offer(frame, direct_left > 0) {
                    Offer::Queued => None,
                    Offer::Written => {
                        slot.queue.queued.fetch_sub(len, Ordering::AcqRel);
                        direct_left -= 1;
                        continue;
                    }
                    Offer::Full => Some((&slot.stats.slow_queue_frames, "frames")),
                }
            };
            if let Some((counter, what)) = over {
                slot.queue.queued.fetch_sub(len, Ordering::AcqRel);
                ServeStats::add(counter, 1);
                tracing::info!(room = %self.id(), conn = id, queued = before, over = what, "client too slow: closing");
                slot.kick();
            }
        }
    }

    /// Bytes queued for the room's clients right now (frames not yet sent; a frame queued
    /// for n clients counts n times).
    pub fn queued_bytes(&self) -> usize {
        lock(&self.inner.clients)
            .map
            .values()
            .map(|s| s.queue.queued.load(Ordering::Acquire))
            .sum()
    }

    /// How many awareness states the room holds, their bytes of JSON, and its tombstones
    /// (removed clients whose clock is remembered for a while).
    pub fn awareness_usage(&self) -> (usize, usize, usize) {
        let t = lock(&self.inner.awareness);
        (t.len(), t.bytes(), t.tombstones())
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

    /// How many times one of the room's hooks panicked (each was contained: see
    /// [`RoomHooks`]).
    pub fn hook_panics(&self) -> u64 {
        self.inner.hook_panics.load(Ordering::Relaxed)
    }

    pub(crate) fn count_hook_panic(&self) {
        self.inner.hook_panics.fetch_add(1, Ordering::Relaxed);
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
        {
            // Under the clients' lock: a client registers before this (and is signalled)
            // or finds the room closing.
            let mut clients = lock(&self.inner.clients);
            clients.closing = true;
            for slot in clients.map.values() {
                slot.queue.raise(ROOM_CLOSED);
            }
        }
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

    fn register(
        &self,
        opts: &ServeOptions,
        direct: Option<Arc<dyn DirectWrite>>,
    ) -> Option<Registered> {
        let mut clients = lock(&self.inner.clients);
        if clients.closing {
            return None;
        }
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        // A batching budget is the session's to keep: such a connection is never written
        // to directly.
        let direct = direct.filter(|_| opts.batch_delay.is_zero());
        let queue = Arc::new(OutQueue::new(opts.queue_frames, direct));
        let kick = CancellationToken::new();
        clients.map.insert(
            conn,
            ClientSlot {
                queue: queue.clone(),
                kick: kick.clone(),
                budget: opts.queue_bytes,
                stats: opts.stats.clone(),
            },
        );
        Some(Registered { conn, queue, kick })
    }

    /// Apply a v1 update from outside (server code, an API), validated like a client's (see
    /// the [`update`] module); it is forwarded to every client and passed
    /// to [`RoomHooks::updated`]. [`RoomHooks::check_update`] is not consulted.
    pub fn apply_update(&self, update: &[u8]) -> Result<(), ApplyError> {
        self.apply_checked(None, update, Forward::Encoded)
    }

    /// Apply a v1 update another replica of this room already validated and persisted (a
    /// node sharing the room through a backplane): it is forwarded to every client and
    /// passed to [`RoomHooks::replicated`] instead of [`RoomHooks::updated`]. It skips the
    /// validator (the validator replica takes it later, like server code's edits); a panic
    /// of yrs applying it still closes the room.
    pub fn apply_replicated(&self, update: &[u8]) -> Result<(), ApplyError> {
        let parsed = update::decode_update(update)?;
        self.integrate(None, REPLICA_ORIGIN, parsed, None)
    }

    /// A transaction for a [`RoomHooks::load`] hook to put the room's stored state into
    /// the document: its update is forwarded to the room's clients like any change, but
    /// neither [`RoomHooks::updated`] nor [`RoomHooks::replicated`] is called for it (it is
    /// kept already), whatever else reaches the room before or after it. It blocks while
    /// another transaction of the document is open, so a hook applying a large state runs
    /// it off the async workers (`tokio::task::spawn_blocking` with a clone of the room).
    ///
    /// The validator replica is not fed the loaded state (it could be the whole document):
    /// it is forgotten here and rebuilt from the document by [`Room::warm_validator`], which
    /// the hook calls after the transaction, off the workers too (else the first client
    /// update rebuilds it, on a worker).
    pub fn transact_loaded(&self) -> yrs::TransactionMut<'_> {
        lock(&self.inner.validator).reset();
        self.inner.doc.transact_mut_with(Origin::from(LOAD_ORIGIN))
    }

    /// Build the validator replica from the document now (when updates are validated and
    /// it is missing or behind), so that no client update pays for it. Building it takes as
    /// long as encoding and decoding the whole document: call it off the async workers
    /// (like [`Room::transact_loaded`]'s apply). Returns whether it was built (rather than
    /// caught up, or nothing to do).
    pub fn warm_validator(&self) -> bool {
        if !self.inner.options.validate_updates {
            return false;
        }
        let mut validator = lock(&self.inner.validator);
        let backlog = std::mem::take(&mut *lock(&self.inner.backlog));
        validator.warm(&self.inner.doc, backlog)
    }

    fn apply_client_update(
        &self,
        conn: u64,
        bytes: &[u8],
        forward: Forward,
    ) -> Result<(), ApplyError> {
        self.apply_checked(Some(conn), bytes, forward)
    }

    /// Apply an update (validated first, see the [`update`] module).
    fn apply_checked(
        &self,
        conn: Option<u64>,
        bytes: &[u8],
        forward: Forward,
    ) -> Result<(), ApplyError> {
        let mut validator = lock(&self.inner.validator);
        let parsed = if self.inner.options.validate_updates {
            let backlog = std::mem::take(&mut *lock(&self.inner.backlog));
            validator.check(&self.inner.doc, backlog, bytes)?;
            // `check` screened these bytes already: decode them again without the screen.
            update::decode_trusted(bytes)?
        } else {
            update::decode_update(bytes)?
        };
        let mut conn_origin = [0; CONN_ORIGIN_PREFIX.len() + 8];
        let origin = match conn {
            Some(conn) => {
                let (prefix, id) = conn_origin.split_at_mut(CONN_ORIGIN_PREFIX.len());
                prefix.copy_from_slice(CONN_ORIGIN_PREFIX);
                id.copy_from_slice(&conn.to_be_bytes());
                &conn_origin[..]
            }
            None => API_ORIGIN,
        };
        let report = Report {
            conn,
            bytes,
            forward,
        };
        self.integrate(Some(validator), origin, parsed, Some(report))
    }

    /// Apply a decoded update to the room's document in a transaction of `origin`. A
    /// client's or the API's update (`report`) is reported from here, while the transaction
    /// still holds the document (so it keeps its place among the room's updates); any other
    /// origin's by the document's observer.
    ///
    /// **A session's update is delivered here when nothing waits.** Every update is
    /// reported while its transaction holds the document, so reports are in commit order.
    /// When a client's update (from its session, with no caller's code on the stack) finds
    /// no event waiting in the room's queue and [`Room::run`] not delivering one, this task
    /// takes the delivery lock before the transaction ends and, once the document is free
    /// again, broadcasts the update and calls the hooks itself: no queue, no wake-up of the
    /// room's task. Otherwise, and for the API's updates ([`Room::apply_update`], whose
    /// caller may hold a lock its own `updated` hook takes), the update joins the queue.
    /// Either way one delivery runs at a time, in commit order.
    fn integrate(
        &self,
        validator: Option<MutexGuard<'_, Validator>>,
        origin: &[u8],
        parsed: yrs::Update,
        report: Option<Report<'_>>,
    ) -> Result<(), ApplyError> {
        let doc = &self.inner.doc;
        // Validated updates should not panic here; if one does anyway (or validation is
        // off), the transaction is dropped while unwinding and the room, whose state is
        // now unknown, is closed.
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut txn = update::write_txn(doc, origin);
            let applied = txn.apply_update(parsed);
            txn.commit();
            let mut inline = None;
            if let Some(report) = report {
                if txn.has_changes() {
                    let (frame, update) = match (&applied, report.forward) {
                        (Ok(()), Forward::AsSent) => update_frame(report.bytes),
                        _ => update_frame(&txn.encode_update_v1()),
                    };
                    let ev = Event::Update {
                        conn: report.conn,
                        frame,
                        update,
                        source: Source::Local,
                    };
                    // Only a session's update skips the queue (an API caller could hold a
                    // lock its own `updated` hook takes). Nothing else can queue an update
                    // while the transaction holds the document, and `run` takes the lock
                    // to deliver one.
                    let delivering = (report.conn.is_some()
                        && self.inner.events.queued.load(Ordering::Acquire) == 0)
                        .then(|| try_lock(&self.inner.deliver))
                        .flatten();
                    match delivering {
                        Some(delivering) => inline = Some((delivering, ev)),
                        None => {
                            self.inner.events.send(ev);
                        }
                    }
                }
            }
            drop(txn);
            (applied, inline)
        }));
        let (applied, inline) = match applied {
            Ok(done) => done,
            Err(_) => {
                tracing::error!(room = %self.id(), "yrs panicked applying an update to the room: closing the room");
                drop(validator);
                self.close();
                return Err(ApplyError::Panicked);
            }
        };
        if let (Err(_), Some(mut v)) = (&applied, validator) {
            // The replica took it, the room did not: they differ now.
            v.reset();
        }
        // The validator is free again (dropped above) before the delivery: another
        // client's update may be checked meanwhile, and is delivered after this one.
        if let Some((_delivering, ev)) = inline {
            self.handle_event(ev);
        }
        applied.map_err(|e| ApplyError::Integrate(e.to_string()))
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
        match self.serve_or_return(channel, &opts).await {
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
    ///
    /// The future of a connection lives as long as the connection, and its size is that of
    /// its largest state: what only runs at the join or at the close (loading, the close
    /// handshake) is boxed, so an idle connection does not carry it.
    pub(crate) async fn serve_or_return<C: Channel>(
        &self,
        mut channel: C,
        opts: &ServeOptions,
    ) -> Result<Result<(), ServeError>, C> {
        let result = match Box::pin(self.load()).await {
            Err(e) => Err(ServeError::Load(e)),
            Ok(()) => match self.register(opts, channel.direct()) {
                None => return Err(channel),
                Some(reg) => {
                    let guard = ConnGuard {
                        room: self,
                        conn: reg.conn,
                    };
                    let mut conn = Conn::new(reg, opts);
                    let r = self.session(&mut channel, &mut conn, opts).await;
                    // The queue (and every frame in it) goes before the close handshake.
                    drop(conn);
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
                Box::pin(close_bounded(&mut channel, code, reason)).await;
            }
            Err(e) => {
                match e {
                    ServeError::Channel(_) | ServeError::RoomClosed => {
                        tracing::debug!(room = %self.id(), error = %e, "client connection ended")
                    }
                    _ => tracing::info!(room = %self.id(), error = %e, "client connection closed"),
                }
                if let Some(code) = e.close_code() {
                    Box::pin(close_bounded(&mut channel, code, &e.close_reason())).await;
                }
            }
        }
        Ok(result.map(|_| ()))
    }

    async fn session<C: Channel>(
        &self,
        channel: &mut C,
        conn: &mut Conn,
        opts: &ServeOptions,
    ) -> Result<Leave, ServeError> {
        // Boxed: the greeting runs once, the connection's future should not carry it.
        Box::pin(self.greet(channel, conn, opts)).await?;
        conn.queue.allow_direct();
        loop {
            let paused = conn.paused_until;
            // One timer for both: the end of a rate pause and the end of a write hold.
            let timer = match (paused, conn.held.as_ref().map(|(_, until)| *until)) {
                (Some(p), Some(h)) => Some(p.min(h)),
                (p, h) => p.or(h),
            };
            tokio::select! {
                // Not biased: a client that both sends and receives a lot gets both served.
                // Frames, a kick and the room's close all come through the queue: one waiter.
                popped = conn.queue.pop(conn.held.is_none()) => match popped {
                    Popped::Kicked => return Err(ServeError::TooSlow),
                    Popped::RoomClosed => return Ok(Leave::RoomClosed),
                    // A direct write left the rest of a frame with the writer.
                    Popped::Flush => Box::pin(bounded(channel.flush(), &conn.kick, opts.send_timeout, &opts.stats)).await?,
                    // Boxed, like the handling of a frame below: the loop's future is what
                    // an idle connection holds, and a send (its timeout's timer, the
                    // channel's own send futures) is the largest of its states.
                    Popped::Frame(frame) => match conn.batch.hold_until(Instant::now()) {
                        // Written to within the budget: gather until one budget after that
                        // write (the frame stays counted in the queue's bytes meanwhile).
                        Some(until) => conn.held = Some((frame, until)),
                        None => Box::pin(send_queued(channel, frame, conn, opts)).await?,
                    },
                },
                _ = sleep_until_some(timer), if timer.is_some() => {
                    let now = Instant::now();
                    // Over a rate: reading stopped (TCP pushes back) until the debt is repaid.
                    if paused.is_some_and(|p| p <= now) {
                        conn.paused_until = None;
                    }
                    if conn.held.as_ref().is_some_and(|(_, until)| *until <= now) {
                        if let Some((frame, _)) = conn.held.take() {
                            Box::pin(send_queued(channel, frame, conn, opts)).await?;
                        }
                    }
                }
                incoming = channel.recv(), if paused.is_none() => match incoming {
                    None | Some(Err(ChannelError::Closed { .. })) => return Ok(Leave::Peer),
                    Some(Err(ChannelError::TextFrame)) => return Err(ServeError::TextFrame),
                    Some(Err(ChannelError::TooBig { size, max })) => return Err(ServeError::TooBig { size, max }),
                    Some(Err(ChannelError::PingTimeout)) => return Err(ServeError::PingTimeout),
                    Some(Err(e)) => return Err(ServeError::Channel(e)),
                    Some(Ok(frame)) => {
                        // An answer to the client goes before the updates broadcast after it.
                        conn.queue.session_writes(true);
                        Box::pin(self.handle_frame(channel, frame, opts, conn)).await?;
                        conn.queue.session_writes(false);
                        conn.pace(opts, Instant::now())?;
                    }
                },
            }
        }
    }

    /// The greeting: SyncStep1 with the room's state vector, then the awareness table.
    async fn greet<C: Channel>(
        &self,
        channel: &mut C,
        conn: &Conn,
        opts: &ServeOptions,
    ) -> Result<(), ServeError> {
        // Only the encoded frame is kept across the send (the state vector's encoder
        // reserves 1 KiB).
        let step1 = {
            let txn = self.inner.doc.transact();
            let sv = yrs::updates::encoder::Encode::encode_v1(&txn.state_vector());
            Message::SyncStep1(Bytes::from(sv)).encode()
        };
        send_frame(channel, step1, &conn.kick, opts.send_timeout, &opts.stats).await?;
        self.send_awareness_table(channel, conn, opts, false)
            .await?;
        Ok(())
    }

    /// Send the awareness table in messages of at most `awareness_chunk_bytes` (one state
    /// larger than that goes alone), holding the table's lock only to build each one. An
    /// empty table is sent as one empty update if `even_empty` (the answer to a query).
    /// Returns how many messages went out.
    async fn send_awareness_table<C: Channel>(
        &self,
        channel: &mut C,
        conn: &Conn,
        opts: &ServeOptions,
        even_empty: bool,
    ) -> Result<u64, ServeError> {
        let ids = lock(&self.inner.awareness).ids();
        if ids.is_empty() && even_empty {
            let frame = Message::Awareness(AwarenessUpdate::default().encode()).encode();
            send_frame(channel, frame, &conn.kick, opts.send_timeout, &opts.stats).await?;
            return Ok(1);
        }
        let mut sent = 0;
        let mut from = 0;
        while from < ids.len() {
            let (chunk, next) =
                lock(&self.inner.awareness).chunk(&ids, from, opts.awareness_chunk_bytes);
            from = next;
            if chunk.entries.is_empty() {
                continue;
            }
            let frame = Message::Awareness(chunk.encode()).encode();
            send_frame(channel, frame, &conn.kick, opts.send_timeout, &opts.stats).await?;
            sent += 1;
        }
        Ok(sent)
    }

    async fn handle_frame<C: Channel>(
        &self,
        channel: &mut C,
        frame: Bytes,
        opts: &ServeOptions,
        conn: &mut Conn,
    ) -> Result<(), ServeError> {
        if frame.len() > opts.max_message_bytes {
            return Err(ServeError::TooBig {
                size: frame.len(),
                max: opts.max_message_bytes,
            });
        }
        let (kick, stats) = (&conn.kick.clone(), &opts.stats);
        for msg in decode_frame(&frame)? {
            let forward = match msg {
                Message::Update(_) => Forward::AsSent,
                _ => Forward::Encoded,
            };
            match msg {
                Message::SyncStep1(sv) => {
                    let sv =
                        update::decode_state_vector(&sv).map_err(ServeError::InvalidStateVector)?;
                    let Some(diff) = update::encode_diff(&self.inner.doc, &sv) else {
                        tracing::error!(room = %self.id(), "the room's state does not encode: closing the room");
                        self.close();
                        return Err(ServeError::RoomBroken);
                    };
                    // The first answer carries the whole document: it gets the long allowance,
                    // and is free. Later ones (a client re-syncing) count against the update
                    // rate by what they cost: one, plus one per 64 KiB of answer, so a client
                    // asking for the whole document again and again is paced by its size.
                    let timeout = if std::mem::replace(&mut conn.synced, true) {
                        conn.updates.debit(
                            1 + (diff.len() / SYNC_BYTES_PER_TOKEN) as u64,
                            Instant::now(),
                        );
                        opts.send_timeout
                    } else {
                        opts.sync_send_timeout
                    };
                    send_frame(
                        channel,
                        Message::SyncStep2(diff.into()).encode(),
                        kick,
                        timeout,
                        stats,
                    )
                    .await?;
                }
                Message::SyncStep2(u) | Message::Update(u) => {
                    conn.updates.debit(1, Instant::now());
                    if opts.read_only {
                        if !update::is_empty_update(&u) {
                            tracing::debug!(room = %self.id(), "update from a read-only client refused");
                            send_frame(
                                channel,
                                denied(&opts.read_only_reason).encode(),
                                kick,
                                opts.send_timeout,
                                stats,
                            )
                            .await?;
                        }
                        continue;
                    }
                    if update::is_empty_update(&u) {
                        // The SyncStep2 of a client with nothing new: nothing to do.
                        continue;
                    }
                    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.inner.hooks.check_update(self, &u)
                    }))
                    .unwrap_or_else(|_| {
                        self.count_hook_panic();
                        tracing::error!(room = %self.id(), "the room's check_update hook panicked: the update is refused and its client closed");
                        Err(crate::Refusal::closing(HOOK_FAILED.0, "update check failed"))
                    });
                    if let Err(refusal) = checked {
                        tracing::info!(room = %self.id(), reason = %refusal, "update refused by the room's hook");
                        send_frame(
                            channel,
                            denied(&refusal.reason).encode(),
                            kick,
                            opts.send_timeout,
                            stats,
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
                    if let Err(e) = self.apply_client_update(conn.id, &u, forward) {
                        tracing::warn!(room = %self.id(), error = %e, bytes = u.len(), "client update refused; the room is unchanged");
                        return Err(ServeError::InvalidUpdate(e));
                    }
                }
                Message::Awareness(payload) => {
                    let mut parsed = AwarenessUpdate::decode(&payload)?;
                    for e in &mut parsed.entries {
                        if let Some(state) = &e.state {
                            match check_state(state) {
                                Ok(false) => {}
                                Ok(true) => e.state = None,
                                Err(err) => {
                                    ServeStats::add(&stats.awareness_invalid_json, 1);
                                    return Err(ServeError::InvalidAwareness(format!(
                                        "client {}: not JSON: {err}",
                                        e.client_id
                                    )));
                                }
                            }
                        }
                    }
                    let applied = lock(&self.inner.awareness).apply(
                        &parsed,
                        conn.id,
                        ConnLimits {
                            max_ids: opts.awareness_max_ids,
                            max_state_bytes: opts.awareness_max_state_bytes,
                        },
                        Instant::now(),
                        opts.awareness_timeout,
                    );
                    conn.awareness.debit(applied.changes, Instant::now());
                    ServeStats::add(&stats.awareness_state_too_big, applied.too_big);
                    ServeStats::add(&stats.awareness_too_many_ids, applied.too_many_ids);
                    ServeStats::add(&stats.awareness_room_full, applied.room_full);
                    let dropped = applied.too_big + applied.too_many_ids + applied.room_full;
                    if dropped > 0 {
                        tracing::debug!(room = %self.id(), conn = conn.id, too_big = applied.too_big, too_many_ids = applied.too_many_ids, room_full = applied.room_full, "awareness entries dropped");
                    }
                    // Only the connection's own caps count against it (a full room is not
                    // its fault).
                    conn.awareness_dropped += applied.too_big + applied.too_many_ids;
                    if conn.awareness_dropped > opts.awareness_max_dropped {
                        ServeStats::add(&stats.awareness_abuse_closes, 1);
                        return Err(ServeError::AwarenessAbuse {
                            dropped: conn.awareness_dropped,
                        });
                    }
                    if !applied.entries.is_empty() {
                        self.inner.awareness_changed.notify_one();
                        // Relayed to everyone, sender included: only what changed the table.
                        let update = AwarenessUpdate {
                            entries: applied.entries,
                        };
                        self.broadcast(&Message::Awareness(update.encode()).encode(), None);
                    }
                }
                Message::QueryAwareness => {
                    // A one-byte query can ask for megabytes: each message of the answer
                    // counts as an awareness change against this client's rate.
                    let sent = self.send_awareness_table(channel, conn, opts, true).await?;
                    conn.awareness.debit(sent, Instant::now());
                }
                Message::Auth(_) | Message::Custom { .. } => {
                    tracing::debug!(room = %self.id(), kind = msg.kind_name(), "message ignored");
                }
            }
        }
        Ok(())
    }
}

/// A registered client connection.
struct Registered {
    conn: u64,
    queue: Arc<OutQueue>,
    kick: CancellationToken,
}

/// One client connection's state in [`Room::serve`].
struct Conn {
    id: u64,
    queue: Arc<OutQueue>,
    kick: CancellationToken,
    /// The first SyncStep2 has been sent.
    synced: bool,
    updates: TokenBucket,
    awareness: TokenBucket,
    /// Reading is paused until then (over a rate).
    paused_until: Option<Instant>,
    /// How long reading has been paused since the last frame that needed no pause.
    throttled: Duration,
    /// Awareness entries dropped for this connection's own caps.
    awareness_dropped: u64,
    /// When this connection writes queued updates ([`ServeOptions::batch_delay`]).
    batch: Batch,
    /// The first queued frame of a held write, and when the write is due.
    held: Option<(Bytes, Instant)>,
}

impl Conn {
    fn new(reg: Registered, opts: &ServeOptions) -> Conn {
        let now = Instant::now();
        Conn {
            id: reg.conn,
            queue: reg.queue,
            kick: reg.kick,
            synced: false,
            updates: TokenBucket::new(opts.update_rate, now),
            awareness: TokenBucket::new(opts.awareness_rate, now),
            paused_until: None,
            throttled: Duration::ZERO,
            awareness_dropped: 0,
            batch: Batch::new(opts.batch_delay, Duration::ZERO),
            held: None,
        }
    }

    /// After a frame: pause reading while a bucket is in debt; a client that stays paused
    /// (or owes) longer than `rate_abuse_after` is closed.
    fn pace(&mut self, opts: &ServeOptions, now: Instant) -> Result<(), ServeError> {
        let (u, a) = (self.updates.debt_wait(now), self.awareness.debt_wait(now));
        if u.is_zero() && a.is_zero() {
            self.throttled = Duration::ZERO;
            return Ok(());
        }
        let (wait, what, counter) = if u >= a {
            (u, "update", &opts.stats.updates_throttled)
        } else {
            (a, "awareness", &opts.stats.awareness_throttled)
        };
        ServeStats::add(counter, 1);
        self.throttled += wait;
        if self.throttled > opts.rate_abuse_after {
            ServeStats::add(&opts.stats.rate_closes, 1);
            return Err(ServeError::RateLimited { what });
        }
        self.paused_until = Some(now + wait);
        Ok(())
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        // Boxed: a pause is rare, and every idle connection's loop holds this future.
        Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
        None => std::future::pending().await,
    }
}

/// Close a channel, giving up after a few seconds (a peer that does not read cannot take
/// a close frame either).
async fn close_bounded<C: Channel>(channel: &mut C, code: u16, reason: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(5), channel.close(code, reason)).await;
}

/// The most frames [`send_queued`] feeds before one flush.
const BATCH_FRAMES: usize = 64;
/// The most bytes [`send_queued`] feeds before one flush (a frame that starts under it
/// goes in whole).
const BATCH_BYTES: usize = 16 << 10;

/// Send `first` and whatever else is queued for the client already (up to
/// [`BATCH_FRAMES`] / [`BATCH_BYTES`]) as one write: every frame is fed, then the channel
/// is flushed once. One message per frame, as y-websocket wants; only the write is shared.
/// The send timeout covers the whole batch.
async fn send_queued<C: Channel>(
    channel: &mut C,
    first: Bytes,
    conn: &mut Conn,
    opts: &ServeOptions,
) -> Result<(), ServeError> {
    let mut taken = first.len();
    let mut frames = 1;
    let (queue, kick) = (&conn.queue, &conn.kick);
    let batch = async {
        channel.feed(first).await?;
        while frames < BATCH_FRAMES && taken < BATCH_BYTES {
            let Some(next) = queue.try_pop() else { break };
            taken += next.len();
            frames += 1;
            channel.feed(next).await?;
        }
        channel.flush().await
    };
    let sent = bounded(batch, kick, opts.send_timeout, &opts.stats).await;
    conn.queue.queued.fetch_sub(taken, Ordering::AcqRel);
    conn.queue.session_writes(false);
    conn.batch.wrote(Instant::now());
    sent
}

/// Send one frame unless the client is kicked as too slow meanwhile or the send takes
/// longer than `timeout` (a peer that stops reading blocks a send).
async fn send_frame<C: Channel>(
    channel: &mut C,
    frame: Bytes,
    kick: &CancellationToken,
    timeout: Duration,
    stats: &ServeStats,
) -> Result<(), ServeError> {
    bounded(channel.send(frame), kick, timeout, stats).await
}

/// Run a send unless the client is kicked as too slow meanwhile or it takes longer than
/// `timeout`. The timer and the kick's waiter are only set up if the send does not finish
/// at its first poll: on a socket that takes the bytes at once (nearly every send) a
/// delivery registers no timer.
async fn bounded<F: Future<Output = Result<(), ChannelError>>>(
    send: F,
    kick: &CancellationToken,
    timeout: Duration,
    stats: &ServeStats,
) -> Result<(), ServeError> {
    // No check of the kick before the first poll (its token's state sits behind a mutex):
    // a kicked session hears it through its queue at the next turn of its loop.
    let mut send = std::pin::pin!(send);
    let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
    if let Poll::Ready(r) = first {
        return r.map_err(ServeError::Channel);
    }
    tokio::select! {
        _ = kick.cancelled() => Err(ServeError::TooSlow),
        r = tokio::time::timeout(timeout, send) => match r {
            Ok(r) => r.map_err(ServeError::Channel),
            Err(_) => {
                ServeStats::add(&stats.slow_send_timeout, 1);
                Err(ServeError::TooSlow)
            }
        },
    }
}

/// The y-sync Update frame `[0, 2, varUint8Array(update)]` of a v1 update, built in one
/// allocation, and the update itself as a slice of it.
fn update_frame(update: &[u8]) -> (Bytes, Bytes) {
    let mut buf = Vec::with_capacity(update.len() + 12);
    buf.extend_from_slice(&[0, 2]);
    nimbus_proto::doc::lib0::write_var_uint(&mut buf, update.len() as u64);
    let at = buf.len();
    buf.extend_from_slice(update);
    let frame = Bytes::from(buf);
    let update = frame.slice(at..);
    (frame, update)
}

fn denied(reason: &str) -> Message {
    Message::Auth(AuthMessage::PermissionDenied(reason.to_owned()))
}

enum Leave {
    Peer,
    RoomClosed,
}

/// Unregisters a connection and removes the awareness states it owns, also when `serve`
/// is cancelled.
struct ConnGuard<'a> {
    room: &'a Room,
    conn: u64,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        lock(&self.room.inner.clients).map.remove(&self.conn);
        let gone = lock(&self.room.inner.awareness).remove_conn(self.conn, Instant::now());
        if !gone.is_empty() {
            let frame = Message::Awareness(AwarenessUpdate { entries: gone }.encode()).encode();
            self.room.broadcast(&frame, None);
            self.room.inner.awareness_changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Text, Transact};

    #[tokio::test]
    async fn a_signal_wakes_a_waiting_session_and_comes_before_queued_frames() {
        let q = Arc::new(OutQueue::new(8, None));
        assert!(q.push(Bytes::from_static(b"a")));
        assert!(matches!(q.pop(true).await, Popped::Frame(f) if f == "a"));
        // A session waiting with nothing queued is woken by a signal alone.
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.pop(true).await }
        });
        tokio::task::yield_now().await;
        q.raise(ROOM_CLOSED);
        assert!(matches!(waiting.await, Ok(Popped::RoomClosed)));
        // Queued frames do not hide a kick, and a kick outranks the close.
        assert!(q.push(Bytes::from_static(b"b")));
        assert!(!q.kicked(), "closing the room is not a kick");
        q.raise(KICKED);
        assert!(q.kicked());
        assert!(matches!(q.pop(true).await, Popped::Kicked));
    }

    #[tokio::test]
    async fn a_session_holding_a_write_waits_for_signals_only() {
        let q = OutQueue::new(8, None);
        assert!(q.push(Bytes::from_static(b"a")));
        let held = tokio::time::timeout(Duration::from_millis(20), q.pop(false)).await;
        assert!(
            held.is_err(),
            "a queued frame must not end a signals-only wait"
        );
        q.raise(KICKED);
        assert!(matches!(q.pop(false).await, Popped::Kicked));
        assert_eq!(q.try_pop().as_deref(), Some(&b"a"[..]));
    }

    /// A direct writer that answers from a script (then [`Written::All`]) and records
    /// what it put on the wire; with a log, each write also shows there as [`Op::Direct`]
    /// (a [`Recording`] channel's log).
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<std::collections::VecDeque<Written>>,
        wrote: Mutex<Vec<Bytes>>,
        log: Option<Arc<Mutex<Vec<Op>>>>,
    }

    impl Scripted {
        fn answering(answers: &[Written]) -> Arc<Scripted> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.iter().copied().collect()),
                ..Scripted::default()
            })
        }

        fn logging(log: &Arc<Mutex<Vec<Op>>>, answers: &[Written]) -> Arc<Scripted> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.iter().copied().collect()),
                log: Some(log.clone()),
                ..Scripted::default()
            })
        }
    }

    impl DirectWrite for Scripted {
        fn write_now(&self, frame: &Bytes) -> Written {
            let answer = lock(&self.answers).pop_front().unwrap_or(Written::All);
            if answer != Written::Nothing {
                lock(&self.wrote).push(frame.clone());
                if let Some(log) = &self.log {
                    lock(log).push(Op::Direct);
                }
            }
            answer
        }
    }

    fn frame(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn a_frame_is_written_directly_only_when_nothing_earlier_is_queued_or_being_written() {
        let wire = Scripted::answering(&[]);
        let q = OutQueue::new(8, Some(wire.clone()));
        // Before the greeting is out: queued.
        assert_eq!(q.offer(&frame("greeting-time"), true), Offer::Queued);
        assert_eq!(q.try_pop(), Some(frame("greeting-time")));
        q.session_writes(false);
        q.allow_direct();
        // Idle: straight to the wire, no wake-up.
        assert_eq!(q.offer(&frame("a"), true), Offer::Written);
        // The broadcast's direct budget is spent: queued.
        assert_eq!(q.offer(&frame("over-budget"), false), Offer::Queued);
        // An earlier frame is queued: the next one queues behind it, though the wire is idle.
        assert_eq!(q.offer(&frame("b"), true), Offer::Queued);
        assert_eq!(q.try_pop(), Some(frame("over-budget")));
        assert_eq!(q.try_pop(), Some(frame("b")));
        // The session took the last one and has not written it yet: still queued.
        assert_eq!(q.offer(&frame("c"), true), Offer::Queued);
        assert_eq!(q.try_pop(), Some(frame("c")));
        q.session_writes(false);
        // The session answers the client: direct writes wait for the answer.
        q.session_writes(true);
        assert_eq!(q.offer(&frame("d"), true), Offer::Queued);
        assert_eq!(q.try_pop(), Some(frame("d")));
        q.session_writes(false);
        assert_eq!(q.offer(&frame("e"), true), Offer::Written);
        assert_eq!(*lock(&wire.wrote), [frame("a"), frame("e")]);
    }

    #[tokio::test]
    async fn a_partial_direct_write_is_flushed_before_the_frames_queued_after_it() {
        let wire = Scripted::answering(&[Written::Part, Written::Nothing]);
        let q = OutQueue::new(8, Some(wire.clone()));
        q.allow_direct();
        assert_eq!(q.offer(&frame("a"), true), Offer::Written);
        // The writer holds the rest of "a" and refuses: "b" is queued.
        assert_eq!(q.offer(&frame("b"), true), Offer::Queued);
        assert!(matches!(q.pop(true).await, Popped::Flush));
        assert!(matches!(q.pop(true).await, Popped::Frame(f) if f == "b"));
        // The flush was taken once.
        let next = tokio::time::timeout(Duration::from_millis(20), q.pop(true)).await;
        assert!(next.is_err(), "a second flush or frame: {next:?}");
        assert_eq!(*lock(&wire.wrote), [frame("a")]);
    }

    #[test]
    fn a_full_queue_refuses_without_trying_the_wire_when_a_frame_is_queued() {
        let wire = Scripted::answering(&[Written::Nothing]);
        let q = OutQueue::new(1, Some(wire.clone()));
        q.allow_direct();
        assert_eq!(q.offer(&frame("a"), true), Offer::Queued);
        assert_eq!(q.offer(&frame("b"), true), Offer::Full);
        assert!(lock(&wire.wrote).is_empty());
    }

    #[test]
    fn an_update_frame_is_the_update_message_and_shares_its_bytes() {
        for len in [0usize, 1, 127, 128, 70_000] {
            let update: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (frame, slice) = update_frame(&update);
            assert_eq!(frame, Message::Update(Bytes::from(update.clone())).encode());
            assert_eq!(slice, update);
            // The update is a view into the frame, not a second allocation.
            let end = frame.as_ptr() as usize + frame.len();
            assert_eq!(slice.as_ptr() as usize + slice.len(), end);
        }
    }

    #[test]
    fn a_client_queue_is_bounded_in_frames_and_gives_its_memory_back_after_a_burst() {
        let q = OutQueue::new(1024, None);
        assert_eq!(lock(&q.state).frames.capacity(), 0);
        for _ in 0..1024 {
            assert!(q.push(Bytes::from_static(b"x")));
        }
        assert!(!q.push(Bytes::from_static(b"x")), "over max_frames");
        assert!(lock(&q.state).frames.capacity() >= 1024);
        while q.try_pop().is_some() {}
        // An idle queue holds no buffer at all.
        assert_eq!(
            lock(&q.state).frames.capacity(),
            0,
            "capacity kept after the burst"
        );
        assert!(q.push(Bytes::from_static(b"x")));
        assert_eq!(q.try_pop(), Some(Bytes::from_static(b"x")));
        assert_eq!(
            lock(&q.state).frames.capacity(),
            0,
            "capacity kept after one frame"
        );
    }

    #[test]
    fn an_idle_connection_holds_a_small_serving_future() {
        // What every idle connection's task carries for the room: the loop's select (the
        // queue, the channel's receive, the two cancellations) and the connection's state.
        // The send of a batch, the handling of a frame, the greeting, the join and the close
        // are boxed while they run; were they inline, this future would be about twice as
        // large (1,640 bytes before they were).
        let room = Room::new("size");
        let opts = ServeOptions::default();
        let (channel, _peer) = crate::wire::memory::pair();
        let serving = room.serve_or_return(Box::new(channel), &opts);
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 1024, "the serving future takes {size} bytes");
        // Through a manager, with the options it keeps (176 bytes), the join and the unload
        // (1,280 bytes while `RoomManager::serve` was an `async fn` holding them twice).
        let manager = crate::RoomManager::new(|id: &str| Room::new(id));
        let (channel, _peer) = crate::wire::memory::pair();
        let serving = manager.serve("size", Box::new(channel), ServeOptions::default());
        let size = std::mem::size_of_val(&serving);
        assert!(
            size <= 1200,
            "the manager's serving future takes {size} bytes"
        );
    }

    /// What a recording channel was asked to do.
    #[derive(Debug, PartialEq)]
    enum Op {
        Send,
        Feed,
        Flush,
        Direct,
    }

    /// A channel that logs what it is asked to do; with a wire, it can also be written
    /// directly (into the same log).
    struct Recording {
        ops: Arc<Mutex<Vec<Op>>>,
        wire: Option<Arc<Scripted>>,
    }

    impl Recording {
        fn new(ops: &Arc<Mutex<Vec<Op>>>) -> Recording {
            Recording {
                ops: ops.clone(),
                wire: None,
            }
        }

        /// A recording channel whose wire answers `answers` (then writes everything).
        fn direct(ops: &Arc<Mutex<Vec<Op>>>, answers: &[Written]) -> Recording {
            Recording {
                ops: ops.clone(),
                wire: Some(Scripted::logging(ops, answers)),
            }
        }
    }

    impl Channel for Recording {
        async fn send(&mut self, _frame: Bytes) -> Result<(), ChannelError> {
            lock(&self.ops).push(Op::Send);
            Ok(())
        }
        async fn feed(&mut self, _frame: Bytes) -> Result<(), ChannelError> {
            lock(&self.ops).push(Op::Feed);
            Ok(())
        }
        async fn flush(&mut self) -> Result<(), ChannelError> {
            lock(&self.ops).push(Op::Flush);
            Ok(())
        }
        async fn recv(&mut self) -> Option<Result<Bytes, ChannelError>> {
            std::future::pending().await
        }
        async fn close(&mut self, _code: u16, _reason: &str) {}
        fn direct(&self) -> Option<Arc<dyn DirectWrite>> {
            self.wire.clone().map(|w| w as Arc<dyn DirectWrite>)
        }
    }

    /// Serve `channel` in `room` and wait until its greeting has gone out.
    async fn joined<C: Channel>(
        room: &Room,
        channel: C,
        opts: ServeOptions,
        ops: &Mutex<Vec<Op>>,
    ) -> tokio::task::JoinHandle<Result<(), ServeError>> {
        let serving = {
            let room = room.clone();
            tokio::spawn(async move { room.serve(channel, opts).await })
        };
        while room.client_count() == 0 || lock(ops).is_empty() {
            tokio::task::yield_now().await;
        }
        serving
    }

    /// Editor 7's update inserting "x" at `at` of its text "t".
    fn insert_x(editor: &yrs::Doc, at: u32) -> Vec<u8> {
        let text = editor.get_or_insert_text("t");
        let mut txn = editor.transact_mut();
        text.insert(&mut txn, at, "x");
        txn.encode_update_v1()
    }

    async fn settle(turns: usize) {
        for _ in 0..turns {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn frames_queued_for_a_client_go_out_with_one_flush() {
        let room = Room::new("batch");
        let ops = Arc::new(Mutex::new(Vec::new()));
        let channel = Recording::new(&ops);
        let serving = joined(&room, channel, ServeOptions::default(), &ops).await;
        // The greeting (SyncStep1) is one flushed send.
        assert_eq!(*lock(&ops), [Op::Send]);
        let editor = yrs::Doc::with_client_id(7);
        for i in 0..3 {
            assert_eq!(room.apply_update(&insert_x(&editor, i)), Ok(()));
        }
        // No `run`: `flush` delivers the three updates to the client's queue at once.
        room.flush().await;
        settle(10).await;
        assert_eq!(
            *lock(&ops),
            [Op::Send, Op::Feed, Op::Feed, Op::Feed, Op::Flush]
        );
        room.close();
        let _ = serving.await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_client_is_written_directly_after_its_greeting_and_through_its_session_when_the_wire_is_full(
    ) {
        let room = Room::new("direct");
        let ops = Arc::new(Mutex::new(Vec::new()));
        // The third update finds the wire full.
        let channel = Recording::direct(&ops, &[Written::All, Written::All, Written::Nothing]);
        let serving = joined(&room, channel, ServeOptions::default(), &ops).await;
        let editor = yrs::Doc::with_client_id(7);
        for i in 0..4 {
            assert_eq!(room.apply_update(&insert_x(&editor, i)), Ok(()));
            room.flush().await;
            settle(10).await;
        }
        // The greeting through the session, two updates straight to the wire, the third
        // (refused by the wire) through the session, and the fourth straight again.
        assert_eq!(
            *lock(&ops),
            [
                Op::Send,
                Op::Direct,
                Op::Direct,
                Op::Feed,
                Op::Flush,
                Op::Direct
            ]
        );
        room.close();
        let _ = serving.await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_broadcast_writes_directly_to_at_most_its_cap_of_clients_and_queues_the_rest() {
        let room = Room::new("direct-cap");
        let ops = Arc::new(Mutex::new(Vec::new()));
        let clients = DIRECT_PER_BROADCAST + 3;
        let mut serving = Vec::new();
        for _ in 0..clients {
            let channel = Recording::direct(&ops, &[]);
            let room = room.clone();
            serving.push(tokio::spawn(async move {
                room.serve(channel, ServeOptions::default()).await
            }));
        }
        while room.client_count() < clients || lock(&ops).len() < clients {
            tokio::task::yield_now().await;
        }
        settle(10).await;
        lock(&ops).clear();
        let editor = yrs::Doc::with_client_id(7);
        assert_eq!(room.apply_update(&insert_x(&editor, 0)), Ok(()));
        room.flush().await;
        settle(50).await;
        let ops = std::mem::take(&mut *lock(&ops));
        let count = |op: Op| ops.iter().filter(|o| **o == op).count();
        assert_eq!(count(Op::Direct), DIRECT_PER_BROADCAST);
        assert_eq!(count(Op::Feed), 3, "the rest go through their sessions");
        room.close();
        for s in serving {
            let _ = s.await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_with_a_batching_budget_is_never_written_directly() {
        let room = Room::new("direct-batch");
        let ops = Arc::new(Mutex::new(Vec::new()));
        let channel = Recording::direct(&ops, &[]);
        let opts = ServeOptions {
            batch_delay: Duration::from_millis(1),
            ..ServeOptions::default()
        };
        let serving = joined(&room, channel, opts, &ops).await;
        let editor = yrs::Doc::with_client_id(7);
        assert_eq!(room.apply_update(&insert_x(&editor, 0)), Ok(()));
        room.flush().await;
        settle(10).await;
        assert_eq!(*lock(&ops), [Op::Send, Op::Feed, Op::Flush]);
        room.close();
        let _ = serving.await;
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_busy_client_gets_the_updates_of_one_budget_in_one_write_and_an_idle_one_at_once() {
        let room = Room::new("hold");
        let ops = Arc::new(Mutex::new(Vec::new()));
        let channel = Recording::new(&ops);
        let opts = ServeOptions {
            batch_delay: Duration::from_millis(10),
            ..ServeOptions::default()
        };
        let serving = {
            let room = room.clone();
            tokio::spawn(async move { room.serve(channel, opts).await })
        };
        while room.client_count() == 0 || lock(&ops).is_empty() {
            tokio::task::yield_now().await;
        }
        lock(&ops).clear();
        let editor = yrs::Doc::with_client_id(7);
        let text = editor.get_or_insert_text("t");
        let edit = |i: u32| {
            let update = {
                let mut txn = editor.transact_mut();
                text.insert(&mut txn, i, "x");
                txn.encode_update_v1()
            };
            assert_eq!(room.apply_update(&update), Ok(()));
        };
        let settle = || async {
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        };
        // Idle: the first update leaves at once.
        edit(0);
        room.flush().await;
        settle().await;
        assert_eq!(*lock(&ops), [Op::Feed, Op::Flush], "no latency floor");
        lock(&ops).clear();
        // Busy (written to just now): the next two wait for one budget after that write...
        edit(1);
        room.flush().await;
        settle().await;
        tokio::time::advance(Duration::from_millis(4)).await;
        edit(2);
        room.flush().await;
        settle().await;
        assert_eq!(*lock(&ops), [], "held within the budget");
        // ...and leave together.
        tokio::time::advance(Duration::from_millis(7)).await;
        settle().await;
        assert_eq!(*lock(&ops), [Op::Feed, Op::Feed, Op::Flush]);
        lock(&ops).clear();
        // Idle again after a quiet budget: at once.
        tokio::time::advance(Duration::from_millis(50)).await;
        edit(3);
        room.flush().await;
        settle().await;
        assert_eq!(*lock(&ops), [Op::Feed, Op::Flush]);
        room.close();
        let _ = serving.await;
    }
}
