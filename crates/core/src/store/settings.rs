//! The embedded store's settings ([`StoreSettings`]: flags, `NIMBUS_*` environment, keys of
//! the config file), resolved into a [`StoreConfig`] (whose `Default` holds every default).
//! The compaction policy of document logs is a document-room setting (`doc_compact_*`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::setting::{millis, InvalidSetting};

/// The store's settings, each optional so that flags, environment and file can be layered.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(rename_all = "snake_case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct StoreSettings {
    /// Directory for the embedded store [default: ./nimbus-data].
    #[arg(long, env = "NIMBUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Group-commit window of the store: a `kill -9` loses at most this much [default: 100].
    #[arg(long, env = "NIMBUS_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
}

/// Where the embedded store lives and how often it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Directory of the SQLite database.
    pub data_dir: PathBuf,
    /// Group-commit window.
    pub flush_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("./nimbus-data"),
            flush_interval: Duration::from_millis(100),
        }
    }
}

impl StoreConfig {
    /// Fill in defaults and check ranges (every value is valid today).
    pub fn from_settings(s: &StoreSettings) -> Result<StoreConfig, InvalidSetting> {
        let d = StoreConfig::default();
        Ok(StoreConfig {
            data_dir: s.data_dir.clone().unwrap_or(d.data_dir),
            flush_interval: millis(s.flush_interval_ms, d.flush_interval),
        })
    }
}
