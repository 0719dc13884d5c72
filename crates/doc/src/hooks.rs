//! [`RoomHooks`]: the extension points of a room (the seed's custom `room_factory`).

use bytes::Bytes;
use futures_util::future::BoxFuture;
use thiserror::Error;

use crate::Room;

/// Callbacks a room makes at the points of its life where a server adds behaviour:
/// loading and seeding content, filtering updates, persisting them, flushing when the
/// room empties. Every method has a default that does nothing.
///
/// Hooks must not block: `load` and `emptied` are async; `check_update` and `updated` run
/// on the room's tasks and should only do quick work (queue a write, check a size).
///
/// A hook that panics is contained, and counted in [`Room::hook_panics`]:
///
/// - `load`: as if it had failed with a [`HookError`] (every waiting client is refused and
///   the room is not kept);
/// - `check_update`: the update is refused and its client closed with 1011 `update check
///   failed`; the room goes on;
/// - `updated` or `replicated`: the hook has missed an update (a persistence hook has not
///   stored it), so the room closes with 1011 `room hook failed`. Its clients reconnect to a
///   fresh room, and their SyncStep2 brings back what the hook missed;
/// - `emptied`: logged; the room is closed as usual.
///
/// ```
/// use std::sync::Arc;
/// use nimbus_doc::{HookError, Refusal, Room, RoomHooks};
/// use nimbus_doc::yrs::{Text, Transact};
/// use futures_util::future::BoxFuture;
///
/// struct Seeded;
/// impl RoomHooks for Seeded {
///     fn load<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<(), HookError>> {
///         Box::pin(async move {
///             let text = room.doc().get_or_insert_text("t");
///             text.insert(&mut room.doc().transact_mut(), 0, "hello");
///             Ok(())
///         })
///     }
///     fn check_update(&self, _room: &Room, update: &[u8]) -> Result<(), Refusal> {
///         if update.len() > 1 << 20 { Err(Refusal::new("update too large")) } else { Ok(()) }
///     }
/// }
/// let room = Room::with_hooks("/seeded", Arc::new(Seeded));
/// # drop(room);
/// ```
pub trait RoomHooks: Send + Sync + 'static {
    /// Runs once, before the room answers its first client: load persisted state, seed
    /// content. A failure is returned to every client waiting to join, and a
    /// [`RoomManager`](crate::RoomManager) does not keep the room. State that is persisted
    /// already goes in through [`Room::transact_loaded`], so that [`RoomHooks::updated`]
    /// does not see it again; seeded content made with [`Room::doc`] reaches `updated`.
    fn load<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<(), HookError>> {
        let _ = room;
        Box::pin(async { Ok(()) })
    }

    /// Filter for a client's update (SyncStep2 or Update), called after it decoded and before
    /// it is applied. A refusal means the update is not applied and the client gets
    /// `Auth PermissionDenied` with the reason; the connection stays open.
    fn check_update(&self, room: &Room, update: &[u8]) -> Result<(), Refusal> {
        let _ = (room, update);
        Ok(())
    }

    /// After a transaction changed the room's document: `update` is a v1 update that brings
    /// a replica from the state before the transaction to the state after it (whatever its
    /// origin: a client, or server code editing [`Room::doc`] directly), except those of
    /// [`Room::apply_replicated`] and [`Room::transact_loaded`]. For a client's `Update`
    /// message it is the bytes the client sent, which may also hold parts the room had
    /// already; for anything else, the transaction's changes as yrs encodes them. Called in
    /// commit order, one call at a time, never while the document is locked: from
    /// [`Room::run`], or, when nothing waits in the room's queue, from the session task that
    /// applied a client's update, right after its transaction (never from inside a call of
    /// [`Room::apply_update`] or a transaction of [`Room::doc`]). So it must not block or
    /// wait: hand the update on (a channel, a queue) and return. Persist here.
    fn updated(&self, room: &Room, update: &Bytes) {
        let _ = (room, update);
    }

    /// After a transaction of [`Room::apply_replicated`] changed the document: an update
    /// another replica of the room (another node) already persisted. Called in order from
    /// [`Room::run`], in the same sequence as [`RoomHooks::updated`], which is not called
    /// for it.
    fn replicated(&self, room: &Room, update: &Bytes) {
        let _ = (room, update);
    }

    /// The last client left; runs before the room is unloaded (after every `updated` call of
    /// the room's changes). Flush persistence here.
    fn emptied<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, ()> {
        let _ = room;
        Box::pin(async {})
    }
}

/// The hooks of a plain in-memory room: all defaults.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl RoomHooks for NoHooks {}

/// A failure of a hook (loading a room).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct HookError(pub String);

impl HookError {
    /// A hook error with this message.
    pub fn new(msg: impl Into<String>) -> HookError {
        HookError(msg.into())
    }
}

/// Why [`RoomHooks::check_update`] refused an update; the reason is sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{reason}")]
pub struct Refusal {
    /// Sent to the client in `Auth PermissionDenied`.
    pub reason: String,
    /// When set, the connection is then closed with this code and the reason (the client
    /// applied the update locally: without the close it would go on from a state the room
    /// does not have).
    pub close: Option<u16>,
}

impl Refusal {
    /// A refusal with this reason; the connection stays open.
    pub fn new(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            close: None,
        }
    }

    /// A refusal that also closes the client's connection with `code`.
    pub fn closing(code: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            close: Some(code),
        }
    }
}
