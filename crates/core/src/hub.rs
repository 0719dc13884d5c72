//! The hub: room key → room actor. Its lock is taken on join and on unload only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::future::BoxFuture;
use nimbus_proto::cloud::{CloudValue, ValueError};
use tokio::sync::{mpsc, oneshot};

use crate::cloud::metrics::CloudMetrics;
use crate::cloud::settings::CloudLimits;
use crate::events::EventBus;
use crate::replication::ReplicationMetrics;
use crate::replication::{CloudReplication, Feed, OrderedChange, Variables};
use crate::room::{JoinError, Room, RoomCmd, RoomContext, Subscriber};
use crate::store::metrics::StoreMetrics;
use crate::store::Store;

pub use crate::room::SERVER_SENDER;

/// Why an operator action (IPC route, HTTP API) failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The name or value is refused by the room's rules.
    #[error("{0}")]
    Invalid(String),
    /// The value is longer than `max_value_len`.
    #[error("{0}")]
    TooLong(String),
    /// The room is not loaded and the server holds `max_rooms` rooms.
    #[error("the server has too many rooms loaded")]
    TooManyRooms,
    /// The room went away while handling the request.
    #[error("the room is unavailable")]
    Unavailable,
    /// The store cannot write: the change is refused (`docs/security.md`, "Store failures").
    #[error("store unavailable: changes cannot be stored right now")]
    StoreUnavailable,
    /// The change would create a variable in a room that holds `max_variables_per_room`.
    #[error("the room holds the most variables it may hold")]
    TooManyVariables,
}

/// Capacity of each room's command channel: a publisher faster than its room
/// waits here (and so, through TCP, at its socket).
const ROOM_QUEUE: usize = 1024;

/// A handle to a live room.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    id: u64,
    tx: mpsc::Sender<RoomCmd>,
}

impl RoomHandle {
    /// Send a command; `false` if the room has gone away.
    pub async fn send(&self, cmd: RoomCmd) -> bool {
        self.tx.send(cmd).await.is_ok()
    }
}

/// All live rooms, and what they share.
#[derive(Debug)]
pub struct Hub {
    rooms: Mutex<HashMap<Arc<str>, RoomHandle>>,
    next_id: AtomicU64,
    /// The store rooms load from and write to.
    pub store: Store,
    /// Cloud limits and policies.
    pub limits: Arc<CloudLimits>,
    /// The cloud's metrics.
    pub metrics: Arc<CloudMetrics>,
    /// Counts changes refused while the store cannot write.
    store_metrics: Arc<StoreMetrics>,
    /// Catch-ups of an order kept elsewhere (given to every room).
    replication_metrics: ReplicationMetrics,
    /// Room events (cloud changes, joins, leaves) for listeners such as the gateway.
    pub events: Arc<EventBus>,
    /// What orders and keeps the cloud rooms' changes (in process, or Redis), chosen by
    /// the composition root (`Server::bind`).
    pub replication: Arc<dyn CloudReplication>,
    /// Reads of rooms not loaded here (each a load through the store's one thread, or
    /// Redis) running at once.
    stored_reads: Arc<tokio::sync::Semaphore>,
}

/// How many reads of rooms that are not loaded ([`Hub::variables`]: the API, IPC) run at
/// once; more wait. Each is a load of up to the room's whole state, queued on the store's
/// one thread with every commit.
pub const STORED_READS: usize = 4;

