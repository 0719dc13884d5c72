//! Authenticated request/response IPC: a route [`Server`] listening on a main port and
//! a multicast (discovery) port, and a [`ClientSession`], wire-compatible with the
//! Python clients discord-ext-ipc 2.1.1 / discord_tools (primary dialect) and
//! better-ipc 2.0.3 (detected per frame). See `docs/ipc.md`.
//!
//! ```no_run
//! use nimbus_ipc::{ClientSession, Request, Server};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder().port(0).multicast_port(0).secret_key("k").build()?;
//! server.route("add", |req: Request| async move {
//!     let a = req.get("a").and_then(|v| v.as_i64()).unwrap_or(0);
//!     let b = req.get("b").and_then(|v| v.as_i64()).unwrap_or(0);
//!     Ok(json!(a + b))
//! });
//! server.start().await?;
//! let port = server.local_addr().expect("started").port();
//! let mut s = ClientSession::connect("127.0.0.1", Some(port), 20000, Some("k".into())).await?;
//! assert_eq!(s.request("add", json!({"a": 1, "b": 2})).await?, json!(3));
//! s.close().await;
//! server.terminate_server().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod client;
mod error;
mod request;
mod server;

pub use client::ClientSession;
pub use error::{IpcError, RouteError, ServerError};
pub use request::Request;
pub use server::{Credential, IpcEvent, IpcStats, Server, ServerBuilder};
