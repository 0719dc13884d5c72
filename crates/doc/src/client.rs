//! [`connect`]: a client that keeps a [`yrs::Doc`] in sync with a room (the seed's
//! `connect`), over a WebSocket, the memory wire, or a file.
//!
//! Over a network wire the client sends SyncStep1, answers the server's SyncStep1 with
//! SyncStep2, and is *synced* when the server's SyncStep2 arrives; [`connect`] returns then.
//! From then on every local transaction on the document goes out as an Update, and remote
//! updates are applied with the origin [`REMOTE_ORIGIN`] (so they are not sent back). After a
//! drop it reconnects with exponential backoff and full jitter, and resyncs both ways
//! (changes made while offline are in its SyncStep2 answer).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use nimbus_proto::doc::{decode_frame, AuthMessage, AwarenessEntry, AwarenessUpdate, Message};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Origin, ReadTxn, StateVector, Transact};

use crate::channel::{Channel, ChannelError};
use crate::update::{
    decode_state_vector, decode_update, encode_diff, encode_state, is_empty_update,
};
use crate::wire::file::{self, FileError};
use crate::wire::memory::{self, MemoryChannel};
use crate::wire::websocket::{self, WsChannel};

/// The transaction origin of updates a client applies from the network (or reads from its
/// file): transactions with this origin are not sent back.
pub const REMOTE_ORIGIN: &str = "nimbus-doc/remote";

/// Observer keys are unique per client, so several clients can share one document.
static NEXT_OBSERVER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn observer_key() -> String {
    let n = NEXT_OBSERVER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("nimbus-doc/client/{n}")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a client connects.
#[derive(Debug, Clone)]
pub enum ClientWire {
    /// A WebSocket server: `ws://` or `wss://` base URL; the room id is appended as a path
    /// (`url + "/" + id`, as wiredb and y-websocket do).
    WebSocket {
        /// The base URL, e.g. `ws://127.0.0.1:8000/doc`.
        url: String,
    },
    /// A wire-file (see [`crate::wire::file`]): the document is loaded from the file and
    /// every local change is appended to it.
    File {
        /// The file.
        path: PathBuf,
        /// Keep the file as one merged record (rewritten on open and on every write).
        squash: bool,
        /// Debounce writes: wait this long after a change, then write everything pending.
        write_delay: Option<Duration>,
    },
    /// The in-process wire.
    Memory(memory::Connector),
}

pub use nimbus_proto::backoff::Backoff;

/// Options of [`connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// A token for the server: sent as the `token` query parameter and as an
    /// `Authorization: Bearer` header (WebSocket), or handed over as is (memory wire).
    pub token: Option<String>,
    /// Reconnect after a drop. Default true.
    pub reconnect: bool,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// How long the first connection and sync may take. Default 10 s.
    pub connect_timeout: Duration,
    /// The largest frame accepted from the server. Default 64 MiB.
    pub max_message_bytes: usize,
    /// How often the local awareness state is renewed. Default 15 s.
    pub awareness_renew: Duration,
    /// How long a remote awareness state lives without renewal. Default 30 s.
    pub awareness_timeout: Duration,
    /// WebSocket keepalive ping period. Default 30 s.
    pub ping_interval: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: None,
            reconnect: true,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(10),
            max_message_bytes: 64 << 20,
            awareness_renew: Duration::from_secs(15),
            awareness_timeout: Duration::from_secs(30),
            ping_interval: Some(websocket::PING_INTERVAL),
        }
    }
}

/// Why [`connect`] failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The URL is not a `ws://` or `wss://` URL.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The connection could not be opened.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection ended before the first sync completed.
    #[error("connection closed before the first sync: {0}")]
    Closed(String),
    /// The first sync did not complete within [`ConnectOptions::connect_timeout`].
    #[error("no sync within {0:?}")]
    Timeout(Duration),
    /// The document is in a transaction held elsewhere, so the client cannot observe it.
    #[error("the document is busy (a transaction is open)")]
    DocBusy,
    /// The file wire failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// The connection state of a [`Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Opening a connection.
    Connecting,
    /// Connected, first sync not complete.
    Connected,
    /// Connected and synced (the server's SyncStep2 arrived).
    Synced,
    /// The connection dropped.
    Disconnected {
        /// The close code, if the server sent one.
        code: Option<u16>,
        /// What happened.
        reason: String,
    },
    /// Waiting before reconnect attempt `attempt` (1-based).
    Reconnecting {
        /// The attempt number.
        attempt: u32,
    },
    /// The server refused something (`Auth PermissionDenied`); the connection stays.
    PermissionDenied {
        /// The server's reason.
        reason: String,
    },
    /// [`Client::close`] was called, or reconnecting is off and the connection dropped.
    Closed,
}