impl Hub {
    /// A hub with no rooms whose cloud rooms replicate through `replication` (the hub
    /// subscribes to it: changes made elsewhere reach its loaded rooms). `events` is the
    /// bus `replication` publishes on. `rooms` is what every room gets.
    pub fn new(
        store: Store,
        rooms: RoomContext,
        store_metrics: Arc<StoreMetrics>,
        events: Arc<EventBus>,
    ) -> Arc<Hub> {
        let replication = rooms.replication.clone();
        let hub = Arc::new(Hub {
            rooms: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            store,
            limits: rooms.limits,
            metrics: rooms.metrics,
            store_metrics,
            replication_metrics: rooms.replication_metrics,
            events,
            replication: replication.clone(),
            stored_reads: Arc::new(tokio::sync::Semaphore::new(STORED_READS)),
        });
        let feed: Arc<dyn Feed> = hub.clone();
        replication.subscribe(Arc::downgrade(&feed));
        hub
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<Arc<str>, RoomHandle>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of loaded rooms.
    pub fn room_count(&self) -> usize {
        self.rooms().len()
    }

    /// The live room, if loaded.
    pub fn get(&self, key: &str) -> Option<RoomHandle> {
        self.rooms().get(key).cloned()
    }

    fn get_or_create(self: &Arc<Self>, key: &str) -> Result<RoomHandle, JoinError> {
        let mut rooms = self.rooms();
        if let Some(h) = rooms.get(key) {
            return Ok(h.clone());
        }
        if rooms.len() >= self.limits.max_rooms {
            return Err(JoinError::TooManyRooms);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key: Arc<str> = Arc::from(key);
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        let handle = RoomHandle { id, tx };
        rooms.insert(key.clone(), handle.clone());
        self.metrics.rooms.set(rooms.len() as i64);
        drop(rooms);
        let ctx = RoomContext {
            limits: self.limits.clone(),
            replication: self.replication.clone(),
            metrics: self.metrics.clone(),
            replication_metrics: self.replication_metrics.clone(),
        };
        let hub = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut rx = rx;
            let mut room = Room::new(key.clone(), ctx);
            let why = room.serve(&mut rx).await;
            if let Some(hub) = hub.upgrade() {
                hub.release(&key, id);
            }
            room.drain(rx, why).await;
        });
        Ok(handle)
    }

    /// Join `sub` to room `key`, loading the room first if needed.
    pub async fn join(
        self: &Arc<Self>,
        key: &str,
        sub: Subscriber,
    ) -> Result<RoomHandle, JoinError> {
        // A room that is unloading answers Retry; the next attempt creates a fresh one.
        for _ in 0..8 {
            let handle = self.get_or_create(key)?;
            let (reply, rx) = oneshot::channel();
            if !handle
                .send(RoomCmd::Join {
                    sub: sub.clone(),
                    reply,
                })
                .await
            {
                continue;
            }
            match rx.await {
                Ok(Ok(())) => return Ok(handle),
                Ok(Err(JoinError::Retry)) | Err(_) => continue,
                Ok(Err(e)) => return Err(e),
            }
        }
        Err(JoinError::Unavailable)
    }

    /// Unregister room `key` if it is still the instance `id` (its actor stopped serving).
    fn release(&self, key: &str, id: u64) {
        let mut rooms = self.rooms();
        if rooms.get(key).is_some_and(|h| h.id == id) {
            rooms.remove(key);
        }
        self.metrics.rooms.set(rooms.len() as i64);
    }

