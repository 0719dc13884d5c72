//! The IPC route server.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use nimbus_proto::ipc::{self as wire, Authorization, BetterReply, ErrorReply, Frame};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::{Request, RouteError, ServerError};

type BoxFut = Pin<Box<dyn Future<Output = Result<Value, RouteError>> + Send>>;
type Handler = Arc<dyn Fn(Request) -> BoxFut + Send + Sync>;
type Callback = Arc<dyn Fn(&IpcEvent) + Send + Sync>;

/// Server-side events (spec §5).
#[derive(Debug, Clone)]
pub enum IpcEvent {
    /// Both listeners are bound and accepting.
    Ready,
    /// An authenticated request, before endpoint lookup (also for unknown endpoints).
    RawRequest(Request),
    /// A valid route returned and its reply was sent.
    RequestCompletion(Request),
    /// A route failed, or a better-ipc call hit an unknown endpoint.
    Error {
        /// The endpoint (`None` for an unknown better-ipc endpoint).
        endpoint: Option<String>,
        /// The error.
        error: RouteError,
    },
}

/// Builder with the seed defaults: `localhost`, port 8000, multicast on at 20000,
/// 1 MiB frames, 30 s route timeout, 256 routes in flight; and the connection bounds
/// (`docs/ipc.md`, "Connection bounds"): 64 authenticated and 16 unauthenticated
/// connections per peer address, 5 s from accept to the first authenticated frame,
/// 16 pings at once then 1 per second, 16 MiB replies, 1 s to close.
///
/// ```
/// let server = nimbus_ipc::Server::builder().port(0).multicast_port(0).build().unwrap();
/// assert_eq!(server.secret_key(), None);
/// ```
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    host: String,
    port: u16,
    secret_key: Option<String>,
    multicast: bool,
    multicast_port: u16,
    max_frame: usize,
    route_timeout: Duration,
    max_in_flight: usize,
    max_conns_per_peer: usize,
    max_pre_auth_per_peer: usize,
    pre_auth_timeout: Duration,
    ping_burst: NonZeroU32,
    ping_per_second: NonZeroU32,
    max_reply: usize,
    close_timeout: Duration,
    credential: Option<Credential>,
}

/// A second kind of credential a request may carry in place of the shared secret (e.g. a
/// signed token): `true` accepts it. See [`ServerBuilder::also_accept`].
#[derive(Clone)]
pub struct Credential(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<check>)")
    }
}

/// The write buffer may hold one reply of `max_reply` bytes plus this much: the frame header,
/// the pongs the ping budget allows while the peer does not read, and a close frame.
const WRITE_SLACK: usize = 8 << 10;
/// tungstenite's default; a smaller `max_reply` lowers it (it must stay below the cap).
const WRITE_BUFFER: usize = 128 << 10;
/// The smallest `max_reply` accepted: every error reply fits in it.
const MIN_REPLY: usize = 1 << 10;

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 8000,
            secret_key: None,
            multicast: true,
            multicast_port: 20000,
            max_frame: 1 << 20,
            route_timeout: Duration::from_secs(30),
            max_in_flight: 256,
            max_conns_per_peer: 64,
            max_pre_auth_per_peer: 16,
            pre_auth_timeout: Duration::from_secs(5),
            ping_burst: NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN),
            ping_per_second: NonZeroU32::MIN,
            max_reply: 16 << 20,
            close_timeout: Duration::from_secs(1),
            credential: None,
        }
    }
}

