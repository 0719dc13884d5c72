//! The nimbus core: what a room is, independent of how bytes reach it.
//!
//! No HTTP, Redis or SQLite here (Cargo enforces it: none is a dependency). The server
//! crate composes these pieces and owns the sockets; `nimbus-redis` implements the seams
//! for several nodes. See `docs/architecture.md`.
//!
//! - [`events`]: room events with a typed body and the one function that turns an event
//!   into its JSON (gateway dispatches, later webhooks and history);
//! - [`hub`] and [`room`]: the cloud room registry and the per-room actor, which gets only a
//!   small [`room::RoomContext`];
//! - [`outbox`]: each cloud connection's bounded, last-writer-wins send queue;
//! - [`replication`]: the seam a cloud room orders and keeps its changes through
//!   ([`replication::InProcess`] by default), and the IO-free [`replication::Follower`];
//! - [`store`]: the store handle (group commit on one writer thread) over the
//!   [`store::Backend`] trait (in memory here; SQLite in the server);
//! - [`doc`]: document rooms over [`doc::replication::DocReplication`];
//! - [`gateway`]: the gateway's session registry over [`gateway::log::SessionLog`];
//! - [`history`]: each cloud room's recent changes in Scratch's log format, over the
//!   [`history::HistoryLog`] seam;
//! - [`lease`]: who delivers cluster-wide side effects (webhooks) once, over the
//!   [`lease::Leadership`] seam;
//! - [`cloud`]: the cloud protocol's settings and metrics;
//! - [`setting`]: the error every subsystem's settings report.
#![forbid(unsafe_code)]

pub mod cloud;
pub mod doc;
pub mod events;
pub mod gateway;
pub mod history;
pub mod hub;
pub mod lease;
pub mod outbox;
pub mod replication;
pub mod room;
pub mod setting;
pub mod store;
