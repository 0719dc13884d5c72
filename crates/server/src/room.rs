//! The room actor: one task owns a room's variables and subscribers.
//!
//! Every change to a room goes through its command channel, so changes are
//! totally ordered (each gets the next [`Room::offset`]) and nothing on the hot
//! path takes a lock shared with other rooms.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use nimbus_proto::cloud::{encode_set, validate_name, CloseCode, CloudValue};
use tokio::sync::{mpsc, oneshot};

use crate::backplane::{
    CloudOp, RedisBackplane, RemoteEvent, RemoteOp, Snapshot, Write, WriteReply,
};
use crate::config::CloudLimits;
use crate::events::{EventBody, RoomEvent};
use crate::hub::{Hub, SERVER_SENDER};
use crate::outbox::{Outbox, Pushed};
use crate::store::{StoreOp, StoredVar};

/// A connection as a room sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Connection id (unique per server).
    pub id: u64,
    /// Username from the handshake.
    pub user: String,
    /// Its send queue.
    pub outbox: Arc<Outbox>,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The room has `max_clients_per_room` clients (4003).
    RoomFull,
    /// The server has `max_rooms` rooms loaded (4003).
    TooManyRooms,
    /// Another client of the room uses this name (4002, when usernames are unique).
    UsernameTaken,
    /// The room's state could not be loaded (1011).
    Unavailable,
    /// The room was unloading; join again.
    Retry,
}

/// A command to a room actor.
#[derive(Debug)]
pub enum RoomCmd {
    /// Add a subscriber; its outbox first receives the join frame.
    Join {
        /// The connection.
        sub: Subscriber,
        /// Result.
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// Remove a subscriber.
    Leave {
        /// Connection id.
        id: u64,
    },
    /// Set (or create) a variable. Name and value are already validated.
    Set {
        /// Sender's connection id (not echoed to it).
        from: u64,
        /// Variable name.
        name: String,
        /// New value.
        value: CloudValue,
    },
    /// Rename a variable; replies `false` when `name` is unknown or `new_name` taken.
    Rename {
        /// Sender's connection id ([`SERVER_SENDER`] for the API/IPC).
        from: u64,
        /// Current name.
        name: String,
        /// New name (already validated).
        new_name: String,
        /// Result.
        reply: oneshot::Sender<bool>,
    },
    /// Delete a variable; replies `false` when unknown.
    Delete {
        /// Sender's connection id ([`SERVER_SENDER`] for the API/IPC).
        from: u64,
        /// Name.
        name: String,
        /// Result.
        reply: oneshot::Sender<bool>,
    },
    /// Close every subscriber with this username (case-insensitive) with 4002.
    Kick {
        /// Username.
        user: String,
        /// How many were closed.
        reply: oneshot::Sender<usize>,
    },
    /// Current variables in insertion order.
    Snapshot {
        /// Result.
        reply: oneshot::Sender<Vec<(Arc<str>, CloudValue)>>,
    },
    /// A change of the room's Redis stream (`--redis`), applied in sequence order.
    Remote(Box<RemoteEvent>),
    /// Catch up with Redis (after the backplane subscription was re-established).
    Resync,
}

struct Var {
    value: CloudValue,
    pos: i64,
}

/// A room's state, owned by its actor task.
pub struct Room {
    key: Arc<str>,
    id: u64,
    hub: Arc<Hub>,
    limits: Arc<CloudLimits>,
    vars: HashMap<Arc<str>, Var>,
    /// Each variable's last fanned-out `set` line, shared by every queue that holds it, so a
    /// join costs the joiner references, not a copy of the room. Written by `fan_out`,
    /// removed with the variable's name; a missing line is encoded at the next join.
    lines: HashMap<Arc<str>, Utf8Bytes>,
    next_pos: i64,
    subs: Vec<Subscriber>,
    offset: u64,
    /// The room's epoch in Redis (`--redis` only; "" otherwise).
    epoch: Arc<str>,
}

impl Room {
    pub(crate) fn new(key: Arc<str>, id: u64, hub: Arc<Hub>) -> Room {
        let limits = hub.limits.clone();
        Room {
            key,
            id,
            hub,
            limits,
            vars: HashMap::new(),
            lines: HashMap::new(),
            next_pos: 0,
            subs: Vec::new(),
            offset: 0,
            epoch: Arc::from(""),
        }
    }

