//! Yjs document rooms for nimbus: the y-sync (y-websocket) protocol on the server side,
//! a client, and the wires they talk over. The API mirrors the Python library wiredb
//! (`Room`, `RoomManager`, `bind`, `connect`); the protocol reference is
//! `/work/shared/protocols/yjs-sync.md`, the codec is [`nimbus_proto::doc`].
//!
//! # Pieces
//!
//! - [`Room`] ([`room`]): one shared [`yrs::Doc`] and its clients. [`Room::run`] forwards
//!   every document update to the clients and times out awareness states;
//!   [`Room::serve`] handles one [`Channel`] (client connection) until it leaves.
//! - [`RoomHooks`] ([`hooks`]): the extension points of a room (the seed's custom room
//!   factory): `load` before the first client is answered, `check_update` to filter,
//!   `updated` to persist, `emptied` to flush.
//! - [`RoomManager`] ([`manager`]): id → live room, made by a factory, loaded once,
//!   unloaded when its last client leaves.
//! - [`bind`] ([`server`]): a standalone server on a [`ServerWire`] (WebSocket or memory);
//!   the returned [`ServerGuard`] stops everything when dropped.
//! - [`connect`] ([`client`]): a [`Client`] keeping a document in sync over a
//!   [`ClientWire`] (WebSocket, memory, or a wire-file), with reconnect and awareness.
//! - [`wire`]: the transports ([`wire::memory`], [`wire::websocket`], [`wire::file`]).
//! - [`doc_to_json`] ([`json`]): a document's root types as JSON.
//! - [`update`]: how client updates are validated so a broken one cannot corrupt a room.
//!
//! # Behaviour of a room (reference §4)
//!
//! The room loads (hook) before answering anyone; each client gets SyncStep1, then the
//! known awareness states; a SyncStep1 is always answered with SyncStep2 (even empty);
//! SyncStep2/Update are applied in a transaction and forwarded once to every other client;
//! one message per frame goes out, concatenated messages are accepted; awareness is
//! relayed to everyone including the sender, expires on the server (default 30 s), and a
//! leaving client's states are removed and broadcast; QueryAwareness is answered; a
//! read-only client's updates are refused with `[2, 0, varString(reason)]`; text frames
//! (1003), undecodable frames or updates (1007), awareness states that are not JSON (1007)
//! and frames over the limit (1009) close that client with a reason ([`ServeError`]); a
//! client whose queue goes over its bytes or frames, or whose frame does not go out in time,
//! is closed with 1008 "too slow". Awareness is bounded per connection and per room
//! ([`awareness`]), updates and awareness changes are paced per connection ([`limits`]).
//! Unknown message types (y-sweet's 102) are ignored.
//!
//! # Example
//!
//! A server on the memory wire and two clients editing the same room:
//!
//! ```
//! use nimbus_doc::wire::memory::Listener;
//! use nimbus_doc::yrs::{GetString, Text, Transact};
//! use nimbus_doc::{bind, connect, ClientWire, ConnectOptions, Room, ServerOptions, ServerWire};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = Listener::new();
//! let server = bind(ServerWire::Memory(listener.clone()), |id: &str| Room::new(id), ServerOptions::default()).await?;
//!
//! let wire = ClientWire::Memory(listener.connector());
//! let alice = connect(wire.clone(), "notes", None, ConnectOptions::default()).await?;
//! let bob = connect(wire, "notes", None, ConnectOptions::default()).await?;
//!
//! let text = alice.doc().get_or_insert_text("t");
//! text.insert(&mut alice.doc().transact_mut(), 0, "hello");
//!
//! let bobs = bob.doc().get_or_insert_text("t");
//! while bobs.get_string(&bob.doc().transact()) != "hello" {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! // The room id is the path, as wiredb reports it.
//! assert_eq!(server.manager().room_ids(), ["/notes"]);
//! alice.close().await;
//! bob.close().await;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Over WebSockets: `ServerWire::WebSocket { addr }` and
//! `ClientWire::WebSocket { url: "ws://127.0.0.1:8000".into() }` (the room id is appended
//! to the URL as a path; `wss://` uses rustls with the webpki roots).
//!
//! # Serving from another HTTP server (axum)
//!
//! Implement [`Channel`] for the framework's socket (binary frames as `Ok(bytes)`, a text
//! frame as [`ChannelError::TextFrame`], a close frame as [`ChannelError::Closed`], ping/pong
//! handled inside `recv`, which must be cancel-safe) and call [`RoomManager::serve`] with the
//! room id (the percent-decoded path, e.g. `"/doc/ROOM"`).
#![forbid(unsafe_code)]

pub use yrs;

pub mod awareness;
pub mod channel;
pub mod client;
pub mod hooks;
pub mod json;
pub mod limits;
pub mod manager;
pub mod room;
pub mod server;
pub mod update;
pub mod wire;

pub use channel::{Channel, ChannelError, DirectWrite, Written};

/// A new document with a random **32-bit** client id, as Yjs (`random.uint32`) makes them.
///
/// yrs 0.28's `Doc::new()` picks 53-bit ids, and older yrs builds (pycrdt < 0.13, which
/// wire-websocket 0.7.1 pins) mangle client ids of 2^32 and above when they decode them: their
/// edits then point at a client that does not exist and stay invisible to everyone else.
/// Rooms and clients of this crate create their documents with this function; pass a
/// document made with it (or with [`yrs::Doc::with_client_id`] below 2^32) to
/// [`connect`] for the same reason.
pub fn new_doc() -> yrs::Doc {
    yrs::Doc::with_client_id(u64::from(rand::random::<u32>()))
}
pub use awareness::AwarenessLimits;
pub use client::{
    connect, Backoff, Client, ClientWire, ConnectError, ConnectOptions, Status, REMOTE_ORIGIN,
};
pub use hooks::{HookError, NoHooks, Refusal, RoomHooks};
pub use json::doc_to_json;
pub use limits::{RateLimit, ServeStats};
pub use manager::{GetRoomError, RoomManager};
pub use room::{Room, RoomOptions, ServeError, ServeOptions};
pub use server::{bind, BindError, ServerGuard, ServerOptions, ServerWire};
pub use update::ApplyError;