enum Out {
    Update(Bytes),
    Awareness,
}

#[derive(Default)]
struct AwarenessView {
    local_clock: u64,
    local: Option<String>,
    remote: BTreeMap<u64, (u64, String, Instant)>,
    /// Last clock seen per remote client (also after removal).
    clocks: BTreeMap<u64, u64>,
}

struct Inner {
    id: String,
    doc: Doc,
    opts: ConnectOptions,
    status: watch::Sender<Status>,
    events: broadcast::Sender<Status>,
    awareness: Mutex<AwarenessView>,
    awareness_watch: watch::Sender<BTreeMap<u64, Value>>,
    out_tx: mpsc::UnboundedSender<Out>,
    cancel: CancellationToken,
    observer: String,
}

impl Inner {
    fn set_status(&self, s: Status) {
        if !matches!(s, Status::PermissionDenied { .. }) {
            self.status.send_replace(s.clone());
        }
        let _ = self.events.send(s);
    }

    fn client_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    fn publish_awareness(&self) {
        let states = states_of(self.client_id(), &lock(&self.awareness));
        self.awareness_watch.send_replace(states);
    }

    fn local_entry(&self) -> AwarenessEntry {
        let view = lock(&self.awareness);
        AwarenessEntry {
            client_id: self.client_id(),
            clock: view.local_clock,
            state: view.local.clone(),
        }
    }
}

fn states_of(me: u64, view: &AwarenessView) -> BTreeMap<u64, Value> {
    let parse = |s: &str| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()));
    let mut out: BTreeMap<u64, Value> = view
        .remote
        .iter()
        .map(|(id, (_, s, _))| (*id, parse(s)))
        .collect();
    if let Some(s) = &view.local {
        out.insert(me, parse(s));
    }
    out
}

/// A connected document (see the module docs). Dropping it stops it (without flushing a
/// file wire's pending writes: call [`Client::close`]).
pub struct Client {
    inner: Arc<Inner>,
    driver: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.inner.id)
            .field("status", &*self.inner.status.borrow())
            .finish()
    }
}

/// Connect `doc` (or a new document) to room `id` over `wire`; returns once the first
/// sync has completed.
pub async fn connect(
    wire: ClientWire,
    id: &str,
    doc: Option<Doc>,
    opts: ConnectOptions,
) -> Result<Client, ConnectError> {
    let doc = doc.unwrap_or_else(crate::new_doc);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (status, _) = watch::channel(Status::Connecting);
    let (events, _) = broadcast::channel(64);
    let (awareness_watch, _) = watch::channel(BTreeMap::new());
    let inner = Arc::new(Inner {
        id: id.to_owned(),
        doc: doc.clone(),
        opts,
        status,
        events,
        awareness: Mutex::new(AwarenessView::default()),
        awareness_watch,
        out_tx: out_tx.clone(),
        cancel: CancellationToken::new(),
        observer: observer_key(),
    });
    let tx = out_tx;
    doc.observe_update_v1(inner.observer.as_str(), move |txn, event| {
        let remote = txn
            .origin()
            .is_some_and(|o| o.as_ref() == REMOTE_ORIGIN.as_bytes());
        if !remote {
            let _ = tx.send(Out::Update(Bytes::from(event.update.clone())));
        }
    })
    .map_err(|_| ConnectError::DocBusy)?;
    let result = match wire {
        ClientWire::File {
            path,
            squash,
            write_delay,
        } => start_file(&inner, path, squash, write_delay, out_rx),
        ClientWire::WebSocket { url } => {
            let url = ws_url(&url, id, inner.opts.token.as_deref())?;
            start_net(&inner, Opener::Ws(url), out_rx).await
        }
        ClientWire::Memory(connector) => start_net(&inner, Opener::Memory(connector), out_rx).await,
    };
    match result {
        Ok(driver) => Ok(Client {
            inner,
            driver: Some(driver),
        }),
        Err(e) => {
            let _ = doc.unobserve_update_v1(inner.observer.as_str());
            Err(e)
        }
    }
}