    /// Offset of the last accepted change (0 before any).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The actor: load, then serve commands until idle for `room_idle`.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<RoomCmd>) {
        let loaded = match self.hub.backplane.clone() {
            None => self.hub.store.load(&self.key).await,
            Some(bp) => match bp.load(&self.key).await {
                Ok(snap) => {
                    self.epoch = snap.epoch;
                    self.offset = snap.seq;
                    Ok(snap.vars)
                }
                Err(e) => Err(crate::store::StoreError::Backplane(e.to_string())),
            },
        };
        match loaded {
            Ok(vars) => {
                for v in vars {
                    self.next_pos = self.next_pos.max(v.pos + 1);
                    self.vars.insert(
                        v.name,
                        Var {
                            value: v.value,
                            pos: v.pos,
                        },
                    );
                }
            }
            Err(e) => {
                tracing::error!(room = %self.key, error = %e, "cannot load room");
                self.hub.release(&self.key, self.id);
                rx.close();
                while let Some(cmd) = rx.recv().await {
                    if let RoomCmd::Join { reply, .. } = cmd {
                        let _ = reply.send(Err(JoinError::Unavailable));
                    }
                }
                return;
            }
        }
        loop {
            let cmd = if self.subs.is_empty() {
                tokio::select! {
                    cmd = rx.recv() => cmd,
                    () = tokio::time::sleep(self.limits.room_idle) => None,
                }
            } else {
                rx.recv().await
            };
            match cmd {
                Some(cmd) => self.handle(cmd).await,
                None => break,
            }
        }
        // Idle (or every handle dropped): leave the hub, then refuse whatever raced in.
        self.hub.release(&self.key, self.id);
        rx.close();
        while let Some(cmd) = rx.recv().await {
            match cmd {
                RoomCmd::Join { reply, .. } => {
                    let _ = reply.send(Err(JoinError::Retry));
                }
                other => self.handle(other).await,
            }
        }
        tracing::debug!(room = %self.key, "room unloaded");
    }

    async fn handle(&mut self, cmd: RoomCmd) {
        let cmd = match self.hub.backplane.clone() {
            None => cmd,
            Some(bp) => match self.handle_shared(&bp, cmd).await {
                Some(cmd) => cmd,
                None => return,
            },
        };
        self.handle_local(cmd);
    }

