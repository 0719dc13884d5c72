//! Document (Yjs) rooms of `nimbus serve`, at `/doc/{room}`.
//!
//! - [`access`]: room-name rules and per-room tokens.

pub mod access;

pub use access::{validate_room_name, Access, AccessRules, Denied, TokenRule};