/// The URL a WebSocket client opens: `base + "/" + id`, plus `?token=` when given.
pub(crate) fn ws_url(base: &str, id: &str, token: Option<&str>) -> Result<url::Url, ConnectError> {
    let full = format!("{}/{}", base.trim_end_matches('/'), id);
    let mut url = url::Url::parse(&full).map_err(|e| ConnectError::InvalidUrl {
        url: full.clone(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(ConnectError::InvalidUrl {
            url: full,
            reason: "the scheme must be ws or wss".into(),
        });
    }
    if let Some(t) = token {
        url.query_pairs_mut().append_pair("token", t);
    }
    Ok(url)
}

enum Opener {
    Ws(url::Url),
    Memory(memory::Connector),
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Conn {
    Ws(Box<WsChannel<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>>),
    Memory(MemoryChannel),
}

impl Channel for Conn {
    async fn send(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        match self {
            Conn::Ws(c) => c.send(frame).await,
            Conn::Memory(c) => c.send(frame).await,
        }
    }

    async fn recv(&mut self) -> Option<Result<Bytes, ChannelError>> {
        match self {
            Conn::Ws(c) => c.recv().await,
            Conn::Memory(c) => c.recv().await,
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        match self {
            Conn::Ws(c) => c.close(code, reason).await,
            Conn::Memory(c) => c.close(code, reason).await,
        }
    }
}

impl Opener {
    async fn open(&self, inner: &Inner) -> Result<Conn, String> {
        match self {
            Opener::Memory(c) => c
                .connect(&inner.id, inner.opts.token.as_deref())
                .map(Conn::Memory)
                .map_err(|e| e.to_string()),
            Opener::Ws(url) => {
                use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                let mut req = url
                    .as_str()
                    .into_client_request()
                    .map_err(|e| e.to_string())?;
                if let Some(t) = &inner.opts.token {
                    if let Ok(v) = format!("Bearer {t}").parse() {
                        req.headers_mut().insert("authorization", v);
                    }
                }
                let config = websocket::config(inner.opts.max_message_bytes);
                let (ws, _): (WsStream, _) =
                    tokio_tungstenite::connect_async_with_config(req, Some(config), true)
                        .await
                        .map_err(|e| e.to_string())?;
                Ok(Conn::Ws(Box::new(WsChannel::new(
                    ws,
                    inner.opts.ping_interval,
                ))))
            }
        }
    }
}

async fn start_net(
    inner: &Arc<Inner>,
    opener: Opener,
    out_rx: mpsc::UnboundedReceiver<Out>,
) -> Result<JoinHandle<()>, ConnectError> {
    let timeout = inner.opts.connect_timeout;
    let first = tokio::time::timeout(timeout, opener.open(inner))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Connect)?;
    inner.set_status(Status::Connected);
    let mut status = inner.status.subscribe();
    let driver = tokio::spawn(drive(inner.clone(), opener, first, out_rx));
    let synced = async {
        loop {
            match &*status.borrow_and_update() {
                Status::Synced => return Ok(()),
                Status::Disconnected { reason, .. } => {
                    return Err(ConnectError::Closed(reason.clone()))
                }
                Status::Closed => return Err(ConnectError::Closed("closed".into())),
                _ => {}
            }
            if status.changed().await.is_err() {
                return Err(ConnectError::Closed("client stopped".into()));
            }
        }
    };
    let r = match tokio::time::timeout(timeout, synced).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(timeout)),
    };
    if let Err(e) = r {
        inner.cancel.cancel();
        driver.abort();
        return Err(e);
    }
    Ok(driver)
}

/// How a session ended.
enum Ending {
    ByUs,
    Dropped { code: Option<u16>, reason: String },
}

async fn drive(
    inner: Arc<Inner>,
    opener: Opener,
    first: Conn,
    mut out_rx: mpsc::UnboundedReceiver<Out>,
) {
    let mut conn = Some(first);
    let mut attempt = 0u32;
    let mut ever_synced = false;
    loop {
        let c = match conn.take() {
            Some(c) => c,
            None => {
                inner.set_status(Status::Connecting);
                let timeout = inner.opts.connect_timeout;
                let opened = tokio::select! {
                    _ = inner.cancel.cancelled() => break,
                    r = tokio::time::timeout(timeout, opener.open(&inner)) => {
                        r.unwrap_or_else(|_| Err(format!("no connection within {timeout:?}")))
                    }
                };
                match opened {
                    Ok(c) => {
                        inner.set_status(Status::Connected);
                        c
                    }
                    Err(e) => {
                        tracing::debug!(room = %inner.id, error = %e, "reconnect failed");
                        attempt += 1;
                        inner.set_status(Status::Reconnecting { attempt });
                        tokio::select! {
                            _ = inner.cancel.cancelled() => break,
                            _ = tokio::time::sleep(inner.opts.backoff.full_jitter(attempt, rand::random())) => continue,
                        }
                    }
                }
            }
        };
        let (ending, synced) = session(&inner, c, &mut out_rx).await;
        ever_synced |= synced;
        if synced {
            attempt = 0;
        }
        match ending {
            Ending::ByUs => break,
            Ending::Dropped { code, reason } => {
                tracing::debug!(room = %inner.id, ?code, %reason, "connection dropped");
                inner.set_status(Status::Disconnected { code, reason });
                if !inner.opts.reconnect || !ever_synced {
                    break;
                }
                attempt += 1;
                inner.set_status(Status::Reconnecting { attempt });
                tokio::select! {
                    _ = inner.cancel.cancelled() => break,
                    _ = tokio::time::sleep(inner.opts.backoff.full_jitter(attempt, rand::random())) => {}
                }
            }
        }
    }
    // Remote states are stale once we are offline for good.
    lock(&inner.awareness).remote.clear();
    inner.publish_awareness();
    inner.set_status(Status::Closed);
}

async fn send(conn: &mut Conn, msg: Message) -> Result<(), Ending> {
    conn.send(msg.encode()).await.map_err(|e| Ending::Dropped {
        code: None,
        reason: e.to_string(),
    })
}

fn local_awareness_frame(inner: &Inner) -> Message {
    Message::Awareness(
        AwarenessUpdate {
            entries: vec![inner.local_entry()],
        }
        .encode(),
    )
}

/// One connection: sync, then relay until it ends. Returns whether it synced.
async fn session(
    inner: &Arc<Inner>,
    mut conn: Conn,
    out_rx: &mut mpsc::UnboundedReceiver<Out>,
) -> (Ending, bool) {
    let mut synced = false;
    // Whatever was queued while offline is covered by the SyncStep2 answer.
    while out_rx.try_recv().is_ok() {}
    let r = async {
        let sv = inner.doc.transact().state_vector().encode_v1();
        send(&mut conn, Message::SyncStep1(sv.into())).await?;
        let has_state = {
            let mut view = lock(&inner.awareness);
            // A server that saw us leave removed our state with clock + 1 (as
            // `removeAwarenessStates` does): come back with a newer clock, or everyone
            // would ignore the state until the next renewal.
            if view.local.is_some() {
                view.local_clock += 2;
            }
            view.local.is_some()
        };
        if has_state {
            send(&mut conn, local_awareness_frame(inner)).await?;
        }
        let mut renew = tokio::time::interval_at(Instant::now() + inner.opts.awareness_renew, inner.opts.awareness_renew);
        let check = Duration::from_secs(3).min(inner.opts.awareness_timeout / 2).max(Duration::from_millis(10));
        let mut expire = tokio::time::interval_at(Instant::now() + check, check);
        loop {
            tokio::select! {
                biased;
                _ = inner.cancel.cancelled() => {
                    // Send the local changes made before `close`, tell the others we are
                    // gone, then close.
                    while let Ok(out) = out_rx.try_recv() {
                        if let Out::Update(u) = out {
                            send(&mut conn, Message::Update(u)).await?;
                        }
                    }
                    if lock(&inner.awareness).local.is_some() {
                        let entry = {
                            let mut view = lock(&inner.awareness);
                            view.local_clock += 1;
                            AwarenessEntry { client_id: inner.client_id(), clock: view.local_clock, state: None }
                        };
                        let _ = send(&mut conn, Message::Awareness(AwarenessUpdate { entries: vec![entry] }.encode())).await;
                    }
                    conn.close(1000, "client closed").await;
                    return Err(Ending::ByUs);
                }
                out = out_rx.recv() => match out {
                    Some(Out::Update(u)) => send(&mut conn, Message::Update(u)).await?,
                    Some(Out::Awareness) => send(&mut conn, local_awareness_frame(inner)).await?,
                    None => return Err(Ending::ByUs),
                },
                _ = renew.tick() => {
                    let has = {
                        let mut view = lock(&inner.awareness);
                        if view.local.is_some() { view.local_clock += 1; true } else { false }
                    };
                    if has {
                        send(&mut conn, local_awareness_frame(inner)).await?;
                    }
                }
                _ = expire.tick() => expire_remote(inner),
                incoming = conn.recv() => match incoming {
                    None => return Err(Ending::Dropped { code: None, reason: "connection closed".into() }),
                    Some(Err(ChannelError::Closed { code, reason })) => return Err(Ending::Dropped { code: Some(code), reason }),
                    Some(Err(e)) => return Err(Ending::Dropped { code: None, reason: e.to_string() }),
                    Some(Ok(frame)) => {
                        if handle_frame(inner, &mut conn, frame).await? && !synced {
                            synced = true;
                            inner.set_status(Status::Synced);
                        }
                    }
                },
            }
        }
    }
    .await;
    let ending = match r {
        Err(e) => e,
        Ok(()) => Ending::ByUs,
    };
    (ending, synced)
}

fn expire_remote(inner: &Inner) {
    let now = Instant::now();
    let changed = {
        let mut view = lock(&inner.awareness);
        let before = view.remote.len();
        let timeout = inner.opts.awareness_timeout;
        view.remote
            .retain(|_, (_, _, seen)| now.duration_since(*seen) < timeout);
        before != view.remote.len()
    };
    if changed {
        inner.publish_awareness();
    }
}

/// Handle one frame; returns whether it held a SyncStep2.
async fn handle_frame(inner: &Arc<Inner>, conn: &mut Conn, frame: Bytes) -> Result<bool, Ending> {
    let msgs = match decode_frame(&frame) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(room = %inner.id, error = %e, "undecodable frame from the server");
            conn.close(1007, "undecodable frame").await;
            return Err(Ending::Dropped {
                code: None,
                reason: format!("undecodable frame from the server: {e}"),
            });
        }
    };
    let mut step2 = false;
    for msg in msgs {
        match msg {
            Message::SyncStep1(sv) => {
                let sv = decode_state_vector(&sv).unwrap_or_else(|e| {
                    tracing::warn!(room = %inner.id, error = %e, "invalid state vector from the server");
                    StateVector::default()
                });
                let Some(diff) = encode_diff(&inner.doc, &sv) else {
                    tracing::error!(room = %inner.id, "the document does not encode (a broken remote update?)");
                    return Err(Ending::Dropped {
                        code: None,
                        reason: "local document does not encode".into(),
                    });
                };
                send(conn, Message::SyncStep2(diff.into())).await?;
            }
            Message::SyncStep2(u) => {
                apply_remote(inner, &u);
                step2 = true;
            }
            Message::Update(u) => apply_remote(inner, &u),
            Message::Awareness(a) => match AwarenessUpdate::decode(&a) {
                Ok(update) => apply_awareness(inner, conn, update).await?,
                Err(e) => tracing::warn!(room = %inner.id, error = %e, "invalid awareness update"),
            },
            Message::QueryAwareness => {
                let entries = {
                    let view = lock(&inner.awareness);
                    let mut entries: Vec<AwarenessEntry> = view
                        .remote
                        .iter()
                        .map(|(id, (clock, s, _))| AwarenessEntry {
                            client_id: *id,
                            clock: *clock,
                            state: Some(s.clone()),
                        })
                        .collect();
                    if view.local.is_some() {
                        entries.push(AwarenessEntry {
                            client_id: inner.client_id(),
                            clock: view.local_clock,
                            state: view.local.clone(),
                        });
                    }
                    entries
                };
                send(
                    conn,
                    Message::Awareness(AwarenessUpdate { entries }.encode()),
                )
                .await?;
            }
            Message::Auth(AuthMessage::PermissionDenied(reason)) => {
                tracing::warn!(room = %inner.id, %reason, "permission denied by the server");
                inner.set_status(Status::PermissionDenied { reason });
            }
            Message::Auth(AuthMessage::PermissionGranted) | Message::Custom { .. } => {}
        }
    }
    Ok(step2)
}

