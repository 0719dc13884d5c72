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

pub mod backoff;
pub mod backplane;
pub mod batch;
pub mod cloud;
pub mod doc;
pub mod gateway;
pub mod ipc;
