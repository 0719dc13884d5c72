//! [`RoomManager`]: room id → live room; creates rooms with a factory and unloads them when
//! their last client leaves (the seed's `RoomManager`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::channel::Channel;
use crate::hooks::HookError;
use crate::room::{Room, ServeError, ServeOptions};

type Factory = dyn Fn(&str) -> Room + Send + Sync + 'static;

struct Inner {
    factory: Box<Factory>,
    rooms: Mutex<HashMap<String, Room>>,
    /// The most rooms kept at once ([`RoomManager::bounded`]).
    max_rooms: usize,
}

/// Why [`RoomManager::get_room`] has no room to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GetRoomError {
    /// The room's load hook failed.
    #[error(transparent)]
    Load(#[from] HookError),
    /// The room is not loaded and the manager holds its most rooms
    /// ([`RoomManager::bounded`]).
    #[error("too many rooms loaded (at most {0})")]
    TooManyRooms(usize),
}

/// The live rooms of a server, by id. Cheap to clone (clones share the rooms).
///
/// [`RoomManager::get_room`] returns the live room or makes one with the factory, spawns its
/// [`Room::run`] and awaits its [load hook](crate::RoomHooks::load); concurrent callers wait
/// for the same load, and a failed load is returned to all of them and the room is not kept.
///
/// A room is unloaded when its last client leaves: it is marked closing while the map's lock
/// is held and its client count is re-checked (so a newcomer never joins a dying room), then
/// its updates are flushed to [`RoomHooks::updated`](crate::RoomHooks::updated),
/// [`RoomHooks::emptied`](crate::RoomHooks::emptied) runs, the room is closed and removed. A
/// client arriving meanwhile waits for that and gets a fresh room, loaded after the flush.
#[derive(Clone)]
pub struct RoomManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RoomManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomManager")
            .field("rooms", &self.room_ids())
            .finish()
    }
}

impl Default for RoomManager {
    fn default() -> Self {
        RoomManager::new(|id: &str| Room::new(id))
    }
}

impl RoomManager {
    /// A manager that makes rooms with `factory(id)` (e.g. `Room::new`).
    pub fn new(factory: impl Fn(&str) -> Room + Send + Sync + 'static) -> RoomManager {
        RoomManager::bounded(factory, usize::MAX)
    }

    /// A manager that keeps at most `max_rooms` rooms at once: a room that is not loaded
    /// is refused beyond it ([`GetRoomError::TooManyRooms`]; a client is closed with 1013).
    /// Checked where rooms are made, with the map locked, so concurrent joins of new rooms
    /// cannot overshoot it. Rooms still unloading count until they are gone.
    pub fn bounded(
        factory: impl Fn(&str) -> Room + Send + Sync + 'static,
        max_rooms: usize,
    ) -> RoomManager {
        RoomManager {
            inner: Arc::new(Inner {
                factory: Box::new(factory),
                rooms: Mutex::new(HashMap::new()),
                max_rooms,
            }),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live (loaded) room `id`, or a new one from the factory, loaded.
    pub async fn get_room(&self, id: &str) -> Result<Room, GetRoomError> {
        loop {
            let (room, fresh) = {
                let mut rooms = self.rooms();
                match rooms.get(id) {
                    Some(room) => (room.clone(), false),
                    None if rooms.len() >= self.inner.max_rooms => {
                        return Err(GetRoomError::TooManyRooms(self.inner.max_rooms));
                    }
                    None => {
                        let room = (self.inner.factory)(id);
                        rooms.insert(id.to_owned(), room.clone());
                        (room, true)
                    }
                }
            };
            if fresh {
                let runner = room.clone();
                tokio::spawn(async move { runner.run().await });
            }
            if room.is_closed() {
                // Unloading: wait until it is gone, then make a fresh one.
                room.closed().await;
                self.remove_if_same(id, &room);
                continue;
            }
            match room.load().await {
                Ok(()) => return Ok(room),
                Err(e) => {
                    if self.remove_if_same(id, &room) {
                        room.close();
                    }
                    return Err(GetRoomError::Load(e));
                }
            }
        }
    }

    fn remove_if_same(&self, id: &str, room: &Room) -> bool {
        let mut rooms = self.rooms();
        if rooms.get(id).is_some_and(|r| r.ptr_eq(room)) {
            rooms.remove(id);
            true
        } else {
            false
        }
    }

    /// Serve one client in room `id` until it leaves; unload the room if it was the last.
    //
    // Not an `async fn`: the future of an `async fn` stores its arguments twice (as
    // captured and as moved into the body), and this one lives as long as the connection;
    // the options are kept once here and lent to the rest.
    #[allow(clippy::manual_async_fn)]
    // The options may be shared (`Arc`): a server serving many connections with the same
    // options keeps one copy, not one per connection.
    pub fn serve<'a, C: Channel>(
        &'a self,
        id: &'a str,
        channel: C,
        opts: impl Into<Arc<ServeOptions>>,
    ) -> impl Future<Output = Result<(), ServeError>> + Send + 'a {
        let opts: Arc<ServeOptions> = opts.into();
        async move { self.serve_with(id, channel, &opts).await }
    }