fn apply_remote(inner: &Inner, update: &[u8]) {
    if is_empty_update(update) {
        return;
    }
    match decode_update(update) {
        Ok(u) => {
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut txn = inner.doc.transact_mut_with(Origin::from(REMOTE_ORIGIN));
                txn.apply_update(u)
            }));
            match applied {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(room = %inner.id, error = %e, "remote update did not apply")
                }
                Err(_) => tracing::error!(room = %inner.id, "a remote update made yrs panic"),
            }
        }
        Err(e) => tracing::warn!(room = %inner.id, error = %e, "invalid remote update"),
    }
}

async fn apply_awareness(
    inner: &Arc<Inner>,
    conn: &mut Conn,
    update: AwarenessUpdate,
) -> Result<(), Ending> {
    let me = inner.client_id();
    let now = Instant::now();
    let mut changed = false;
    let mut reassert = false;
    {
        let mut view = lock(&inner.awareness);
        for e in update.entries {
            if e.client_id == me {
                // Someone timed us out while we are alive: renew with a newer clock.
                if e.state.is_none() && view.local.is_some() && e.clock >= view.local_clock {
                    view.local_clock = e.clock + 1;
                    reassert = true;
                }
                continue;
            }
            let known = view.clocks.get(&e.client_id).copied();
            let newer = match known {
                None => true,
                Some(k) => e.clock > k || (e.clock == k && e.state.is_none()),
            };
            if !newer {
                continue;
            }
            view.clocks.insert(e.client_id, e.clock);
            match e.state {
                Some(s) => {
                    view.remote.insert(e.client_id, (e.clock, s, now));
                    changed = true;
                }
                None => changed |= view.remote.remove(&e.client_id).is_some(),
            }
        }
    }
    if changed {
        inner.publish_awareness();
    }
    if reassert {
        send(conn, local_awareness_frame(inner)).await?;
    }
    Ok(())
}