impl ServerBuilder {
    /// Host to bind.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }
    /// Main port (0 = any).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Shared secret checked on every request.
    pub fn secret_key(mut self, key: impl Into<String>) -> Self {
        self.secret_key = Some(key.into());
        self
    }
    /// Also accept a request whose secret is not the shared one when `check` says so (a
    /// signed token, for example). With a check, every request needs a credential, even
    /// without a shared secret; it runs only for values that are not the shared secret.
    pub fn also_accept(mut self, check: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.credential = Some(Credential(Arc::new(check)));
        self
    }
    /// Enable the multicast port.
    pub fn multicast(mut self, on: bool) -> Self {
        self.multicast = on;
        self
    }
    /// Multicast port (0 = any).
    pub fn multicast_port(mut self, port: u16) -> Self {
        self.multicast_port = port;
        self
    }
    /// Maximum frame/message size in bytes.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }
    /// Per-request route timeout (exceeded → 500 `Timeout`).
    pub fn route_timeout(mut self, t: Duration) -> Self {
        self.route_timeout = t;
        self
    }
    /// Global limit of routes running at once.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
    /// Maximum authenticated connections per peer IP address, over both ports (default 64).
    /// While a peer has this many, its new connections are closed at accept; a connection
    /// that authenticates while the pool is full is closed with 1013.
    pub fn max_connections_per_peer(mut self, n: usize) -> Self {
        self.max_conns_per_peer = n.max(1);
        self
    }
    /// Maximum connections per peer IP address that have not authenticated yet (default 16).
    /// A new connection beyond it pushes out the peer's oldest unauthenticated one (closed
    /// with 1013 `too many unauthenticated connections`), so idle strangers cannot keep a
    /// client that authenticates out.
    pub fn max_pre_auth_per_peer(mut self, n: usize) -> Self {
        self.max_pre_auth_per_peer = n.max(1);
        self
    }
    /// Time from accept to the first frame that passes authentication, HTTP upgrade included
    /// (default 5 s). Then the socket is closed with 1008 `authentication timeout` (or dropped
    /// if the upgrade is not done). Authenticated sockets have no idle timeout.
    pub fn pre_auth_timeout(mut self, t: Duration) -> Self {
        self.pre_auth_timeout = t;
        self
    }
    /// Ping budget per connection: a token bucket of `burst` pings refilled at `per_second`
    /// (default 16 and 1, minimum 1 each). A ping over budget closes the socket with 1008
    /// `too many pings`.
    pub fn ping_budget(mut self, burst: u32, per_second: u32) -> Self {
        self.ping_burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        self.ping_per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        self
    }
    /// Largest reply in bytes (default 16 MiB, minimum 1 KiB). A larger route result is
    /// answered with 500 (`ReplyTooLarge`). A socket's write buffer is capped at this plus
    /// 8 KiB.
    pub fn max_reply(mut self, bytes: usize) -> Self {
        self.max_reply = bytes.max(MIN_REPLY);
        self
    }
    /// How long a close may take: sending the close frame, then reading until the peer
    /// closes (default 1 s). Then the socket is dropped.
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.close_timeout = t;
        self
    }

    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_frame))
            .max_frame_size(Some(self.max_frame))
            .write_buffer_size(WRITE_BUFFER.min(self.max_reply))
            .max_write_buffer_size(self.max_reply + WRITE_SLACK)
    }

    fn ping_quota(&self) -> Quota {
        Quota::per_second(self.ping_per_second).allow_burst(self.ping_burst)
    }
    /// Build the server (fails on a non-loopback host without a secret).
    pub fn build(self) -> Result<Server, ServerError> {
        if self.secret_key.is_none() && self.credential.is_none() && !is_loopback(&self.host) {
            return Err(ServerError::InsecureBind(self.host));
        }
        let (events, _) = broadcast::channel(1024);
        let digest = self
            .secret_key
            .as_ref()
            .map(|k| Sha256::digest(k.as_bytes()).into());
        let inner = Arc::new(Inner {
            semaphore: Arc::new(Semaphore::new(self.max_in_flight)),
            cfg: self,
            digest,
            routes: RwLock::new(HashMap::new()),
            callbacks: RwLock::new(Vec::new()),
            events,
            main_port: Mutex::new(0),
            peers: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            counters: Counters::default(),
            running: Mutex::new(None),
        });
        Ok(Server {
            _guard: Arc::new(StopOnDrop(inner.clone())),
            inner,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

struct Running {
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    local: SocketAddr,
    multicast: Option<SocketAddr>,
}

struct Inner {
    cfg: ServerBuilder,
    digest: Option<[u8; 32]>,
    semaphore: Arc<Semaphore>,
    routes: RwLock<HashMap<String, Handler>>,
    callbacks: RwLock<Vec<(u8, Callback)>>,
    events: broadcast::Sender<IpcEvent>,
    main_port: Mutex<u16>,
    peers: Mutex<HashMap<IpAddr, PeerConns>>,
    next_conn: AtomicU64,
    counters: Counters,
    running: Mutex<Option<Running>>,
}

/// One peer address's connections: authenticated ones are counted, unauthenticated ones are
/// queued oldest first with the sender that pushes them out.
#[derive(Default)]
struct PeerConns {
    authed: usize,
    pre_auth: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// Counters behind [`Server::stats`].
#[derive(Default)]
struct Counters {
    refused_at_accept: AtomicU64,
    pre_auth_evicted: AtomicU64,
    pre_auth_timeouts: AtomicU64,
    auth_pool_full: AtomicU64,
    ping_floods: AtomicU64,
    invalid_utf8: AtomicU64,
    protocol_errors: AtomicU64,
    too_big: AtomicU64,
    replies_too_large: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What [`Server::stats`] returns: connections open now, and how many were refused or closed
/// for each bound since the server was built (`docs/ipc.md`, "Connection bounds").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IpcStats {
    /// Authenticated connections open now (all peers, both ports).
    pub authenticated: u64,
    /// Connections open now that have not authenticated yet.
    pub pre_auth: u64,
    /// Connections closed at accept: the peer had `max_connections_per_peer` authenticated ones.
    pub refused_at_accept: u64,
    /// Unauthenticated connections pushed out by a newer one of the same peer (1013).
    pub pre_auth_evicted: u64,
    /// Connections that did not authenticate within `pre_auth_timeout` (1008, or dropped
    /// during the upgrade).
    pub pre_auth_timeouts: u64,
    /// Connections that authenticated while their peer's pool was full (1013).
    pub auth_pool_full: u64,
    /// Connections closed for pinging over budget (1008).
    pub ping_floods: u64,
    /// Connections closed for invalid UTF-8 in a text message (1007).
    pub invalid_utf8: u64,
    /// Connections closed for a WebSocket protocol error (1002).
    pub protocol_errors: u64,
    /// Connections closed for a frame or message over `max_frame` (400 reply, then 1009).
    pub too_big: u64,
    /// Route results over `max_reply`, answered with 500 `ReplyTooLarge`.
    pub replies_too_large: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    PreAuth,
    Authed,
    Released,
}

/// Counts a connection in its peer's pools while alive.
struct PeerSlot {
    inner: Arc<Inner>,
    ip: IpAddr,
    id: u64,
    state: SlotState,
}

impl PeerSlot {
    /// Admit a new connection as unauthenticated: `None` if the peer's authenticated pool is
    /// full; pushes out the peer's oldest unauthenticated connection if that pool is full. The
    /// receiver fires when this connection is pushed out in turn.
    fn admit(inner: &Arc<Inner>, ip: IpAddr) -> Option<(Self, oneshot::Receiver<()>)> {
        let mut peers = inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let conns = peers.entry(ip).or_default();
        if conns.authed >= inner.cfg.max_conns_per_peer {
            bump(&inner.counters.refused_at_accept);
            return None;
        }
        while conns.pre_auth.len() >= inner.cfg.max_pre_auth_per_peer {
            let Some((_, evict)) = conns.pre_auth.pop_front() else {
                break;
            };
            let _ = evict.send(());
            bump(&inner.counters.pre_auth_evicted);
        }
        let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conns.pre_auth.push_back((id, tx));
        Some((
            Self {
                inner: inner.clone(),
                ip,
                id,
                state: SlotState::PreAuth,
            },
            rx,
        ))
    }

    /// Move from the unauthenticated pool to the authenticated one; `false` (and the slot is
    /// released) if the authenticated pool is full.
    fn promote(&mut self) -> bool {
        let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let conns = peers.entry(self.ip).or_default();
        conns.pre_auth.retain(|(id, _)| *id != self.id);
        if conns.authed >= self.inner.cfg.max_conns_per_peer {
            self.state = SlotState::Released;
            return false;
        }
        conns.authed += 1;
        self.state = SlotState::Authed;
        true
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conns) = peers.get_mut(&self.ip) {
            match self.state {
                SlotState::PreAuth => conns.pre_auth.retain(|(id, _)| *id != self.id),
                SlotState::Authed => conns.authed = conns.authed.saturating_sub(1),
                SlotState::Released => {}
            }
            if conns.authed == 0 && conns.pre_auth.is_empty() {
                peers.remove(&self.ip);
            }
        }
    }
}

/// The IPC server: named async routes on a main port and a multicast port.
///
/// ```no_run
/// # async fn demo() -> Result<(), nimbus_ipc::ServerError> {
/// use nimbus_ipc::{Request, Server};
/// let server = Server::new("127.0.0.1", 8000, Some("key".into()), true, 20000)?;
/// server.route("stats", |_req: Request| async move { Ok(serde_json::json!({"rooms": 3})) });
/// server.on_raw_ipc_request(|req| tracing::info!(endpoint = req.endpoint(), "request"));
/// server.start().await?;
/// # server.terminate_server().await; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
    _guard: Arc<StopOnDrop>,
}

/// Shared by all clones of a [`Server`]: when the last one is dropped, the listeners and
/// connections stop (the tasks hold `Inner`, not this guard, so there is no cycle).
struct StopOnDrop(Arc<Inner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let running = self
            .0
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(r) = running {
            let _ = r.shutdown.send(true);
            drop(r.tasks); // aborts the accept loops, whose JoinSets abort the connections
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("host", &self.inner.cfg.host)
            .field("port", &self.inner.cfg.port)
            .field(
                "secret_key",
                &self.inner.cfg.secret_key.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

const EV_RAW: u8 = 0;
const EV_DONE: u8 = 1;
const EV_READY: u8 = 2;
const EV_ERR: u8 = 3;

impl Server {
    /// A server with the seed's parameters (other settings at their defaults).
    pub fn new(
        host: impl Into<String>,
        port: u16,
        secret_key: Option<String>,
        multicast: bool,
        multicast_port: u16,
    ) -> Result<Self, ServerError> {
        let mut b = ServerBuilder::default()
            .host(host)
            .port(port)
            .multicast(multicast)
            .multicast_port(multicast_port);
        b.secret_key = secret_key;
        b.build()
    }

    /// A builder with the seed defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Connections open now, and the counts of connections refused or closed by each bound.
    pub fn stats(&self) -> IpcStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (authenticated, pre_auth) = {
            let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
            peers.values().fold((0u64, 0u64), |(a, p), c| {
                (a + c.authed as u64, p + c.pre_auth.len() as u64)
            })
        };
        IpcStats {
            authenticated,
            pre_auth,
            refused_at_accept: get(&c.refused_at_accept),
            pre_auth_evicted: get(&c.pre_auth_evicted),
            pre_auth_timeouts: get(&c.pre_auth_timeouts),
            auth_pool_full: get(&c.auth_pool_full),
            ping_floods: get(&c.ping_floods),
            invalid_utf8: get(&c.invalid_utf8),
            protocol_errors: get(&c.protocol_errors),
            too_big: get(&c.too_big),
            replies_too_large: get(&c.replies_too_large),
        }
    }

    /// The secret key, if any.
    pub fn secret_key(&self) -> Option<&str> {
        self.inner.cfg.secret_key.as_deref()
    }

    /// Register a route (a leading `/` in `name` is ignored). Replaces a route of the same name.
    pub fn route<F, Fut>(&self, name: &str, f: F)
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, RouteError>> + Send + 'static,
    {
        let h: Handler = Arc::new(move |r| Box::pin(f(r)));
        let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.insert(wire::route_name(name).to_owned(), h);
    }

    /// Register a route returning anything `Serialize`.
    pub fn route_serialize<F, Fut, T>(&self, name: &str, f: F)
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, RouteError>> + Send + 'static,
        T: serde::Serialize,
    {
        let f = Arc::new(f);
        self.route(name, move |r| {
            let fut = f(r);
            async move {
                let v = fut.await?;
                serde_json::to_value(v)
                    .map_err(|e| RouteError::with_kind("TypeError", e.to_string()))
            }
        });
    }

    fn add_cb(&self, kind: u8, cb: Callback) {
        self.inner
            .callbacks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((kind, cb));
    }

    /// Callback for `raw_ipc_request`.
    pub fn on_raw_ipc_request(&self, cb: impl Fn(&Request) + Send + Sync + 'static) {
        self.add_cb(
            EV_RAW,
            Arc::new(move |e| {
                if let IpcEvent::RawRequest(r) = e {
                    cb(r)
                }
            }),
        );
    }
    /// Callback for `ipc_request_completion`.
    pub fn on_ipc_request_completion(&self, cb: impl Fn(&Request) + Send + Sync + 'static) {
        self.add_cb(
            EV_DONE,
            Arc::new(move |e| {
                if let IpcEvent::RequestCompletion(r) = e {
                    cb(r)
                }
            }),
        );
    }
    /// Callback for `ipc_ready`.
    pub fn on_ipc_ready(&self, cb: impl Fn() + Send + Sync + 'static) {
        self.add_cb(
            EV_READY,
            Arc::new(move |e| {
                if let IpcEvent::Ready = e {
                    cb()
                }
            }),
        );
    }
    /// Callback for `ipc_error`.
    pub fn on_ipc_error(&self, cb: impl Fn(Option<&str>, &RouteError) + Send + Sync + 'static) {
        self.add_cb(
            EV_ERR,
            Arc::new(move |e| {
                if let IpcEvent::Error { endpoint, error } = e {
                    cb(endpoint.as_deref(), error)
                }
            }),
        );
    }

    /// A stream of all events (lagging receivers lose old events).
    pub fn subscribe(&self) -> broadcast::Receiver<IpcEvent> {
        self.inner.events.subscribe()
    }

    /// Bind both listeners, start serving, then fire `ipc_ready`.
    pub async fn start(&self) -> Result<(), ServerError> {
        if self
            .inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Err(ServerError::AlreadyRunning);
        }
        let cfg = &self.inner.cfg;
        let bind = |port: u16| {
            let addr = format!("{}:{}", cfg.host, port);
            async move {
                TcpListener::bind(&addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })
            }
        };
        let main = bind(cfg.port).await?;
        let mc = if cfg.multicast {
            Some(bind(cfg.multicast_port).await?)
        } else {
            None
        };
        let local = main.local_addr().map_err(|source| ServerError::Bind {
            addr: cfg.host.clone(),
            source,
        })?;
        let multicast = mc.as_ref().and_then(|l| l.local_addr().ok());
        *self
            .inner
            .main_port
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = local.port();
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(self.inner.clone(), main, rx.clone()));
        if let Some(l) = mc {
            tasks.spawn(accept_loop(self.inner.clone(), l, rx));
        }
        *self.inner.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
            shutdown,
            tasks,
            local,
            multicast,
        });
        tracing::info!(%local, ?multicast, "ipc server listening");
        self.inner.emit(IpcEvent::Ready);
        Ok(())
    }

    /// The bound main address (after `start`).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| r.local)
    }

    /// The bound multicast address (after `start`, when enabled).
    pub fn multicast_addr(&self) -> Option<SocketAddr> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|r| r.multicast)
    }

    /// Stop listening and close every connection; waits for the tasks to end.
    pub async fn terminate_server(&self) {
        let running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut r) = running {
            let _ = r.shutdown.send(true);
            while r.tasks.join_next().await.is_some() {}
        }
    }
}

