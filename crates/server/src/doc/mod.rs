//! Document (Yjs) rooms at `/doc/{room}` (see `docs/protocols/doc.md`): the rooms and
//! their rules are [`nimbus_core::doc`]; this module adds the socket.
//!
//! - `socket`: an axum WebSocket as a `nimbus_doc::Channel` (keepalive, shutdown).

pub use nimbus_core::doc::*;

mod socket;

pub(crate) use socket::SocketChannel;