fn start_file(
    inner: &Arc<Inner>,
    path: PathBuf,
    squash: bool,
    write_delay: Option<Duration>,
    out_rx: mpsc::UnboundedReceiver<Out>,
) -> Result<JoinHandle<()>, ConnectError> {
    let contents = file::read(&path)?;
    if contents.truncated_tail && !squash {
        file::truncate(&path, contents.valid_len)?;
    }
    let file_doc_sv = {
        // The state the file holds, to write only what the given document adds to it.
        let scratch = Doc::new();
        for (index, u) in contents.updates.iter().enumerate() {
            let parsed = decode_update(u).map_err(|e| FileError::BadRecord {
                path: path.clone(),
                index,
                offset: 0,
                reason: e.to_string(),
            })?;
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                scratch.transact_mut().apply_update(parsed)
            }));
            let failure = match applied {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the record made yrs panic".to_owned()),
            };
            if let Some(reason) = failure {
                return Err(FileError::BadRecord {
                    path: path.clone(),
                    index,
                    offset: 0,
                    reason,
                }
                .into());
            }
            apply_remote(inner, u);
        }
        let sv = scratch.transact().state_vector();
        sv
    };
    let unencodable = || FileError::BadRecord {
        path: path.clone(),
        index: contents.updates.len(),
        offset: 0,
        reason: "the document no longer encodes after applying the file".into(),
    };
    if squash {
        let state = encode_state(&inner.doc).ok_or_else(unencodable)?;
        file::squash(&path, &state)?;
    } else {
        let diff = encode_diff(&inner.doc, &file_doc_sv).ok_or_else(unencodable)?;
        if !is_empty_update(&diff) || contents.updates.is_empty() {
            let records: Vec<Bytes> = if is_empty_update(&diff) {
                Vec::new()
            } else {
                vec![diff.into()]
            };
            file::append(&path, &records)?;
        }
    }
    inner.set_status(Status::Connected);
    inner.set_status(Status::Synced);
    Ok(tokio::spawn(file_writer(
        inner.clone(),
        path,
        squash,
        write_delay,
        out_rx,
    )))
}