    async fn serve_with<C: Channel>(
        &self,
        id: &str,
        mut channel: C,
        opts: &ServeOptions,
    ) -> Result<(), ServeError> {
        let room = loop {
            match Box::pin(self.get_room(id)).await {
                Ok(room) if room.is_closed() => continue,
                Ok(room) => break room,
                Err(e) => {
                    let e = match e {
                        GetRoomError::Load(e) => ServeError::Load(e),
                        GetRoomError::TooManyRooms(_) => ServeError::TooManyRooms,
                    };
                    if let Some(code) = e.close_code() {
                        // Boxed: a close only happens once, the connection's future should
                        // not carry it (see `Room::serve_or_return`).
                        Box::pin(channel.close(code, &e.close_reason())).await;
                    }
                    return Err(e);
                }
            }
        };
        // `Room::serve` refuses a room that started closing after `get_room` returned it;
        // that refusal happens before anything is sent, so the channel can be reused.
        let result = room.serve_or_return(channel, opts).await;
        let result = match result {
            Err(channel) => {
                // The room began unloading between `get_room` and the join: retry once the
                // unload is over (a fresh room is then made and loaded).
                room.closed().await;
                return Box::pin(self.serve_with(id, channel, opts)).await;
            }
            Ok(r) => r,
        };
        self.unload_if_empty_room(id, &room).await;
        result
    }

    /// Unload room `id` if it has no client. Returns whether it was unloaded.
    pub async fn unload_if_empty(&self, id: &str) -> bool {
        let Some(room) = self.get(id) else {
            return false;
        };
        self.unload_if_empty_room(id, &room).await
    }

    async fn unload_if_empty_room(&self, id: &str, room: &Room) -> bool {
        {
            // The count is re-checked with the map locked: a client that got this room from
            // the map and joins after this point is refused and retries on a fresh room.
            let mut rooms = self.rooms();
            if !rooms.get(id).is_some_and(|r| r.ptr_eq(room)) {
                return false;
            }
            if room.is_closed() {
                // Closed while clients were in it (`Room::close_with`, a broken state): it is
                // not unloaded again, but it leaves the map once its last client is gone.
                if room.client_count() == 0 {
                    rooms.remove(id);
                }
                return false;
            }
            if !room.mark_closing_if_empty() {
                return false;
            }
        }
        tracing::debug!(room = %id, "last client left: unloading the room");
        unload(room).await;
        self.remove_if_same(id, room);
        true
    }

    /// The ids of the live rooms.
    pub fn room_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.rooms().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The live room `id`, if any (without creating or loading it).
    pub fn get(&self, id: &str) -> Option<Room> {
        self.rooms().get(id).cloned()
    }

    /// Unload every room (flush, `emptied`, close), e.g. at server shutdown.
    pub async fn close_all(&self) {
        let rooms: Vec<(String, Room)> = self.rooms().drain().collect();
        for (_, room) in rooms {
            room.mark_closing();
            unload(&room).await;
        }
    }
}

/// Flush the room's changes to the hooks, run `emptied`, close it.
async fn unload(room: &Room) {
    room.flush().await;
    // A panicking `emptied` must not keep the room open, nor (in `close_all`) the rooms after
    // it from being flushed.
    let emptied = std::panic::AssertUnwindSafe(room.hooks().emptied(room));
    if futures_util::FutureExt::catch_unwind(emptied)
        .await
        .is_err()
    {
        room.count_hook_panic();
        tracing::error!(room = %room.id(), "the room's emptied hook panicked");
    }
    room.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelError;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_joins_of_new_rooms_never_take_a_bounded_manager_over_its_rooms() {
        let manager = RoomManager::bounded(|id: &str| Room::new(id), 3);
        let joins = (0..20).map(|i| {
            let m = manager.clone();
            tokio::spawn(async move { m.get_room(&format!("r{i}")).await })
        });
        let results = futures_util::future::join_all(joins).await;
        let ok = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        let refused = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(GetRoomError::TooManyRooms(3)))))
            .count();
        assert_eq!((ok, refused), (3, 17));
        assert_eq!(manager.room_ids().len(), 3);
        // A room already loaded is still given out.
        let loaded = manager.room_ids()[0].clone();
        assert!(manager.get_room(&loaded).await.is_ok());
    }

    #[tokio::test]
    async fn a_client_of_a_room_over_the_bound_is_closed_with_1013() {
        let manager = RoomManager::bounded(|id: &str| Room::new(id), 1);
        let _held = manager.get_room("a").await.expect("the first room");
        let (channel, mut peer) = crate::wire::memory::pair();
        let served = manager.serve("b", channel, ServeOptions::default()).await;
        assert!(
            matches!(served, Err(ServeError::TooManyRooms)),
            "{served:?}"
        );
        match peer.recv().await {
            Some(Err(ChannelError::Closed { code, .. })) => assert_eq!(code, 1013),
            other => panic!("expected a 1013 close, got {other:?}"),
        }
    }
}
