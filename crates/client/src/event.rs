//! Events and the listener registry (`on` / `once` / `off` / `listeners`).

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nimbus_proto::cloud::CloudValue;
use tokio::sync::broadcast;

use crate::CloudError;

/// A cloud variable as delivered to event listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudVariable {
    /// Full name as on the wire (with the `"☁ "` prefix).
    pub name: String,
    /// The value, keeping its JSON type.
    pub value: CloudValue,
    /// Whether this connection made the change.
    pub by_us: bool,
}

impl CloudVariable {
    /// The name without its cloud prefix.
    pub fn bare_name(&self) -> &str {
        nimbus_proto::cloud::bare_name(&self.name)
    }
}

/// Something that happened on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The WebSocket handshake completed.
    Handshake,
    /// The protocol handshake was sent: the connection is ready.
    Connect,
    /// Text was sent to the server (exactly as sent).
    Outgoing(String),
    /// A variable changed, whoever changed it (including us).
    Change(CloudVariable),
    /// A variable changed by someone else.
    Set(CloudVariable),
    /// A variable was seen for the first time, or created by us.
    Create(CloudVariable),
    /// We deleted a variable (servers do not broadcast deletes). Holds the full name.
    Delete(String),
    /// The connection ended.
    Disconnect {
        /// Close code, if the server sent one.
        code: Option<u16>,
        /// Close reason or error text.
        reason: String,
    },
    /// A reconnect attempt is about to start.
    Reconnect {
        /// Attempt number since the last successful connection (1-based).
        attempt: u32,
    },
}

/// The kind of an [`Event`], named as in the seed API (`"set"`, `"change"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `"handshake"`
    Handshake,
    /// `"connect"`
    Connect,
    /// `"outgoing"`
    Outgoing,
    /// `"change"`
    Change,
    /// `"set"`
    Set,
    /// `"create"`
    Create,
    /// `"delete"`
    Delete,
    /// `"disconnect"`
    Disconnect,
    /// `"reconnect"`
    Reconnect,
}

impl Event {
    /// This event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Handshake => EventKind::Handshake,
            Event::Connect => EventKind::Connect,
            Event::Outgoing(_) => EventKind::Outgoing,
            Event::Change(_) => EventKind::Change,
            Event::Set(_) => EventKind::Set,
            Event::Create(_) => EventKind::Create,
            Event::Delete(_) => EventKind::Delete,
            Event::Disconnect { .. } => EventKind::Disconnect,
            Event::Reconnect { .. } => EventKind::Reconnect,
        }
    }

    /// The variable carried by `change`, `set` and `create` events.
    pub fn variable(&self) -> Option<&CloudVariable> {
        match self {
            Event::Change(v) | Event::Set(v) | Event::Create(v) => Some(v),
            _ => None,
        }
    }
}

impl FromStr for EventKind {
    type Err = CloudError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "handshake" => EventKind::Handshake,
            "connect" => EventKind::Connect,
            "outgoing" => EventKind::Outgoing,
            "change" => EventKind::Change,
            "set" => EventKind::Set,
            "create" => EventKind::Create,
            "delete" => EventKind::Delete,
            "disconnect" => EventKind::Disconnect,
            "reconnect" => EventKind::Reconnect,
            other => return Err(CloudError::UnknownEvent(other.to_owned())),
        })
    }
}

/// Identifies a registered listener, for [`crate::CloudConnection::off`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(u64);

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Clone)]
enum Callback {
    Sync(Arc<dyn Fn(&Event) + Send + Sync>),
    Async(Arc<dyn Fn(Event) -> BoxFuture + Send + Sync>),
}

struct Listener {
    id: ListenerId,
    kind: EventKind,
    once: bool,
    callback: Callback,
}

/// Listener registry plus a broadcast channel for [`crate::CloudConnection::events`].
pub(crate) struct Emitter {
    listeners: Mutex<Vec<Listener>>,
    next: AtomicU64,
    stream: broadcast::Sender<Event>,
}

impl Emitter {
    pub(crate) fn new() -> Emitter {
        Emitter {
            listeners: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            stream: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Listener>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, kind: EventKind, once: bool, callback: Callback) -> ListenerId {
        let id = ListenerId(self.next.fetch_add(1, Ordering::Relaxed));
        self.lock().push(Listener {
            id,
            kind,
            once,
            callback,
        });
        id
    }

    pub(crate) fn on_sync(
        &self,
        kind: EventKind,
        once: bool,
        f: impl Fn(&Event) + Send + Sync + 'static,
    ) -> ListenerId {
        self.add(kind, once, Callback::Sync(Arc::new(f)))
    }

    pub(crate) fn on_async<F, Fut>(&self, kind: EventKind, once: bool, f: F) -> ListenerId
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.add(
            kind,
            once,
            Callback::Async(Arc::new(move |e| Box::pin(f(e)))),
        )
    }

    pub(crate) fn off(&self, id: ListenerId) -> bool {
        let mut l = self.lock();
        let before = l.len();
        l.retain(|x| x.id != id);
        l.len() != before
    }

    pub(crate) fn listeners(&self, kind: EventKind) -> Vec<ListenerId> {
        self.lock()
            .iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.id)
            .collect()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.stream.subscribe()
    }

    /// Call every listener of the event's kind (outside the lock), drop `once` ones.
    pub(crate) fn emit(&self, event: Event) {
        let kind = event.kind();
        let callbacks: Vec<Callback> = {
            let mut l = self.lock();
            let picked = l
                .iter()
                .filter(|x| x.kind == kind)
                .map(|x| x.callback.clone())
                .collect();
            l.retain(|x| !(x.once && x.kind == kind));
            picked
        };
        for cb in callbacks {
            match cb {
                Callback::Sync(f) => f(&event),
                Callback::Async(f) => {
                    tokio::spawn(f(event.clone()));
                }
            }
        }
        let _ = self.stream.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn event_keys_match_the_seed() {
        for k in [
            "handshake",
            "connect",
            "outgoing",
            "change",
            "set",
            "create",
            "delete",
        ] {
            assert!(k.parse::<EventKind>().is_ok(), "{k}");
        }
        assert!(matches!(
            "sett".parse::<EventKind>(),
            Err(CloudError::UnknownEvent(_))
        ));
    }

    #[test]
    fn on_once_off_and_listeners() {
        let e = Emitter::new();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let a = e.on_sync(EventKind::Connect, false, move |_| {
            h.fetch_add(1, Ordering::SeqCst);
        });
        let h = hits.clone();
        let b = e.on_sync(EventKind::Connect, true, move |_| {
            h.fetch_add(10, Ordering::SeqCst);
        });
        assert_eq!(e.listeners(EventKind::Connect), vec![a, b]);
        assert!(e.listeners(EventKind::Set).is_empty());
        e.emit(Event::Connect);
        e.emit(Event::Connect);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            12,
            "once fired once, on fired twice"
        );
        assert_eq!(e.listeners(EventKind::Connect), vec![a]);
        assert!(e.off(a));
        assert!(!e.off(a));
        e.emit(Event::Connect);
        assert_eq!(hits.load(Ordering::SeqCst), 12);
    }

    #[test]
    fn a_listener_may_register_another_without_deadlock() {
        let e = Arc::new(Emitter::new());
        let e2 = e.clone();
        e.on_sync(EventKind::Connect, true, move |_| {
            e2.on_sync(EventKind::Set, false, |_| {});
        });
        e.emit(Event::Connect);
        assert_eq!(e.listeners(EventKind::Set).len(), 1);
    }
}