async fn file_writer(
    inner: Arc<Inner>,
    path: PathBuf,
    squash: bool,
    write_delay: Option<Duration>,
    mut out_rx: mpsc::UnboundedReceiver<Out>,
) {
    let mut pending: Vec<Bytes> = Vec::new();
    loop {
        let first = tokio::select! {
            _ = inner.cancel.cancelled() => None,
            o = out_rx.recv() => o,
        };
        let stop = match first {
            Some(Out::Update(u)) => {
                pending.push(u);
                false
            }
            Some(Out::Awareness) => continue,
            None => true,
        };
        if !stop {
            if let Some(delay) = write_delay {
                tokio::select! {
                    _ = inner.cancel.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        while let Ok(o) = out_rx.try_recv() {
            if let Out::Update(u) = o {
                pending.push(u);
            }
        }
        if !pending.is_empty() {
            let batch = std::mem::take(&mut pending);
            let state = if squash {
                encode_state(&inner.doc)
            } else {
                None
            };
            let p = path.clone();
            let write = tokio::task::spawn_blocking(move || match state {
                Some(state) => file::squash(&p, &state),
                None => file::append(&p, &batch),
            });
            match write.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the update file")
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "update file writer failed")
                }
            }
        }
        if stop || inner.cancel.is_cancelled() {
            break;
        }
    }
    inner.set_status(Status::Closed);
}

