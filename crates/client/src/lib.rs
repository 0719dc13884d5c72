//! nimbus client SDK: [`CloudConnection`], the Rust counterpart of the Python
//! `CloudConnection` (scratchclient), for Scratch, TurboWarp and nimbus cloud servers.
//!
//! - `on` / `once` / `off` / `listeners` with the seed's event keys, plus [`CloudConnection::events`];
//! - `get_cloud_variable`, `set_cloud_variable`, `create_cloud_variable`, `delete_cloud_variable`
//!   (names with or without `"☁ "`);
//! - client-side pacing and value checks per [`HostProfile`];
//! - reconnect with exponential backoff and jitter, except after fatal close codes.
//!
//! Event semantics: `change` fires for every change (ours too), `set` only for changes by
//! others, `create` the first time a name is seen (or when we create it), `delete` when we
//! delete (servers never broadcast deletes), `outgoing` with the exact text sent.
//!
//! [`gateway::GatewayClient`] speaks the Discord v10 gateway (to Discord or to nimbus's
//! `/gateway`), and [`gateway::ShardManager`] runs several shards.
#![forbid(unsafe_code)]

mod connection;
mod error;
mod event;
pub mod gateway;
mod pacing;

/// The WebSocket config of every socket this crate opens: messages and frames of at most
/// `max_message` bytes (a longer one ends the connection with an error).
fn ws_config(max_message: usize) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(nimbus_proto::CLIENT_READ_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

pub use connection::{CloudConnection, CloudConnectionBuilder, HostProfile, DEFAULT_USER_AGENT};
pub use error::CloudError;
pub use event::{CloudVariable, Event, EventKind, ListenerId};
pub use nimbus_proto::cloud::{CloudValue, ValueProfile};
pub use pacing::Backoff;
