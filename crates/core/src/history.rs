//! Cloud history: each cloud room's recent changes, as Scratch's clouddata log API
//! answers them (`GET /logs?projectid=ID&limit=N&offset=M`, `docs/integrations.md`).
//!
//! An entry is written from the room's events ([`HistoryEntry::from_event`]), kept per room
//! under a [`Retention`] (count and age), and read newest first through the
//! [`HistoryLog`] seam:
//!
//! - one node: [`StoreHistory`], a listener on the [`EventBus`] that queues a
//!   [`StoreOp::HistoryAppend`] per cloud change (group commit with every other write;
//!   the backend trims the room to the retention in the same transaction);
//! - `--redis`: `nimbus_redis::history::RedisHistory` (the cloud script appends each
//!   change to the room's capped list where Redis orders it).
//!
//! Best effort: an entry is not a promise the change is durable (the change itself is
//! kept by the replication); while the store cannot write, entries are dropped.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::events::{EventBus, RoomEvent};
use crate::store::{Store, StoreError, StoreOp};

pub use crate::store::history::{
    now_ms, HistoryEntry, Retention, Verb, DEFAULT_MAX_AGE, DEFAULT_MAX_ENTRIES,
};
/// Default `limit` of a read (Scratch's).
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` of a read.
pub const MAX_LIMIT: usize = 1000;
/// Largest `offset` of a read.
pub const MAX_OFFSET: usize = 100_000;

/// Entries as Scratch's log array (in the given order: newest first).
pub fn to_scratch_json(entries: &[HistoryEntry]) -> String {
    serde_json::Value::Array(entries.iter().map(HistoryEntry::to_json).collect()).to_string()
}

/// Where a room's history is read from (chosen by the composition root).
pub trait HistoryLog: Send + Sync + std::fmt::Debug {
    /// Up to `limit` entries of `room`, newest first, after skipping `offset`; entries
    /// past the retention are never returned.
    fn read<'a>(
        &'a self,
        room: &'a str,
        limit: usize,
        offset: usize,
    ) -> BoxFuture<'a, Result<Vec<HistoryEntry>, StoreError>>;
}

/// The single node's history: written to the store from the event bus.
#[derive(Debug, Clone)]
pub struct StoreHistory {
    store: Store,
    retention: Retention,
}

impl StoreHistory {
    /// History kept in `store` under `retention`; call [`StoreHistory::attach`] to feed it.
    pub fn new(store: Store, retention: Retention) -> StoreHistory {
        StoreHistory { store, retention }
    }

    /// Listen to `events`: every cloud change becomes an entry (nothing when history is
    /// off). The listener only queues a store op: it never blocks the room.
    pub fn attach(&self, events: &EventBus) {
        if !self.retention.enabled() {
            return;
        }
        let me = self.clone();
        events.subscribe(Arc::new(move |ev: &RoomEvent| me.record(ev)));
    }

    fn record(&self, ev: &RoomEvent) {
        if !self.store.can_write() {
            return;
        }
        let Some(entry) = HistoryEntry::from_event(ev, now_ms()) else {
            return;
        };
        self.store.apply(StoreOp::HistoryAppend {
            room: ev.room.clone(),
            entry,
            retention: self.retention,
        });
    }
}

impl HistoryLog for StoreHistory {
    fn read<'a>(
        &'a self,
        room: &'a str,
        limit: usize,
        offset: usize,
    ) -> BoxFuture<'a, Result<Vec<HistoryEntry>, StoreError>> {
        Box::pin(async move {
            if !self.retention.enabled() || offset >= self.retention.max_entries {
                return Ok(Vec::new());
            }
            let limit = limit.min(self.retention.max_entries - offset);
            let since = self.retention.oldest_kept(now_ms());
            self.store.history(room, limit, offset, since).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventBody;
    use crate::store::MemoryBackend;
    use nimbus_proto::cloud::CloudValue;
    use std::time::Duration;

    fn ev(user: Option<&str>, body: EventBody) -> RoomEvent {
        RoomEvent {
            room: Arc::from("7"),
            user: user.map(Arc::from),
            body,
            gid: None,
        }
    }

    #[test]
    fn cloud_events_become_scratch_log_objects_and_others_nothing() {
        let set = ev(
            Some("alice"),
            EventBody::CloudSet {
                name: "☁ x".into(),
                value: CloudValue::Number("1.50".into()),
            },
        );
        let e = HistoryEntry::from_event(&set, 1234).expect("entry");
        assert_eq!(
            e.to_json(),
            serde_json::json!({"user":"alice","verb":"set_var","name":"☁ x","value":1.5,"timestamp":1234})
        );
        let create = ev(
            None,
            EventBody::CloudCreate {
                name: "☁ s".into(),
                value: CloudValue::String("hi".into()),
            },
        );
        let e = HistoryEntry::from_event(&create, 1).expect("entry");
        assert_eq!(
            e.to_json(),
            serde_json::json!({"user":"","verb":"create_var","name":"☁ s","value":"hi","timestamp":1})
        );
        let rename = ev(
            Some("bob"),
            EventBody::CloudRename {
                name: "☁ x".into(),
                new_name: "☁ y".into(),
                value: None,
            },
        );
        let e = HistoryEntry::from_event(&rename, 2).expect("entry");
        assert_eq!(e.to_json()["verb"], "rename_var");
        assert_eq!(e.to_json()["value"], "☁ y");
        let del = ev(
            Some("bob"),
            EventBody::CloudDelete {
                name: "☁ y".into(),
                value: None,
            },
        );
        let e = HistoryEntry::from_event(&del, 3).expect("entry");
        assert_eq!(e.to_json()["verb"], "del_var");
        assert!(e.to_json()["value"].is_null());
        assert!(HistoryEntry::from_event(&ev(None, EventBody::Join { conn: 1 }), 1).is_none());
        for v in [Verb::Create, Verb::Set, Verb::Rename, Verb::Delete] {
            assert_eq!(Verb::parse(v.name()), Some(v));
        }
    }

    fn entry(i: u64) -> HistoryEntry {
        HistoryEntry {
            user: Some(Arc::from("u")),
            verb: Verb::Set,
            name: Arc::from("☁ x"),
            value: Arc::from(i.to_string()),
            at_ms: i,
        }
    }

    #[tokio::test]
    async fn the_store_keeps_each_room_newest_first_within_its_retention() {
        let store = Store::spawn(MemoryBackend::default(), Duration::from_millis(1));
        let retention = Retention {
            max_entries: 5,
            max_age: Duration::from_secs(3600),
        };
        let h = StoreHistory::new(store.clone(), retention);
        let bus = EventBus::default();
        h.attach(&bus);
        for i in 0..8u32 {
            bus.publish(&ev(
                Some(if i.is_multiple_of(2) { "a" } else { "b" }),
                EventBody::CloudSet {
                    name: "☁ x".into(),
                    value: CloudValue::Number(i.to_string()),
                },
            ));
        }
        bus.publish(&RoomEvent {
            room: Arc::from("other"),
            ..ev(
                None,
                EventBody::CloudDelete {
                    name: "☁ z".into(),
                    value: None,
                },
            )
        });
        let got = h.read("7", 100, 0).await.expect("read");
        let values: Vec<&str> = got.iter().map(|e| &*e.value).collect();
        assert_eq!(values, ["7", "6", "5", "4", "3"], "newest first, 5 kept");
        assert_eq!(got[0].user.as_deref(), Some("b"));
        let page = h.read("7", 2, 1).await.expect("read");
        let values: Vec<&str> = page.iter().map(|e| &*e.value).collect();
        assert_eq!(values, ["6", "5"]);
        assert!(h.read("7", 10, 5).await.expect("read").is_empty());
        assert_eq!(h.read("other", 10, 0).await.expect("read").len(), 1);
        store.flush().await.expect("flush");
        assert_eq!(h.read("7", 100, 0).await.expect("read").len(), 5);
    }

    #[tokio::test]
    async fn entries_past_their_age_are_not_read() {
        let store = Store::spawn(MemoryBackend::default(), Duration::from_millis(1));
        let r = Retention {
            max_entries: 10,
            max_age: Duration::from_secs(60),
        };
        let old = HistoryEntry {
            at_ms: now_ms() - 120_000,
            ..entry(0)
        };
        let new = HistoryEntry {
            at_ms: now_ms(),
            ..entry(1)
        };
        for e in [old, new] {
            store.apply(StoreOp::HistoryAppend {
                room: Arc::from("r"),
                entry: e,
                retention: r,
            });
        }
        let h = StoreHistory::new(store, r);
        let got = h.read("r", 10, 0).await.expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(&*got[0].value, "1");
    }
}