impl Client {
    /// The document.
    pub fn doc(&self) -> &Doc {
        &self.inner.doc
    }

    /// The room id given to [`connect`].
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// This client's awareness id (its document's client id).
    pub fn client_id(&self) -> u64 {
        self.inner.client_id()
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    /// A watch of the status (the latest value; see [`Client::events`] for every change).
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// Every status change, including [`Status::PermissionDenied`] notices.
    pub fn events(&self) -> broadcast::Receiver<Status> {
        self.inner.events.subscribe()
    }

    /// Wait until the client is synced (again, after a reconnect); returns false if it
    /// closed instead.
    pub async fn synced(&self) -> bool {
        let mut rx = self.inner.status.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Status::Synced => return true,
                Status::Closed => return false,
                _ => {}
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Set this client's awareness state (`Value::Null` removes it) and send it.
    pub fn set_local_state(&self, state: Value) {
        {
            let mut view = lock(&self.inner.awareness);
            view.local_clock += 1;
            view.local = (!state.is_null()).then(|| state.to_string());
        }
        self.inner.publish_awareness();
        let _ = self.inner.out_tx.send(Out::Awareness);
    }

    /// This client's awareness state.
    pub fn local_state(&self) -> Option<Value> {
        lock(&self.inner.awareness)
            .local
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
    }

    /// Every known awareness state (this client's included), by client id.
    pub fn states(&self) -> BTreeMap<u64, Value> {
        states_of(self.inner.client_id(), &lock(&self.inner.awareness))
    }

    /// A watch of [`Client::states`], updated on every change.
    pub fn watch_awareness(&self) -> watch::Receiver<BTreeMap<u64, Value>> {
        self.inner.awareness_watch.subscribe()
    }

    /// Close: send the awareness removal and a close frame (network), or write what is
    /// pending (file); then stop.
    pub async fn close(mut self) {
        self.inner.cancel.cancel();
        if let Some(d) = self.driver.take() {
            let _ = d.await;
        }
        let _ = self
            .inner
            .doc
            .unobserve_update_v1(self.inner.observer.as_str());
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
        if let Some(d) = self.driver.take() {
            d.abort();
        }
        let _ = self
            .inner
            .doc
            .unobserve_update_v1(self.inner.observer.as_str());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_append_the_id_and_the_token() {
        assert_eq!(
            ws_url("ws://h:1", "ROOM", None).unwrap().as_str(),
            "ws://h:1/ROOM"
        );
        assert_eq!(
            ws_url("ws://h:1/doc/", "a b", Some("t&k"))
                .unwrap()
                .as_str(),
            "ws://h:1/doc/a%20b?token=t%26k"
        );
        assert_eq!(
            ws_url("wss://h/doc", "", None).unwrap().as_str(),
            "wss://h/doc/"
        );
        assert!(matches!(
            ws_url("http://h", "x", None),
            Err(ConnectError::InvalidUrl { .. })
        ));
    }
}