impl Inner {
    fn emit(&self, ev: IpcEvent) {
        let kind = match &ev {
            IpcEvent::RawRequest(_) => EV_RAW,
            IpcEvent::RequestCompletion(_) => EV_DONE,
            IpcEvent::Ready => EV_READY,
            IpcEvent::Error { .. } => EV_ERR,
        };
        let cbs: Vec<Callback> = self
            .callbacks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, c)| c.clone())
            .collect();
        for cb in cbs {
            cb(&ev);
        }
        let _ = self.events.send(ev);
    }

    /// Whether requests need a credential (a shared secret or a [`Credential`] check).
    fn guarded(&self) -> bool {
        self.digest.is_some() || self.cfg.credential.is_some()
    }

    /// The shared secret in constant time (SHA-256 digests compared with `subtle`), else the
    /// other credential's check.
    fn check_secret(&self, given: &str) -> bool {
        let shared = self.digest.as_ref().is_some_and(|d| {
            let g: [u8; 32] = Sha256::digest(given.as_bytes()).into();
            bool::from(g.ct_eq(d))
        });
        shared || self.cfg.credential.as_ref().is_some_and(|c| (c.0)(given))
    }

    fn auth(&self, a: &Authorization) -> Result<(), ErrorReply> {
        if !self.guarded() {
            return Ok(());
        }
        match a {
            Authorization::Missing => Err(ErrorReply::Unauthorized),
            Authorization::Present(s) if self.check_secret(s) => Ok(()),
            Authorization::Present(_) => Err(ErrorReply::Forbidden),
        }
    }

    fn handler(&self, name: &str) -> Option<Handler> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Run a route: global semaphore, timeout, panics caught (spawned task).
    async fn run_route(&self, h: Handler, req: Request) -> Result<Value, RouteError> {
        let Ok(_permit) = self.semaphore.clone().acquire_owned().await else {
            return Err(RouteError::with_kind("Shutdown", "server shutting down"));
        };
        let mut task = tokio::spawn(h(req));
        match tokio::time::timeout(self.cfg.route_timeout, &mut task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(RouteError::with_kind("Panic", e.to_string())),
            Err(_) => {
                // Stopped, not detached: the in-flight cap holds only if a timed-out route
                // stops running when its permit is returned.
                task.abort();
                Err(RouteError::with_kind("Timeout", "route timed out"))
            }
        }
    }

    /// Parse one text frame and check its authorization: the reply for a frame that is invalid
    /// or fails authentication (such a frame does not authenticate the socket), or the frame.
    fn check(&self, text: &str) -> Result<Frame, String> {
        let frame = wire::parse_frame(text).map_err(|e| e.encode())?;
        match &frame {
            Frame::Handshake { authorization } => self.auth(authorization).map_err(|e| e.encode()),
            Frame::Request(r) => self.auth(&r.authorization).map_err(|e| e.encode()),
            Frame::BetterIpc(b) => {
                if self.guarded() && !b.secret.as_deref().is_some_and(|s| self.check_secret(s)) {
                    Err(BetterReply::Unauthorized.encode())
                } else {
                    Ok(())
                }
            }
        }?;
        Ok(frame)
    }

    /// Serve one authorized frame; returns the reply text and an optional completion event.
    async fn serve(&self, frame: Frame) -> (String, Option<IpcEvent>) {
        match frame {
            Frame::Handshake { .. } => (
                wire::encode_handshake_reply(
                    *self.main_port.lock().unwrap_or_else(|e| e.into_inner()),
                ),
                None,
            ),
            Frame::Request(r) => {
                let endpoint = r.endpoint.clone();
                let req = Request::new(endpoint.clone().unwrap_or_default(), r.data, r.headers);
                self.emit(IpcEvent::RawRequest(req.clone()));
                let Some(ep) = endpoint else {
                    return (ErrorReply::NoEndpoint.encode(), None);
                };
                let Some(h) = self.handler(wire::route_name(&ep)) else {
                    return (ErrorReply::UnknownEndpoint.encode(), None);
                };
                let result = self.run_route(h, req.clone()).await;
                match result
                    .map(|v| wire::encode_success(&v))
                    .and_then(|t| self.fits(t))
                {
                    Ok(reply) => (reply, Some(IpcEvent::RequestCompletion(req))),
                    Err(error) => {
                        tracing::debug!(endpoint = %ep, kind = %error.kind, "route failed");
                        let mut reply = ErrorReply::RouteFailed(error.kind.clone()).encode();
                        if reply.len() > self.cfg.max_reply {
                            reply = ErrorReply::RouteFailed("ReplyTooLarge".into()).encode();
                        }
                        self.emit(IpcEvent::Error {
                            endpoint: Some(ep),
                            error,
                        });
                        (reply, None)
                    }
                }
            }
            Frame::BetterIpc(b) => {
                let ep = b.endpoint.clone().unwrap_or_default();
                let req = Request::new(ep.clone(), b.kwargs, Map::new());
                self.emit(IpcEvent::RawRequest(req.clone()));
                let Some(h) = self.handler(wire::route_name(&ep)) else {
                    self.emit(IpcEvent::Error {
                        endpoint: None,
                        error: RouteError::with_kind("UnknownEndpoint", ep),
                    });
                    return (BetterReply::UnknownEndpoint.encode(), None);
                };
                let result = self.run_route(h, req.clone()).await;
                match result
                    .map(|v| BetterReply::Success(v).encode())
                    .and_then(|t| self.fits(t))
                {
                    Ok(reply) => (reply, Some(IpcEvent::RequestCompletion(req))),
                    Err(error) => {
                        let mut reply = BetterReply::RouteFailed(error.to_string()).encode();
                        if reply.len() > self.cfg.max_reply {
                            reply = BetterReply::RouteFailed(format!(
                                "ReplyTooLarge: error details of {} bytes",
                                reply.len()
                            ))
                            .encode();
                        }
                        self.emit(IpcEvent::Error {
                            endpoint: Some(ep),
                            error,
                        });
                        (reply, None)
                    }
                }
            }
        }
    }

    /// A reply over `max_reply` becomes a route error (kind `ReplyTooLarge`).
    fn fits(&self, reply: String) -> Result<String, RouteError> {
        if reply.len() <= self.cfg.max_reply {
            return Ok(reply);
        }
        bump(&self.counters.replies_too_large);
        Err(RouteError::with_kind(
            "ReplyTooLarge",
            format!(
                "reply of {} bytes is over the {} byte limit",
                reply.len(),
                self.cfg.max_reply
            ),
        ))
    }
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            acc = listener.accept() => match acc {
                Ok((stream, peer)) => {
                    let Some((slot, evicted)) = PeerSlot::admit(&inner, peer.ip()) else {
                        tracing::debug!(%peer, "peer has its maximum of authenticated connections; closing");
                        drop(stream);
                        continue;
                    };
                    let (inner, shutdown) = (inner.clone(), shutdown.clone());
                    conns.spawn(connection(inner, stream, peer, slot, evicted, shutdown));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Why a connection ends.
enum End {
    /// The peer closed, or the socket failed: nothing more to say.
    Gone,
    /// Close with this code and reason (`docs/ipc.md`, "Close codes").
    Close(u16, &'static str),
    /// A frame or message over `max_frame`: a 400 reply, then close 1009.
    TooBig,
}

/// How the unauthenticated phase ends.
enum PreAuth {
    Authorized(Frame),
    End(End),
    Timeout,
    Evicted,
    Shutdown,
}

async fn connection(
    inner: Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    mut slot: PeerSlot,
    mut evicted: oneshot::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    // One deadline from accept to the first authorized frame, the HTTP upgrade included.
    let deadline = Instant::now() + inner.cfg.pre_auth_timeout;
    let _ = stream.set_nodelay(true);
    #[allow(clippy::result_large_err)]
    let cb =
        |_req: &tokio_tungstenite::tungstenite::handshake::server::Request,
         resp: tokio_tungstenite::tungstenite::handshake::server::Response| Ok(resp);
    let upgrade = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(inner.cfg.ws_config())),
    );
    let ws = tokio::select! {
        r = upgrade => match r {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "websocket handshake failed");
                return;
            }
            Err(_) => {
                bump(&inner.counters.pre_auth_timeouts);
                tracing::debug!(%peer, "websocket upgrade not done before the authentication deadline");
                return;
            }
        },
        _ = &mut evicted => return,
        _ = shutdown.changed() => return,
    };
    let mut conn = Conn {
        pings: RateLimiter::direct(inner.cfg.ping_quota()),
        inner,
        ws,
        peer,
    };

    let pre = tokio::select! {
        r = tokio::time::timeout_at(deadline, conn.next_frame()) => match r {
            Ok(Ok(frame)) => PreAuth::Authorized(frame),
            Ok(Err(end)) => PreAuth::End(end),
            Err(_) => PreAuth::Timeout,
        },
        _ = &mut evicted => PreAuth::Evicted,
        _ = shutdown.changed() => PreAuth::Shutdown,
    };
    let first = match pre {
        PreAuth::Authorized(frame) => frame,
        PreAuth::End(end) => return conn.end(end).await,
        PreAuth::Timeout => {
            bump(&conn.inner.counters.pre_auth_timeouts);
            return conn.close(1008, "authentication timeout").await;
        }
        PreAuth::Evicted => {
            return conn
                .close(1013, "too many unauthenticated connections")
                .await
        }
        PreAuth::Shutdown => return conn.close(1001, "server shutting down").await,
    };
    drop(evicted);
    if !slot.promote() {
        bump(&conn.inner.counters.auth_pool_full);
        return conn.close(1013, "too many connections").await;
    }

    if let Err(end) = conn.serve(first).await {
        return conn.end(end).await;
    }
    loop {
        let next = tokio::select! {
            _ = shutdown.changed() => None,
            r = conn.next_frame() => Some(r),
        };
        let result = match next {
            None => return conn.close(1001, "server shutting down").await,
            Some(Ok(frame)) => conn.serve(frame).await,
            Some(Err(end)) => Err(end),
        };
        if let Err(end) = result {
            return conn.end(end).await;
        }
    }
}

