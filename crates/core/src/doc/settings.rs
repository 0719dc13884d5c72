//! Document rooms' settings ([`DocSettings`]: flags, `NIMBUS_DOC_*` environment, `doc_*` keys
//! of the config file) and the limits they resolve to ([`DocLimits`], whose `Default` holds
//! every default; the per-connection ones come from [`nimbus_doc::ServeOptions`]).

use std::time::Duration;

use serde::Deserialize;

use crate::setting::{nonzero, nonzero_millis, InvalidSetting};

/// Document rooms' settings, each optional so that flags, environment and file can be
/// layered. Durations are in milliseconds.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(rename_all = "snake_case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct DocSettings {
    /// Document rooms: largest incoming message in bytes; larger ones close with 1009 [default: 16777216].
    #[arg(long, env = "NIMBUS_DOC_MAX_MESSAGE_BYTES")]
    pub doc_max_message_bytes: Option<usize>,
    /// Document rooms: largest document (stored bytes); updates beyond are refused with the Auth message [default: 67108864].
    #[arg(long, env = "NIMBUS_DOC_MAX_BYTES")]
    pub doc_max_bytes: Option<usize>,
    /// Document rooms: loaded rooms; a connection to one more is refused with 503 [default: 16384].
    #[arg(long, env = "NIMBUS_DOC_MAX_ROOMS")]
    pub doc_max_rooms: Option<usize>,
    /// Document rooms: a token rule `ROOM:rw:TOKEN` or `ROOM:ro:TOKEN` (ROOM may be `*`); repeatable.
    /// A room matched by any rule needs a token [default: none, every room open].
    #[arg(
        long = "doc-token",
        env = "NIMBUS_DOC_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub doc_tokens: Option<Vec<crate::doc::TokenRule>>,
    /// Document rooms: awareness states not renewed for this long are removed [default: 30000].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_TIMEOUT_MS")]
    pub doc_awareness_timeout_ms: Option<u64>,
    /// Document rooms: fold a room's update log into a snapshot after this many updates [default: 1000].
    #[arg(long, env = "NIMBUS_DOC_COMPACT_UPDATES")]
    pub doc_compact_updates: Option<usize>,
    /// ... or after this many bytes of updates [default: 4194304].
    #[arg(long, env = "NIMBUS_DOC_COMPACT_BYTES")]
    pub doc_compact_bytes: Option<usize>,
    /// Document rooms: bytes queued for one client before it is closed with 1008 "too slow" [default: 4194304].
    #[arg(long, env = "NIMBUS_DOC_QUEUE_BYTES")]
    pub doc_queue_bytes: Option<usize>,
    /// Document rooms: longest time one frame may take to go out before the client is closed with 1008 [default: 10000].
    #[arg(long, env = "NIMBUS_DOC_SEND_TIMEOUT_MS")]
    pub doc_send_timeout_ms: Option<u64>,
    /// Document rooms: the same for the answer to a client's first SyncStep1 (the whole document) [default: 60000].
    #[arg(long, env = "NIMBUS_DOC_SYNC_SEND_TIMEOUT_MS")]
    pub doc_sync_send_timeout_ms: Option<u64>,
    /// Document rooms: longest an update may wait to join a busy connection's next write, microseconds (0: written at once; docs/benchmarks.md) [default: 0].
    #[arg(long, env = "NIMBUS_DOC_MAX_BATCH_DELAY_US")]
    pub doc_max_batch_delay_us: Option<u64>,
    /// Document rooms: updates per second per connection; over it reading pauses (0: no limit) [default: 200].
    #[arg(long, env = "NIMBUS_DOC_UPDATE_RATE")]
    pub doc_update_rate: Option<u32>,
    /// Document rooms: updates a connection may send at once after a quiet period [default: 1000].
    #[arg(long, env = "NIMBUS_DOC_UPDATE_BURST")]
    pub doc_update_burst: Option<u32>,
    /// Document rooms: awareness changes per second per connection; over it reading pauses (0: no limit) [default: 100].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_RATE")]
    pub doc_awareness_rate: Option<u32>,
    /// Document rooms: awareness changes a connection may send at once [default: 300].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_BURST")]
    pub doc_awareness_burst: Option<u32>,
    /// Document rooms: a connection paused for a rate this long since its last frame within its rates is closed with 1008 [default: 20000].
    #[arg(long, env = "NIMBUS_DOC_RATE_ABUSE_MS")]
    pub doc_rate_abuse_ms: Option<u64>,
    /// Document rooms: awareness client ids one connection may own [default: 8].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_MAX_IDS")]
    pub doc_awareness_max_ids: Option<usize>,
    /// Document rooms: bytes of one awareness state [default: 32768].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_MAX_STATE_BYTES")]
    pub doc_awareness_max_state_bytes: Option<usize>,
    /// Document rooms: awareness states per room [default: 10000].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_MAX_STATES")]
    pub doc_awareness_max_states: Option<usize>,
    /// Document rooms: bytes of awareness states per room [default: 8388608].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_MAX_ROOM_BYTES")]
    pub doc_awareness_max_room_bytes: Option<usize>,
    /// Document rooms: largest awareness message of the table sent to a joiner [default: 65536].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_CHUNK_BYTES")]
    pub doc_awareness_chunk_bytes: Option<usize>,
}

