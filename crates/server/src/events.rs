//! The hub-level event bus: room actors publish every accepted change
//! ([`RoomEvent`]); listeners such as the gateway subscribe.
//!
//! Listeners are called synchronously, in the publishing room actor, in the room's
//! order, so a listener sees each room's events in order and none is lost. A listener
//! must therefore be quick and must not block (the gateway appends to bounded buffers).
//! With no listener, [`EventBus::is_active`] is one relaxed atomic load: publishers check
//! it before building an event, so the cloud fan-out path pays nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

pub use nimbus_proto::gateway::EventKind;

/// One room event.
#[derive(Debug, Clone)]
pub struct RoomEvent {
    /// Room key.
    pub room: Arc<str>,
    /// What happened.
    pub kind: EventKind,
    /// The event's JSON body (the gateway's `d`): always has `room`; cloud events have
    /// `name` and `value`; `DOC_UPDATE` has `update` (base64 of a Yjs v1 update) and
    /// optionally `origin`.
    pub data: serde_json::Value,
    /// Username of the client that caused it, when known.
    pub user: Option<Arc<str>>,
}

/// A subscriber callback.
pub type Listener = Arc<dyn Fn(&RoomEvent) + Send + Sync>;

/// A listener registration, for [`EventBus::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerId(u64);

/// Publish/subscribe of room events (see the module docs).
#[derive(Default)]
pub struct EventBus {
    active: AtomicBool,
    next: AtomicU64,
    listeners: RwLock<Vec<(u64, Listener)>>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

impl EventBus {
    /// Whether anyone listens (publishers skip building events otherwise).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Add a listener.
    pub fn subscribe(&self, listener: Listener) -> ListenerId {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut l = self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        l.push((id, listener));
        self.active.store(true, Ordering::Relaxed);
        ListenerId(id)
    }

    /// Remove a listener.
    pub fn unsubscribe(&self, id: ListenerId) {
        let mut l = self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        l.retain(|(i, _)| *i != id.0);
        self.active.store(!l.is_empty(), Ordering::Relaxed);
    }

    /// Hand `event` to every listener, in subscription order.
    pub fn publish(&self, event: &RoomEvent) {
        if !self.is_active() {
            return;
        }
        let l = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, f) in l.iter() {
            f(event);
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
            s.lock().expect("lock").push(e.kind);
        }));
        assert!(bus.is_active());
        let ev = RoomEvent {
            room: Arc::from("r"),
            kind: EventKind::CloudSet,
            data: serde_json::json!({"room": "r"}),
            user: None,
        };
        bus.publish(&ev);
        bus.unsubscribe(id);
        assert!(!bus.is_active());
        bus.publish(&ev);
        assert_eq!(*seen.lock().expect("lock"), vec![EventKind::CloudSet]);
    }
}