/// One upgraded connection.
struct Conn {
    inner: Arc<Inner>,
    ws: WebSocketStream<TcpStream>,
    peer: SocketAddr,
    pings: DefaultDirectRateLimiter,
}

impl Conn {
    /// The next text message. Answers binary messages with 400 and counts pings against the
    /// budget (tungstenite queues each pong itself).
    async fn next_text(&mut self) -> Result<Utf8Bytes, End> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Binary(_))) => {
                    self.send(ErrorReply::InvalidRequest.encode()).await?;
                }
                Some(Ok(Message::Ping(_))) => {
                    if self.pings.check().is_err() {
                        bump(&self.inner.counters.ping_floods);
                        return Err(End::Close(1008, "too many pings"));
                    }
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Err(End::Gone),
                Some(Err(e)) => return Err(self.read_error(e)),
            }
        }
    }

    /// The next frame that passes authorization; frames that do not are answered here.
    async fn next_frame(&mut self) -> Result<Frame, End> {
        loop {
            let text = self.next_text().await?;
            match self.inner.check(text.as_str()) {
                Ok(frame) => return Ok(frame),
                Err(reply) => self.send(reply).await?,
            }
        }
    }

    async fn serve(&mut self, frame: Frame) -> Result<(), End> {
        let (reply, done) = self.inner.serve(frame).await;
        self.send(reply).await?;
        if let Some(ev) = done {
            self.inner.emit(ev);
        }
        Ok(())
    }

    async fn send(&mut self, text: String) -> Result<(), End> {
        self.ws.send(Message::text(text)).await.map_err(|e| {
            tracing::debug!(peer = %self.peer, error = %e, "websocket write failed");
            End::Gone
        })
    }

    /// Map a read error to the close it deserves (`docs/ipc.md`, "Close codes").
    fn read_error(&self, e: WsError) -> End {
        tracing::debug!(peer = %self.peer, error = %e, "websocket read error");
        let c = &self.inner.counters;
        match e {
            WsError::Utf8(_) => {
                bump(&c.invalid_utf8);
                End::Close(1007, "invalid UTF-8")
            }
            WsError::Capacity(_) => {
                bump(&c.too_big);
                End::TooBig
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
            WsError::Protocol(_) => {
                bump(&c.protocol_errors);
                End::Close(1002, "protocol error")
            }
            _ => End::Gone,
        }
    }

    async fn end(mut self, end: End) {
        match end {
            End::Gone => {
                // Flush the reply to a peer's close frame, if one is queued.
                let _ =
                    tokio::time::timeout(self.inner.cfg.close_timeout, self.ws.close(None)).await;
            }
            End::Close(code, reason) => self.close(code, reason).await,
            End::TooBig => {
                let _ = tokio::time::timeout(
                    self.inner.cfg.close_timeout,
                    self.ws
                        .send(Message::text(ErrorReply::InvalidRequest.encode())),
                )
                .await;
                self.close(1009, "message too big").await;
            }
        }
    }

    /// Send a close frame, then read and discard until the peer closes, all within
    /// `close_timeout`. Dropping a socket with unread input would make the kernel send a
    /// reset, and the peer could lose the close frame and its code.
    async fn close(mut self, code: u16, reason: &'static str) {
        tracing::debug!(peer = %self.peer, code, reason, "closing ipc connection");
        let frame = CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(self.inner.cfg.close_timeout, async {
            if self.ws.send(Message::Close(Some(frame))).await.is_err() {
                return;
            }
            let tcp = self.ws.get_mut();
            let _ = tcp.shutdown().await;
            let mut buf = [0u8; 4096];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn server(pre: usize, authed: usize) -> Server {
        Server::builder()
            .host("127.0.0.1")
            .max_pre_auth_per_peer(pre)
            .max_connections_per_peer(authed)
            .build()
            .unwrap()
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn a_full_pre_auth_pool_pushes_out_its_oldest_socket_per_peer() {
        let s = server(2, 8);
        let (_a1, mut r1) = PeerSlot::admit(&s.inner, A).unwrap();
        let (_a2, mut r2) = PeerSlot::admit(&s.inner, A).unwrap();
        let (_b1, mut rb) = PeerSlot::admit(&s.inner, B).unwrap();
        assert!(r1.try_recv().is_err());
        let (_a3, mut r3) = PeerSlot::admit(&s.inner, A).unwrap();
        assert_eq!(r1.try_recv(), Ok(()));
        assert!(r2.try_recv().is_err() && r3.try_recv().is_err() && rb.try_recv().is_err());
        let st = s.stats();
        assert_eq!((st.pre_auth, st.pre_auth_evicted), (3, 1));
    }

    #[test]
    fn promoted_sockets_leave_the_pre_auth_pool_and_fill_the_authenticated_one() {
        let s = server(1, 2);
        let (mut a1, _r1) = PeerSlot::admit(&s.inner, A).unwrap();
        assert!(a1.promote());
        let (mut a2, _r2) = PeerSlot::admit(&s.inner, A).unwrap();
        // Not pushed out: a1 is no longer in the pre-auth pool.
        let (mut a3, _r3) = PeerSlot::admit(&s.inner, A).unwrap();
        assert_eq!(s.stats().pre_auth_evicted, 1);
        assert!(a3.promote());
        // The authenticated pool is full: a2 cannot join it, and new sockets are refused.
        assert!(!a2.promote());
        assert!(PeerSlot::admit(&s.inner, A).is_none());
        assert!(PeerSlot::admit(&s.inner, B).is_some());
        let st = s.stats();
        assert_eq!((st.authenticated, st.refused_at_accept), (2, 1));
        drop((a1, a2, a3));
        let st = s.stats();
        assert_eq!((st.authenticated, st.pre_auth), (0, 0));
        assert!(s
            .inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty());
    }

    #[test]
    fn the_write_buffer_cap_stays_above_the_write_buffer() {
        for reply in [0, 1, 1 << 10, 200 << 10, 16 << 20] {
            let b = Server::builder().max_reply(reply);
            let c = b.ws_config();
            assert!(c.max_write_buffer_size > c.write_buffer_size);
            assert_eq!(c.max_write_buffer_size, b.max_reply + WRITE_SLACK);
        }
    }
}
