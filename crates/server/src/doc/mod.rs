//! Document (Yjs) rooms of `nimbus serve`, at `/doc/{room}` (see `docs/protocols/doc.md`).
//!
//! - [`access`]: room-name rules and per-room tokens;
//! - [`rooms`]: the rooms, each a `nimbus_doc::Room` persisted in the store (or, with
//!   `--redis`, in Redis and shared with the other nodes);
//! - `replica`: how far a node's copy of a room follows the room's sequence in Redis;
//! - `socket`: an axum WebSocket as a `nimbus_doc::Channel` (keepalive, shutdown).

pub mod access;
pub mod metrics;
mod replica;
pub(crate) mod replication;
pub mod rooms;
pub mod settings;
mod socket;

pub use access::{validate_room_name, Access, AccessRules, Denied, TokenRule};
pub(crate) use replication::update_event;
pub use rooms::{DocRooms, JoinError};
pub use settings::{DocLimits, DocSettings};
pub(crate) use socket::SocketChannel;
