//! The hub-level event bus: room actors publish every accepted change
//! ([`RoomEvent`]); listeners such as the gateway subscribe.
//!
//! Listeners are called synchronously, in the publishing room actor, in the room's
//! order, so a listener sees each room's events in order and none is lost. A listener
//! must therefore be quick and must not block (the gateway appends to bounded buffers).
//! With no interested listener, [`EventBus::is_active`] is one atomic load: publishers
//! check it before building an event, so the cloud fan-out path pays nothing. A listener
//! that has nobody to forward to (the gateway without sessions) switches its [`Interest`]
//! off.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use nimbus_proto::backplane::StreamId;
use nimbus_proto::cloud::CloudValue;
use serde::ser::{Serialize, SerializeMap, Serializer};

pub use nimbus_proto::gateway::EventKind;

/// One room event: who, where, what. Built once by whoever saw it happen (the room
/// actor, the document rooms, the backplane subscription); its gateway JSON (`d`) comes
/// from [`RoomEvent::to_json`] and nowhere else.
///
/// This module depends on no web, Redis or SQLite crate (it is meant to move to a core
/// crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEvent {
    /// Room key.
    pub room: Arc<str>,
    /// Username of the cloud client that caused it; `None` for a server-side change
    /// (IPC, API) and for document updates.
    pub user: Option<Arc<str>>,
    /// What happened.
    pub body: EventBody,
    /// With a Redis backplane: the event's id in the global event stream (its place in
    /// the order every node's gateway follows); `None` on a single node.
    pub gid: Option<StreamId>,
}

/// What happened in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventBody {
    /// The first set of a variable (`CLOUD_CREATE`).
    CloudCreate {
        /// Variable name.
        name: Arc<str>,
        /// Its value.
        value: CloudValue,
    },
    /// A later set (`CLOUD_SET`).
    CloudSet {
        /// Variable name.
        name: Arc<str>,
        /// The new value.
        value: CloudValue,
    },
    /// A rename (`CLOUD_RENAME`).
    CloudRename {
        /// The old name.
        name: Arc<str>,
        /// The new name.
        new_name: Arc<str>,
        /// The variable's value. `None` only for a change published through Redis by a
        /// node of the previous version (which did not carry it) in a room this node
        /// does not hold: the JSON says `null`.
        value: Option<CloudValue>,
    },
    /// A delete (`CLOUD_DELETE`).
    CloudDelete {
        /// Variable name.
        name: Arc<str>,
        /// The value it had; `None` as for [`EventBody::CloudRename`].
        value: Option<CloudValue>,
    },
    /// A cloud client joined the room (`ROOM_JOIN`).
    Join {
        /// Its connection id (unique per node).
        conn: u64,
    },
    /// A cloud client left (`ROOM_LEAVE`; also kicks and slow-consumer cuts).
    Leave {
        /// Its connection id.
        conn: u64,
    },
    /// A Yjs document changed (`DOC_UPDATE`).
    DocUpdate {
        /// The Yjs v1 update.
        update: Bytes,
    },
}

impl RoomEvent {
    /// The dispatch kind (`t`), from the body.
    pub fn kind(&self) -> EventKind {
        match &self.body {
            EventBody::CloudCreate { .. } => EventKind::CloudCreate,
            EventBody::CloudSet { .. } => EventKind::CloudSet,
            EventBody::CloudRename { .. } => EventKind::CloudRename,
            EventBody::CloudDelete { .. } => EventKind::CloudDelete,
            EventBody::Join { .. } => EventKind::RoomJoin,
            EventBody::Leave { .. } => EventKind::RoomLeave,
            EventBody::DocUpdate { .. } => EventKind::DocUpdate,
        }
    }

    /// The event's gateway JSON (`d` of its dispatch), written directly (no `Value` tree).
    /// The one place event JSON is made (`docs/gateway.md`, "Events and intents"):
    ///
    /// - cloud: `{"room","name","value","user"}`; `CLOUD_RENAME` adds `"new_name"`
    ///   after `"name"`; `user` is `null` for server-side changes;
    /// - `ROOM_JOIN` / `ROOM_LEAVE`: `{"room","user","conn"}`;
    /// - `DOC_UPDATE`: `{"room","update","bytes"}` (`update` in standard base64, `bytes`
    ///   its decoded length).
    pub fn to_json(&self) -> String {
        // Serialising strings, numbers and null into a Vec cannot fail; the fallback only
        // keeps this total.
        serde_json::to_string(&Dispatch(self)).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The `d` of a [`RoomEvent`] (private: [`RoomEvent::to_json`] is the only way out).
struct Dispatch<'a>(&'a RoomEvent);

impl Serialize for Dispatch<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ev = self.0;
        let user = ev.user.as_deref();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("room", &*ev.room)?;
        match &ev.body {
            EventBody::CloudCreate { name, value } | EventBody::CloudSet { name, value } => {
                m.serialize_entry("name", &**name)?;
                m.serialize_entry("value", &JsonValue(value))?;
                m.serialize_entry("user", &user)?;
            }
            EventBody::CloudRename {
                name,
                new_name,
                value,
            } => {
                m.serialize_entry("name", &**name)?;
                m.serialize_entry("new_name", &**new_name)?;
                m.serialize_entry("value", &value.as_ref().map(JsonValue))?;
                m.serialize_entry("user", &user)?;
            }
            EventBody::CloudDelete { name, value } => {
                m.serialize_entry("name", &**name)?;
                m.serialize_entry("value", &value.as_ref().map(JsonValue))?;
                m.serialize_entry("user", &user)?;
            }
            EventBody::Join { conn } | EventBody::Leave { conn } => {
                m.serialize_entry("user", &user)?;
                m.serialize_entry("conn", conn)?;
            }
            EventBody::DocUpdate { update } => {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(update);
                m.serialize_entry("update", &b64)?;
                m.serialize_entry("bytes", &update.len())?;
            }
        }
        m.end()
    }
}