    fn handle_local(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join { sub, reply } => {
                let _ = reply.send(self.join(sub));
            }
            RoomCmd::Leave { id } => {
                if let Some(i) = self.subs.iter().position(|s| s.id == id) {
                    let sub = self.subs.remove(i);
                    self.emit_member(false, &sub);
                }
            }
            RoomCmd::Set { from, name, value } => {
                if !self.store_refuses(Some(from)) {
                    self.set(from, name, value);
                }
            }
            RoomCmd::Rename {
                from,
                name,
                new_name,
                reply,
            } => {
                // Refused: the reply is dropped (the asker answers "store unavailable").
                if !self.store_refuses(None) {
                    let _ = reply.send(self.rename(from, &name, new_name));
                }
            }
            RoomCmd::Delete { from, name, reply } => {
                if self.store_refuses(None) {
                    return;
                }
                let old = self.vars.remove_entry(name.as_str());
                self.lines.remove(name.as_str());
                let removed = old.is_some();
                if let Some((name, old)) = old {
                    self.offset += 1;
                    self.emit(from, || EventBody::CloudDelete {
                        name: name.clone(),
                        value: Some(old.value),
                    });
                    self.hub.store.apply(StoreOp::Delete {
                        room: self.key.clone(),
                        name,
                    });
                }
                let _ = reply.send(removed);
            }
            RoomCmd::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            RoomCmd::Kick { user, reply } => self.kick(&user, reply),
            // Only sent when a backplane is configured.
            RoomCmd::Remote(_) | RoomCmd::Resync => {}
        }
    }

    /// While the store cannot write, a change is refused instead of being fanned out as if
    /// it were durable (`docs/security.md`, "Store failures"): the client that sent it is
    /// closed with 1011 "store unavailable" and reconnects with its backoff; a change from
    /// the HTTP/IPC API is dropped (the hub answers those callers first). Changes accepted
    /// before the failure stay in the store's retried batch.
    fn store_refuses(&self, from: Option<u64>) -> bool {
        if self.hub.store.can_write() {
            return false;
        }
        self.hub.metrics.store.refused("cloud");
        if let Some(sub) = from.and_then(|from| self.subs.iter().find(|s| s.id == from)) {
            tracing::info!(room = %self.key, conn = sub.id, user = %sub.user, "change refused: the store cannot write; closing the sender (1011)");
            sub.outbox.close(CloseCode::Unavailable);
        }
        true
    }

    fn kick(&mut self, user: &str, reply: oneshot::Sender<usize>) {
        let mut kicked = Vec::new();
        self.subs.retain(|s| {
            let hit = s.user.eq_ignore_ascii_case(user);
            if hit {
                s.outbox.close(CloseCode::Username);
                kicked.push(s.clone());
            }
            !hit
        });
        for sub in &kicked {
            self.emit_member(false, sub);
        }
        let _ = reply.send(kicked.len());
    }

    /// The username of connection `from` of this room (`None` for [`SERVER_SENDER`] or a
    /// connection that has left).
    fn user_of(&self, from: u64) -> Option<Arc<str>> {
        self.subs
            .iter()
            .find(|s| s.id == from)
            .map(|s| Arc::from(s.user.as_str()))
    }

    /// Publish the event of a change by connection `from`; `body` is built only when
    /// someone listens.
    fn emit(&self, from: u64, body: impl FnOnce() -> EventBody) {
        if self.hub.events.is_active() {
            self.hub.events.publish(&RoomEvent {
                room: self.key.clone(),
                user: self.user_of(from),
                body: body(),
                gid: None,
            });
        }
    }

    /// A client joined (`joined`) or left.
    fn emit_member(&self, joined: bool, sub: &Subscriber) {
        let conn = sub.id;
        let ev = || RoomEvent {
            room: self.key.clone(),
            user: Some(Arc::from(sub.user.as_str())),
            body: if joined {
                EventBody::Join { conn }
            } else {
                EventBody::Leave { conn }
            },
            gid: None,
        };
        if let Some(bp) = &self.hub.backplane {
            // Presence joins the global order through Redis (the gateway of every node
            // dispatches it from the subscription).
            bp.presence(&ev());
        } else if self.hub.events.is_active() {
            self.hub.events.publish(&ev());
        }
    }

    fn snapshot(&self) -> Vec<(Arc<str>, CloudValue)> {
        let mut vars: Vec<_> = self.vars.iter().collect();
        vars.sort_by_key(|(_, v)| v.pos);
        vars.into_iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }

    fn join(&mut self, sub: Subscriber) -> Result<(), JoinError> {
        if self.subs.len() >= self.limits.max_clients_per_room {
            return Err(JoinError::RoomFull);
        }
        if self.limits.unique_usernames
            && self
                .subs
                .iter()
                .any(|s| s.user.eq_ignore_ascii_case(&sub.user))
        {
            return Err(JoinError::UsernameTaken);
        }
        let snapshot = self.snapshot();
        if snapshot.is_empty() {
            if self.limits.empty_join_frame {
                sub.outbox
                    .push(None, &Utf8Bytes::from_static("\n"), usize::MAX, usize::MAX);
            }
        } else {
            let lines = &mut self.lines;
            let items: Vec<(Arc<str>, Utf8Bytes)> = snapshot
                .into_iter()
                .map(|(name, value)| {
                    let line = lines
                        .entry(name.clone())
                        .or_insert_with(|| Utf8Bytes::from(encode_set(&name, &value)))
                        .clone();
                    (name, line)
                })
                .collect();
            // The connection sends these in frames of bounded size.
            sub.outbox.push_join(items);
        }
        self.emit_member(true, &sub);
        self.subs.push(sub);
        Ok(())
    }

    fn set(&mut self, from: u64, name: String, value: CloudValue) {
        let key: Arc<str> = match self.vars.get_key_value(name.as_str()) {
            Some((k, _)) => k.clone(),
            None => {
                if self.vars.len() >= self.limits.max_variables_per_room {
                    self.hub.metrics.dropped_set("too_many_variables");
                    tracing::debug!(room = %self.key, %name, "set dropped: variable limit reached");
                    return;
                }
                Arc::from(name)
            }
        };
        self.offset += 1;
        self.fan_out(from, &key, &value);
        self.emit(from, || {
            let (name, value) = (key.clone(), value.clone());
            if self.vars.contains_key(&key) {
                EventBody::CloudSet { name, value }
            } else {
                EventBody::CloudCreate { name, value }
            }
        });
        let pos = match self.vars.get_mut(&key) {
            Some(v) => {
                v.value = value.clone();
                v.pos
            }
            None => {
                let pos = self.next_pos;
                self.next_pos += 1;
                self.vars.insert(
                    key.clone(),
                    Var {
                        value: value.clone(),
                        pos,
                    },
                );
                pos
            }
        };
        self.hub.store.apply(StoreOp::Put {
            room: self.key.clone(),
            var: StoredVar {
                name: key,
                value,
                pos,
            },
        });
    }

    /// Queue `key = value` to every subscriber but `from`; cut those that stay full.
    fn fan_out(&mut self, from: u64, key: &Arc<str>, value: &CloudValue) {
        let line = Utf8Bytes::from(encode_set(key, value));
        self.lines.insert(key.clone(), line.clone());
        let (cap, coalesce) = (self.limits.outbox_capacity, self.limits.coalesce_after);
        let metrics = &self.hub.metrics;
        // Ids of subscribers cut in this fan-out (rare; no allocation unless it happens).
        let mut cut: Vec<u64> = Vec::new();
        let mut delivered = 0u64;
        for s in self.subs.iter().filter(|s| s.id != from) {
            match s.outbox.push(Some(key), &line, cap, coalesce) {
                Pushed::Queued => delivered += 1,
                Pushed::Replaced => {
                    delivered += 1;
                    metrics.coalesced.inc();
                }
                Pushed::Overflow => {
                    cut.push(s.id);
                    metrics.slow_consumers.inc();
                    tracing::info!(room = %self.key, conn = s.id, user = %s.user, "slow consumer cut (1008)");
                }
                Pushed::Closed => {}
            }
        }
        metrics.deliveries.inc_by(delivered);
        if !cut.is_empty() {
            let mut gone = Vec::new();
            self.subs.retain(|s| {
                let keep = !cut.contains(&s.id);
                if !keep {
                    gone.push(s.clone());
                }
                keep
            });
            for sub in &gone {
                self.emit_member(false, sub);
            }
        }
    }

    fn rename(&mut self, from: u64, name: &str, new_name: String) -> bool {
        if self.vars.contains_key(new_name.as_str())
            || validate_name(&new_name, self.limits.max_name_len).is_err()
        {
            return false;
        }
        let Some((old, var)) = self.vars.remove_entry(name) else {
            return false;
        };
        let new: Arc<str> = Arc::from(new_name);
        self.emit(from, || EventBody::CloudRename {
            name: old.clone(),
            new_name: new.clone(),
            value: Some(var.value.clone()),
        });
        self.lines.remove(&old);
        self.vars.insert(new.clone(), var);
        self.offset += 1;
        self.hub.store.apply(StoreOp::Rename {
            room: self.key.clone(),
            name: old,
            new_name: new,
        });
        true
    }
}

