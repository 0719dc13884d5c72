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
    /// With a Redis backplane: the event's id in the global event stream (its place in
    /// the order every node's gateway follows); `None` on a single node.
    pub gid: Option<crate::backplane::StreamId>,
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
            s.lock().expect("lock").push(e.kind);
        }));
        assert!(bus.is_active());
        let ev = RoomEvent {
            room: Arc::from("r"),
            kind: EventKind::CloudSet,
            data: serde_json::json!({"room": "r"}),
            user: None,
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
            s.lock().expect("lock").push(e.kind);
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
}
