//! The nimbus server: a Scratch/TurboWarp cloud-variable server.
//!
//! Layout (see `docs/architecture.md`):
//! - [`config`]: settings from flags, environment and file;
//! - [`hub`] and [`room`]: room registry and the per-room actor;
//! - [`outbox`]: each connection's bounded, last-writer-wins send queue;
//! - [`cloud`]: the WebSocket connection task;
//! - [`store`]: persistence (SQLite, group commit);
//! - [`events`]: the room event bus (cloud changes, joins, leaves);
//! - [`gateway`]: the Discord-v10-style gateway at `/gateway` (room events as dispatches);
//! - [`metrics`]: Prometheus metrics.
#![forbid(unsafe_code)]

pub mod cloud;
pub mod config;
pub mod events;
pub mod gateway;
mod http;
pub mod hub;
mod ipc_routes;
pub mod metrics;
pub mod outbox;
pub mod room;
mod server;
pub mod store;

pub use config::{CloudLimits, Config, ConfigError, IpcConfig, Settings};
pub use gateway::{GatewayConfig, GatewayToken};
pub use server::{Server, ServerError};
