//! Document (Yjs) rooms: who may open them, how they are kept and replicated.
//!
//! - [`access`]: room-name rules and per-room tokens;
//! - [`rooms`]: the rooms, each a `nimbus_doc::Room` whose updates go through the node's
//!   [`replication::DocReplication`] (the local store, or Redis shared with other nodes);
//! - [`replica`]: how far a node's copy of a room follows the room's sequence (IO-free);
//! - [`settings`] and [`metrics`]: the subsystem's config and its `nimbus_doc_*` series.
//!
//! The socket a client speaks over is the server's business: a room serves any
//! `nimbus_doc::Channel`.

pub mod access;
pub mod metrics;
pub mod replica;
pub mod replication;
pub mod rooms;
pub mod settings;

pub use access::{validate_room_name, Access, AccessRules, Denied, TokenRule};
pub use replication::update_event;
pub use rooms::{DeleteError, DocRooms, JoinError, UpdateError, ROOM_DELETED, ROOM_DELETED_REASON};
pub use settings::{DocLimits, DocSettings};