/// With `--redis`: a change goes to Redis first and is applied when it comes back
/// on the subscription, in the room's sequence order (see [`crate::backplane`]).
impl Room {
    /// Take the commands that work differently with a backplane; give back the others.
    async fn handle_shared(&mut self, bp: &Arc<RedisBackplane>, cmd: RoomCmd) -> Option<RoomCmd> {
        let max_vars = self.limits.max_variables_per_room;
        let write = match cmd {
            RoomCmd::Set { from, name, value } => {
                let (user, outbox) = match self.subs.iter().find(|s| s.id == from) {
                    Some(s) => (Some(Arc::from(s.user.as_str())), Some(s.outbox.clone())),
                    None => (None, None),
                };
                let name = match self.vars.get_key_value(name.as_str()) {
                    Some((k, _)) => k.clone(),
                    None => Arc::from(name),
                };
                Write {
                    room: self.key.clone(),
                    op: CloudOp::Set { name, value },
                    from,
                    user,
                    max_vars,
                    reply: WriteReply::Sender(outbox),
                }
            }
            RoomCmd::Rename {
                from,
                name,
                new_name,
                reply,
            } => {
                if validate_name(&new_name, self.limits.max_name_len).is_err() {
                    let _ = reply.send(false);
                    return None;
                }
                Write {
                    room: self.key.clone(),
                    op: CloudOp::Rename { name, new_name },
                    from,
                    user: self.user_of(from),
                    max_vars,
                    reply: WriteReply::Accepted(reply),
                }
            }
            RoomCmd::Delete { from, name, reply } => Write {
                room: self.key.clone(),
                op: CloudOp::Delete { name },
                from,
                user: self.user_of(from),
                max_vars,
                reply: WriteReply::Accepted(reply),
            },
            RoomCmd::Remote(ev) => {
                self.on_remote(*ev).await;
                return None;
            }
            RoomCmd::Resync => {
                self.catch_up().await;
                return None;
            }
            other => return Some(other),
        };
        if let Err(error) = bp.write(write).await {
            tracing::warn!(room = %self.key, %error, "change not written");
        }
        None
    }

