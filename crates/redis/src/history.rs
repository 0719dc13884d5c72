//! [`RedisHistory`]: the [`HistoryLog`] of `--redis`. [`CLOUD_SCRIPT`] pushes every
//! accepted change's message on its room's list (`nimbus:cloud:{room}:hist`, newest first,
//! `LTRIM` to the retention's count, `PEXPIRE` its age) where Redis orders the change, so
//! every node reads the same history and each change is in it once.
//!
//! [`CLOUD_SCRIPT`]: super::CLOUD_SCRIPT

use std::sync::Arc;

use futures_util::future::BoxFuture;
use nimbus_core::history::{now_ms, HistoryEntry, HistoryLog, Retention};
use nimbus_core::replication::OrderedChange;
use nimbus_core::store::StoreError;

use super::{parse_message, Keys, RedisBackplane};

/// Reads the history lists [`CLOUD_SCRIPT`](super::CLOUD_SCRIPT) writes.
#[derive(Debug, Clone)]
pub struct RedisHistory {
    bp: Arc<RedisBackplane>,
    retention: Retention,
}

impl RedisHistory {
    /// The history kept through `bp` (which it tells to keep `retention`).
    pub fn new(bp: Arc<RedisBackplane>, retention: Retention) -> RedisHistory {
        bp.keep_history(retention);
        RedisHistory { bp, retention }
    }
}

/// A change as a history entry: its room event (the one the subscription publishes) as the
/// store's history would record it.
fn entry(c: &OrderedChange) -> Option<HistoryEntry> {
    HistoryEntry::from_event(&crate::room_event(c), c.ts)
}

impl HistoryLog for RedisHistory {
    fn read<'a>(
        &'a self,
        room: &'a str,
        limit: usize,
        offset: usize,
    ) -> BoxFuture<'a, Result<Vec<HistoryEntry>, StoreError>> {
        Box::pin(async move {
            if !self.retention.enabled() || limit == 0 || offset >= self.retention.max_entries {
                return Ok(Vec::new());
            }
            let limit = limit.min(self.retention.max_entries - offset);
            let keys = Keys::new(room);
            let mut conn = self.bp.conn.clone();
            let start = isize::try_from(offset).unwrap_or(isize::MAX);
            let stop = isize::try_from(offset + limit - 1).unwrap_or(isize::MAX);
            let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&keys.hist)
                .arg(start)
                .arg(stop)
                .query_async(&mut conn)
                .await
                .map_err(|e| StoreError::Backplane(e.to_string()))?;
            let since = self.retention.oldest_kept(now_ms());
            let mut out = Vec::with_capacity(raw.len());
            for msg in raw {
                match parse_message(self.bp.node(), &msg) {
                    Ok(c) if c.ts < since => break,
                    Ok(c) => out.extend(entry(&c)),
                    Err(e) => {
                        tracing::warn!(%room, error = %e, "history: an entry nimbus did not write")
                    }
                }
            }
            Ok(out)
        })
    }
}
