//! Document (Yjs) rooms of `nimbus serve`, at `/doc/{room}` (see `docs/protocols/doc.md`).
//!
//! - [`access`]: room-name rules and per-room tokens;
//! - [`rooms`]: the rooms, each a `nimbus_doc::Room` persisted in the store;
//! - `socket`: an axum WebSocket as a `nimbus_doc::Channel` (keepalive, shutdown).

pub mod access;
pub mod rooms;
mod socket;

pub use access::{validate_room_name, Access, AccessRules, Denied, TokenRule};
pub use rooms::{DocRooms, JoinError};
pub(crate) use socket::SocketChannel;