/// A cloud value as JSON: numbers stay numbers (as serde_json reads the literal), strings
/// stay strings; a number literal serde_json cannot read goes out as a string.
struct JsonValue<'a>(&'a CloudValue);

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            CloudValue::String(text) => s.serialize_str(text),
            CloudValue::Number(lit) => match lit.parse::<serde_json::Number>() {
                Ok(n) => n.serialize(s),
                Err(_) => s.serialize_str(lit),
            },
        }
    }
}

/// A cloud value as a JSON value (for replies that are JSON trees, e.g. IPC `cloud.get`);
/// the same rendering as in [`RoomEvent::to_json`].
pub fn json_value(value: &CloudValue) -> serde_json::Value {
    serde_json::to_value(JsonValue(value))
        .unwrap_or_else(|_| serde_json::Value::String(value.as_str().to_owned()))
}

/// A subscriber callback.
pub type Listener = Arc<dyn Fn(&RoomEvent) + Send + Sync>;

/// A listener registration, for [`EventBus::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerId(u64);

/// A listener's switch: while off, publishers skip building events for it (when every
/// listener is off, they skip building events at all). Lock-free, so a listener may flip it
/// while holding its own locks.
#[derive(Debug, Clone)]
pub struct Interest {
    flag: Arc<AtomicBool>,
    interested: Arc<AtomicUsize>,
}

