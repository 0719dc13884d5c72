//! [`bind`]: a standalone document server on a wire (the seed's `bind`), returning a
//! [`ServerGuard`] that stops everything when dropped (Rust's `async with`).
//!
//! `nimbus serve` mounts rooms in its own axum router instead (it implements [`Channel`]
//! for axum's socket and calls [`RoomManager::serve`]); this server is for tests, examples
//! and embedding.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::Channel;
use crate::manager::RoomManager;
use crate::room::{Room, ServeOptions};
use crate::wire::memory;
use crate::wire::room_id_from_target;
use crate::wire::websocket::{self, WsChannel};

/// Where a server listens.
#[derive(Debug, Clone)]
pub enum ServerWire {
    /// WebSocket on a TCP address (port 0 picks a free port; see
    /// [`ServerGuard::local_addr`]). The room id is the percent-decoded request path
    /// without the query string, leading `/` included (`ws://host/ROOM` → `"/ROOM"`).
    WebSocket {
        /// The address to bind.
        addr: SocketAddr,
    },
    /// The in-process wire; the room id is `"/" + id` of the connecting client.
    Memory(memory::Listener),
}

/// Options of [`bind`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Options for every client connection.
    pub serve: ServeOptions,
    /// The WebSocket keepalive ping period (`None`: no pings). Default 30 s.
    pub ping_interval: Option<Duration>,
    /// How long a WebSocket handshake may take. Default 10 s.
    pub handshake_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            serve: ServeOptions::default(),
            ping_interval: Some(websocket::PING_INTERVAL),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why [`bind`] failed.
#[derive(Debug, Error)]
pub enum BindError {
    /// The TCP address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The memory listener is bound by another server already.
    #[error("memory listener already bound")]
    MemoryInUse,
}

/// A running server. Dropping it stops accepting and closes every room (without the
/// graceful flush: call [`ServerGuard::shutdown`] for that).
#[derive(Debug)]
pub struct ServerGuard {
    manager: RoomManager,
    local_addr: Option<SocketAddr>,
    /// Stops the accept loop.
    cancel: CancellationToken,
    /// Ends every connection task at once.
    cancel_conns: CancellationToken,
    tasks: TaskTracker,
}

impl ServerGuard {
    /// The bound TCP address (`None` on the memory wire).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The server's rooms.
    pub fn manager(&self) -> &RoomManager {
        &self.manager
    }

    /// Stop accepting, unload every room (flush, `emptied` hook, close: clients get 1001),
    /// and wait for the connection tasks to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.manager.close_all().await;
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        self.cancel_conns.cancel();
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.cancel_conns.cancel();
        for id in self.manager.room_ids() {
            if let Some(room) = self.manager.get(&id) {
                room.close();
            }
        }
    }
}

/// Start a server on `wire` whose rooms are made by `factory` (e.g. `Room::new`, or a
/// closure building [`Room::with_hooks`]).
pub async fn bind(
    wire: ServerWire,
    factory: impl Fn(&str) -> Room + Send + Sync + 'static,
    options: ServerOptions,
) -> Result<ServerGuard, BindError> {
    let manager = RoomManager::new(factory);
    let cancel = CancellationToken::new();
    let cancel_conns = CancellationToken::new();
    let tasks = TaskTracker::new();
    let local_addr = match wire {
        ServerWire::WebSocket { addr } => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| BindError::Io { addr, source })?;
            let local = listener.local_addr().ok();
            tasks.spawn(accept_tcp(
                listener,
                manager.clone(),
                options,
                cancel.clone(),
                cancel_conns.clone(),
                tasks.clone(),
            ));
            local
        }
        ServerWire::Memory(listener) => {
            let acceptor = listener.bind().ok_or(BindError::MemoryInUse)?;
            tasks.spawn(accept_memory(
                acceptor,
                manager.clone(),
                options,
                cancel.clone(),
                cancel_conns.clone(),
                tasks.clone(),
            ));
            None
        }
    };
    Ok(ServerGuard {
        manager,
        local_addr,
        cancel,
        cancel_conns,
        tasks,
    })
}

async fn accept_memory(
    mut acceptor: memory::Acceptor,
    manager: RoomManager,
    options: ServerOptions,
    cancel: CancellationToken,
    cancel_conns: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => return,
            i = acceptor.accept() => match i { Some(i) => i, None => return },
        };
        let manager = manager.clone();
        let opts = options.serve.clone();
        let cancel = cancel_conns.clone();
        tasks.spawn(async move {
            let id = room_id_from_target(&incoming.path);
            serve_until(&manager, &id, incoming.channel, opts, &cancel).await;
        });
    }
}

async fn accept_tcp(
    listener: TcpListener,
    manager: RoomManager,
    options: ServerOptions,
    cancel: CancellationToken,
    cancel_conns: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let manager = manager.clone();
        let options = options.clone();
        let cancel = cancel_conns.clone();
        tasks.spawn(async move {
            let handshake =
                tokio::time::timeout(options.handshake_timeout, handshake(stream, &options));
            let (ws, id) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = handshake => match r {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "websocket handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "websocket handshake timed out");
                        return;
                    }
                },
            };
            let channel = WsChannel::new(ws, options.ping_interval);
            serve_until(&manager, &id, channel, options.serve, &cancel).await;
        });
    }
}

async fn handshake(
    stream: TcpStream,
    options: &ServerOptions,
) -> Result<
    (tokio_tungstenite::WebSocketStream<TcpStream>, String),
    tokio_tungstenite::tungstenite::Error,
> {
    let _ = stream.set_nodelay(true);
    let mut target = String::new();
    #[allow(clippy::result_large_err)] // the signature is tungstenite's
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        target = req.uri().to_string();
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(websocket::config(options.serve.max_message_bytes)),
    )
    .await?;
    let path = target
        .parse::<tokio_tungstenite::tungstenite::http::Uri>()
        .map(|u| u.path().to_owned())
        .unwrap_or(target);
    Ok((ws, room_id_from_target(&path)))
}

async fn serve_until<C: Channel>(
    manager: &RoomManager,
    id: &str,
    channel: C,
    opts: ServeOptions,
    cancel: &CancellationToken,
) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        r = manager.serve(id, channel, opts) => {
            if let Err(e) = r {
                tracing::debug!(room = %id, error = %e, "client ended with an error");
            }
        }
    }
}
