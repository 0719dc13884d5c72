//! Shared test helpers: a server on either wire, clients, bounded waits.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use nimbus_doc::wire::memory::{self, MemoryChannel};
use nimbus_doc::yrs::Doc;
use nimbus_doc::{
    bind, connect, Backoff, Client, ClientWire, ConnectOptions, Room, ServerGuard, ServerOptions,
    ServerWire,
};

/// The wires the room tests run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    WebSocket,
}

pub const KINDS: [Kind; 2] = [Kind::Memory, Kind::WebSocket];

/// Where a test server listens, re-bindable (for restarts).
#[derive(Clone)]
pub enum Addr {
    Memory(memory::Listener),
    WebSocket(SocketAddr),
}

impl Addr {
    pub fn new(kind: Kind) -> Addr {
        match kind {
            Kind::Memory => Addr::Memory(memory::Listener::new()),
            Kind::WebSocket => Addr::WebSocket("127.0.0.1:0".parse().unwrap()),
        }
    }

    pub fn server_wire(&self) -> ServerWire {
        match self {
            Addr::Memory(l) => ServerWire::Memory(l.clone()),
            Addr::WebSocket(a) => ServerWire::WebSocket { addr: *a },
        }
    }

    pub fn client_wire(&self) -> ClientWire {
        match self {
            Addr::Memory(l) => ClientWire::Memory(l.connector()),
            Addr::WebSocket(a) => ClientWire::WebSocket {
                url: format!("ws://{a}"),
            },
        }
    }
}

/// A running server and its (now fixed) address.
pub struct TestServer {
    pub guard: ServerGuard,
    pub addr: Addr,
}

pub async fn serve_with(
    addr: Addr,
    factory: impl Fn(&str) -> Room + Send + Sync + 'static,
    options: ServerOptions,
) -> TestServer {
    let guard = bind(addr.server_wire(), factory, options).await.unwrap();
    let addr = match addr {
        Addr::WebSocket(_) => Addr::WebSocket(guard.local_addr().unwrap()),
        m => m,
    };
    TestServer { guard, addr }
}

pub async fn server(kind: Kind) -> TestServer {
    serve_with(
        Addr::new(kind),
        |id: &str| Room::new(id),
        ServerOptions::default(),
    )
    .await
}

pub fn fast_opts() -> ConnectOptions {
    ConnectOptions {
        backoff: Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
        },
        ..ConnectOptions::default()
    }
}

impl TestServer {
    pub async fn client(&self, id: &str) -> Client {
        self.client_with(id, None, fast_opts()).await
    }

    pub async fn client_with(&self, id: &str, doc: Option<Doc>, opts: ConnectOptions) -> Client {
        connect(self.addr.client_wire(), id, doc, opts)
            .await
            .unwrap()
    }
}

/// A raw y-sync connection to room `"/" + id`, speaking bytes.
#[allow(clippy::large_enum_variant)]
pub enum Raw {
    Memory(MemoryChannel),
    WebSocket(
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ),
}

/// What a raw connection received.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    Frame(Vec<u8>),
    Close(u16, String),
    End,
}

impl Raw {
    pub async fn open(addr: &Addr, id: &str) -> Raw {
        match addr {
            Addr::Memory(l) => Raw::Memory(l.connector().connect(id, None).unwrap()),
            Addr::WebSocket(a) => {
                let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{a}/{id}"))
                    .await
                    .unwrap();
                Raw::WebSocket(ws)
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use futures_util::SinkExt;
        use nimbus_doc::Channel;
        match self {
            Raw::Memory(c) => c.send(bytes.to_vec().into()).await.unwrap(),
            Raw::WebSocket(ws) => ws
                .send(tokio_tungstenite::tungstenite::Message::Binary(
                    bytes.to_vec().into(),
                ))
                .await
                .unwrap(),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        use futures_util::SinkExt;
        match self {
            Raw::Memory(c) => c.send_text(text).await.unwrap(),
            Raw::WebSocket(ws) => ws
                .send(tokio_tungstenite::tungstenite::Message::text(text))
                .await
                .unwrap(),
        }
    }

    pub async fn recv(&mut self) -> Got {
        use futures_util::StreamExt;
        use nimbus_doc::{Channel, ChannelError};
        within(async {
            match self {
                Raw::Memory(c) => match c.recv().await {
                    Some(Ok(b)) => Got::Frame(b.to_vec()),
                    Some(Err(ChannelError::Closed { code, reason })) => Got::Close(code, reason),
                    Some(Err(e)) => panic!("{e}"),
                    None => Got::End,
                },
                Raw::WebSocket(ws) => loop {
                    use tokio_tungstenite::tungstenite::Message as M;
                    match ws.next().await {
                        Some(Ok(M::Binary(b))) => return Got::Frame(b.to_vec()),
                        Some(Ok(M::Close(Some(f)))) => {
                            use futures_util::SinkExt;
                            // Send tungstenite's queued close reply, as a real client does.
                            let _ = ws.flush().await;
                            return Got::Close(f.code.into(), f.reason.to_string());
                        }
                        Some(Ok(M::Close(None))) | None | Some(Err(_)) => return Got::End,
                        Some(Ok(_)) => continue,
                    }
                },
            }
        })
        .await
    }

    /// Receive until a close (or the end), skipping frames.
    pub async fn until_close(&mut self) -> Got {
        loop {
            match self.recv().await {
                Got::Frame(_) => continue,
                other => return other,
            }
        }
    }
}

/// Run `f` with a generous bound (a hang fails the test instead of blocking CI).
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step did not complete within 20 s")
}

/// Wait until `cond` holds (polled every 10 ms, bounded).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "never happened: {what}");
}

pub fn json_of(doc: &Doc) -> serde_json::Value {
    nimbus_doc::doc_to_json(doc)
}
