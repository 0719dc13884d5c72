//! Persistence: the core's store handle ([`nimbus_core::store`]) over the embedded SQLite
//! backend, the default of `nimbus serve`.

pub use nimbus_core::store::*;

mod sqlite;

pub use sqlite::{open_store, SqliteBackend};