/// Limits and policies of document (Yjs) rooms (see `docs/protocols/doc.md`).
#[derive(Debug, Clone)]
pub struct DocLimits {
    /// Largest incoming WebSocket message, bytes (1009 beyond).
    pub max_message_bytes: usize,
    /// Largest document, in stored bytes (snapshot + updates); updates beyond are refused.
    pub max_doc_bytes: usize,
    /// Loaded document rooms (HTTP 503 beyond).
    pub max_rooms: usize,
    /// Token rules.
    pub tokens: Vec<crate::doc::TokenRule>,
    /// Awareness expiry.
    pub awareness_timeout: Duration,
    /// When the store folds a room's log into a snapshot.
    pub compaction: crate::store::CompactionPolicy,
    /// Bytes queued for one client before it is closed with 1008.
    pub queue_bytes: usize,
    /// Longest time one frame may take to go out (1008 beyond).
    pub send_timeout: Duration,
    /// The same for the answer to a client's first SyncStep1.
    pub sync_send_timeout: Duration,
    /// Pace of a connection's document updates.
    pub update_rate: nimbus_doc::RateLimit,
    /// Pace of a connection's awareness changes.
    pub awareness_rate: nimbus_doc::RateLimit,
    /// A connection paused for a rate this long since its last frame within its rates is
    /// closed with 1008.
    pub rate_abuse_after: Duration,
    /// Awareness client ids one connection may own.
    pub awareness_max_ids: usize,
    /// Bytes of one awareness state.
    pub awareness_max_state_bytes: usize,
    /// Largest awareness message of the table sent to a joiner.
    pub awareness_chunk_bytes: usize,
    /// Per-room awareness bounds (states, bytes, tombstones).
    pub awareness: nimbus_doc::AwarenessLimits,
    /// Counters of what these bounds did, shared by every document connection of the
    /// server (for metrics).
    pub stats: std::sync::Arc<nimbus_doc::ServeStats>,
    /// The write-batching budget of every connection (`nimbus_proto::batch`; 0: none).
    /// Not the edge's 2 ms: measured, it bought no CPU on document rooms at a doubled p50
    /// (docs/benchmarks.md), so document rooms batch only when asked to.
    pub batch_delay: Duration,
}

impl DocLimits {
    /// The options of one client connection (`read_only` from its token).
    pub fn serve_options(&self, read_only: bool) -> nimbus_doc::ServeOptions {
        nimbus_doc::ServeOptions {
            read_only,
            max_message_bytes: self.max_message_bytes,
            awareness_timeout: self.awareness_timeout,
            queue_bytes: self.queue_bytes,
            send_timeout: self.send_timeout,
            sync_send_timeout: self.sync_send_timeout,
            update_rate: self.update_rate,
            awareness_rate: self.awareness_rate,
            rate_abuse_after: self.rate_abuse_after,
            awareness_max_ids: self.awareness_max_ids,
            awareness_max_state_bytes: self.awareness_max_state_bytes,
            awareness_chunk_bytes: self.awareness_chunk_bytes,
            batch_delay: self.batch_delay,
            stats: self.stats.clone(),
            ..nimbus_doc::ServeOptions::default()
        }
    }

    /// The options of a room.
    pub fn room_options(&self) -> nimbus_doc::RoomOptions {
        nimbus_doc::RoomOptions {
            awareness: nimbus_doc::AwarenessLimits {
                tombstone_ttl: self.awareness_timeout * 2,
                ..self.awareness.clone()
            },
            ..nimbus_doc::RoomOptions::default()
        }
    }

