//! The nimbus server: a Scratch/TurboWarp cloud-variable server.
//!
//! Layout (see `docs/architecture.md`):
//! - [`config`]: settings from flags, environment and file;
//! - [`hub`] and [`room`]: room registry and the per-room actor;
//! - [`outbox`]: each connection's bounded, last-writer-wins send queue;
//! - [`cloud`]: the WebSocket connection task;
//! - [`store`]: persistence (SQLite, group commit);
//! - [`metrics`]: Prometheus metrics.
#![forbid(unsafe_code)]

pub mod cloud;
pub mod config;
pub mod doc;
mod http;
pub mod hub;
mod ipc_routes;
pub mod metrics;
pub mod outbox;
pub mod room;
mod server;
pub mod store;
mod ws;

pub use config::{CloudLimits, Config, ConfigError, DocLimits, IpcConfig, Settings};
pub use server::{Server, ServerError};
