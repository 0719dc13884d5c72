//! The in-process wire: a [`Listener`] a server binds, [`Connector`]s clients connect with,
//! and [`MemoryChannel`], one end of a bounded in-memory connection.
//!
//! A `Listener` can be bound by one server at a time; while none is bound,
//! [`Connector::connect`] fails like a refused TCP connection (so a client's reconnect loop
//! can be tested against a server restart). Room ids over this wire are `"/" + id`, as over
//! the WebSocket wire.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::channel::{Channel, ChannelError};

/// Frames in flight per direction of a memory connection.
const CAPACITY: usize = 256;

#[derive(Debug)]
enum Frame {
    Binary(Bytes),
    /// A text frame (its content does not matter: it is a protocol error).
    Text,
    Close(u16, String),
}

/// One end of an in-memory connection.
#[derive(Debug)]
pub struct MemoryChannel {
    tx: Option<mpsc::Sender<Frame>>,
    rx: mpsc::Receiver<Frame>,
    closed: bool,
}

/// A connected pair of [`MemoryChannel`]s.
pub fn pair() -> (MemoryChannel, MemoryChannel) {
    let (a_tx, a_rx) = mpsc::channel(CAPACITY);
    let (b_tx, b_rx) = mpsc::channel(CAPACITY);
    (
        MemoryChannel {
            tx: Some(a_tx),
            rx: b_rx,
            closed: false,
        },
        MemoryChannel {
            tx: Some(b_tx),
            rx: a_rx,
            closed: false,
        },
    )
}

impl MemoryChannel {
    /// Send a text frame (a protocol error for y-sync peers; for tests).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), ChannelError> {
        let _ = text.into();
        self.push(Frame::Text).await
    }

    async fn push(&mut self, frame: Frame) -> Result<(), ChannelError> {
        match &self.tx {
            Some(tx) => tx
                .send(frame)
                .await
                .map_err(|_| ChannelError::Transport("memory peer gone".into())),
            None => Err(ChannelError::Transport("channel closed".into())),
        }
    }
}

impl Channel for MemoryChannel {
    async fn send(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        self.push(Frame::Binary(frame)).await
    }

    async fn recv(&mut self) -> Option<Result<Bytes, ChannelError>> {
        if self.closed {
            return None;
        }
        match self.rx.recv().await {
            Some(Frame::Binary(b)) => Some(Ok(b)),
            Some(Frame::Text) => Some(Err(ChannelError::TextFrame)),
            Some(Frame::Close(code, reason)) => {
                self.closed = true;
                Some(Err(ChannelError::Closed { code, reason }))
            }
            None => {
                self.closed = true;
                None
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Frame::Close(code, reason.to_owned())).await;
        }
    }
}

/// A connection arriving at a bound [`Listener`].
#[derive(Debug)]
pub struct Incoming {
    /// The requested path (`"/" + id`), as a WebSocket request target would be.
    pub path: String,
    /// The token the client passed ([`ConnectOptions::token`](crate::ConnectOptions)).
    pub token: Option<String>,
    /// The server's end of the connection.
    pub channel: MemoryChannel,
}

type Slot = Arc<Mutex<Option<mpsc::UnboundedSender<Incoming>>>>;

fn lock(slot: &Slot) -> MutexGuard<'_, Option<mpsc::UnboundedSender<Incoming>>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server side of the memory wire (cheap to clone; every clone is the same address).
#[derive(Debug, Clone, Default)]
pub struct Listener {
    slot: Slot,
}

impl Listener {
    /// A new, unbound address.
    pub fn new() -> Listener {
        Listener::default()
    }

    /// A connector to this address.
    pub fn connector(&self) -> Connector {
        Connector {
            slot: self.slot.clone(),
        }
    }

    /// Start accepting; `None` if a server is bound already. Connections are refused again
    /// once the returned [`Acceptor`] is dropped.
    pub fn bind(&self) -> Option<Acceptor> {
        let mut slot = lock(&self.slot);
        if slot.as_ref().is_some_and(|tx| !tx.is_closed()) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        *slot = Some(tx);
        Some(Acceptor {
            rx,
            slot: self.slot.clone(),
        })
    }
}

/// A bound [`Listener`]: yields incoming connections.
#[derive(Debug)]
pub struct Acceptor {
    rx: mpsc::UnboundedReceiver<Incoming>,
    slot: Slot,
}

impl Acceptor {
    /// The next connection.
    pub async fn accept(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        lock(&self.slot).take();
    }
}

/// The client side of the memory wire.
#[derive(Debug, Clone)]
pub struct Connector {
    slot: Slot,
}

impl Connector {
    /// Connect to the room `"/" + id` (`token` is handed to the server as is).
    pub fn connect(&self, id: &str, token: Option<&str>) -> Result<MemoryChannel, ChannelError> {
        let slot = lock(&self.slot);
        let Some(tx) = slot.as_ref() else {
            return Err(ChannelError::Transport(
                "connection refused (memory listener not bound)".into(),
            ));
        };
        let (client, server) = pair();
        let path = format!("/{id}");
        tx.send(Incoming {
            path,
            token: token.map(str::to_owned),
            channel: server,
        })
        .map_err(|_| {
            ChannelError::Transport("connection refused (memory server stopped)".into())
        })?;
        Ok(client)
    }
}
