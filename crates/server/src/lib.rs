//! The nimbus server: Scratch/TurboWarp cloud variables, Yjs document rooms, a
//! Discord-v10-style gateway of room events, and IPC routes.
//!
//! Layout (see `docs/architecture.md`):
//! - [`config`]: settings from flags, environment and file (each subsystem's section
//!   reports errors with [`setting::InvalidSetting`]);
//! - [`hub`] and [`room`]: room registry and the per-room actor;
//! - [`replication`]: the seam a cloud room orders and keeps its changes through
//!   ([`replication::InProcess`] on one node, `backplane::cloud::RedisReplication` with
//!   `--redis`);
//! - [`outbox`]: each connection's bounded, last-writer-wins send queue;
//! - [`cloud`]: the WebSocket connection task;
//! - [`store`]: persistence (SQLite, group commit; cloud variables and document logs);
//! - [`doc`]: Yjs document rooms at `/doc/{room}` (tokens, persistence, limits);
//! - [`events`]: the room event bus (cloud changes, joins, leaves);
//! - [`gateway`]: the Discord-v10-style gateway at `/gateway` (room events as dispatches);
//! - the Redis backplane (`--redis`) is the `nimbus-redis` crate: cloud and document rooms
//!   and gateway sessions shared by several nodes;
//! - [`hooks`]: room events to webhook receivers (`nimbus-webhook`), once per cluster;
//! - [`history`]: `GET /logs`, cloud history in Scratch's clouddata log format;
//! - [`auth`]: who a client is: static and signed tokens, checked before the upgrade;
//! - [`metrics`]: Prometheus metrics.
#![forbid(unsafe_code)]

mod api;
pub mod auth;
pub mod cloud;
pub mod config;
pub mod doc;
pub mod edge;
pub mod gateway;
pub mod history;
pub mod hooks;
mod http;
mod ipc_routes;
pub mod metrics;
mod reply;
mod server;
pub mod store;

// The core's modules under their old paths (the server is their composition root).
pub use nimbus_core::{events, hub, outbox, replication, room, setting};

pub use config::{CloudLimits, Config, ConfigError, DocLimits, IpcConfig, Settings};
pub use gateway::{GatewayConfig, GatewayToken};
pub use server::{Reloader, Server, ServerError};