    /// A change from the subscription: apply it if it is the next one, else catch up.
    async fn on_remote(&mut self, ev: RemoteEvent) {
        if ev.epoch == self.epoch {
            if ev.seq <= self.offset {
                return;
            }
            if ev.seq == self.offset + 1 {
                self.apply_remote(ev);
                return;
            }
        } else if self.offset == 0 && ev.seq == 1 {
            self.epoch = ev.epoch.clone();
            self.apply_remote(ev);
            return;
        }
        self.catch_up().await;
    }

    /// Apply what the room missed: from its Redis stream when that reaches back far
    /// enough in the same epoch, else from the state hash.
    async fn catch_up(&mut self) {
        let Some(bp) = self.hub.backplane.clone() else {
            return;
        };
        self.hub.metrics.redis_resyncs.inc();
        if let Ok(events) = bp.read_log(&self.key, self.offset + 1).await {
            let mut complete = !events.is_empty();
            for ev in events {
                let fits =
                    ev.seq == self.offset + 1 && (ev.epoch == self.epoch || self.offset == 0);
                if !fits {
                    complete = false;
                    break;
                }
                self.epoch = ev.epoch.clone();
                self.apply_remote(ev);
            }
            if complete {
                return;
            }
        }
        match bp.load(&self.key).await {
            Ok(snap) => self.reset_to(snap),
            Err(error) => {
                tracing::warn!(room = %self.key, %error, "cannot catch up with Redis; will retry on the next change");
            }
        }
    }

    /// Apply one change of the room's stream (its sequence is the next offset).
    fn apply_remote(&mut self, ev: RemoteEvent) {
        self.offset = ev.seq;
        let lag = crate::backplane::now_ms().saturating_sub(ev.ts);
        self.hub
            .metrics
            .redis_lag_ms
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
        let from = ev.local_conn.unwrap_or(SERVER_SENDER);
        match ev.op {
            RemoteOp::Set { name, value, pos } => {
                let key = match self.vars.get_key_value(&*name) {
                    Some((k, _)) => k.clone(),
                    None => name,
                };
                // The subscription publishes the room event (for every room, loaded or not).
                self.fan_out(from, &key, &value);
                match self.vars.get_mut(&key) {
                    Some(v) => v.value = value,
                    None => {
                        self.next_pos = self.next_pos.max(pos + 1);
                        self.vars.insert(key, Var { value, pos });
                    }
                }
            }
            RemoteOp::Rename { name, new_name, .. } => {
                self.lines.remove(&*name);
                if let Some(var) = self.vars.remove(&*name) {
                    self.vars.insert(new_name, var);
                }
            }
            RemoteOp::Delete { name, .. } => {
                self.lines.remove(&*name);
                self.vars.remove(&*name);
            }
        }
    }

    /// Replace the room's state by Redis's; subscribers get every value that changed.
    fn reset_to(&mut self, snap: Snapshot) {
        self.epoch = snap.epoch;
        self.offset = snap.seq;
        let names: std::collections::HashSet<Arc<str>> =
            snap.vars.iter().map(|v| v.name.clone()).collect();
        // The cloud protocol has no "deleted" message: a vanished variable just stops.
        self.vars.retain(|k, _| names.contains(k));
        self.lines.retain(|k, _| names.contains(k));
        for v in snap.vars {
            let changed = self
                .vars
                .get(&v.name)
                .is_none_or(|cur| cur.value != v.value);
            if changed {
                // No event-bus event: the changes this sums up were missed by the
                // subscription too (a listener sees the next change).
                self.fan_out(SERVER_SENDER, &v.name, &v.value);
            }
            self.next_pos = self.next_pos.max(v.pos + 1);
            match self.vars.get_mut(&v.name) {
                Some(cur) => {
                    cur.value = v.value;
                    cur.pos = v.pos;
                }
                None => {
                    self.vars.insert(
                        v.name,
                        Var {
                            value: v.value,
                            pos: v.pos,
                        },
                    );
                }
            }
        }
    }
}
