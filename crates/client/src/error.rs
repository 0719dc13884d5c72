//! The client's error type.

use nimbus_proto::cloud::{NameError, ValueError};
use thiserror::Error;

/// Everything that can go wrong with a [`crate::CloudConnection`].
#[derive(Debug, Error)]
pub enum CloudError {
    /// The `cloud_host` is not a usable WebSocket URL.
    #[error("bad cloud host {host:?}: {reason}")]
    BadUrl {
        /// What was given.
        host: String,
        /// Why it is refused.
        reason: String,
    },
    /// The variable name is refused (see the protocol's name rules).
    #[error("invalid variable name: {0}")]
    InvalidName(#[from] NameError),
    /// The value is refused by the connection's profile (e.g. Scratch: digits only, ≤ 256).
    #[error("invalid value: {0}")]
    InvalidValue(#[from] ValueError),
    /// An event key that does not exist (see [`crate::EventKind`]).
    #[error("unknown event {0:?} (handshake, connect, outgoing, change, set, create, delete, disconnect, reconnect)")]
    UnknownEvent(String),
    /// Not connected right now (before `connect`, or while reconnecting).
    #[error("not connected")]
    NotConnected,
    /// The connection was closed by [`crate::CloudConnection::close`].
    #[error("connection closed")]
    Closed,
    /// The server closed the connection with a code after which reconnecting is pointless
    /// (4002 username, 4004 project unavailable, 4005 security).
    #[error("server refused the connection with {code}: {reason}")]
    Fatal {
        /// The close code.
        code: u16,
        /// The close reason sent by the server.
        reason: String,
    },
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
}

impl From<tokio_tungstenite::tungstenite::Error> for CloudError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        CloudError::WebSocket(Box::new(e))
    }
}
