//! IO-free wire codecs for nimbus.
//!
//! Nothing in this crate touches a socket, a clock or a file: every codec takes
//! bytes or text in and gives typed messages out (and the reverse), so each one
//! can be unit-tested byte for byte, property-tested and fuzzed.
//!
//! - [`backoff`]: reconnect backoff schedules (pure; the caller brings the randomness).
//! - [`batch`]: when a connection writes, the one write-batching policy of every wire
//!   (pure; the caller brings the time).
//! - [`cloud`]: the Scratch / TurboWarp cloud-variable protocol (newline-delimited JSON
//!   in WebSocket text frames).
//! - [`doc`]: the y-sync protocol (y-websocket) of Yjs document rooms: lib0 primitives,
//!   sync/awareness/auth messages, awareness updates.
//! - [`ipc`]: the discord.py-style IPC request/response protocol (primary and better-ipc dialects).
//! - [`gateway`]: the Discord v10 gateway protocol (payloads, close codes, intents, `shard_of`).
#![forbid(unsafe_code)]

/// How much a WebSocket client reads per call, bytes: the read buffer of every socket that
/// nimbus' clients (document, cloud, gateway, IPC) and `nimbus bench`'s generators open, and
/// of the sockets `nimbus-doc`'s embeddable server accepts.
/// tungstenite's default is 128 KiB, and it zero-fills the free part of its buffer before
/// every read: a 128 KiB `memset` per message received (37.5 % of `nimbus bench doc`'s
/// samples in `bench/doc.sh spread`) and 128 KiB held per connection. A longer frame still
/// arrives whole: the buffer grows to the frame's declared length.
pub const CLIENT_READ_BUFFER: usize = 8 << 10;

/// The default bound on one message (and one frame) that a client socket nimbus opens will
/// take, bytes, inflated for the gateway's zlib-stream: the cloud, gateway and IPC clients'
/// default (each has a setting). tungstenite's default is 64 MiB, which lets a server (or
/// whoever answers in its place) make a client hold that much per connection. 32 MiB takes
/// the largest message a server sends at its defaults: a TurboWarp handshake of 128
/// variables at 100,000 characters (~12.8 MB), nimbus' largest IPC reply (16 MiB) and its
/// gateway's largest dispatch (a `DOC_UPDATE` of a 16 MiB document update in base64,
/// ~21.4 MiB; `nimbus-core` tests that the gateway's bound stays under this one). A
/// message over the bound ends the connection, and a server that sends it again on the
/// next connection gets the same answer, so the bound must not be below what the server may
/// send.
pub const CLIENT_MAX_MESSAGE: usize = 32 << 20;

pub mod backoff;
pub mod backplane;
pub mod batch;
pub mod cloud;
pub mod doc;
pub mod gateway;
pub mod ipc;