    /// Keys of the loaded rooms, sorted.
    pub fn room_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.rooms().keys().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    }

    /// The room an operator's set goes to, once the name and value pass the room's rules
    /// and the change can be kept (loads the room if needed).
    fn admit_set(
        self: &Arc<Self>,
        room: &str,
        name: &str,
        value: &CloudValue,
    ) -> Result<RoomHandle, AdminError> {
        nimbus_proto::cloud::validate_name(name, self.limits.max_name_len)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        value
            .validate(self.limits.profile, self.limits.max_value_len)
            .map_err(|e| match e {
                ValueError::TooLong { .. } => AdminError::TooLong(e.to_string()),
                _ => AdminError::Invalid(e.to_string()),
            })?;
        if !self.replication.can_commit() {
            self.store_metrics.refused("api");
            return Err(AdminError::StoreUnavailable);
        }
        self.get_or_create(room)
            .map_err(|_| AdminError::TooManyRooms)
    }

    /// Set a variable as the server (validated like a client's set; broadcast to the
    /// whole room; loads the room if needed).
    pub async fn set_variable(
        self: &Arc<Self>,
        room: &str,
        name: &str,
        value: CloudValue,
    ) -> Result<(), AdminError> {
        let handle = self.admit_set(room, name, &value)?;
        let cmd = RoomCmd::Set {
            from: SERVER_SENDER,
            name: name.to_owned(),
            value,
        };
        if handle.send(cmd).await {
            Ok(())
        } else {
            Err(AdminError::Unavailable)
        }
    }

    /// Set (or create) a variable as the server, like [`Hub::set_variable`], and wait
    /// until the room's replication ordered it (in process: applied, stored and sent; with
    /// Redis: written there, so every node's room applies it): the HTTP API's `PUT`.
    pub async fn put_variable(
        self: &Arc<Self>,
        room: &str,
        name: &str,
        value: CloudValue,
    ) -> Result<(), AdminError> {
        let handle = self.admit_set(room, name, &value)?;
        let (reply, rx) = oneshot::channel();
        let cmd = RoomCmd::Put {
            name: name.to_owned(),
            value,
            reply,
        };
        if !handle.send(cmd).await {
            return Err(AdminError::Unavailable);
        }
        match rx.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AdminError::TooManyVariables),
            // The replication could not keep it (store or backplane unavailable).
            Err(_) => Err(AdminError::StoreUnavailable),
        }
    }

    /// Delete every variable of room `room`, each through the room's normal path (one
    /// delete after the other, as if a client had sent them: ordered, stored, replicated,
    /// an event each). `Ok(None)` when the room has no variable; else how many were
    /// deleted (a variable created while this runs may stay).
    pub async fn clear_room(self: &Arc<Self>, room: &str) -> Result<Option<usize>, AdminError> {
        let vars = self
            .variables(room)
            .await
            .map_err(|_| AdminError::StoreUnavailable)?;
        let Some(vars) = vars.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let mut deleted = 0;
        for (name, _) in vars {
            if self.delete_variable(room, &name).await? {
                deleted += 1;
            }
        }
        Ok(Some(deleted))
    }

    /// Delete a variable; `Ok(false)` if the room has no such variable.
    pub async fn delete_variable(
        self: &Arc<Self>,
        room: &str,
        name: &str,
    ) -> Result<bool, AdminError> {
        if !self.replication.can_commit() {
            self.store_metrics.refused("api");
            return Err(AdminError::StoreUnavailable);
        }
        let handle = self
            .get_or_create(room)
            .map_err(|_| AdminError::TooManyRooms)?;
        let (reply, rx) = oneshot::channel();
        let cmd = RoomCmd::Delete {
            from: SERVER_SENDER,
            name: name.to_owned(),
            reply,
        };
        if !handle.send(cmd).await {
            return Err(AdminError::Unavailable);
        }
        // A dropped reply: the replication could not keep the change.
        rx.await.map_err(|_| AdminError::StoreUnavailable)
    }

    /// Close every connection of `user` (case-insensitive) in a live room with 4002;
    /// returns how many were closed.
    pub async fn kick(&self, room: &str, user: &str) -> usize {
        let Some(handle) = self.get(room) else {
            return 0;
        };
        let (reply, rx) = oneshot::channel();
        let cmd = RoomCmd::Kick {
            user: user.to_owned(),
            reply,
        };
        if !handle.send(cmd).await {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// A room's variables: from the live room, else from the store. `None` if it has none.
    pub async fn variables(
        &self,
        key: &str,
    ) -> Result<Option<Vec<(Arc<str>, CloudValue)>>, crate::store::StoreError> {
        if let Some(h) = self.get(key) {
            let (reply, rx) = oneshot::channel();
            if h.send(RoomCmd::Snapshot { reply }).await {
                if let Ok(vars) = rx.await {
                    return Ok(Some(vars));
                }
            }
        }
        // At most STORED_READS at once, each in its own task holding its permit to the end:
        // a reader that hangs up does not leave its load running unbounded.
        let permit = self.stored_reads.clone().acquire_owned().await;
        let (repl, key) = (self.replication.clone(), key.to_owned());
        let reading = tokio::spawn(async move {
            let _permit = permit;
            repl.load(&key).await
        });
        let vars = reading
            .await
            .map_err(|e| crate::store::StoreError::Backend {
                backend: "cloud",
                source: format!("reading the room: {e}").into(),
            })??
            .vars;
        Ok((!vars.is_empty()).then(|| vars.into_iter().map(|v| (v.name, v.value)).collect()))
    }
}

/// Changes ordered elsewhere reach the loaded rooms through the hub.
impl Feed for Hub {
    fn changed(&self, change: OrderedChange) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(room) = self.get(&change.room) {
                room.send(RoomCmd::Replicated(Box::new(change))).await;
            }
        })
    }

    fn resync_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for key in self.room_keys() {
                if let Some(room) = self.get(&key) {
                    room.send(RoomCmd::Resync).await;
                }
            }
        })
    }

    fn variables<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Option<Variables>> {
        Box::pin(async move {
            let handle = self.get(room)?;
            let (reply, rx) = oneshot::channel();
            if !handle.send(RoomCmd::Snapshot { reply }).await {
                return None;
            }
            rx.await.ok()
        })
    }
}