    /// Fill in defaults and check ranges.
    pub fn from_settings(s: &DocSettings) -> Result<DocLimits, InvalidSetting> {
        let d = DocLimits::default();
        let rate = |per_second: Option<u32>, burst: Option<u32>, d: nimbus_doc::RateLimit| {
            nimbus_doc::RateLimit {
                per_second: per_second.unwrap_or(d.per_second),
                burst: burst.unwrap_or(d.burst).max(1),
            }
        };
        Ok(DocLimits {
            max_message_bytes: nonzero(
                "doc_max_message_bytes",
                s.doc_max_message_bytes,
                d.max_message_bytes,
            )?,
            max_doc_bytes: nonzero("doc_max_bytes", s.doc_max_bytes, d.max_doc_bytes)?,
            max_rooms: nonzero("doc_max_rooms", s.doc_max_rooms, d.max_rooms)?,
            tokens: s.doc_tokens.clone().unwrap_or(d.tokens),
            awareness_timeout: nonzero_millis(
                "doc_awareness_timeout_ms",
                s.doc_awareness_timeout_ms,
                d.awareness_timeout,
            )?,
            compaction: crate::store::CompactionPolicy {
                max_updates: nonzero(
                    "doc_compact_updates",
                    s.doc_compact_updates,
                    d.compaction.max_updates,
                )?,
                max_bytes: nonzero(
                    "doc_compact_bytes",
                    s.doc_compact_bytes,
                    d.compaction.max_bytes,
                )?,
            },
            queue_bytes: nonzero("doc_queue_bytes", s.doc_queue_bytes, d.queue_bytes)?,
            send_timeout: nonzero_millis(
                "doc_send_timeout_ms",
                s.doc_send_timeout_ms,
                d.send_timeout,
            )?,
            sync_send_timeout: nonzero_millis(
                "doc_sync_send_timeout_ms",
                s.doc_sync_send_timeout_ms,
                d.sync_send_timeout,
            )?,
            update_rate: rate(s.doc_update_rate, s.doc_update_burst, d.update_rate),
            awareness_rate: rate(
                s.doc_awareness_rate,
                s.doc_awareness_burst,
                d.awareness_rate,
            ),
            rate_abuse_after: nonzero_millis(
                "doc_rate_abuse_ms",
                s.doc_rate_abuse_ms,
                d.rate_abuse_after,
            )?,
            awareness_max_ids: nonzero(
                "doc_awareness_max_ids",
                s.doc_awareness_max_ids,
                d.awareness_max_ids,
            )?,
            awareness_max_state_bytes: nonzero(
                "doc_awareness_max_state_bytes",
                s.doc_awareness_max_state_bytes,
                d.awareness_max_state_bytes,
            )?,
            awareness_chunk_bytes: nonzero(
                "doc_awareness_chunk_bytes",
                s.doc_awareness_chunk_bytes,
                d.awareness_chunk_bytes,
            )?,
            awareness: nimbus_doc::AwarenessLimits {
                max_states: nonzero(
                    "doc_awareness_max_states",
                    s.doc_awareness_max_states,
                    d.awareness.max_states,
                )?,
                max_bytes: nonzero(
                    "doc_awareness_max_room_bytes",
                    s.doc_awareness_max_room_bytes,
                    d.awareness.max_bytes,
                )?,
                ..d.awareness
            },
            stats: d.stats,
            batch_delay: crate::setting::batch_delay(
                "doc_max_batch_delay_us",
                s.doc_max_batch_delay_us,
                d.batch_delay,
            )?,
        })
    }
}

impl Default for DocLimits {
    fn default() -> Self {
        let serve = nimbus_doc::ServeOptions::default();
        DocLimits {
            max_message_bytes: 16 << 20,
            max_doc_bytes: 64 << 20,
            max_rooms: 16_384,
            tokens: Vec::new(),
            awareness_timeout: Duration::from_secs(30),
            compaction: crate::store::CompactionPolicy::default(),
            queue_bytes: serve.queue_bytes,
            send_timeout: serve.send_timeout,
            sync_send_timeout: serve.sync_send_timeout,
            update_rate: serve.update_rate,
            awareness_rate: serve.awareness_rate,
            rate_abuse_after: serve.rate_abuse_after,
            awareness_max_ids: serve.awareness_max_ids,
            awareness_max_state_bytes: serve.awareness_max_state_bytes,
            awareness_chunk_bytes: serve.awareness_chunk_bytes,
            awareness: nimbus_doc::AwarenessLimits::default(),
            stats: std::sync::Arc::default(),
            batch_delay: Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_connections_batch_only_when_asked_and_within_the_shared_bound() {
        let d = DocLimits::from_settings(&DocSettings::default()).map(|l| l.batch_delay);
        assert_eq!(d, Ok(Duration::ZERO), "off by default");
        let set = |us| DocSettings {
            doc_max_batch_delay_us: Some(us),
            ..DocSettings::default()
        };
        let l = DocLimits::from_settings(&set(8000)).map(|l| l.serve_options(false).batch_delay);
        assert_eq!(l, Ok(Duration::from_millis(8)), "reaches every connection");
        let err = DocLimits::from_settings(&set(crate::setting::MAX_BATCH_DELAY_US + 1));
        assert_eq!(
            err.map(|_| ()).map_err(|e| e.key),
            Err("doc_max_batch_delay_us")
        );
    }
}
