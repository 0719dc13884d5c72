//! The IPC route server.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nimbus_proto::ipc::{self as wire, Authorization, BetterReply, ErrorReply, Frame};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

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
/// 1 MiB frames, 30 s route timeout, 256 routes in flight.
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
}

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
    /// Maximum open connections per peer IP address (default 64); extra ones are closed at once.
    pub fn max_connections_per_peer(mut self, n: usize) -> Self {
        self.max_conns_per_peer = n.max(1);
        self
    }
    /// Build the server (fails on a non-loopback host without a secret).
    pub fn build(self) -> Result<Server, ServerError> {
        if self.secret_key.is_none() && !is_loopback(&self.host) {
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
    peers: Mutex<HashMap<std::net::IpAddr, usize>>,
    running: Mutex<Option<Running>>,
}

/// Counts a connection against its peer's limit while alive.
struct PeerSlot {
    inner: Arc<Inner>,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    fn acquire(inner: &Arc<Inner>, ip: std::net::IpAddr) -> Option<Self> {
        let mut peers = inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let n = peers.entry(ip).or_insert(0);
        if *n >= inner.cfg.max_conns_per_peer {
            return None;
        }
        *n += 1;
        Some(Self {
            inner: inner.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
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

    /// Constant time: compare SHA-256 digests with `subtle`.
    fn check_secret(&self, given: &str) -> bool {
        match &self.digest {
            None => true,
            Some(d) => {
                let g: [u8; 32] = Sha256::digest(given.as_bytes()).into();
                bool::from(g.ct_eq(d))
            }
        }
    }

    fn auth(&self, a: &Authorization) -> Result<(), ErrorReply> {
        if self.digest.is_none() {
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
        let task = tokio::spawn(h(req));
        match tokio::time::timeout(self.cfg.route_timeout, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(RouteError::with_kind("Panic", e.to_string())),
            Err(_) => Err(RouteError::with_kind("Timeout", "route timed out")),
        }
    }

    /// Process one text frame; returns the reply text and an optional completion event.
    async fn handle(&self, text: &str) -> (String, Option<IpcEvent>) {
        let frame = match wire::parse_frame(text) {
            Ok(f) => f,
            Err(e) => return (e.encode(), None),
        };
        match frame {
            Frame::Handshake { authorization } => match self.auth(&authorization) {
                Ok(()) => (
                    wire::encode_handshake_reply(
                        *self.main_port.lock().unwrap_or_else(|e| e.into_inner()),
                    ),
                    None,
                ),
                Err(e) => (e.encode(), None),
            },
            Frame::Request(r) => {
                if let Err(e) = self.auth(&r.authorization) {
                    return (e.encode(), None);
                }
                let endpoint = r.endpoint.clone();
                let req = Request::new(endpoint.clone().unwrap_or_default(), r.data, r.headers);
                self.emit(IpcEvent::RawRequest(req.clone()));
                let Some(ep) = endpoint else {
                    return (ErrorReply::NoEndpoint.encode(), None);
                };
                let Some(h) = self.handler(wire::route_name(&ep)) else {
                    return (ErrorReply::UnknownEndpoint.encode(), None);
                };
                match self.run_route(h, req.clone()).await {
                    Ok(v) => (
                        wire::encode_success(&v),
                        Some(IpcEvent::RequestCompletion(req)),
                    ),
                    Err(error) => {
                        tracing::debug!(endpoint = %ep, kind = %error.kind, "route failed");
                        let reply = ErrorReply::RouteFailed(error.kind.clone()).encode();
                        self.emit(IpcEvent::Error {
                            endpoint: Some(ep),
                            error,
                        });
                        (reply, None)
                    }
                }
            }
            Frame::BetterIpc(b) => {
                if self.digest.is_some()
                    && !b.secret.as_deref().is_some_and(|s| self.check_secret(s))
                {
                    return (BetterReply::Unauthorized.encode(), None);
                }
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
                match self.run_route(h, req.clone()).await {
                    Ok(v) => (
                        BetterReply::Success(v).encode(),
                        Some(IpcEvent::RequestCompletion(req)),
                    ),
                    Err(error) => {
                        let reply = BetterReply::RouteFailed(error.to_string()).encode();
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
                    let Some(slot) = PeerSlot::acquire(&inner, peer.ip()) else {
                        tracing::warn!(%peer, "too many connections from this peer; closing");
                        drop(stream);
                        continue;
                    };
                    let (inner, shutdown) = (inner.clone(), shutdown.clone());
                    conns.spawn(async move {
                        connection(inner, stream, peer, shutdown).await;
                        drop(slot);
                    });
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

async fn connection(
    inner: Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(inner.cfg.max_frame))
        .max_frame_size(Some(inner.cfg.max_frame));
    #[allow(clippy::result_large_err)]
    let cb =
        |_req: &tokio_tungstenite::tungstenite::handshake::server::Request,
         resp: tokio_tungstenite::tungstenite::handshake::server::Response| Ok(resp);
    let ws = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(cfg)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => return,
    };
    let (mut tx, mut rx) = ws.split();
    loop {
        let msg = tokio::select! {
            _ = shutdown.changed() => break,
            m = rx.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                if tx
                    .send(Message::text(ErrorReply::InvalidRequest.encode()))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue, // ping/pong handled by tungstenite
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "websocket read error");
                if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                    let _ = tx
                        .send(Message::text(ErrorReply::InvalidRequest.encode()))
                        .await;
                }
                break;
            }
        };
        let (reply, done) = inner.handle(text.as_str()).await;
        if tx.send(Message::text(reply)).await.is_err() {
            break;
        }
        if let Some(ev) = done {
            inner.emit(ev);
        }
    }
    let _ = tx.close().await;
}