impl Interest {
    /// Switch on or off.
    pub fn set(&self, on: bool) {
        if self.flag.swap(on, Ordering::AcqRel) != on {
            if on {
                self.interested.fetch_add(1, Ordering::AcqRel);
            } else {
                self.interested.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Publish/subscribe of room events (see the module docs).
#[derive(Default)]
pub struct EventBus {
    interested: Arc<AtomicUsize>,
    next: AtomicU64,
    listeners: RwLock<Vec<(u64, Listener, Arc<AtomicBool>)>>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

impl EventBus {
    /// Whether any listener is interested (publishers skip building events otherwise).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.interested.load(Ordering::Acquire) > 0
    }

    /// Add a listener, interested from the start.
    pub fn subscribe(&self, listener: Listener) -> ListenerId {
        self.subscribe_with_interest(listener).0
    }

    /// Add a listener and get its [`Interest`] switch (initially on).
    pub fn subscribe_with_interest(&self, listener: Listener) -> (ListenerId, Interest) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let flag = Arc::new(AtomicBool::new(true));
        let mut l = self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        l.push((id, listener, flag.clone()));
        self.interested.fetch_add(1, Ordering::AcqRel);
        let interest = Interest {
            flag,
            interested: self.interested.clone(),
        };
        (ListenerId(id), interest)
    }

    /// Remove a listener.
    pub fn unsubscribe(&self, id: ListenerId) {
        let mut l = self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        l.retain(|(i, _, flag)| {
            if *i != id.0 {
                return true;
            }
            // Switch it off for good (adjusts the count at most once).
            Interest {
                flag: flag.clone(),
                interested: self.interested.clone(),
            }
            .set(false);
            false
        });
    }

    /// Hand `event` to every interested listener, in subscription order.
    pub fn publish(&self, event: &RoomEvent) {
        if !self.is_active() {
            return;
        }
        let l = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, f, flag) in l.iter() {
            if flag.load(Ordering::Acquire) {
                f(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn listeners_see_events_until_unsubscribed() {
        let bus = EventBus::default();
        assert!(!bus.is_active());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let id = bus.subscribe(Arc::new(move |e: &RoomEvent| {
            s.lock().expect("lock").push(e.kind());
        }));
        assert!(bus.is_active());
        let ev = RoomEvent {
            room: Arc::from("r"),
            user: None,
            body: EventBody::CloudSet {
                name: Arc::from("x"),
                value: CloudValue::Number("1".into()),
            },
            gid: None,
        };
        bus.publish(&ev);
        bus.unsubscribe(id);
        assert!(!bus.is_active());
        bus.publish(&ev);
        assert_eq!(*seen.lock().expect("lock"), vec![EventKind::CloudSet]);
        // An Interest switch turns publishing off and on.
        let s = seen.clone();
        let (_, interest) = bus.subscribe_with_interest(Arc::new(move |e: &RoomEvent| {
            s.lock().expect("lock").push(e.kind());
        }));
        interest.set(false);
        interest.set(false);
        assert!(!bus.is_active());
        bus.publish(&ev);
        interest.set(true);
        assert!(bus.is_active());
        bus.publish(&ev);
        assert_eq!(seen.lock().expect("lock").len(), 2);
    }

    fn event(user: Option<&str>, body: EventBody) -> RoomEvent {
        RoomEvent {
            room: Arc::from("7"),
            user: user.map(Arc::from),
            body,
            gid: None,
        }
    }

    fn num(lit: &str) -> CloudValue {
        CloudValue::Number(lit.into())
    }

    /// Every body kind, its `t` and its exact `d` (docs/gateway.md, "Events and intents").
    #[test]
    fn every_event_body_has_the_documented_kind_and_json() {
        let cases = [
            (
                event(
                    Some("alice"),
                    EventBody::CloudCreate {
                        name: "☁ x".into(),
                        value: num("1.50"),
                    },
                ),
                "CLOUD_CREATE",
                r#"{"room":"7","name":"☁ x","value":1.5,"user":"alice"}"#,
            ),
            (
                event(
                    None,
                    EventBody::CloudSet {
                        name: "☁ x".into(),
                        value: CloudValue::String("a \"b\"\n".into()),
                    },
                ),
                "CLOUD_SET",
                r#"{"room":"7","name":"☁ x","value":"a \"b\"\n","user":null}"#,
            ),
            (
                event(
                    Some("alice"),
                    EventBody::CloudRename {
                        name: "☁ x".into(),
                        new_name: "☁ y".into(),
                        value: Some(num("-3")),
                    },
                ),
                "CLOUD_RENAME",
                r#"{"room":"7","name":"☁ x","new_name":"☁ y","value":-3,"user":"alice"}"#,
            ),
            (
                event(
                    None,
                    EventBody::CloudRename {
                        name: "☁ x".into(),
                        new_name: "☁ y".into(),
                        value: None,
                    },
                ),
                "CLOUD_RENAME",
                r#"{"room":"7","name":"☁ x","new_name":"☁ y","value":null,"user":null}"#,
            ),
            (
                event(
                    None,
                    EventBody::CloudDelete {
                        name: "☁ y".into(),
                        value: Some(CloudValue::String("12".into())),
                    },
                ),
                "CLOUD_DELETE",
                r#"{"room":"7","name":"☁ y","value":"12","user":null}"#,
            ),
            (
                event(
                    Some("bob"),
                    EventBody::CloudDelete {
                        name: "☁ y".into(),
                        value: None,
                    },
                ),
                "CLOUD_DELETE",
                r#"{"room":"7","name":"☁ y","value":null,"user":"bob"}"#,
            ),
            (
                event(Some("alice"), EventBody::Join { conn: 12 }),
                "ROOM_JOIN",
                r#"{"room":"7","user":"alice","conn":12}"#,
            ),
            (
                event(Some("alice"), EventBody::Leave { conn: 12 }),
                "ROOM_LEAVE",
                r#"{"room":"7","user":"alice","conn":12}"#,
            ),
            (
                event(
                    None,
                    EventBody::DocUpdate {
                        update: Bytes::from_static(&[0, 1, 2, 255]),
                    },
                ),
                "DOC_UPDATE",
                r#"{"room":"7","update":"AAEC/w==","bytes":4}"#,
            ),
        ];
        for (ev, t, d) in cases {
            assert_eq!(ev.kind().name(), t, "{ev:?}");
            assert_eq!(ev.to_json(), d, "{ev:?}");
            // It is JSON, and an object.
            let parsed: serde_json::Value = serde_json::from_str(&ev.to_json()).expect("json");
            assert!(parsed.is_object());
        }
    }

    #[test]
    fn number_values_render_as_json_numbers_and_unreadable_literals_as_strings() {
        for (lit, want) in [
            ("0", "0"),
            ("1.0", "1.0"),
            ("-2.5e3", "-2500.0"),
            ("12345678901234567890", "12345678901234567890"),
        ] {
            assert_eq!(json_value(&num(lit)).to_string(), want, "{lit}");
        }
        assert_eq!(json_value(&num("1e999")), serde_json::json!("1e999"));
        assert_eq!(
            json_value(&CloudValue::String("1".into())),
            serde_json::json!("1")
        );
    }
}
